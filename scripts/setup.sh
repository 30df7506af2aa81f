#!/bin/sh
# Install what autosp-train needs (Debian/Ubuntu packages, and the Python
# packages of the scripts: scripts/python-deps.sh), build it, and make the
# byte-level training and validation shards of the shipped English text.
#
#   scripts/setup.sh [--verbose] [configure options]     e.g. --without-cuda
#
# Quiet: a few lines, the configure summary and the result; --verbose shows
# the package manager, autotools, configure and make as they run. A step that
# fails shows its log.
# Safe to run again: installs only what is missing, reconfigures only when
# needed. The CUDA toolkit (nvcc, cuBLASLt, cuDNN, NCCL) is used when found at
# /usr/local/cuda (or --with-cuda=DIR); without it the CPU engine is built.
set -eu
cd "$(dirname "$0")/.."
verbose=0
if [ "${1:-}" = --verbose ]; then verbose=1; shift; fi
log=$(mktemp "${TMPDIR:-/tmp}/asp-setup.XXXXXX")
trap 'rm -f "$log"' EXIT
# quietly CMD...: run it with its output in the log (shown if it fails), or as it is with --verbose
quietly() {
    if [ $verbose = 1 ]; then "$@"; return; fi
    "$@" >"$log" 2>&1 || { tail -40 "$log"; echo "setup: failed: $*"; exit 1; }
}

pkgs="build-essential autoconf automake libtool pkg-config libyaml-dev check libopenmpi-dev openmpi-bin python3"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing:$missing"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    quietly $SUDO apt-get update -qq
    quietly $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
if [ $verbose = 1 ]; then scripts/python-deps.sh --verbose; else scripts/python-deps.sh; fi

if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
    quietly autoreconf -fi
fi
if [ ! -f Makefile ] || [ configure -nt config.status ] || [ $# -gt 0 ]; then
    quietly ./configure "$@"
    [ $verbose = 1 ] || sed -n '/autosp-train .* configured/,$p' "$log"
fi
quietly make -j"$(nproc 2>/dev/null || echo 2)"
# The training shard (the first 95% of the text) and the validation shard (the
# last 5%) are made together, once: a later set-up never rewrites a shard a run
# trains on (a resumed run would see other data; it warns when it does).
if ! { [ -f data/english.tok ] && [ -f data/english_val.tok ] && [ data/english.tok -nt data/english.txt ] &&
       [ data/english_val.tok -nt data/english.txt ]; }; then
    python3 scripts/text_to_shard.py data/english.txt data/english.tok --val data/english_val.tok |
        sed 's/^/setup: /'
fi
echo "setup: built ./autosp-train"
