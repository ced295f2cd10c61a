"""bochs (read-only) against the reference: growing images made by
bximage (new, and converted from raw images with data, so extents are
allocated, partly allocated and absent), every read-only command, the
refused writes, and hostile headers (each field QEMU checks, in pairs to
pin the order, catalogs past the end of the file)."""
import random
import shutil
import struct
import subprocess

import pytest

from conftest import batches, needs_format, write_file
from rofmt import same_cases

pytestmark = [needs_format("bochs"),
              pytest.mark.skipif(not shutil.which("bximage"),
                                 reason="bximage not installed")]


def bximage(d, *args):
    subprocess.run(["bximage", "-q"] + list(args), cwd=d, check=True,
                   capture_output=True)


def flat(path, size, seed):
    """A raw image with data scattered over it: whole and partial
    extents, single sectors, runs crossing extent boundaries."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(24):
            off = rnd.randrange(0, size // 512) * 512
            n = min(rnd.choice([512, 1024, 4096, 40000, 300000]), size - off)
            f.seek(off)
            f.write(rnd.randbytes(n))


@pytest.fixture
def images(pair):
    def setup(d):
        bximage(d, "-func=create", "-hd=10M", "-imgmode=growing", "new.img")
        flat(d / "a.raw", 6 << 20, 1)
        bximage(d, "-func=convert", "-imgmode=growing", "a.raw", "a.img")
        flat(d / "b.raw", 3 << 20, 2)
        bximage(d, "-func=convert", "-imgmode=growing", "b.raw", "b.img")
    pair.setup_once(setup)
    return pair


def test_read_commands(images):
    cases = []
    for name, raw in (("a.img", "a.raw"), ("b.img", "b.raw"),
                      ("new.img", None)):
        cases += [["info", name], ["map", "--output=json", name]]
        if name == "a.img":
            cases += [["info", "--output=json", name], ["map", name],
                      ["check", name], ["compare", "-s", name, name]]
        if raw:
            cases += [["compare", name, raw],
                      ["compare", "-f", "bochs", "-F", "raw", name, raw]]
    cases += [["info", "-f", "bochs", "a.img"], ["snapshot", "-l", "a.img"],
              ["measure", "-O", "qcow2", "a.img"],
              ["info", "-f", "bochs", "a.raw"],
              ["info", "--image-opts",
               "driver=bochs,file.filename=a.img,x=y"],
              ["info", "--image-opts",
               "driver=bochs,file.filename=a.raw,x=y"]]
    same_cases(images, cases)


def test_convert(images):
    for name, fmt in (("a.img", "raw"), ("b.img", "qcow2"),
                      ("new.img", "raw")):
        images.same("convert", "-O", fmt, name, "out." + fmt)
        images.same_content("out." + fmt, fmt)
    r = images.ref("compare", "out.qcow2", "b.raw")
    assert r.rc == 0, r
    images.same("dd", "if=a.img", "of=dd.raw", "bs=1k", "skip=3071",
                "count=100")
    images.same_content("dd.raw")


def test_refused(images):
    same_cases(images, [
        ["resize", "a.img", "20M"], ["commit", "a.img"],
        ["snapshot", "-c", "s", "a.img"],
        ["amend", "-o", "size=1M", "a.img"],
        ["amend", "-f", "bochs", "-o", "help", "a.img"],
        ["rebase", "-u", "-b", "x", "a.img"],
        ["create", "-f", "bochs", "x", "1M"],
        ["create", "-f", "bochs", "-o", "help"],
        ["convert", "-O", "bochs", "a.raw", "o.img"],
        ["convert", "-O", "bochs", "a.img", "nbd://example.com"],
        ["create", "-f", "bochs", "nbd://example.com", "64M"],
        ["dd", "if=a.img", "of=nbd://example.com", "-O", "bochs"],
        ["dd", "if=a.img", "of=o.img", "-O", "bochs"],
        ["convert", "-n", "-O", "raw", "a.raw", "a.img"],
        ["bench", "-w", "a.img"]])


def header(version=2, hsize=512, catalog=4, bitmap=512, extent=32768,
           disk=4 * 32768, magic=b"Bochs Virtual HD Image",
           subtype=b"Growing", body=True):
    h = bytearray(512)
    h[0:len(magic)] = magic
    h[32:39] = b"Redolog"
    h[48:48 + len(subtype)] = subtype
    struct.pack_into("<IIIII", h, 64, version << 16, hsize, catalog, bitmap,
                     extent)
    struct.pack_into("<Q", h, 84 if version == 1 else 88, disk)
    if not body:
        return bytes(h)
    cat = struct.pack("<%dI" % min(catalog, 4),
                      *([0, 0xffffffff, 1, 0xffffffff][:min(catalog, 4)]))
    blocks = b""
    for i in range(2):
        bits = bytes([0xa5 ^ i]) * 8 + bytes(504)
        blocks += bits + bytes([0x30 + i]) * extent
    return bytes(h) + cat + blocks


HOSTILE = {
    "ok.bochs": header(),
    "v1.bochs": header(version=1),
    "v3.bochs": header(version=3),
    "badmagic.bochs": header(magic=b"Bochs Virtual HD Imagf"),
    "subtype.bochs": header(subtype=b"Undoable"),
    "short.bochs": header()[:300],
    "cat-huge.bochs": header(catalog=0x100001),
    "cat-max-past-eof.bochs": header(catalog=0x100000, disk=1 << 30),
    "cat-small.bochs": header(catalog=2),
    "cat-zero.bochs": header(catalog=0, disk=0),
    "ext-small.bochs": header(extent=256),
    "ext-pow2.bochs": header(extent=1536),
    "ext-large.bochs": header(extent=16 << 20),
    "ext-large+cat-small.bochs": header(extent=16 << 20, catalog=0),
    "ext-small+cat-huge.bochs": header(extent=256, catalog=0x100001),
    "bitmap0.bochs": header(bitmap=0),
    "hsize-past-eof.bochs": header(hsize=1 << 30),
    "disk-huge.bochs": header(disk=(1 << 64) - 1),
    "disk-unaligned.bochs": header(disk=4 * 32768 - 100),
    "data-past-eof.bochs": header()[:512 + 16 + 100],
}
OURS = {"cat-max-past-eof.bochs", "hsize-past-eof.bochs", "short.bochs"}


@pytest.fixture
def hostile(pair):
    def setup(d):
        for name, data in HOSTILE.items():
            write_file(d / name, data)
    pair.setup(setup)
    return pair


@pytest.mark.parametrize("batch", batches(sorted(HOSTILE), 10))
def test_hostile(hostile, batch):
    """Open and read errors as the reference's, except catalogs past the
    end of the file, which the reference reads as zeroes and we refuse."""
    cases = []
    for name in sorted(set(batch) - OURS):
        cases += [["info", "-f", "bochs", name],
                  ["convert", "-f", "bochs", "-O", "raw", name, "out.img"]]
    same_cases(hostile, cases)
    for name in set(batch) & OURS:
        q = hostile.qimg("info", "-f", "bochs", name)
        assert q.rc == 1 and "Catalog extends past the end of the file" \
            in q.err, q
