#!/bin/bash
# SPDX-License-Identifier: MIT
# A local process that writes nonsense into its shared-memory queue or into a peer's reply slots (issue 9): the
# receiving rank validates every record like a TCP frame and every reply it did not ask for, reports the malformed
# message and fails stop; nothing crashes, nothing hangs, and the launcher's status is non-zero. DSM_TIMEOUT is
# long, so the failure cannot come from a timeout. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
prog=$top/tests/multi/shm_peer
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for run in "garbage 1" "garbage 2" "garbage 3" "garbage 4" "garbage 5" "garbage 6" \
           "reply-garbage 2" "reply-garbage 3"; do
  set -- $run
  n=$((n + 1))
  if [ "$1" = garbage ]; then what="the queue"; expect="malformed message in its shared-memory queue: "
  else what="the reply slots"; expect="malformed reply in this node's shared-memory reply slot: "; fi
  DSM_TRANSPORT=shm DSM_TIMEOUT=600 timeout 120 "$dsmrun" --tag-output -n 2 "$prog" "$1" "$2" \
    >"$tmp/out" 2>"$tmp/err"
  rc=$?
  why=""
  [ $rc = 1 ] || why="dsmrun exit $rc, expected 1"
  grep -q "\[0\] libdsm\[0:[0-9]*\] libdsm: node 1 lost ($expect" "$tmp/err" ||
    why="$why; rank 0 did not report the malformed message"
  if grep -q "killed by signal\|AddressSanitizer\|runtime error" "$tmp/err"; then why="$why; a rank crashed"; fi
  if grep -q "left a barrier\|still running" "$tmp/err"; then why="$why; a rank went on"; fi
  if [ -z "$why" ]; then
    echo "ok $n - garbage in $what (seed $2): $(grep -o 'malformed [^)]*' "$tmp/err" | head -1)"
  else
    echo "not ok $n - garbage in $what (seed $2): $why"
    sed 's/^/# /' "$tmp/err" | tail -20
  fi
done
echo "1..$n"
