"""qemu-img check differential tests.

Raw has no consistency check, so every option path ends in "This image
format does not support checks" (exit 63) or an earlier error; those are
compared now.  The reporting for formats with a check (human and JSON,
repairs, exit codes 0/2/3) is compared on qcow2 images with leaks and
corruptions once qimg has a qcow2 driver; until then those tests skip.
"""
import shutil
import struct

import pytest

from conftest import make_sparse, needs_format, same_help


def populate(d):
    make_sparse(d / "a.raw", 1 << 20, [(0, b"x" * 4096)])
    (d / "empty.raw").write_bytes(b"")


@pytest.mark.parametrize("args", [
    ["a.raw"],
    ["-f", "raw", "a.raw"],
    ["--format=raw", "a.raw"],
    ["empty.raw"],
    ["-q", "a.raw"],
    ["--output=json", "a.raw"],
    ["--output=human", "a.raw"],
    ["--output", "json", "-q", "a.raw"],
    ["--output=xml", "a.raw"],
    ["--output=xml"],
    ["--output=xml", "nonexist.raw"],
    ["--output=xml", "-T", "foo", "a.raw"],
    ["-r", "leaks", "a.raw"],
    ["-r", "all", "a.raw"],
    ["-r", "all", "-f", "raw", "a.raw"],
    ["-q", "-r", "all", "a.raw"],
    ["--repair=leaks", "a.raw"],
    ["--repair", "a.raw"],
    ["-r", "foo", "a.raw"],
    ["-r", "", "a.raw"],
    ["-r", "foo", "--output=bad", "a.raw"],
    ["--output=bad", "-r", "foo", "a.raw"],
    ["-r"],
    ["-T", "none", "a.raw"],
    ["-T", "writeback", "-f", "raw", "a.raw"],
    ["-T", "directsync", "-q", "a.raw"],
    ["-T", "unsafe", "--output=json", "a.raw"],
    ["-T", "foo", "a.raw"],
    ["-T", "foo"],
    ["-T", "foo", "nonexist.raw"],
    ["-T", "foo", "--output=bad", "a.raw"],
    ["-T"],
    ["-U", "a.raw"],
    ["--force-share", "a.raw"],
    ["-U", "-r", "all", "a.raw"],
    ["-U", "-r", "leaks", "nonexist.raw"],
    ["-U", "-r", "all", "-f", "foo", "a.raw"],
    ["-U", "-r", "all", "--image-opts", "driver=raw,file.filename=a.raw"],
    ["-U", "-r", "all", "--image-opts", "-f", "raw",
     "driver=raw,file.filename=a.raw"],
    ["nonexist.raw"],
    ["-q", "nonexist.raw"],
    ["-r", "leaks", "-q", "nonexist.raw"],
    ["-f", "foo", "a.raw"],
    [],
    ["a.raw", "b.raw"],
    ["-x", "a.raw"],
    ["--bogus", "a.raw"],
    ["-f"],
    ["--image-opts", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "-r", "leaks", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "a.raw"],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"a.raw"}}'],
    ["--object", "secret,id=s0,data=x", "a.raw"],
    ["--object", "foo", "a.raw"],
])
def test_check_raw(pair, args):
    pair.setup(populate)
    pair.same("check", *args)


def test_check_help_exit_status(pair):
    """-h prints 7.2's help and succeeds."""
    same_help(pair, "check", "-h")


# ---- formats with a check (qcow2) --------------------------------------


needs_qcow2 = needs_format("qcow2")


def damage(path, mode):
    """Break a qcow2 image written with 512 KiB of data at offset 0:
    'leak' drops two L2 entries (their clusters leak), 'corrupt' zeroes the
    refcount of the first data cluster, 'both' does one of each."""
    with open(path, "r+b") as f:
        def u64(off):
            f.seek(off)
            return struct.unpack(">Q", f.read(8))[0]
        mask = 0x00fffffffffffe00
        l2 = u64(u64(40)) & mask
        refblock = u64(u64(48))
        first = u64(l2) & mask
        if mode in ("leak", "both"):
            f.seek(l2 + (8 if mode == "both" else 0))
            f.write(b"\0" * (8 if mode == "both" else 16))
        if mode in ("corrupt", "both"):
            f.seek(refblock + 2 * (first // 65536))
            f.write(b"\0\0")


def make_qcow2(pair):
    pair.sh("qemu-img create -f qcow2 fresh.qcow2 1M && "
            "qemu-img create -f qcow2 good.qcow2 1M && "
            "qemu-io -f qcow2 -c 'write 0 512k' good.qcow2 && "
            "qemu-img convert -c -O qcow2 good.qcow2 comp.qcow2")
    for d in pair.dirs():
        for mode in ("leak", "corrupt", "both"):
            shutil.copy(d / "good.qcow2", d / f"{mode}.qcow2")
            damage(d / f"{mode}.qcow2", mode)


@needs_qcow2
@pytest.mark.parametrize("name", ["fresh", "good", "comp", "leak", "corrupt",
                                  "both"])
@pytest.mark.parametrize("opts", [[], ["--output=json"], ["-q"],
                                  ["-q", "--output=json"], ["-f", "qcow2"],
                                  ["-U"]])
def test_check_qcow2(pair, name, opts):
    make_qcow2(pair)
    pair.same("check", *opts, f"{name}.qcow2")


@needs_qcow2
@pytest.mark.parametrize("name", ["good", "leak", "corrupt", "both"])
@pytest.mark.parametrize("repair", ["leaks", "all"])
@pytest.mark.parametrize("opts", [[], ["--output=json"], ["-q"]])
def test_check_qcow2_repair(pair, name, repair, opts):
    make_qcow2(pair)
    pair.same("check", "-r", repair, *opts, f"{name}.qcow2")
    # The repaired images must now check the same way as well, and be the
    # same files (freed clusters are discarded as QEMU does).
    pair.same("check", "--output=json", f"{name}.qcow2")
    assert pair.path_ref(f"{name}.qcow2").read_bytes() == \
        pair.path_qimg(f"{name}.qcow2").read_bytes()


@needs_qcow2
def test_check_qcow2_force_share_repair(pair):
    make_qcow2(pair)
    pair.same("check", "-U", "-r", "leaks", "leak.qcow2")
