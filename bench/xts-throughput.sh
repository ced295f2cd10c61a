#!/bin/sh
# bench/xts-throughput.sh - AES-256-XTS throughput of libgcrypt, OpenSSL,
# nettle and gnutls on this machine, in 512-byte sectors as LUKS uses it
# (the measurement behind lib/crypto's choice of library, README.md).
# Needs libgcrypt20-dev, libssl-dev, nettle-dev, libgnutls28-dev (the
# last three are needed by this benchmark only).
set -eu
here=$(dirname "$0")
out=${TMPDIR:-/tmp}/qimg-xts-throughput
cc -O2 -o "$out" "$here/xts-throughput.c" \
    $(pkg-config --cflags --libs libgcrypt openssl nettle gnutls)
"$out"
