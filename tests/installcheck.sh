#!/bin/sh
# SPDX-License-Identifier: MIT
# Run by make installcheck (and so by make distcheck): a program built with nothing but
# `pkg-config --cflags --libs dsm` against the installed prefix runs under the installed dsmrun -n 4, and under
# mpirun -n 4 when mpirun exists, and every rank prints its own rank and the size.
#   installcheck.sh SRCDIR PREFIX LIBDIR BINDIR [MPIRUN]
set -eu
srcdir=$1 libdir=$3 bindir=$4 mpirun=${5:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
flags=$(pkg-config --cflags --libs dsm)
${CC:-cc} -o "$tmp/hello" "$srcdir/examples/hello.c" $flags
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
expect() {
  for r in 0 1 2 3; do
    grep -q "^hello from rank $r of 4 " "$1" || { echo "installcheck: rank $r missing in:"; cat "$1"; exit 1; }
  done
}
"$bindir/dsmrun" -n 4 "$tmp/hello" >"$tmp/out"
expect "$tmp/out"
echo "installcheck: dsmrun -n 4 with pkg-config flags '$flags': ok"
"$bindir/dsm_info" | grep -q "^libdsm " || { echo "installcheck: dsm_info failed"; exit 1; }
if [ -n "$mpirun" ] && [ -x "$mpirun" ]; then
  OMPI_MCA_plm_rsh_agent= timeout 300 "$mpirun" --allow-run-as-root --oversubscribe -n 4 "$tmp/hello" >"$tmp/out"
  expect "$tmp/out"
  echo "installcheck: mpirun -n 4: ok"
fi
