#!/bin/bash
# SPDX-License-Identifier: MIT
# Two "hosts": network namespaces joined by a veth pair, one rank in each, started by hand against a
# rendezvous served in the first (dsmrun --serve). The transport tests must pass: nothing may assume
# loopback. Then two ranks in each namespace with the default provider list: shm inside, tcp across. Needs root and ip(8); skips otherwise. TAP output.
set -u
top=${top_builddir:-.}
dsmrun=$(readlink -f "$top/tools/dsmrun")
ip=${IP:-ip}
[ -x "$(command -v "$ip")" ] || { echo "1..0 # SKIP ip(8) not found"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "1..0 # SKIP needs root for network namespaces"; exit 0; }
a=dsmA$$ b=dsmB$$
net=198.19.$(( $$ % 250 + 1 ))
cleanup() { "$ip" netns del $a 2>/dev/null; "$ip" netns del $b 2>/dev/null; rm -rf "$tmp"; }
tmp=$(mktemp -d)
trap cleanup EXIT
# Ranks started by hand share the job secret through a file only their user can read.
(umask 077; head -c 32 /dev/urandom >"$tmp/secret")
export DSM_SECRET_FILE=$tmp/secret
if ! "$ip" netns add $a 2>"$tmp/err" || ! "$ip" netns add $b 2>>"$tmp/err"; then
  echo "1..0 # SKIP cannot create network namespaces: $(head -1 "$tmp/err")"; exit 0
fi
"$ip" link add va$$ netns $a type veth peer name vb$$ netns $b
"$ip" -n $a addr add $net.1/24 dev va$$
"$ip" -n $b addr add $net.2/24 dev vb$$
for ns in $a $b; do "$ip" -n $ns link set lo up; done
"$ip" -n $a link set va$$ up
"$ip" -n $b link set vb$$ up

# Wait for the carrier, so the test also covers a normal, settled link.
for _ in $(seq 50); do
  "$ip" -n $b link show vb$$ | grep -q LOWER_UP && "$ip" -n $a link show va$$ | grep -q LOWER_UP && break
  sleep 0.1
done

# Serve the rendezvous for N ranks in the first namespace; sets spid and coord.
serve() {
  # A fresh file: the server truncates it only once it runs, and the loop below must not read the last one's.
  rm -f "$tmp/serve"
  "$ip" netns exec $a timeout 300 "$dsmrun" --serve $net.1:0 -n "$1" >"$tmp/serve" 2>"$tmp/serve.err" &
  spid=$!
  for _ in $(seq 300); do grep -q DSM_COORD "$tmp/serve" 2>/dev/null && break; sleep 0.1; done
  coord=$(sed -n 's/^DSM_COORD=//p' "$tmp/serve")
}

n=0
tests="tp_pingpong tp_alltoall tp_rma threads_send barrier_order garbage_conn"
[ -n "${DSM_TEST_QUICK:-}" ] && tests="tp_pingpong tp_rma"
for t in $tests; do
  for iface in default named; do
    n=$((n + 1))
    prog=$(readlink -f "$top/tests/multi/$t")
    serve 2
    ea="" eb=""
    [ $iface = named ] && ea="DSM_TCP_IFACE=va$$" eb="DSM_TCP_IFACE=vb$$"
    "$ip" netns exec $a env $ea DSM_LOG_LEVEL=info DSM_TRANSPORT=tcp DSM_RANK=0 DSM_SIZE=2 DSM_COORD=$coord \
      timeout 300 "$prog" >"$tmp/r0" 2>&1 &
    p0=$!
    "$ip" netns exec $b env $eb DSM_LOG_LEVEL=info DSM_TRANSPORT=tcp DSM_RANK=1 DSM_SIZE=2 DSM_COORD=$coord \
      timeout 300 "$prog" >"$tmp/r1" 2>&1
    r1=$?
    wait $p0; r0=$?
    wait $spid; rs=$?
    desc="$t across two namespaces, interface $iface"
    # Each rank must have listened on its veth address, never on loopback.
    if [ $r0 = 0 ] && [ $r1 = 0 ] && [ $rs = 0 ] && grep -q "listening on $net.1:" "$tmp/r0" &&
       grep -q "listening on $net.2:" "$tmp/r1"; then
      echo "ok $n - $desc"
    else
      echo "not ok $n - $desc (rank 0: $r0, rank 1: $r1, rendezvous: $rs)"
      cat "$tmp/r0" "$tmp/r1" "$tmp/serve.err" | tail -30 | sed "s/^/# /"
    fi
  done
done
# Mixed layout (issue 9): two ranks in each namespace, the default DSM_TRANSPORT list. Pairs inside a namespace
# must use shm and pairs across tcp (tp_mix checks each pair's provider), and the suite's checks hold over the mix.
tests="tp_mix tp_pingpong tp_rma coh_litmus coh_stress coh_sync"
[ -n "${DSM_TEST_QUICK:-}" ] && tests="tp_mix coh_litmus"
for t in $tests; do
  n=$((n + 1))
  prog=$(readlink -f "$top/tests/multi/$t")
  serve 4
  pids=""
  for r in 0 1 2 3; do
    ns=$a; [ $r -ge 2 ] && ns=$b
    "$ip" netns exec $ns env DSM_LOG_LEVEL=info DSM_TEST_GROUPS="0,1/2,3" DSM_RANK=$r DSM_SIZE=4 \
      DSM_COORD=$coord timeout 300 "$prog" >"$tmp/m$r" 2>&1 &
    pids="$pids $!"
  done
  codes=""
  for p in $pids; do wait $p; codes="$codes $?"; done
  wait $spid; rs=$?
  desc="$t with 2 ranks in each of two namespaces (shm inside, tcp across)"
  if [ "$codes" = " 0 0 0 0" ] && [ $rs = 0 ] &&
     [ "$(grep -c "info: rank [0-3] of 4 up, transport shm+tcp" "$tmp/m0" "$tmp/m1" "$tmp/m2" "$tmp/m3" |
          awk -F: '{s += $2} END {print s}')" = 4 ]; then
    echo "ok $n - $desc"
    grep -h "^pairs of node 0" "$tmp/m0" | sed 's/^/# /'
  else
    echo "not ok $n - $desc (exit statuses:$codes, rendezvous: $rs)"
    cat "$tmp/m0" "$tmp/m1" "$tmp/m2" "$tmp/m3" "$tmp/serve.err" | tail -30 | sed "s/^/# /"
  fi
done
echo "1..$n"
