"""cloop (read-only) against the reference: images made by cloop-utils'
create_compressed_fs (several block sizes, zero blocks, a partial last
block, no compression), every read-only command, the refused writes and
creation, and hostile headers and offset tables."""
import shutil
import struct
import subprocess
import zlib

import pytest

from conftest import batches, needs_format, same_each, write_file
from rofmt import same_cases

pytestmark = [needs_format("cloop"),
              pytest.mark.skipif(not shutil.which("create_compressed_fs"),
                                 reason="cloop-utils not installed")]


def guest_data(size, seed):
    """Random, zero and repetitive stretches, so blocks compress unevenly
    and some are all zero."""
    rnd = __import__("random").Random(seed)
    out = bytearray(size)
    for off in range(0, size, 96 << 10):
        kind = rnd.randrange(3)
        n = min(rnd.randrange(1, 96 << 10), size - off)
        if kind == 0:
            out[off:off + n] = rnd.randbytes(n)
        elif kind == 1:
            out[off:off + n] = (b"cloop %d " % off * (n // 8 + 1))[:n]
    return bytes(out)


def make_cloop(d, name, data, block, level=None):
    raw = d / (name + ".raw")
    raw.write_bytes(data)
    args = ["create_compressed_fs", "-q", "-B", str(block)]
    if level is not None:
        args += ["-L", str(level)]
    subprocess.run(args + [raw.name, name], cwd=d, check=True,
                   capture_output=True)


IMAGES = {
    # name: (size, block size, level)
    "a.cloop": (1 << 20, 65536, None),
    "b.cloop": (300000, 16384, None),          # partial last block
    "z.cloop": (256 << 10, 65536, None),      # all zero
    "s.cloop": (200000, 512, None),            # smallest blocks
    "n.cloop": (200000, 65536, 0),             # stored, not compressed
}


@pytest.fixture
def images(pair):
    def setup(d):
        for i, (name, (size, block, level)) in enumerate(IMAGES.items()):
            data = bytes(size) if name == "z.cloop" else guest_data(size, i)
            make_cloop(d, name, data, block, level)
    pair.setup_once(setup)
    return pair


def test_read_commands(images):
    cases = []
    for name in IMAGES:
        raw = name[0] + ".cloop.raw"
        cases += [["info", name], ["map", "--output=json", name],
                  ["compare", name, raw]]
        if name in ("a.cloop", "b.cloop"):
            cases += [["info", "--output=json", name],
                      ["info", "-f", "cloop", name], ["map", name],
                      ["check", name], ["check", "--output=json", name],
                      ["compare", "-s", name, name],
                      ["snapshot", "-l", name],
                      ["measure", "-O", "qcow2", name],
                      ["compare", "-f", "cloop", "-F", "raw", name, raw],
                      ["info", "--image-opts",
                       f"driver=cloop,file.filename={name},a=b,c=d"]]
    same_cases(images, cases)


def test_convert(images):
    for name, fmt in [(n, "raw") for n in IMAGES] + [("a.cloop", "qcow2")]:
        images.same("convert", "-O", fmt, name, "out." + fmt)
        images.same_content("out." + fmt, fmt)
        r = images.ref("compare", "out." + fmt, name[0] + ".cloop.raw")
        assert r.rc == 0, r
    images.same("convert", "-c", "-O", "qcow2", "a.cloop", "c.qcow2")
    images.same("compare", "a.cloop", "c.qcow2")
    images.same("dd", "if=b.cloop", "of=dd.raw", "bs=4k", "skip=3",
                "count=20")
    images.same_content("dd.raw")


def test_refused(images):
    same_each(images, "resize", [["a.cloop", "2M"], ["-f", "cloop",
                                                    "a.cloop", "2M"]])
    cases = [["commit", "a.cloop"], ["snapshot", "-c", "s", "a.cloop"],
             ["amend", "-o", "size=1M", "a.cloop"],
             ["amend", "-f", "cloop", "-o", "help", "a.cloop"],
             ["rebase", "-u", "-b", "x", "a.cloop"],
             ["bitmap", "--add", "a.cloop", "b"],
             ["create", "-f", "cloop", "x", "1M"],
             ["create", "-f", "cloop", "-o", "help"],
             ["convert", "-O", "cloop", "a.cloop.raw", "o.cloop"],
             ["convert", "-n", "-O", "raw", "a.cloop.raw", "a.cloop"],
             ["measure", "-O", "cloop", "--size", "1M"],
             ["bench", "-w", "a.cloop"]]
    same_cases(images, cases)


def header(block=65536, n=4, offsets=None, magic=True):
    """A cloop header and offsets table; blocks that follow are zlib
    streams of one zero block each unless offsets are given."""
    pre = (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t "
           b"iso9660 /dev/cloop $1\n") if magic else b"#!/bin/sh\n"
    pre = pre.ljust(128, b"\0")
    blk = zlib.compress(bytes(min(block, 64 << 20)))
    if offsets is None:
        start = 128 + 8 + 8 * (n + 1)
        offsets = [start + i * len(blk) for i in range(n + 1)]
        body = blk * n
    else:
        body = blk
    return (pre + struct.pack(">II", block, n) +
            b"".join(struct.pack(">Q", o) for o in offsets) + body)


HOSTILE = {
    "ok.cloop": header(),
    "nomagic.cloop": header(magic=False),
    "bs0.cloop": header(block=0, n=0),
    "bs513.cloop": header(block=513, n=0),
    "bshuge.cloop": header(block=128 << 20, n=0),
    "n-too-many.cloop": header(n=0x20000000, offsets=[]),
    "n-toomany-offsets.cloop": header(n=0x10000000, offsets=[]),
    "n-past-eof.cloop": header(n=1 << 20, offsets=[]),
    "n-small-past-eof.cloop": header(n=1000, offsets=[]),
    "decreasing.cloop": header(n=2, offsets=[400, 300, 500]),
    "bigblock.cloop": header(n=1, offsets=[200, 200 + (129 << 20)]),
    "zerolen.cloop": header(n=2, offsets=[200, 200, 200]),
    "pasteof.cloop": header(n=1, offsets=[1 << 40, (1 << 40) + 100]),
    "garbage.cloop": header(n=1, offsets=[144, 200]),
    "short.cloop": header()[:130],
}


@pytest.fixture
def hostile(pair):
    def setup(d):
        for name, data in HOSTILE.items():
            write_file(d / name, data)
    pair.setup(setup)
    return pair


@pytest.mark.parametrize("batch", batches(sorted(HOSTILE), 7))
def test_hostile(hostile, batch):
    """Open errors and read errors as the reference gives them, except
    tables past the end of the file, which the reference reads as zeroes
    (and allocates for) and we refuse."""
    ours = {"n-past-eof.cloop"}
    cases = []
    for name in batch:
        if name in ours:
            continue
        cases += [["info", "-f", "cloop", name],
                  ["convert", "-f", "cloop", "-O", "raw", name, "out.img"]]
    same_cases(hostile, cases)
    for name in set(batch) & ours:
        q = hostile.qimg("info", "-f", "cloop", name)
        assert q.rc == 1 and "extends past the end of the file" in q.err, q
