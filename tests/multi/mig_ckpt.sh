#!/bin/bash
# SPDX-License-Identifier: MIT
# Checkpoint and restore (migrate/ckpt.c) with tests/multi/mig_ckpt: a worker dsm thread checkpointed at step 500
# of 1000 and restored by a new dsmrun finishes with the result of an uninterrupted run; bad checkpoints (missing,
# truncated, corrupted, another node count, another binary) are refused with nothing changed. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
prog=$top/tests/multi/mig_ckpt
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsm-ckpt.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
n=0
run() { "$dsmrun" --tag-output --timeout 600 "$@" 2>&1; }
result() { sed -n 's/^\[0\] result \([0-9a-f]*\)$/\1/p' <<<"$1"; }
report() { # ok-condition text output
  n=$((n + 1))
  if [ "$1" = 1 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; tail -15 <<<"$3" | sed 's/^/# /'; fi
}
for size in 2 4; do
  out=$(run -n $size "$prog" full); full=$(result "$out")
  report "$([ -n "$full" ] && echo 1)" "uninterrupted run at $size nodes: ${full:-no result}" "$out"
  out=$(run -n $size "$prog" save "$tmp/ck$size"); saved=$(result "$out")
  report "$([ -n "$full" ] && [ "$saved" = "$full" ] && [ -f "$tmp/ck$size/current/MANIFEST" ] && echo 1)" \
    "run checkpointed at step 500 goes on to the same result at $size nodes" "$out"
  out=$(DSM_TRANSPORT=tcp run -n $size "$prog" restore "$tmp/ck$size"); restored=$(result "$out")
  report "$([ -n "$full" ] && [ "$restored" = "$full" ] && echo 1)" \
    "a new run restored from step 500 (over tcp) finishes with the uninterrupted result at $size nodes" "$out"
done
# A second checkpoint into the same path replaces the first through the current link, which stays whole.
out=$(run -n 2 "$prog" save "$tmp/ck2"); first=$(ls -d "$tmp"/ck2/ckpt.* 2>/dev/null | wc -l)
out2=$(run -n 2 "$prog" restore "$tmp/ck2")
report "$([ "$first" = 1 ] && [ "$(result "$out2")" = "$full" ] && echo 1)" \
  "a second checkpoint into the same path replaces the first (one directory left, restorable)" "$out$out2"

einval=-1 emismatch=-7
bad() { # dir code what
  local out
  out=$(run -n 2 "$prog" bad "$1" "$2")
  local rc=$?
  report "$([ $rc = 0 ] && grep -q "dsm_restore: .*$4" <<<"$out" && echo 1)" "$3 is refused ($2) and changes nothing" "$out"
}
bad "$tmp/none" $einval "a missing path" "cannot open"
cp -r "$tmp/ck2" "$tmp/trunc"; f=$(readlink -f "$tmp/trunc/current")/node1.img
truncate -s -100 "$f"
bad "$tmp/trunc" $einval "a truncated part" "truncated"
cp -r "$tmp/ck2" "$tmp/flip"; f=$(readlink -f "$tmp/flip/current")/node0.img
printf '\x5a' | dd of="$f" bs=1 seek=5000 conv=notrunc status=none
bad "$tmp/flip" $einval "a corrupted part" "corrupted"
cp -r "$tmp/ck2" "$tmp/mani"; f=$(readlink -f "$tmp/mani/current")/MANIFEST
printf '\x01' | dd of="$f" bs=1 seek=30 conv=notrunc status=none
bad "$tmp/mani" $einval "a corrupted manifest" "corrupted"
out=$(run -n 3 "$prog" bad "$tmp/ck2" $emismatch)
report "$([ $? = 0 ] && grep -q 'another node count' <<<"$out" && echo 1)" \
  "a checkpoint of 2 nodes restored at 3 is refused ($emismatch)" "$out"
out=$(run -n 2 "$top/tests/multi/mig_ckpt_b" bad "$tmp/ck2" $emismatch)
report "$([ $? = 0 ] && grep -q 'another binary' <<<"$out" && echo 1)" \
  "a checkpoint restored by another binary is refused ($emismatch)" "$out"
echo "1..$n"
