#!/bin/sh
# SPDX-License-Identifier: MIT
# libdsm.so exports exactly the names listed in libdsm.map (the names of dsm.h), so no internal dsm_tp_, dsm_dir_
# or helper symbol leaks (STYLE.md 1). TAP output.
set -u
lib=${top_builddir:-.}/.libs/libdsm.so
map=${top_srcdir:-.}/libdsm.map
hdr=${top_srcdir:-.}/include/dsm.h
if [ ! -f "$lib" ]; then echo "1..0 # SKIP no shared library built"; exit 0; fi
got=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRW]$/ {sub(/@.*/, "", $3); print $3}' | sort -u)
want=$(sed -n 's/^ *\([a-z_][a-z0-9_]*\);$/\1/p' "$map" | sort -u)
echo "1..3"
if [ "$got" = "$want" ]; then echo "ok 1 - exports equal libdsm.map"; else
  echo "not ok 1 - exports differ from libdsm.map"; diff <(echo "$want") <(echo "$got") 2>/dev/null | sed 's/^/# /' || true
  echo "# exported: $got" | tr '\n' ' '; echo; fi
missing=""
for s in $want; do grep -q "\b$s\b" "$hdr" || missing="$missing $s"; done
if [ -z "$missing" ]; then echo "ok 2 - every exported name is declared in dsm.h"; else echo "not ok 2 - not in dsm.h:$missing"; fi
leak=$(echo "$got" | grep -E '^(dsm_(tp|dir|pg|mig|log|core|boot|rdv|wire|am|rma|mreg|region|config|parse|futex|hb|secret|auth)_)' || true)
if [ -z "$leak" ]; then echo "ok 3 - no internal prefix exported"; else echo "not ok 3 - internal names exported: $leak"; fi
