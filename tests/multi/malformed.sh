#!/bin/bash
# SPDX-License-Identifier: MIT
# Malformed and unexpected messages of every kind the core handles (tests/multi/malformed.c lists them: short,
# long, bad page index, a page of the wrong home, bad lock id, unexpected replies, unregistered id), sent by a
# rank that did authenticate. The receiver logs, drops the connection and fails stop naming the sender, exits 1
# (never a crash), and has written none of the message's data into its pages. Over shm and tcp. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
prog=$top/tests/multi/malformed
. "${top_srcdir:-.}/tests/tap-lib.sh"

for tp in shm tcp; do
  cases=$(DSM_TRANSPORT=$tp "$prog" list)
  [ -n "$cases" ] || { echo "1..0 # SKIP malformed lists no case"; exit 0; }
  for c in $cases; do
    DSM_TRANSPORT=$tp timeout 120 "$dsmrun" --tag-output -n 3 "$prog" "$c" >"$tmp/err" 2>&1
    rc=$?
    check "$tp: $c: rank 0 fails stop naming node 1, exits 1 with its pages intact (dsmrun exit $rc)" \
      '[ $rc != 0 ] && [ $rc != 124 ] &&
       grep -q "^\[0\] .*libdsm: node 1 lost" "$tmp/err" &&
       grep -q "^\[0\] malformed: error handler (err -40, node 1): pages intact" "$tmp/err" &&
       grep -q "rank 0 (pid [0-9]*) exited with status 1" "$tmp/err" &&
       ! grep -q "killed by signal \(4\|6\|7\|8\|11\)\|PAGE CORRUPTED\|AddressSanitizer\|runtime error" "$tmp/err"'
  done
done
echo "1..$n"
