#!/bin/bash
# SPDX-License-Identifier: MIT
# examples/resume end to end: an uninterrupted run; a run that checkpoints half-way and whose node 0 is killed;
# a new dsmrun that restores the checkpoint. The restored run must print the uninterrupted result. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsm-resume.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
n=0
for size in 2 4; do
  full=$("$dsmrun" -n $size "$top/examples/resume" 2>&1 | sed -n 's/^resume: result //p')
  crashed=$("$dsmrun" -n $size "$top/examples/resume" "$tmp/ck$size" --crash 2>&1)
  crc=$?
  out=$("$dsmrun" -n $size "$top/examples/resume" "$tmp/ck$size" 2>&1)
  got=$(sed -n 's/^resume: result //p' <<<"$out")
  n=$((n + 1))
  if [ -n "$full" ] && [ $crc != 0 ] && [ "$got" = "$full" ] && grep -q 'restored' <<<"$out"; then
    echo "ok $n - $size nodes: killed after the checkpoint, restored by a new dsmrun, result $got as uninterrupted"
  else
    echo "not ok $n - $size nodes: uninterrupted '$full', killed run exit $crc, restored '$got'"
    printf '%s\n%s\n' "$crashed" "$out" | tail -20 | sed 's/^/# /'
  fi
done
echo "1..$n"
