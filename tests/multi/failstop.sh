#!/bin/bash
# SPDX-License-Identifier: MIT
# Fail-stop of a node that stops answering without closing its connections (DESIGN.md 4.7): a rank stopped by
# SIGSTOP is detected by the missing heartbeats after DSM_TIMEOUT; every other rank names it, runs the error
# handler (dsm_set_error_handler) once and exits non-zero, and dsmrun ends the job non-zero with no process left
# behind. Over shm and tcp. Any message counts as a sign of life: a rank whose heartbeats are muted (a test hook)
# but whose barrier messages keep coming stays in the job; muted and silent, it is lost. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
behave=$top/tests/multi/behave
. "${top_srcdir:-.}/tests/tap-lib.sh"

for tp in shm tcp; do
  rm -rf "$tmp/ready"
  mkdir "$tmp/ready"
  # A short DSM_TIMEOUT only shortens the wait for the loss that is expected here; the ranks sit in pause(), so
  # only their heartbeat threads need the CPU.
  DSM_TRANSPORT=$tp DSM_TIMEOUT=10 timeout 120 "$dsmrun" -n 3 "$behave" sleep "$tmp/ready" >"$tmp/out" 2>"$tmp/err" &
  pid=$!
  for _ in $(seq 600); do
    [ -e "$tmp/ready/ready.0" ] && [ -e "$tmp/ready/ready.1" ] && [ -e "$tmp/ready/ready.2" ] && break
    sleep 0.1
  done
  drun=$(pgrep -P $pid)
  victim=""
  for p in $(pgrep -P "$drun"); do
    tr '\0' '\n' <"/proc/$p/environ" | grep -qx DSM_RANK=1 && victim=$p
  done
  [ -n "$victim" ] && kill -STOP "$victim"
  wait $pid
  rc=$?
  check "$tp: SIGSTOP of rank 1 (pid ${victim:-none}): the job ends non-zero (dsmrun exit $rc)" \
    '[ -n "$victim" ] && [ $rc != 0 ] && [ $rc != 124 ]'
  check "$tp: ... ranks 0 and 2 name node 1 and its missing heartbeats" \
    '[ "$(grep -c "libdsm: node 1 lost (nothing heard from it, not even a heartbeat, within DSM_TIMEOUT" "$tmp/err")" -ge 1 ] &&
     ! grep -q "libdsm: node [02] lost" "$tmp/err"'
  check "$tp: ... the error handler runs at most once per rank, with DSM_ENODE and node 1" \
    '[ "$(grep -c "behave: error handler (err -40, node 1)" "$tmp/err")" -ge 1 ] &&
     [ "$(grep -c "behave: error handler" "$tmp/err")" -le 2 ] && ! grep -q "error handler (err -40, node [02])" "$tmp/err"'
  check "$tp: ... no process left behind" '! kill -0 "$victim" 2>/dev/null && [ -z "$(pgrep -P "$drun")" ]'
  # DSM_TIMEOUT=2 with 2 ranks (no oversubscription): 6 s of muted heartbeats.
  DSM_TRANSPORT=$tp DSM_TIMEOUT=2 timeout 120 "$dsmrun" -n 2 "$top/tests/multi/hb_traffic" busy 6 \
    >"$tmp/out" 2>"$tmp/err"
  rc=$?
  check "$tp: rank 1's heartbeats muted for 3 x DSM_TIMEOUT, its barrier messages keep it alive (exit $rc)" \
    '[ $rc = 0 ] && grep -q "hb_traffic busy: [1-9][0-9]* barriers in 6 s" "$tmp/out" && ! grep -q "lost" "$tmp/err"'
  DSM_TRANSPORT=$tp DSM_TIMEOUT=2 timeout 120 "$dsmrun" -n 2 "$top/tests/multi/hb_traffic" idle 6 \
    >"$tmp/out" 2>"$tmp/err"
  rc=$?
  check "$tp: ... muted and silent for 3 x DSM_TIMEOUT, it is lost (exit $rc)" \
    '[ $rc != 0 ] && [ $rc != 124 ] &&
     grep -q "libdsm: node 1 lost (nothing heard from it, not even a heartbeat, within DSM_TIMEOUT" "$tmp/err"'
done
echo "1..$n"
