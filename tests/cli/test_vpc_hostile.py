"""vpc (VHD) images damaged field by field: the footer, its checksum, the
dynamic header, block sizes, table sizes and offsets, BAT entries past
the end or overlapping, truncated files.  Where 7.2 gives an error or
reads the image we do the same (message, status, output); where it
allocates gigabytes or lets writes land on metadata we refuse with our
own message (docs/LIMITS.md), within bounded memory."""
import os
import struct

import pytest

from conftest import QIMG, batches, needs_format, run, same_each
from test_hostile_memory import peak_rss
from vhdvdi import (DYN, bat_entry, fix_dyn, fix_footer, patch, qemu_io,
                    ref_create, rss_budget, set_bat_entry)

pytestmark = needs_format("vpc")

QIMG_IO = QIMG.parent / "tests" / "qimg-io"
BE32 = lambda v: struct.pack(">I", v)
BE64 = lambda v: struct.pack(">Q", v)


def dyn(off, data):
    def f(b):
        b[DYN + off:DYN + off + len(data)] = data
        fix_dyn(b)
    return f


def foot(off, data, fix=True):
    def f(b):
        b[off:off + len(data)] = data
        if fix:
            fix_footer(b)
    return f


def tail(off, data):
    def f(b):
        t = len(b) - 512
        b[t + off:t + off + len(data)] = data
        fix_footer(b, t)
    return f


def cut(n):
    def f(b):
        del b[n:]
    return f


def entry(i, v):
    return lambda b: set_bat_entry(b, i, v)


# name: (subformat, edit) on an 8 MiB image with 3 blocks of data
CASES = {
    "footer-checksum": (None, foot(64, b"\0\0\0\1", fix=False)),
    "footer-magic": (None, foot(0, b"xonectix")),
    "footer-type-diff": (None, foot(60, BE32(4))),
    "footer-type-fixed-at-0": (None, foot(60, BE32(2))),
    "footer-size-huge": (None, lambda b: (foot(28, b"win ")(b),
                                          foot(48, BE64(1 << 62))(b))),
    "footer-size-2040G+": (None, lambda b: (foot(28, b"win ")(b),
                                            foot(48, BE64(0xff000001 *
                                                          512))(b))),
    "footer-chs-max": (None, foot(56, struct.pack(">HBB", 65535, 16, 255))),
    "footer-data-offset-huge": (None, foot(16, BE64(1 << 63))),
    "footer-data-offset-eof": (None, foot(16, BE64(1 << 30))),
    "footer-data-offset-0": (None, foot(16, BE64(0))),
    "dyn-magic": (None, dyn(0, b"xxsparse")),
    "block-size-0": (None, dyn(32, BE32(0))),
    "block-size-3000": (None, dyn(32, BE32(3000))),
    "block-size-256": (None, dyn(32, BE32(256))),
    "block-size-2G": (None, dyn(32, BE32(1 << 31))),
    "block-size-1M": (None, dyn(32, BE32(1 << 20))),
    "entries-negative": (None, dyn(28, BE32(0x80000000))),
    "entries-ffffffff": (None, dyn(28, BE32(0xffffffff))),
    "entries-small": (None, dyn(28, BE32(1))),
    "entries-0": (None, dyn(28, BE32(0))),
    "entries-more": (None, dyn(28, BE32(100))),
    "bat-offset-eof": (None, dyn(16, BE64(1 << 20))),
    "bat-offset-huge": (None, dyn(16, BE64(1 << 62))),
    "bat-offset-wrap": (None, dyn(16, BE64((1 << 64) - 8))),
    "bat-entry-eof": (None, entry(1, 100000)),
    "bat-entry-max": (None, entry(1, 0xfffffffe)),
    "bat-entry-on-header": (None, entry(1, 1)),
    "truncated-footer": (None, cut(-100)),
    "truncated-block": (None, cut(2 << 20)),
    "truncated-bat": (None, cut(1600)),
    "tiny": (None, cut(100)),
    "empty": (None, cut(0)),
    "fixed-checksum": ("fixed", tail(64, b"\0\0\0\1")),
    "fixed-type-dynamic": ("fixed", tail(60, BE32(3))),
    "fixed-magic": ("fixed", tail(0, b"xonectix")),
    "fixed-size-huge": ("fixed", lambda b: (tail(28, b"win ")(b),
                                            tail(48, BE64(1 << 50))(b))),
    "fixed-larger-than-file": ("fixed", lambda b: (tail(28, b"win ")(b),
                                                   tail(48, BE64(9 << 20))(b))),
}

COMMANDS = [["info"], ["map", "--output=json"], ["convert", "-O", "raw"]]


def make_all(d, names):
    """The batch's images, each a copy of one of two written images with
    its edit applied."""
    base = {}
    for sub in (None, "fixed"):
        img = f"base-{sub}.vhd"
        ref_create(d, "vpc", img, "8M", "subformat=fixed" if sub else None)
        qemu_io(d, "vpc", img, "write -P 1 0 1M", "write -P 2 2M 1M",
                "write -P 3 6M 512")
        base[sub] = (d / img).read_bytes()
    for name in names:
        sub, edit = CASES[name]
        b = bytearray(base[sub])
        edit(b)
        (d / f"{name}.vhd").write_bytes(bytes(b))


