"""qcow (version 1) against qemu-img 7.2: create (every option and error,
encryption included), images made by the same writes byte-identical
(qemu-io on one side, qimg-io on the other, compressed clusters too),
convert both ways and convert -c, info, map, commit, the commands qcow
has no support for, and hostile headers and tables."""
import re

import pytest

from conftest import QIMG, REF, batches, needs_format, run, same_each
import fmtcommon
from fmtcommon import (create_cases, BE32, BE64, each_case, mirror_writes,
                       patch, qimg_io, ref_compare, ref_io, same_files)

pytestmark = needs_format("qcow")

SECRET = ["--object", "secret,id=s0,data=abc"]


def make(pair, name, *args):
    fmtcommon.make(pair, "qcow", name, *args)


CREATE_CASES = [
    ["x.qcow", "1M"],
    ["x.qcow", "0"],
    ["x.qcow", "1000"],
    ["x.qcow", "100G"],
    ["x.qcow", "8E"],
    ["-o", "backing_fmt=foo", "x.qcow", "1M"],
    ["-o", "backing_fmt=qcow2", "x.qcow", "1M"],
    ["-o", "backing_fmt=iser", "x.qcow", "1M"],
    ["-u", "-b", "nonexist", "-F", "raw", "x.qcow", "1M"],
    ["-u", "-b", "n" * 1000, "-F", "raw", "x.qcow", "1M"],
    ["-o", "encryption=on", "x.qcow", "1M"],
    ["-o", "encryption=off", "x.qcow", "1M"],
    ["-o", "encrypt.format=aes", "x.qcow", "1M"],
    ["-o", "encrypt.format=luks", "x.qcow", "1M"],
    ["-o", "encrypt.format=foo", "x.qcow", "1M"],
    ["-o", "encrypt.format=aes,encrypt.key-secret=nope", "x.qcow", "1M"],
    [*SECRET, "-o", "encrypt.format=aes,encrypt.key-secret=s0", "x.qcow",
     "1M"],
    [*SECRET, "-o", "encrypt.format=qcow,encrypt.key-secret=s0", "x.qcow",
     "1M"],
    [*SECRET, "-o", "encryption=on,encrypt.key-secret=s0", "x.qcow", "1M"],
    [*SECRET, "-o", "encryption=on,encrypt.format=aes,encrypt.key-secret=s0",
     "x.qcow", "1M"],
    [*SECRET, "-o", "encryption=off,encrypt.format=aes,encrypt.key-secret=s0",
     "x.qcow", "1M"],
    [*SECRET, "-o", "encrypt.key-secret=s0", "x.qcow", "1M"],
    ["-o", "encryption=maybe", "x.qcow", "1M"],
    ["-o", "preallocation=metadata", "x.qcow", "1M"],
    ["-o", "preallocation=full", "x.qcow", "1M"],
    ["-o", "cluster_size=4k", "x.qcow", "1M"],
    ["-o", "help"],
    ["-o", "help", "x.qcow"],
]


@pytest.mark.parametrize("batch", batches(CREATE_CASES, 15))
def test_create(pair, batch):
    create_cases(pair, "qcow", "x.qcow", batch)


WRITES = [
    "write -P 0x11 0 100k",
    "write -P 0x22 1M 4k",
    "write -P 0x33 70000 3000",
    "write -P 0x44 2M 3M",          # across L2 ranges
    "write -z 4M 1M",
    "write -P 0x55 4M 512",
    "write -P 0x66 6M 512",
]
COMPRESSED = [
    "write -c -P 0x71 8M 4k", "write -c -P 0x72 8196k 4k",
    "write -P 0x73 8M 100",       # inflated into a new cluster
    "write -P 0x74 8196k 4k",     # replaced whole
    "write -c -P 0x75 12M 4k",
]


def test_writes_byte_identical(pair):
    make(pair, "w.qcow", "16M")
    mirror_writes(pair, "qcow", "w.qcow", WRITES)
    ref_io(pair.path_ref("w.qcow"), "qcow", *COMPRESSED)
    qimg_io(pair.path_qimg("w.qcow"), "qcow",
            *[c.replace("write -c", "writec") for c in COMPRESSED])
    same_files(pair, "w.qcow")
    pair.same("map", "--output=json", "w.qcow")
    pair.same("map", "w.qcow")
    pair.same("compare", "-f", "qcow", "-F", "qcow", "w.qcow",
              pair.path_ref("w.qcow"))


