#!/bin/bash
# SPDX-License-Identifier: MIT
# A local process that writes nonsense into its shared-memory queue (issue 9): the receiving rank validates every
# record like a TCP frame, reports the malformed message and fails stop; nothing crashes, nothing hangs, and the
# launcher's status is non-zero. DSM_TIMEOUT is long, so the failure cannot come from a timeout. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
prog=$top/tests/multi/shm_peer
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for seed in 1 2 3 4 5 6; do
  n=$((n + 1))
  DSM_TRANSPORT=shm DSM_TIMEOUT=600 timeout 120 "$dsmrun" --tag-output -n 2 "$prog" garbage $seed \
    >"$tmp/out" 2>"$tmp/err"
  rc=$?
  why=""
  [ $rc = 1 ] || why="dsmrun exit $rc, expected 1"
  grep -q "\[0\] libdsm\[0:[0-9]*\] libdsm: node 1 lost (malformed message in its shared-memory queue: " "$tmp/err" ||
    why="$why; rank 0 did not report the malformed message"
  if grep -q "killed by signal\|AddressSanitizer\|runtime error" "$tmp/err"; then why="$why; a rank crashed"; fi
  if grep -q "left a barrier\|still running" "$tmp/err"; then why="$why; a rank went on"; fi
  if [ -z "$why" ]; then
    echo "ok $n - garbage in the queue (seed $seed): $(grep -o 'malformed message[^)]*' "$tmp/err" | head -1)"
  else
    echo "not ok $n - garbage in the queue (seed $seed): $why"
    sed 's/^/# /' "$tmp/err" | tail -20
  fi
done
echo "1..$n"
