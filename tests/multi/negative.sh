#!/bin/bash
# SPDX-License-Identifier: MIT
# The negative control: with the home dropping every third invalidation (a test-only hook), the litmus and
# stress tests must detect incoherence. This proves they can fail. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
n=0
for t in coh_litmus coh_stress; do
  n=$((n + 1))
  out=$("$dsmrun" --tag-output --timeout 300 -n 4 "$top/tests/multi/$t" --expect-violation 2>&1)
  rc=$?
  if [ $rc = 0 ]; then
    echo "ok $n - $t detects dropped invalidations"
    grep -m2 'forbidden\|went backwards' <<<"$out" | sed 's/^/# /'
  else
    echo "not ok $n - $t did not detect dropped invalidations (exit $rc)"
    tail -20 <<<"$out" | sed 's/^/# /'
  fi
done
echo "1..$n"
