#!/bin/bash
# SPDX-License-Identifier: MIT
# dsm_info: version, bootstraps, every transport with whether it can start here, every DSM_* setting of the
# settings table with its value, and a bad setting named with exit status 1. TAP output.
set -u
top=${top_builddir:-.}
src=${top_srcdir:-.}
info=$top/tools/dsm_info
n=0
check() { n=$((n + 1)); if eval "$2"; then echo "ok $n - $1"; else echo "not ok $n - $1"; sed 's/^/# /' <<<"$out" | tail -30; fi; }

out=$("$info" 2>&1); rc=$?
check "dsm_info exits 0 (got $rc)" '[ $rc = 0 ]'
ver=$(sed -n 's/^AC_INIT(\[libdsm\], \[\([0-9.]*\)\].*/\1/p' "$src/configure.ac")
check "prints the package version $ver" 'grep -q "^libdsm $ver " <<<"$out"'
check "lists every transport by name, tcp startable here" \
  'grep -q "^  shm " <<<"$out" && grep -q "^  rdma " <<<"$out" && grep -q "^  tcp .*built; can start here: advertises " <<<"$out"'
check "says why rdma is not built, or why it cannot start here" \
  'grep -Eq "^  rdma .*(not built|not installed|can start here|cannot start here: .)" <<<"$out"'
check "shm startable here, naming this host's identity" \
  'grep -q "^  shm .*built; can start here: memfd queues between ranks of this host ($(hostname)/" <<<"$out"'
check "explains the choice per pair" 'grep -q "chosen per pair of ranks" <<<"$out"'
names=$(grep -o '{"DSM_[A-Z_]*"' "$src/libdsm/settings.c" | tr -d '{"')
missing=""
for v in $names; do grep -q "^  $v " <<<"$out" || missing="$missing $v"; done
check "lists every setting of the table ($(echo $names | wc -w)):${missing:- none missing}" '[ -z "$missing" ] && [ -n "$names" ]'
check "shows defaults and descriptions" 'grep -q "^  DSM_LOG_LEVEL *warn (default) *log verbosity" <<<"$out"'
check "shows the memlock and map-count limits" 'grep -q "RLIMIT_MEMLOCK" <<<"$out" && grep -q "vm.max_map_count" <<<"$out"'

out=$(DSM_LOG_LEVEL=debug DSM_TCP_IFACE=lo "$info" 2>&1); rc=$?
check "current values are shown (DSM_LOG_LEVEL=debug)" 'grep -q "^  DSM_LOG_LEVEL *debug  " <<<"$out"'
check "DSM_TCP_IFACE=lo: tcp advertises 127.0.0.1 and says why" 'grep -q "advertises 127.0.0.1 (lo, DSM_TCP_IFACE)" <<<"$out"'
out=$(DSM_TCP_IFACE=nosuch0 "$info" 2>&1); rc=$?
check "a missing interface: tcp cannot start, naming it" 'grep -q "tcp .*cannot start here: DSM_TCP_IFACE=nosuch0 has no IPv4 address" <<<"$out"'
out=$(DSM_TIMEOUT=soon "$info" 2>&1); rc=$?
check "a bad setting: exit 1 and the error names it (got $rc)" \
  '[ $rc = 1 ] && grep -q "^error: DSM_TIMEOUT=.soon. is not valid" <<<"$out"'
echo "1..$n"
