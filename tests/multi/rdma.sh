#!/bin/bash
# SPDX-License-Identifier: MIT
# The rdma transport's own checks (issue 5), TAP output. Which ones run depends on where:
#   where rdma cannot start (this host's kernel has no RDMA): DSM_TRANSPORT=rdma fails dsm_init with the named
#     reason, and DSM_TRANSPORT=rdma,tcp runs over tcp, saying why at info level;
#   where it can (inside ci/rxe-lab, make check-rdma): the rdma path is really used (dsm_transport_name and
#     DSM_STATS); a connection refused between two nodes is agreed through the rendezvous and that pair falls
#     back to tcp while the others keep rdma; kill -9 of one rank mid-run, and then the rxe netdev set down,
#     make every node report the failure and exit non-zero within a bounded time, with no hang.
# Ranks are started by hand against dsmrun --serve (as in launch.sh), so no launcher stops the survivors.
set -u
top=${top_builddir:-.}
dsmrun=$top/tools/dsmrun
behave=$top/tests/multi/behave
info=$top/tools/dsm_info
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Ranks started by hand share the job secret through a file only their user can read.
(umask 077; head -c 32 /dev/urandom >"$tmp/secret")
export DSM_SECRET_FILE=$tmp/secret
n=0
check() {
  n=$((n + 1))
  if eval "$2"; then echo "ok $n - $1"; else
    echo "not ok $n - $1"
    for f in "$tmp"/out.* "$tmp"/err; do [ -f "$f" ] && tail -15 "$f" | sed "s|^|# ${f##*/}: |"; done
  fi
}
# TCG is slow (RXE-LAB.md): bounds are generous and never about speed.
bound=${DSM_TEST_RDMA_BOUND:-60}

serve() {
  local f=$tmp/serve
  timeout 300 "$dsmrun" --serve 127.0.0.1:0 -n "$1" >"$f" 2>"$f.err" &
  spid=$!
  for _ in $(seq 300); do grep -q DSM_COORD "$f" && break; sleep 0.1; done
  coord=$(sed -n 's/^DSM_COORD=//p' "$f")
}
# start N MODE ARGS...: rank r's output in $tmp/out.r, pids in $pids (rank order).
start() {
  local size=$1 r
  shift
  rm -f "$tmp"/out.* "$tmp"/ready.*
  serve "$size"
  pids=""
  for r in $(seq 0 $((size - 1))); do
    DSM_RANK=$r DSM_SIZE=$size DSM_COORD=$coord timeout 300 "$behave" "$@" >"$tmp/out.$r" 2>&1 &
    pids="$pids $!"
  done
}

# DSM_PROGRESS_CPU binds the progress thread (issue 5 item 4), whatever the transport.
out=$(DSM_PROGRESS_CPU=0 DSM_LOG_LEVEL=info timeout 300 "$dsmrun" --tag-output -n 2 "$behave" name 2>&1); rc=$?
echo "$out" >"$tmp/err"
check "DSM_PROGRESS_CPU=0 binds each node's progress thread to CPU 0, said at info level (exit $rc)" \
  '[ $rc = 0 ] && [ "$(grep -c "info: progress thread bound to CPUs 0 (DSM_PROGRESS_CPU)" <<<"$out")" = 2 ]'

if ! "$info" | grep -q "^  rdma .*can start here"; then
  why=$("$info" | sed -n 's/^  rdma  *//p')
  echo "# rdma here: $why"
  out=$(DSM_TRANSPORT=rdma timeout 120 "$dsmrun" -n 2 "$behave" name 2>&1); rc=$?
  echo "$out" >"$tmp/err"
  if grep -q "not built" <<<"$why"; then
    check "DSM_TRANSPORT=rdma, not built: dsm_init fails naming it (exit $rc)" \
      '[ $rc = 3 ] && grep -q "transport .rdma. was not built" <<<"$out"'
  else
    check "DSM_TRANSPORT=rdma without a usable device: dsm_init fails with the reason (exit $rc)" \
      '[ $rc = 3 ] && grep -q "DSM_TRANSPORT=.rdma.: no transport can start on this node: rdma: " <<<"$out" && grep -q "rdma: ${why#*cannot start here: }" <<<"$out"'
  fi
  # Built but unable to start: the default-style list falls back (a list naming an unbuilt one is an error).
  if ! grep -q "not built" <<<"$why"; then
    out=$(DSM_TRANSPORT=rdma,tcp DSM_LOG_LEVEL=info timeout 120 "$dsmrun" --tag-output -n 2 "$behave" name 2>&1)
    rc=$?
    echo "$out" >"$tmp/err"
    check "DSM_TRANSPORT=rdma,tcp falls back to tcp (exit $rc)" \
      '[ $rc = 0 ] && grep -q "^\[0\] rank 0 transport tcp$" <<<"$out" && grep -q "^\[1\] rank 1 transport tcp$" <<<"$out"'
    check "... saying why at info level" 'grep -q "info: transport rdma: cannot start here: " <<<"$out"'
  fi
  echo "1..$n"
  exit 0