def test_writes_over_backing(pair):
    pair.same("create", "-q", "-f", "raw", "b.raw", "3M")
    for d in pair.dirs():
        ref_io(d / "b.raw", "raw", "write -P 0xa1 0 3M")
    make(pair, "o.qcow", "-b", "b.raw", "-F", "raw", "4M")
    mirror_writes(pair, "qcow", "o.qcow", [
        "write -P 1 100k 10k", "write -P 2 2M 1M", "write -P 3 5000 1000",
        "write -z 3M 100k"])
    pair.same("map", "o.qcow")
    pair.same("info", "o.qcow")
    pair.same("compare", "o.qcow", "b.raw")
    ref_compare(pair.path_ref("o.qcow"), pair.path_qimg("o.qcow"), "qcow",
                "qcow")


def test_convert(pair):
    for d in pair.dirs():
        with open(d / "s.raw", "wb") as f:
            f.truncate(6 << 20)
            f.write(open("/usr/bin/qemu-img", "rb").read(900000))
            f.seek(4 << 20)
            f.write(b"\x05" * 300000)
    pair.same("convert", "-O", "qcow", "s.raw", "c.qcow")
    same_files(pair, "c.qcow")
    # -c: compressed clusters (identical: zlib with QEMU's parameters);
    # 7.2 fails the final end-of-stream write, silently, with status 1
    pair.same("convert", "-c", "-O", "qcow", "s.raw", "z.qcow")
    same_files(pair, "z.qcow")
    pair.same("map", "z.qcow")
    pair.same("map", "--output=json", "z.qcow")
    pair.same("convert", "-O", "raw", "z.qcow", "z.raw")
    same_files(pair, "z.raw")
    pair.same("convert", "-O", "qcow2", "z.qcow", "z.qcow2")
    same_files(pair, "z.qcow2")
    pair.same("convert", "-O", "qcow", "z.qcow2", "zz.qcow")
    same_files(pair, "zz.qcow")
    pair.same("convert", "-O", "qcow", "-B", "s.raw", "-F", "raw", "c.qcow",
              "ob.qcow")
    same_files(pair, "ob.qcow")
    pair.same("compare", "z.qcow", "s.raw")
    ref_compare(pair.path_ref("z.qcow"), pair.path_qimg("z.raw"), "qcow",
                "raw")


def test_commit(pair):
    """Committing empties the overlay (the file cut after its L1 table);
    the base's content is the same, not its layout: QEMU's commit job
    writes in parallel."""
    for base, fmt in (("b.raw", "raw"), ("b.qcow", "qcow")):
        pair.same("create", "-q", "-f", fmt, base, "1M")
        top = f"t-{fmt}.qcow"
        make(pair, top, "-b", base, "-F", fmt)
        for d in pair.dirs():
            ref_io(d / top, "qcow", "write -P 5 0 64k", "write -P 6 900k 4k")
        pair.same("commit", top)
        same_files(pair, top)
        ref_compare(pair.path_ref(base), pair.path_qimg(base), fmt, fmt)
    pair.same("commit", "-d", "t-raw.qcow")


def test_encrypted(pair):
    """The headers of an AES-encrypted image read as 7.2 reads them (info
    needs no key); opens that would need the key fail as 7.2's do without
    it (reads and writes with the key: test_qcow_aes.py)."""
    make(pair, "e.qcow", *SECRET, "-o", "encrypt.format=aes,"
         "encrypt.key-secret=s0", "1M")
    make(pair, "p.qcow", "1M")
    opts = "driver=qcow,file.filename="
    same_each(pair, "info", [["e.qcow"], ["--output=json", "e.qcow"],
                             ["--image-opts", opts + "e.qcow,encrypt."
                              "key-secret=nope"],
                             [*SECRET, "--image-opts", opts + "e.qcow,"
                              "encrypt.key-secret=s0"]], scratch=())
    same_each(pair, "convert", [
        ["-O", "raw", "e.qcow", "out.raw"],
        ["--image-opts", opts + "e.qcow,encrypt.key-secret=nope", "-O",
         "raw", "out.raw"],
        ["--image-opts", opts + "e.qcow,encrypt.format=luks", "-O", "raw",
         "out.raw"],
        ["--image-opts", opts + "p.qcow,encrypt.format=aes", "-O", "raw",
         "out.raw"],
        ["--image-opts", opts + "p.qcow,foo=1", "-O", "raw", "out.raw"],
    ])
    same_each(pair, "map", [["e.qcow"]], scratch=())
    pair.same("convert", *SECRET, "--image-opts",
              opts + "e.qcow,encrypt.key-secret=s0", "-O", "raw", "out.raw")


