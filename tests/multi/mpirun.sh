#!/bin/bash
# SPDX-License-Identifier: MIT
# The PMIx bootstrap under Open MPI's mpirun (no dsmrun): ranks and size come from PMIx, the transport tests
# pass, and a failing rank fails the job. Skips when mpirun was not found at configure time. TAP output.
set -u
top=${top_builddir:-.}
mpirun=${MPIRUN:-}
[ -n "$mpirun" ] && [ -x "$mpirun" ] || { echo "1..0 # SKIP mpirun not found (Debian: openmpi-bin)"; exit 0; }
grep -q "pmix      built" <("$top/tools/dsm_info") || { echo "1..0 # SKIP libdsm built without PMIx"; exit 0; }
export OMPI_MCA_plm_rsh_agent= OMPI_MCA_btl_vader_single_copy_mechanism=none
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mpi() { timeout 300 "$mpirun" --allow-run-as-root --oversubscribe -n "$@"; }
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); echo "not ok $n - $1"; tail -30 "$tmp/out" | sed 's/^/# /'; }

mpi 4 "$top/tests/multi/behave" ok >"$tmp/out" 2>&1
rc=$?
if [ $rc = 0 ] && [ "$(grep -c '^rank [0-3] of 4$' "$tmp/out")" = 4 ] &&
   [ "$(grep '^rank' "$tmp/out" | sort -u | wc -l)" = 4 ]; then
  ok "mpirun -n 4: every rank reports its own rank of 4"
else
  nok "mpirun -n 4 behave ok (exit $rc)"
fi
for t in tp_pingpong tp_alltoall tp_rma barrier_order; do
  mpi 4 "$top/tests/multi/$t" >"$tmp/out" 2>&1
  rc=$?
  if [ $rc = 0 ]; then ok "$t under mpirun -n 4"; else nok "$t under mpirun -n 4 (exit $rc)"; fi
done
mpi 4 "$top/tests/multi/behave" exit 2 3 >"$tmp/out" 2>&1
rc=$?
if [ $rc != 0 ] && [ $rc != 124 ]; then ok "a rank exiting 3 under mpirun fails the job (exit $rc)"; else nok "failing rank under mpirun (exit $rc)"; fi
echo "1..$n"