fi

echo "# rdma here: $("$info" | sed -n 's/^  rdma  *//p')"
# 0. dsm_info lists the device with its port, GIDs (the RoCE v2 IPv4 one among them) and its locality.
out=$("$info" 2>&1); rc=$?
echo "$out" >"$tmp/err"
dev=${DSM_RXE_DEVICE:-rxe0}
check "dsm_info lists $dev: port ACTIVE, an IPv4 RoCE GID, its locality (exit $rc)" \
  '[ $rc = 0 ] && grep -q "^  $dev: [0-9]* port(s), atomics " <<<"$out" && grep -q "^    port 1: ACTIVE, link layer Ethernet" <<<"$out" &&
   grep -q "^      gid [0-9]* ::ffff:[0-9.]* .*(IPv4: rdma_cm can bind it)" <<<"$out" && grep -q "^    locality: " <<<"$out"'
grep -A12 "^  $dev:" <<<"$out" | sed 's/^/# /'
# 1. The rdma path is really used: every rank names it, and DSM_STATS counts bytes through it.
out=$(DSM_TRANSPORT=rdma DSM_STATS=1 DSM_LOG_LEVEL=info timeout 300 "$dsmrun" --tag-output -n 4 "$behave" name 2>&1)
rc=$?
echo "$out" >"$tmp/err"
check "DSM_TRANSPORT=rdma, 4 nodes: exit $rc, every rank's dsm_transport_name() is rdma" \
  '[ $rc = 0 ] && [ "$(grep -c "rank . transport rdma$" <<<"$out")" = 4 ]'
check "... and DSM_STATS shows bytes sent over rdma on every rank" \
  '[ "$(grep -Ec "stats: transport rdma, sent [1-9][0-9]* messages [1-9][0-9]* bytes" <<<"$out")" = 4 ]'
if "$info" | grep -q "^  rdma .*atomics device-only"; then
  check "... device atomics are not global here: every node does its own atomics through its device (loopback)" \
    '[ "$(grep -c "info: atomics on memory this node homes go through transport rdma too" <<<"$out")" = 4 ]'
fi
out=$(DSM_TRANSPORT=rdma,tcp DSM_STATS=1 DSM_LOG_LEVEL=info timeout 300 "$dsmrun" --tag-output -n 2 "$behave" name \
  2>&1); rc=$?
echo "$out" >"$tmp/err"
check "DSM_TRANSPORT=rdma,tcp picks rdma where it can start (exit $rc)" \
  '[ $rc = 0 ] && [ "$(grep -c "rank . transport rdma$" <<<"$out")" = 2 ]'
# The default list puts shm first: ranks of one host (all of them here) use it, not rdma (issue 9).
out=$(timeout 300 "$dsmrun" --tag-output -n 2 "$behave" name 2>&1); rc=$?
echo "$out" >"$tmp/err"
check "the default DSM_TRANSPORT (shm,rdma,tcp) picks shm between ranks of one host (exit $rc)" \
  '[ $rc = 0 ] && [ "$(grep -c "rank . transport shm$" <<<"$out")" = 2 ]'

# 2. A refused connection is agreed: the pair (0,1) falls back to tcp, every other pair keeps rdma.
out=$(DSM_TRANSPORT=rdma,tcp DSM_TEST_RDMA_REFUSE=0-1 DSM_LOG_LEVEL=info timeout 300 "$dsmrun" --tag-output -n 3 \
  "$behave" name 2>&1); rc=$?
echo "$out" >"$tmp/err"
check "node 0 refuses node 1's rdma connection: the job runs (exit $rc), 0 and 1 use rdma+tcp, 2 uses rdma" \
  '[ $rc = 0 ] && grep -q "^\[0\] rank 0 transport rdma+tcp$" <<<"$out" && grep -q "^\[1\] rank 1 transport rdma+tcp$" <<<"$out" && grep -q "^\[2\] rank 2 transport rdma$" <<<"$out"'
check "... both ends say so at info level" \
  'grep -q "^\[0\].*info: transport rdma: no connection with node 1" <<<"$out" && grep -q "^\[1\].*info: transport rdma: no connection with node 0" <<<"$out"'
out=$(DSM_TRANSPORT=rdma DSM_TEST_RDMA_REFUSE=0-1 timeout 300 "$dsmrun" --tag-output -n 2 "$behave" name 2>&1); rc=$?
echo "$out" >"$tmp/err"
check "with DSM_TRANSPORT=rdma alone the refused pair fails dsm_init, naming the peer (exit $rc)" \
  '[ $rc != 0 ] && [ $rc != 124 ] && grep -q "cannot be reached by any transport of DSM_TRANSPORT=.rdma." <<<"$out"'

