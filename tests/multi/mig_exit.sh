#!/bin/bash
# SPDX-License-Identifier: MIT
# exit() in a dsm thread is forwarded to rank 0 (migrate/thread.c): the job exits with the thread's status, rank
# 0's atexit handlers run, the thread's node's do not. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
n=0
for size in 2 3; do
  n=$((n + 1))
  out=$("$dsmrun" --tag-output --timeout 300 -n $size "$top/tests/multi/mig_exit" 2>&1)
  rc=$?
  last=$((size - 1))
  if [ $rc = 3 ] && grep -q '^\[0\] mig_exit: atexit handler of rank 0 ran' <<<"$out" &&
     ! grep -q "atexit handler of rank $last ran" <<<"$out" && ! grep -q 'the join returned' <<<"$out"; then
    echo "ok $n - exit(3) in a dsm thread on node $last of $size ends the job with 3 through rank 0's exit"
  else
    echo "not ok $n - exit(3) in a dsm thread on node $last of $size: dsmrun exit $rc"
    tail -20 <<<"$out" | sed 's/^/# /'
  fi
done
echo "1..$n"
