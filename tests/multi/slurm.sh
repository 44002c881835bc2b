#!/bin/bash
# SPDX-License-Identifier: MIT
# Slurm end to end (make check-slurm, after ci/slurm-up): srun --mpi=pmix -n 8 gives every rank its own rank;
# a rank that exits non-zero fails the step with that task named; scancel ends every rank with nothing left
# behind. Outside check-slurm (no DSM_TEST_LAUNCHER=srun) it skips; under it, a Slurm that does not answer is a
# failure. TAP output.
set -u
top=${top_builddir:-.}
behave=$(readlink -f "$top/tests/multi/behave")
if [ "${DSM_TEST_LAUNCHER:-}" != srun ]; then echo "1..0 # SKIP only under make check-slurm"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); echo "not ok $n - $1"; tail -30 "$tmp/out" | sed 's/^/# /'; }
check() { if eval "$2"; then ok "$1"; else nok "$1"; fi; }
srun_() { timeout 300 srun --mpi=pmix --immediate=60 "$@"; }

if ! timeout 30 sinfo -h -o %T 2>"$tmp/out" | grep -q idle; then
  nok "Slurm answers with an idle node (run ci/slurm-up)"
  echo "1..$n"
  exit 0
fi

srun_ -n 8 "$behave" ok >"$tmp/out" 2>&1
rc=$?
check "srun -n 8: exit 0 and eight distinct ranks of 8 (exit $rc)" \
  '[ $rc = 0 ] && [ "$(grep -c "^rank [0-7] of 8$" "$tmp/out")" = 8 ] && [ "$(sort -u "$tmp/out" | grep -c "^rank")" = 8 ]'

srun_ -n 4 "$behave" exit 2 3 >"$tmp/out" 2>&1
rc=$?
check "a rank exiting with status 3 fails the step with status 3 (exit $rc)" '[ $rc = 3 ]'
check "... and srun names task 2" 'grep -q "task 2: Exited with exit code 3" "$tmp/out"'

mkdir "$tmp/ready"
name=dsm-scancel-$$
srun_ -n 4 -J $name "$behave" sleep "$tmp/ready" >"$tmp/out" 2>&1 &
pid=$!
for _ in $(seq 600); do [ "$(ls "$tmp/ready" | wc -l)" = 4 ] && break; sleep 0.1; done
check "four ranks up under srun" '[ "$(ls "$tmp/ready" | wc -l)" = 4 ]'
scancel -n $name
wait $pid
rc=$?
check "scancel ends the step (srun exit $rc)" '[ $rc != 0 ] && [ $rc != 124 ]'
gone=0
for _ in $(seq 100); do pgrep -f "$behave sleep $tmp/ready" >/dev/null || { gone=1; break; }; sleep 0.1; done
check "scancel leaves no rank behind" '[ $gone = 1 ]'
echo "1..$n"
