#!/bin/bash
# SPDX-License-Identifier: MIT
# tests/model/check-model.sh - make check: verify the Promela model of the coherence protocol,
# tests/model/dsm_msi.pml (the C is libdsm/dir_msi.c and libdsm/pg_fault.c), with SPIN. Prints TAP.
#
#   1-2  safety, exhaustive (-DCOLLAPSE, never -DBITSTATE), with a memory limit (MEMLIM, MiB) and a time limit:
#        single writer or many readers, every read sees the latest version, the C's protocol checks, no
#        deadlock (invalid end states). Fails unless pan says "errors: 0" and the search was complete.
#   3-4  liveness: every request completes (ltl "done"), acceptance cycles with weak fairness (-a -f).
#   5-7  negative controls: with a bug injected (BUG_SKIP_INV, BUG_STALE_MEM, BUG_NO_DRAIN) SPIN must find an
#        error, which shows the properties can fail.
# Budget: under 3 minutes on 2 cores and under 2 GiB (each pan is limited to MEMLIM and to ulimit -v).
# Skips (1..0 # SKIP) when spin or a C compiler is missing, unless DSM_TEST_NO_SKIP=1.
set -u

model="${top_srcdir:-.}/tests/model/dsm_msi.pml"
CC="${CC:-cc}"
MEMLIM=1536          # MiB, pan's own limit (-DMEMLIM)
VLIMIT=$((2048 * 1024)) # KiB, ulimit -v for pan: a hard backstop at 2 GiB
PAN_TIMEOUT=900      # seconds per pan run: a hang guard only (about 20 s on an idle 2-core machine)
DEPTH=100000         # pan -m; the deepest run needs about 1400

skip_all() {
    if [ "${DSM_TEST_NO_SKIP:-}" = 1 ]; then
        echo "1..1"
        echo "not ok 1 - $1 (DSM_TEST_NO_SKIP=1)"
        exit 1
    fi
    echo "1..0 # SKIP $1"
    exit 0
}

command -v spin >/dev/null 2>&1 || skip_all "spin not found"
command -v "$CC" >/dev/null 2>&1 || { CC=gcc; command -v "$CC" >/dev/null 2>&1 || skip_all "no C compiler for pan.c"; }
command -v timeout >/dev/null 2>&1 || skip_all "timeout (coreutils) not found"

echo "1..7"
if [ ! -r "$model" ]; then
    for i in 1 2 3 4 5 6 7; do echo "not ok $i - model $model not readable"; done
    exit 1
fi
model_abs="$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dsm-model.XXXXXX")" || exit 1
trap 'rm -rf "$tmp"' EXIT

n=0
fail=0
log=

# run NAME "SPIN_DEFS" "CC_DEFS" "PAN_ARGS": generate, compile and run pan in $tmp/NAME; its output is in $log.
# Returns pan's exit status, 124 on timeout, 200 when spin or the compiler failed.
run() {
    local name=$1 sdefs=$2 cdefs=$3 pargs=$4
    local dir="$tmp/$name"
    mkdir -p "$dir"
    log="$dir/pan.out"
    # shellcheck disable=SC2086
    (cd "$dir" && spin -a $sdefs "$model_abs" && "$CC" -O2 -w -DCOLLAPSE -DMEMLIM=$MEMLIM $cdefs -o pan pan.c) \
        >"$dir/build.out" 2>&1 || { sed 's/^/# /' "$dir/build.out" | tail -20; return 200; }
    # shellcheck disable=SC2086
    (cd "$dir" && ulimit -v $VLIMIT && timeout $PAN_TIMEOUT ./pan -m$DEPTH $pargs) >"$log" 2>&1
}

# Numbers of the last run as TAP comments.
stats() {
    local states trans depth mem secs
    states=$(sed -n 's/^ *\([0-9][0-9]*\) states, stored.*/\1/p' "$log" | head -1)
    trans=$(sed -n 's/^ *\([0-9][0-9]*\) transitions.*/\1/p' "$log" | head -1)
    depth=$(sed -n 's/.*depth reached \([0-9][0-9]*\).*/\1/p' "$log" | head -1)
    mem=$(sed -n 's/^ *\([0-9.][0-9.]*\)[[:space:]]*total actual memory usage.*/\1/p' "$log" | head -1)
    secs=$(sed -n 's/^pan: elapsed time \([0-9.e+-]*\) seconds.*/\1/p' "$log" | head -1)
    echo "#   states stored: ${states:-?}, transitions: ${trans:-?}, depth: ${depth:-?}, memory: ${mem:-?} MB, time: ${secs:-?} s"
}

