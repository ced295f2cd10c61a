#!/bin/sh
# Install the Debian packages qimg needs to build and test (as root), or
# name the missing ones and fail (as another user).
#   scripts/deps.sh build   - compiler, meson, libraries
#   scripts/deps.sh test    - the above plus cmocka, pytest and the reference
#                             qemu-utils used by differential tests
#   scripts/deps.sh rbd     - the above plus Ceph's mon, OSD and CLI
#                             (make check-rbd)
set -eu

build_pkgs="gcc make meson ninja-build pkg-config libjansson-dev zlib1g-dev libzstd-dev libdeflate-dev libbz2-dev libgcrypt20-dev scdoc nettle-dev libnbd-dev libcurl4-gnutls-dev libssh-dev libiscsi-dev libnfs-dev librbd-dev librados-dev"
test_pkgs="libcmocka-dev python3 python3-pytest python3-pytest-xdist qemu-utils strace time bximage cloop-utils libvhdi-utils libvmdk-utils python3-libvmdk cryptsetup-bin qemu-block-extra nbdkit nginx-light vsftpd curl libnbd-bin openssl openssh-server openssh-client tgt nfs-ganesha nfs-ganesha-vfs rpcbind iproute2"

case "${1:-build}" in
build) pkgs="$build_pkgs" ;;
test) pkgs="$build_pkgs $test_pkgs" ;;
# make check-rbd: a single-node Ceph cluster (mon, memstore OSD, CLI).
rbd) pkgs="$build_pkgs $test_pkgs ceph-mon ceph-osd ceph-common" ;;
*) echo "usage: $0 build|test|rbd" >&2; exit 2 ;;
esac

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "qimg: missing Debian packages:$missing" >&2
    echo "qimg: install them with: sudo apt-get install$missing" >&2
    exit 1
fi
echo "qimg: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