def test_refusals(pair):
    make(pair, "f.qcow", "1M")
    pair.same("create", "-q", "-f", "raw", "b.raw", "1M")
    same_each(pair, "check", [["f.qcow"], ["-r", "all", "f.qcow"]],
              scratch=())
    same_each(pair, "resize", [["f.qcow", "2M"], ["--shrink", "f.qcow",
                                                  "512k"]], scratch=())
    same_each(pair, "amend", [["-o", "size=2M", "f.qcow"]], scratch=())
    same_each(pair, "rebase", [["-u", "-b", "b.raw", "-F", "raw", "f.qcow"],
                               ["-b", "b.raw", "-F", "raw", "f.qcow"]],
              scratch=())
    same_each(pair, "snapshot", [["-l", "f.qcow"], ["-c", "s", "f.qcow"],
                                 ["-d", "s", "f.qcow"]], scratch=())
    same_each(pair, "measure", [["-O", "qcow", "--size", "1M"],
                                ["-O", "raw", "f.qcow"]], scratch=())
    r, q = pair.both("bitmap", "--add", "f.qcow", "b")
    assert (q.rc, q.out) == (r.rc, r.out)
    assert re.sub(r"#block\d+", "N", q.err) == re.sub(r"#block\d+", "N", r.err)
    same_files(pair, "f.qcow")


HOSTILE = {
    "magic": [(0, b"QFI\x00")],
    "version-0": [(4, BE32(0))],
    "version-2": [(4, BE32(2))],
    "version-3": [(4, BE32(3))],
    "size-0": [(24, BE64(0))],
    "size-1": [(24, BE64(1))],
    "size-odd": [(24, BE64(1000))],
    "size-huge": [(24, BE64(1 << 62))],
    "size-max": [(24, BE64(0xffffffffffffffff))],
    "cluster-bits-8": [(32, b"\x08")],
    "cluster-bits-17": [(32, b"\x11")],
    "l2-bits-5": [(33, b"\x05")],
    "l2-bits-14": [(33, b"\x0e")],
    "crypt-2": [(36, BE32(2))],
    "crypt-aes": [(36, BE32(1))],
    "l1-past-eof": [(40, BE64(1 << 40))],
    "l1-wraps": [(40, BE64(0xfffffffffffffff0))],
    "backing-long": [(8, BE64(48)), (16, BE32(1024))],
    "backing-past-eof": [(8, BE64(1 << 40)), (16, BE32(10))],
    "backing-missing": [(8, BE64(48)), (16, BE32(4))],
    "l1-entry-past-eof": [(48, BE64(1 << 40))],
    "l1-entry-wraps": [(48, BE64(0xfffffffffffff000))],
    "l2-entry-unaligned": [(0x1000, BE64(0x2001))],
    "l2-entry-past-eof": [(0x1000, BE64(1 << 40))],
    "l2-entry-huge": [(0x1000, BE64(0x7ffffffffffff000))],
    "compressed-garbage": [(0x1000, BE64(0x8000000000000030 | (100 << 51)))],
    "compressed-past-eof": [(0x1000, BE64(0x8000010000000000 | (100 << 51)))],
    "short": None,
}


def hostile_setup(d, case):
    base = d / "base.qcow"
    if not base.exists():
        run(REF, ["create", "-q", "-f", "qcow", base, "1M"], d)
        # L2 table at 0x1000, data cluster 0 at 0x2000
        ref_io(base, "qcow", "write -P 1 0 8k")
    img = d / f"{case}.img"
    if HOSTILE[case] is None:
        img.write_bytes(b"QFI\xfb\0\0\0\1" + b"\0" * 20)
        return
    img.write_bytes(base.read_bytes())
    patch(img, HOSTILE[case])


def test_hostile(pair):
    each_case(pair, sorted(HOSTILE), hostile_setup, [
        ["info", "IMG"],
        ["convert", "-f", "qcow", "-O", "raw", "IMG", "out.raw"],
        ["map", "-f", "qcow", "IMG"],
    ])