incomplete() {
    ! grep -q 'Full statespace search' "$log" ||
        grep -Eiq 'search depth too small|search not completed|search was incomplete|out of memory|MEMLIM bound' "$log"
}

# expect_ok "DESCRIPTION" NAME "SPIN_DEFS" "CC_DEFS" "PAN_ARGS": a complete search with no error.
expect_ok() {
    local desc=$1
    shift
    n=$((n + 1))
    run "$@"
    local rc=$?
    if [ $rc -eq 200 ]; then
        echo "not ok $n - $desc: spin -a or the compilation of pan.c failed"
        fail=1
        return
    fi
    stats
    if [ $rc -eq 124 ]; then
        echo "not ok $n - $desc: pan did not finish within ${PAN_TIMEOUT}s"
        fail=1
    elif ! grep -q 'errors: 0$' "$log" || grep -q 'errors: [1-9]' "$log"; then
        grep -E '^pan:|violated|cycle' "$log" | head -5 | sed 's/^/# /'
        echo "not ok $n - $desc: SPIN reports errors (run spin -t -p on the trail)"
        fail=1
    elif incomplete; then
        grep -Ei 'depth too small|not completed|incomplete|memory|MEMLIM' "$log" | head -5 | sed 's/^/# /'
        echo "not ok $n - $desc: the search was incomplete"
        fail=1
    else
        echo "ok $n - $desc"
    fi
}

# expect_error "DESCRIPTION" "PATTERN" NAME "SPIN_DEFS" "CC_DEFS" "PAN_ARGS": SPIN must find an error whose
# report matches PATTERN (grep -E).
expect_error() {
    local desc=$1 pat=$2
    shift 2
    n=$((n + 1))
    run "$@"
    local rc=$?
    if [ $rc -eq 200 ]; then
        echo "not ok $n - $desc: spin -a or the compilation of pan.c failed"
        fail=1
        return
    fi
    stats
    if grep -q 'errors: [1-9]' "$log" && grep -Eq "$pat" "$log"; then
        grep -E "$pat" "$log" | head -1 | sed 's/^/#   found: /'
        echo "ok $n - $desc"
    else
        echo "not ok $n - $desc: SPIN found no error with the bug injected"
        fail=1
    fi
}

# Safety. 3 nodes (the home and two others), each doing 6 steps (a step is a fault or a write); then 4 nodes
# with 2 steps each. Exhaustive, compressed state storage, partial-order reduction.
expect_ok "safety, exhaustive, 3 nodes x 6 steps: single writer or many readers, reads see the latest version, no deadlock" \
    safety3 "-DNODES=3 -DOPS=6" "-DSAFETY" "-w25"
expect_ok "safety, exhaustive, 4 nodes x 2 steps: single writer or many readers, reads see the latest version, no deadlock" \
    safety4 "-DNODES=4 -DOPS=2" "-DSAFETY" "-w24"

# Liveness: nodes fault forever (no ghost versions); every request completes, under weak fairness.
expect_ok "liveness, 2 nodes, unbounded: every request completes (ltl done, weak fairness)" \
    live2 "-DLIVENESS -DNODES=2" "-DNFAIR=3" "-a -f -w20"
expect_ok "liveness, 3 nodes, unbounded: every request completes (ltl done, weak fairness)" \
    live3 "-DLIVENESS -DNODES=3" "-DNFAIR=3" "-a -f -w22"

# Negative controls: the same checks must fail on a broken protocol.
expect_error "the model finds the injected bug (BUG_SKIP_INV: a sharer is not invalidated -> two copies, one writable)" \
    'assertion violated' neg_skip_inv "-DNODES=3 -DOPS=3 -DBUG_SKIP_INV" "-DSAFETY" "-w20"
expect_error "the model finds the injected bug (BUG_STALE_MEM: recalled data not stored -> a read sees an old version)" \
    'assertion violated' neg_stale "-DNODES=3 -DOPS=3 -DBUG_STALE_MEM" "-DSAFETY" "-w20"
expect_error "the model finds the injected bug (BUG_NO_DRAIN: queue not served after the last INV_ACK -> a request never completes)" \
    'acceptance cycle' neg_no_drain "-DLIVENESS -DNODES=3 -DBUG_NO_DRAIN" "-DNFAIR=3" "-a -f -w20"

exit $fail
