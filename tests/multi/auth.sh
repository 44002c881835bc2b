#!/bin/bash
# SPDX-License-Identifier: MIT
# Connection authentication end to end (DESIGN.md 4.7): a secret file others could read is refused, ranks
# started by hand share a secret file, ranks without a secret are refused with the reason, ranks whose
# secrets differ never form a job (over tcp and shm) and log the refused authentication, DSM_AUTH=off runs
# without one, and dsmrun's own secret never appears on a command line or in the environment. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
behave=$top/tests/multi/behave
. "${top_srcdir:-.}/tests/tap-lib.sh"
unset DSM_SECRET_FILE DSM_AUTH DSM_TRANSPORT

(umask 077; head -c 32 /dev/urandom >"$tmp/s1"; head -c 32 /dev/urandom >"$tmp/s2")
cp "$tmp/s1" "$tmp/open"
chmod 644 "$tmp/open"

rc=$(DSM_SECRET_FILE=$tmp/open timeout 120 "$dsmrun" -n 2 "$behave" ok >"$tmp/out" 2>"$tmp/err"; echo $?)
check "a secret file of mode 0644 is refused (dsmrun exit $rc)" \
  '[ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q "DSM_SECRET_FILE=$tmp/open has mode 0644" "$tmp/err"'

printf short >"$tmp/short"
chmod 600 "$tmp/short"
rc=$(DSM_SECRET_FILE=$tmp/short timeout 120 "$dsmrun" -n 2 "$behave" ok >"$tmp/out" 2>"$tmp/err"; echo $?)
check "a secret file of 5 bytes is refused (dsmrun exit $rc)" \
  '[ "$rc" != 0 ] && grep -q "DSM_SECRET_FILE=$tmp/short holds 5 bytes" "$tmp/err"'

rc=$(DSM_SECRET_FILE=$tmp/s1 timeout 120 "$dsmrun" -n 3 "$behave" ok >"$tmp/out" 2>"$tmp/err"; echo $?)
check "dsmrun with DSM_SECRET_FILE of mode 0600: the job runs (exit $rc)" '[ "$rc" = 0 ]'

# dsmrun's secret travels in an inherited memfd whose number alone is in the environment: it is on no rank's
# command line or in its environment, and libdsm closes the descriptor at dsm_init. The job pauses (behave
# sleep) while its processes are inspected; the secret is read back from dsmrun's own descriptor.
mkdir "$tmp/ready"
timeout 120 "$dsmrun" -n 2 "$behave" sleep "$tmp/ready" >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 600); do [ -e "$tmp/ready/ready.0" ] && [ -e "$tmp/ready/ready.1" ] && break; sleep 0.1; done
leak=0 seen=0 held=0 secret=""
drun=$(pgrep -P $pid)
for f in /proc/$drun/fd/*; do
  case $(readlink "$f") in */memfd:dsm-secret*) secret=$(od -An -tx1 "$f" | tr -d ' \n');; esac
done
for p in $(pgrep -P "$drun"); do
  seen=$((seen + 1))
  for f in /proc/$p/fd/*; do readlink "$f" | grep -q "memfd:dsm-secret" && held=1; done
  for what in environ cmdline; do
    od -An -tx1 "/proc/$p/$what" | tr -d ' \n' | grep -q "$secret" && leak=1
  done
  tr '\0' '\n' <"/proc/$p/environ" | grep -q '^DSM_SECRET_FD=[0-9]*$' || leak=1
done
kill -TERM $pid
wait $pid
check "dsmrun's secret (${#secret} hex digits) is in no rank's command line or environment, and no rank holds it open after dsm_init ($seen ranks looked at)" \
  '[ ${#secret} = 64 ] && [ $seen = 2 ] && [ $leak = 0 ] && [ $held = 0 ]'

serve() {
  local f=$tmp/serve.$1
  rm -f "$f"
  timeout 120 "$dsmrun" --serve 127.0.0.1:0 -n 2 >"$f" 2>"$f.err" &
  spid=$!
  for _ in $(seq 300); do grep -q DSM_COORD "$f" 2>/dev/null && break; sleep 0.1; done
  coord=$(sed -n 's/^DSM_COORD=//p' "$f")
}
# Two ranks by hand with the given environments; sets r0, r1 and err.
pair() {
  serve "$1"
  env $2 DSM_RANK=0 DSM_SIZE=2 DSM_COORD=$coord timeout 120 "$behave" ok >"$tmp/r0" 2>&1 &
  local p0=$!
  env $3 DSM_RANK=1 DSM_SIZE=2 DSM_COORD=$coord timeout 120 "$behave" ok >"$tmp/r1" 2>&1
  r1=$?
  wait $p0; r0=$?
  wait $spid
  cat "$tmp/r0" "$tmp/r1" >"$tmp/err"
}

for tp in tcp shm; do
  pair a "DSM_TRANSPORT=$tp DSM_SECRET_FILE=$tmp/s1" "DSM_TRANSPORT=$tp DSM_SECRET_FILE=$tmp/s1"
  check "$tp: ranks by hand with the same secret file run (exit $r0 $r1)" '[ $r0 = 0 ] && [ $r1 = 0 ]'

  # DSM_TIMEOUT bounds how long the rank whose connection was refused waits; the refusal itself is immediate.
  pair b "DSM_TIMEOUT=10 DSM_TRANSPORT=$tp DSM_SECRET_FILE=$tmp/s1" "DSM_TIMEOUT=10 DSM_TRANSPORT=$tp DSM_SECRET_FILE=$tmp/s2"
  check "$tp: ranks whose secrets differ never form a job (exit $r0 $r1)" \
    '[ $r0 != 0 ] && [ $r1 != 0 ] && [ $r0 != 124 ] && [ $r1 != 124 ]'
  check "$tp: ... and the refused authentication is logged" 'grep -q "failed authentication\|authentication failed" "$tmp/err"'
done

pair c "DSM_TRANSPORT=tcp" "DSM_TRANSPORT=tcp"
check "ranks by hand without a secret are refused, naming the remedy (exit $r0 $r1)" \
  '[ $r0 != 0 ] && [ $r1 != 0 ] && grep -q "no job secret: ranks started by hand need DSM_SECRET_FILE" "$tmp/err"'

pair d "DSM_TRANSPORT=tcp DSM_AUTH=off" "DSM_TRANSPORT=tcp DSM_AUTH=off"
check "DSM_AUTH=off: ranks by hand run without a secret (exit $r0 $r1)" '[ $r0 = 0 ] && [ $r1 = 0 ]'

pair e "DSM_TIMEOUT=10 DSM_TRANSPORT=tcp DSM_AUTH=off" "DSM_TIMEOUT=10 DSM_TRANSPORT=tcp DSM_SECRET_FILE=$tmp/s1"
check "a rank with DSM_AUTH=off cannot join ranks that authenticate (exit $r0 $r1)" '[ $r0 != 0 ] && [ $r1 != 0 ]'

echo "1..$n"
