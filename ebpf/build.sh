#!/bin/sh
# Builds the capture programs: `ebpf/build.sh [OUT_DIR]` (default: this directory).
# The one place the compile command lives; `cargo xtask build-ebpf` runs it, and the agent's
# tests run it into a scratch directory to check that the committed object is not stale.
# Needs Debian's clang-19 and libbpf-dev (bpf/bpf_helpers.h).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
cd "$here"
for src in *.bpf.c; do
	# -ffile-prefix-map keeps the checkout path out of the debug info: the same sources give
	# the same bytes on every machine with the same clang.
	clang-19 -O2 -g -Wall -Werror -target bpf \
		-I/usr/include/x86_64-linux-gnu \
		-ffile-prefix-map="$here"=. \
		-c "$src" -o "$out/${src%.c}.o"
done
