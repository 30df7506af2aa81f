#!/bin/sh
# Install what autosp-train needs (Debian/Ubuntu packages), build it, and
# make the byte-level shard of the shipped English text.
#
#   scripts/setup.sh [configure options]     e.g. --without-cuda
#
# Safe to run again: installs only what is missing, reconfigures only when
# needed. The CUDA toolkit (nvcc, cuBLASLt, cuDNN, NCCL) is used when found at
# /usr/local/cuda (or --with-cuda=DIR); without it the CPU engine is built.
set -eu
cd "$(dirname "$0")/.."

pkgs="build-essential autoconf automake libtool pkg-config libyaml-dev check libopenmpi-dev openmpi-bin python3"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing:$missing"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
    autoreconf -fi >/dev/null
fi
if [ ! -f Makefile ] || [ configure -nt config.status ] || [ $# -gt 0 ]; then
    ./configure "$@" | sed -n '/autosp-train .* configured/,$p'
fi
make -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
[ -f data/english.tok ] && [ data/english.tok -nt data/english.txt ] ||
    python3 scripts/text_to_shard.py data/english.txt data/english.tok
echo "setup: built ./autosp-train"
