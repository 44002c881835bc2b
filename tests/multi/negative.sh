#!/bin/bash
# SPDX-License-Identifier: MIT
# Negative controls: with the home dropping every third invalidation (a test-only hook), the litmus and
# stress tests must detect incoherence, which proves they can fail; and a peer that ignores its request
# credits must be refused. TAP output.
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
# A peer that ignores its credits floods its home with requests: refused, the job fails naming it.
n=$((n + 1))
out=$("$dsmrun" --tag-output --timeout 300 -n 2 "$top/tests/multi/coh_credits" --flood 2>&1)
rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && grep -q "node 1 has more than 2 unanswered requests here" <<<"$out" &&
   grep -q "libdsm: node 1 lost" <<<"$out"; then
  echo "ok $n - a peer beyond its request window is refused and the job fails stop naming it (exit $rc)"
else
  echo "not ok $n - a flood beyond the window was not refused as it should be (exit $rc)"
  tail -20 <<<"$out" | sed 's/^/# /'
fi
echo "1..$n"
