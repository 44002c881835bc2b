# SPDX-License-Identifier: MIT
# tap-lib.sh - sourced by the shell tests (bash): $tmp, a directory removed on exit, and TAP results numbered in
# $n: `ok NAME`, `nok NAME` (the tail of $tmp/err follows as comments), `check NAME EXPR` (ok when EXPR, given
# to eval, succeeds). The test prints "1..$n" at the end.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); echo "not ok $n - $1"; sed 's/^/# /' "$tmp/err" 2>/dev/null | tail -30; }
check() { if eval "$2"; then ok "$1"; else nok "$1"; fi; }