@pytest.mark.parametrize("batch", batches(sorted(CASES), 19))
def test_vpc_hostile_same(pair, batch):
    # one copy for both tools: a fixed image's footer (timestamp, UUID)
    # may be part of what they read
    pair.setup_once(lambda d: make_all(d, batch))
    bad = []
    for name in batch:
        for cmd in COMMANDS:
            args = [*cmd[:1], "-f", "vpc", *cmd[1:], f"{name}.vhd"]
            if cmd[0] == "convert":
                args.append("out.raw")
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
            elif cmd[0] == "convert" and r.rc == 0:
                rr = pair.path_ref("out.raw").read_bytes()
                if rr != pair.path_qimg("out.raw").read_bytes():
                    bad.append(f"{name}: converted content differs")
            for d in pair.dirs():
                (d / "out.raw").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)


def test_vpc_hostile_write(pair):
    """Writes into damaged images that 7.2 opens: the same result."""
    names = ["block-size-1M", "entries-more", "footer-chs-max",
             "bat-entry-max"]
    pair.setup_once(lambda d: make_all(d, names))
    for name in names:      # the writes need a copy each
        for d in pair.dirs():
            b = (d / f"{name}.vhd").read_bytes()
            (d / f"{name}.vhd").unlink()
            (d / f"{name}.vhd").write_bytes(b)
    for name in names:
        r = run(QIMG, ["info", "-f", "vpc", f"{name}.vhd"], pair.qimg_dir)
        if r.rc:
            continue
        qemu_io(pair.ref_dir, "vpc", f"{name}.vhd", "write -P 9 4M 8k")
        p = run(QIMG_IO, ["-f", "vpc", f"{name}.vhd", "write -P 9 4M 8k"],
                pair.qimg_dir)
        assert p.rc == 0, p
        pair.same("convert", "-f", "vpc", "-O", "raw", f"{name}.vhd",
                  f"{name}.raw")
        assert pair.path_ref(f"{name}.raw").read_bytes() == \
            pair.path_qimg(f"{name}.raw").read_bytes()


OVERLAPS = {
    "same-block": lambda b: set_bat_entry(b, 1, bat_entry(b, 0)),
    "half-block": lambda b: set_bat_entry(b, 1, bat_entry(b, 0) + 100),
    "on-bat": lambda b: set_bat_entry(b, 1, 3),
    "on-dyn-header": lambda b: set_bat_entry(b, 1, 1),
}


@pytest.mark.parametrize("name", sorted(OVERLAPS))
def test_vpc_overlapping_blocks(pair, name):
    """Blocks overlapping each other or the metadata: read as 7.2 reads
    them (aliased), but a writable open is refused (7.2 would write guest
    data over the BAT or another block)."""
    def setup(d):
        ref_create(d, "vpc", "t.vhd", "8M")
        qemu_io(d, "vpc", "t.vhd", "write -P 1 0 1M", "write -P 2 2M 1M",
                "write -P 3 4M 1M")
        patch(d / "t.vhd", OVERLAPS[name])
    pair.setup(setup)
    pair.same("convert", "-O", "raw", "t.vhd", "t.raw")
    assert pair.path_ref("t.raw").read_bytes() == \
        pair.path_qimg("t.raw").read_bytes()
    before = pair.path_qimg("t.vhd").read_bytes()
    p = run(QIMG_IO, ["-f", "vpc", "t.vhd", "write -P 9 0 512"], pair.qimg_dir)
    assert p.rc != 0 and "Invalid VHD image: " in p.err and "overlap" in p.err
    q = pair.qimg("convert", "-n", "-O", "vpc", "t.raw", "t.vhd")
    assert q.rc == 1 and "overlap" in q.err, q
    assert pair.path_qimg("t.vhd").read_bytes() == before


@pytest.mark.parametrize("entries", [0x1fffffff, 70 << 20])
def test_vpc_huge_bat_bounded(tmp_path, entries):
    """A BAT of up to 2 GiB that 7.2 allocates (and reads) whole: refused
    before any allocation, with our limit named."""
    img = tmp_path / "t.vhd"
    ref_create(tmp_path, "vpc", "t.vhd", "8M")

    def edit(b):
        b[DYN + 28:DYN + 32] = BE32(entries)
        fix_dyn(b)
    patch(img, edit)
    # a sparse file large enough to hold the BAT
    os.truncate(img, 1536 + entries * 4 + (4 << 20))
    budget = rss_budget(tmp_path, 32 << 20)
    for cmd in (["info"], ["map"], ["convert", "-O", "raw"]):
        args = [QIMG, *cmd, "t.vhd"] + (["o.raw"] if cmd[0] == "convert"
                                        else [])
        rc, rss, secs = peak_rss(args, tmp_path)
        assert rc == 1 and rss < budget and secs < 30, (cmd, rc, rss, secs)
        r = run(QIMG, args[1:], tmp_path)
        assert "the BAT may take at most 256 MiB" in r.err, r


def test_vpc_vdi_probe(pair):
    """Format probing as 7.2 probes: dynamic vpc by its footer copy, fixed
    vpc as raw, vdi by its signature (from 512 bytes on), short files."""
    def setup(d):
        ref_create(d, "vpc", "dyn.vhd", "1M")
        ref_create(d, "vpc", "fixed.vhd", "1M", "subformat=fixed")
        ref_create(d, "vdi", "t.vdi", "1M")
        data = (d / "t.vdi").read_bytes()
        (d / "short511.vdi").write_bytes(data[:511])
        (d / "short512.vdi").write_bytes(data[:512])
        (d / "conectix8").write_bytes(b"conectix")
        (d / "conectix7").write_bytes(b"conecti")
    pair.setup_once(setup)
    same_each(pair, "info", [[n] for n in ("dyn.vhd", "fixed.vhd", "t.vdi",
                                           "short511.vdi", "short512.vdi",
                                           "conectix8", "conectix7")], ())