# 3. kill -9 of one rank in the middle of a page ping-pong: every survivor reports it and exits non-zero.
for victim in 1 0; do
  export DSM_TRANSPORT=rdma
  start 4 pingpong-kill $victim
  unset DSM_TRANSPORT
  set -- $pids
  shift $victim
  vpid=$1
  wait $vpid; vrc=$?
  t0=$(date +%s)
  codes="" named=1 r=0
  for p in $pids; do
    if [ $r != $victim ]; then
      wait $p; c=$?; codes="$codes $c"
      [ $c != 0 ] && [ $c != 124 ] || named=0
      grep -q "libdsm: node $victim lost" "$tmp/out.$r" || named=0
    fi
    r=$((r + 1))
  done
  dt=$(( $(date +%s) - t0 ))
  wait $spid
  check "kill -9 of rank $victim over rdma (status $vrc): the 3 others fail stop naming node $victim (exit:$codes) within ${dt}s" \
    '[ $vrc = 137 ] && [ $named = 1 ] && [ $dt -le $bound ]'
done

# 4. The rxe netdev set down under a running job (ip link set ... down; rdma link delete would hang).
netdev=${DSM_RXE_NETDEV:-dummy0}
if [ -n "${DSM_RXE_LAB:-}" ] && command -v ip >/dev/null; then
  export DSM_TRANSPORT=rdma
  start 4 pingpong-ready "$tmp"
  unset DSM_TRANSPORT
  for _ in $(seq 600); do [ "$(ls "$tmp"/ready.* 2>/dev/null | wc -l)" = 4 ] && break; sleep 0.2; done
  sleep 2
  ip link set "$netdev" down
  t0=$(date +%s)
  codes="" failed=1 r=0
  for p in $pids; do
    wait $p; c=$?; codes="$codes $c"
    [ $c != 0 ] && [ $c != 124 ] || failed=0
    grep -q "libdsm: node [0-9]* lost" "$tmp/out.$r" || failed=0
    r=$((r + 1))
  done
  dt=$(( $(date +%s) - t0 ))
  ip link set "$netdev" up
  wait $spid
  check "$netdev set down under 4 ranks: every rank reports a lost node and exits non-zero (exit:$codes) within ${dt}s" \
    '[ $failed = 1 ] && [ $dt -le $bound ]'
  grep -h "lost (" "$tmp"/out.* | head -4 | sed 's/^/# /'
  # 5. What probe says when the port is down, when the netdev has no IPv4 address, and when RLIMIT_MEMLOCK is
  # too small (as an unprivileged user: root's CAP_IPC_LOCK ignores the limit).
  for _ in $(seq 100); do "$info" | grep -q "^  rdma .*can start here" && break; sleep 0.2; done
  ip link set "$netdev" down
  sleep 1
  out=$("$info" 2>&1)
  echo "$out" >"$tmp/err"
  check "$netdev down: dsm_info says rdma cannot start: port down" 'grep -q "^  rdma .*cannot start here: port down: rxe0 port 1 is DOWN" <<<"$out"'
  out=$(DSM_TRANSPORT=rdma timeout 120 "$dsmrun" -n 2 "$behave" name 2>&1); rc=$?
  echo "$out" >"$tmp/err"
  check "... and DSM_TRANSPORT=rdma fails dsm_init naming it (exit $rc)" \
    '[ $rc = 3 ] && grep -q "no transport can start on this node: rdma: port down" <<<"$out"'
  ip link set "$netdev" up
  addr=$(ip -4 -o addr show dev "$netdev" | awk '{print $4; exit}')
  if [ -n "$addr" ]; then
    ip addr del "$addr" dev "$netdev"
    sleep 1
    out=$("$info" 2>&1)
    echo "$out" >"$tmp/err"
    check "$netdev without an IPv4 address: rdma cannot start: no RoCE GID" \
      'grep -q "^  rdma .*cannot start here: no RoCE GID with an IPv4 address on rxe0 port 1" <<<"$out"'
    ip addr add "$addr" dev "$netdev"
  fi
  for _ in $(seq 100); do "$info" | grep -q "^  rdma .*can start here" && break; sleep 0.2; done
  if command -v setpriv >/dev/null; then
    out=$(bash -c "ulimit -l 1024; exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
      --bounding-set=-all '$info'" 2>&1)
    echo "$out" >"$tmp/err"
    check "an unprivileged process with RLIMIT_MEMLOCK 1 MiB: rdma cannot start, the limit shown" \
      'grep -q "^  rdma .*cannot start here: RLIMIT_MEMLOCK is 1024 KiB, too small" <<<"$out"'
  fi
else
  echo "# not in the rxe lab (DSM_RXE_LAB unset): the netdev-down and probe checks need it"
fi
echo "1..$n"
