"""qed against qemu-img 7.2: create (every option and error), images made
by the same writes byte-identical (qemu-io on one side, qimg-io on the
other), convert both ways, info, map, check and repair (need-check bit,
QEMU's leak numbering), resize, rebase, commit, the refusals of the
commands qed has no support for, and hostile headers and tables."""
import re

import pytest

from conftest import QIMG, REF, batches, needs_format, run, same_each
import fmtcommon
from fmtcommon import (create_cases, LE32, LE64, each_case, info_no_disk_size,
                       mirror_writes, patch,
                       ref_check_clean, ref_compare, ref_io, same_files)

pytestmark = needs_format("qed")


def make(pair, name, *args):
    fmtcommon.make(pair, "qed", name, *args)


CREATE_CASES = [
    ["x.qed", "1M"],
    ["x.qed", "0"],
    ["x.qed", "1000"],                       # rounded up to a sector
    ["-o", "cluster_size=4k", "x.qed", "64M"],
    ["-o", "cluster_size=0x1000", "x.qed", "1M"],
    ["-o", "cluster_size=2M,table_size=8", "x.qed", "1G"],
    ["-o", "table_size=1", "x.qed", "1M"],
    ["-o", "table_size=2", "x.qed", "1M"],
    ["-o", "table_size=010", "x.qed", "1M"],  # an integer: octal 8
    ["-o", "table_size=0x2", "x.qed", "1M"],
    ["-o", "table_size=1k", "x.qed", "1M"],   # a size, not an integer
    ["-o", "table_size=1.5k", "x.qed", "1M"],
    ["-o", "table_size=abc", "x.qed", "1M"],
    ["-o", "table_size=3", "x.qed", "1M"],
    ["-o", "table_size=32", "x.qed", "1M"],
    ["-o", "table_size=0", "x.qed", "1M"],
    ["-o", "table_size=4294967300", "x.qed", "1M"],  # truncated to 4
    ["-o", "cluster_size=3000", "x.qed", "1M"],
    ["-o", "cluster_size=2k", "x.qed", "1M"],
    ["-o", "cluster_size=128M", "x.qed", "1M"],
    ["-o", "cluster_size=4295032832", "x.qed", "1M"],  # truncated to 64k
    ["-o", "cluster_size=64M,table_size=16", "x.qed", "1M"],
    ["-o", "cluster_size=4k,table_size=1", "x.qed", "2G"],
    ["x.qed", "8E"],
    ["-o", "backing_fmt=foo", "x.qed", "1M"],
    ["-o", "backing_fmt=io_uring", "x.qed", "1M"],
    ["-o", "backing_fmt=qcow2", "x.qed", "1M"],
    ["-u", "-b", "nonexist", "-F", "qcow2", "x.qed", "1M"],
    ["-u", "-b", "nonexist", "-F", "raw", "x.qed", "1M"],
    ["-u", "-b", "nonexist", "-F", "foo", "x.qed", "1M"],
    # commas of a string option print doubled, as qemu_opts_print does
    ["-u", "-b", 'json:{"driver": "raw", "file": "n"}', "-F", "raw",
     "x.qed", "1M"],
    ["-u", "-b", "b" * 5000, "-F", "raw", "x.qed", "1M"],
    ["-o", "preallocation=off", "x.qed", "1M"],
    ["-o", "preallocation=full", "x.qed", "1M"],
    ["-o", "preallocation=metadata", "x.qed", "1M"],
    ["-o", "preallocation=bogus", "x.qed", "1M"],
    ["-o", "nocow=on", "x.qed", "1M"],
    ["-o", "bogus=1", "x.qed", "1M"],
    ["-o", "help"],
    ["-o", "help", "x.qed"],
    ["-o", "?"],
]


@pytest.mark.parametrize("batch", batches(CREATE_CASES, 14))
def test_create(pair, batch):
    """Output and status as 7.2's, and the same bytes on disk."""
    create_cases(pair, "qed", "x.qed", batch)


def test_create_backing(pair):
    pair.same("create", "-q", "-f", "raw", "b.raw", "3M")
    pair.same("create", "-q", "-f", "qcow2", "b.qcow2", "5M")
    same_each(pair, "create", [
        ["-f", "qed", "-b", "b.raw", "-F", "raw", "out.img"],
        ["-f", "qed", "-b", "b.qcow2", "-F", "qcow2", "out.img"],
        ["-f", "qed", "-b", "b.qcow2", "-F", "qcow2", "out.img", "1M"],
        ["-f", "qed", "-b", "b.qcow2", "out.img"],
        ["-f", "qed", "-b", "b.raw", "-F", "qcow2", "out.img"],
        ["-f", "qed", "-b", "missing", "-F", "raw", "out.img"],
    ], scratch=())
    pair.same("create", "-q", "-f", "qed", "-b", "b.raw", "-F", "raw",
              "o1.qed")
    pair.same("create", "-q", "-f", "qed", "-b", "b.qcow2", "-F", "qcow2",
              "-o", "cluster_size=8k", "o2.qed")
    same_files(pair, "o1.qed", "o2.qed")
    for n in ("o1.qed", "o2.qed"):
        pair.same("info", n)
        pair.same("info", "--output=json", "--backing-chain", n)


GEOMETRIES = [[], ["-o", "cluster_size=4k"], ["-o", "table_size=2"],
              ["-o", "cluster_size=4k,table_size=16"]]

WRITES = [
    "write -P 0x11 0 100k",
    "write -P 0x22 1M 4k",
    "write -P 0x33 70000 3000",       # unaligned, inside a cluster
    "write -P 0x44 7M 2M",            # across an L2 range with 4k clusters
    "write -z 4M 2M",                 # zero clusters
    "write -P 0x55 4M 512",           # into a zero cluster
    "write -z 5000 70000",            # unaligned zeroes: data at the ends
    "write -z 0 64k",                 # zeroes over data
    "write -P 0x66 15M 1M",
    "write -P 0x77 15M 100",          # in place
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: ",".join(g) or "default")
def test_writes_byte_identical(pair, geom):
    """The same writes through qemu-io and qimg-io give the same bytes."""
    make(pair, "w.qed", *geom, "16M")
    mirror_writes(pair, "qed", "w.qed", WRITES)
    ref_check_clean(pair.path_qimg("w.qed"), "qed")
    pair.same("map", "--output=json", "w.qed")
    pair.same("check", "w.qed")


def test_writes_over_backing(pair):
    """Copy-on-write from the backing file (raw and qed below), zero
    clusters over it, a backing file shorter than the overlay."""
    pair.same("create", "-q", "-f", "raw", "b.raw", "6M")
    for d in pair.dirs():
        ref_io(d / "b.raw", "raw", "write -P 0xa1 0 6M")
    make(pair, "m.qed", "4M")
    for d in pair.dirs():
        ref_io(d / "m.qed", "qed", "write -P 0xb2 1M 2M")
    for base, fmt in (("b.raw", "raw"), ("m.qed", "qed")):
        name = f"o-{fmt}.qed"
        make(pair, name, "-b", base, "-F", fmt, "8M")
        mirror_writes(pair, "qed", name, [
            "write -P 1 100k 10k", "write -P 2 3M 1M", "write -z 6M 1M",
            "write -P 3 6M 512", "write -P 4 7900k 100k",
            "write -P 5 5000 1000"])
        pair.same("map", name)
        pair.same("compare", name, base)
    # qimg reads what qemu-io wrote, through the chain
    ref_compare(pair.path_ref("o-qed.qed"), pair.path_qimg("o-qed.qed"),
                "qed", "qed")


def test_convert(pair):
    """raw -> qed byte-identical (every geometry); qed -> raw, qcow2 and
    qed the same content; -c refused; -B keeps the backing file."""
    for d in pair.dirs():
        with open(d / "s.raw", "wb") as f:
            f.truncate(20 << 20)
            for off, pat in ((0, 1), (3 << 20, 2), (9 << 20, 3),
                             (19 << 20, 4)):
                f.seek(off)
                f.write(bytes([pat]) * 300000)
    for i, geom in enumerate(GEOMETRIES):
        pair.same("convert", "-O", "qed", *geom, "s.raw", f"c{i}.qed")
        same_files(pair, f"c{i}.qed")
    pair.same("convert", "-f", "qed", "-O", "raw", "c1.qed", "back.raw")
    same_files(pair, "back.raw")
    pair.same("convert", "-O", "qcow2", "c0.qed", "c.qcow2")
    same_files(pair, "c.qcow2")
    pair.same("convert", "-O", "qed", "c.qcow2", "cc.qed")
    same_files(pair, "cc.qed")
    pair.same("convert", "-c", "-O", "qed", "s.raw", "z.qed")
    pair.same("convert", "-O", "qed", "-B", "s.raw", "-F", "raw", "c0.qed",
              "ob.qed")
    same_files(pair, "ob.qed")
    pair.same("convert", "-n", "-O", "qed", "c2.qed", "c0.qed")
    same_files(pair, "c0.qed")
    pair.same("compare", "c0.qed", "c2.qed")
    # qimg reads the reference's image and the reference qimg's
    ref_compare(pair.path_ref("c3.qed"), pair.path_qimg("back.raw"), "qed",
                "raw")


def test_info_map(pair):
    make(pair, "i.qed", "-o", "cluster_size=16k", "5M")
    for d in pair.dirs():
        ref_io(d / "i.qed", "qed", "write -P 1 0 40k", "write -z 1M 64k",
               "write -P 2 3M 16k")
    for args in (["info", "i.qed"], ["info", "--output=json", "i.qed"],
                 ["info", "-f", "qed", "-U", "i.qed"],
                 ["map", "i.qed"], ["map", "--output=json", "i.qed"],
                 ["map", "--start-offset=1M", "--max-length=1M", "i.qed"],
                 ["info", "--image-opts", "driver=qed,file.filename=i.qed"],
                 ["info", "--image-opts",
                  "driver=qed,file.filename=i.qed,foo=1"],
                 ["info", "-f", "qed", "nonexistent"]):
        pair.same(*args)


def need_check(d, name):
    with open(d / name, "r+b") as f:
        f.seek(16)
        feat = int.from_bytes(f.read(8), "little") | 2
        f.seek(16)
        f.write(LE64(feat))


def test_need_check(pair):
    """A need-check image: info says it was not shut down cleanly, read-only
    commands read it as it is, check reports without repairing, and a
    writable open repairs it (here with a corrupt L2 entry) and clears the
    bit."""
    make(pair, "n.qed", "-o", "cluster_size=4k", "1M")
    for d in pair.dirs():
        ref_io(d / "n.qed", "qed", "write -P 1 0 12k")
        need_check(d, "n.qed")
        # L2 table at 0x5000 + 3 clusters of data: entry 1 past EOF
        patch(d / "n.qed", [(0x5000 + 3 * 4096 + 8, LE64(1 << 30))])
    pair.same("info", "n.qed")
    pair.same("info", "--output=json", "n.qed")
    pair.same("check", "n.qed")
    pair.same("map", "n.qed")
    same_files(pair, "n.qed")
    pair.same("resize", "n.qed", "2M")     # writable open: repaired
    same_files(pair, "n.qed")
    pair.same("check", "n.qed")
    for d in pair.dirs():
        need_check(d, "n.qed")
    pair.same("check", "-r", "all", "n.qed")
    same_files(pair, "n.qed")


def test_check_and_repair(pair):
    """QEMU's counters (and its cluster numbering, which reports leaks in
    large 4 KiB-cluster images), corruptions and their repair."""
    make(pair, "big.qed", "-o", "cluster_size=4k", "64M")
    for d in pair.dirs():
        ref_io(d / "big.qed", "qed", "write -P 1 0 40M")
    pair.same("check", "big.qed")
    pair.same("check", "--output=json", "big.qed")
    pair.same("check", "-r", "leaks", "big.qed")

    make(pair, "c.qed", "-o", "cluster_size=4k", "2M")
    for d in pair.dirs():
        ref_io(d / "c.qed", "qed", "write -P 1 0 8k", "write -P 2 1M 4k")
        # L2 at 0x5000 (4 clusters), data at 0x4000, 0x9000, 0xa000
        patch(d / "c.qed", [
            (0x5000 + 8 * 2, LE64(0x4000)),        # referenced twice
            (0x5000 + 8 * 3, LE64(0x4100)),        # unaligned
            (0x5000 + 8 * 4, LE64(1 << 40)),       # past EOF
            (0x5000 + 8 * 5, LE64(0x1000)),        # inside the header? L1
        ])
        with open(d / "c.qed", "ab") as f:
            f.write(b"\0" * 8192)                  # leaked clusters
    pair.same("check", "c.qed")
    pair.same("check", "--output=json", "c.qed")
    for d in pair.dirs():
        (d / "c2.qed").write_bytes((d / "c.qed").read_bytes())
    pair.same("check", "-r", "leaks", "c.qed")
    same_files(pair, "c.qed")
    pair.same("check", "-r", "all", "c2.qed")
    same_files(pair, "c2.qed")
    pair.same("check", "c2.qed")
    # an L1 entry past the end: repaired in L1
    make(pair, "l.qed", "1M")
    for d in pair.dirs():
        patch(d / "l.qed", [(65536, LE64(1 << 40))])
    pair.same("check", "l.qed")
    pair.same("check", "-r", "all", "l.qed")
    same_files(pair, "l.qed")


def test_resize(pair):
    pair.same("create", "-q", "-f", "raw", "big.raw", "8M")
    pair.same("create", "-q", "-f", "raw", "small.raw", "1M")
    make(pair, "r.qed", "2M")
    make(pair, "rb.qed", "-b", "big.raw", "-F", "raw", "2M")
    make(pair, "rs.qed", "-b", "small.raw", "-F", "raw", "2M")
    same_each(pair, "resize", [
        ["r.qed", "4M"], ["r.qed", "+1M"], ["r.qed", "4000"],
        ["--shrink", "r.qed", "1M"], ["r.qed", "1M"],
        ["--preallocation=falloc", "r.qed", "8M"],
        ["--preallocation=metadata", "r.qed", "8M"],
        ["r.qed", "1P"], ["r.qed", "8E"],
        ["rb.qed", "4M"], ["rs.qed", "4M"], ["-f", "qed", "r.qed", "9M"],
    ], scratch=())
    same_files(pair, "r.qed", "rb.qed", "rs.qed")


def test_rebase_commit(pair):
    for d in pair.dirs():
        for n, p in (("a.raw", 1), ("b.raw", 2)):
            with open(d / n, "wb") as f:
                f.write(bytes([p]) * (2 << 20))
    make(pair, "t.qed", "-b", "a.raw", "-F", "raw")
    make(pair, "tiny.qed", "-o", "cluster_size=4k", "-b", "a.raw", "-F",
         "raw")
    for d in pair.dirs():
        ref_io(d / "t.qed", "qed", "write -P 9 64k 64k")
    same_each(pair, "rebase", [
        ["-u", "-b", "b.raw", "-F", "raw", "t.qed"],
        ["-u", "-b", "a.raw", "-F", "qcow2", "t.qed"],
        ["-u", "-b", "", "t.qed"],
        ["-u", "-b", "a.raw", "-F", "raw", "t.qed"],
        ["-u", "-b", "x" * 5000, "-F", "raw", "tiny.qed"],
        ["-u", "-b", "x" * 4000, "-F", "raw", "tiny.qed"],
        ["-b", "b.raw", "-F", "raw", "t.qed"],
    ], scratch=())
    same_files(pair, "t.qed", "tiny.qed")
    info_no_disk_size(pair, "t.qed")
    # commit into a qed base: qed cannot be emptied, so it keeps its data;
    # the base's layout depends on the order in which QEMU's commit job
    # (requests in parallel) completes: its content is compared
    make(pair, "base.qed", "2M")
    make(pair, "top.qed", "-b", "base.qed", "-F", "qed")
    for d in pair.dirs():
        ref_io(d / "top.qed", "qed", "write -P 5 0 64k", "write -P 6 1M 4k")
    pair.same("commit", "top.qed")
    same_files(pair, "top.qed")
    ref_compare(pair.path_ref("base.qed"), pair.path_qimg("base.qed"), "qed",
                "qed")
    pair.same("commit", "-d", "top.qed")


def test_refusals(pair):
    make(pair, "f.qed", "1M")
    same_each(pair, "amend", [["-o", "size=2M", "f.qed"],
                              ["-o", "help", "-f", "qed", "f.qed"]],
              scratch=())
    same_each(pair, "snapshot", [["-l", "f.qed"], ["-c", "s", "f.qed"],
                                 ["-a", "s", "f.qed"], ["-d", "s", "f.qed"]],
              scratch=())
    same_each(pair, "bitmap", [["--remove", "f.qed", "b"]], scratch=())
    # QEMU names the node with a random number: compared without it
    r, q = pair.both("bitmap", "--add", "f.qed", "b")
    assert (q.rc, q.out) == (r.rc, r.out)
    assert re.sub(r"#block\d+", "N", q.err) == re.sub(r"#block\d+", "N", r.err)
    same_each(pair, "measure", [["-O", "qed", "--size", "1M"],
                                ["-O", "qcow2", "f.qed"],
                                ["-O", "raw", "f.qed"]], scratch=())


HEADER_CASES = {
    "magic": [(0, b"QEX\0")],
    "features": [(16, LE64(0x100))],
    "features-high": [(16, LE64(1 << 63 | 1))],
    "cluster-0": [(4, LE32(0))],
    "cluster-odd": [(4, LE32(3000))],
    "cluster-huge": [(4, LE32(1 << 27))],
    "table-0": [(8, LE32(0))],
    "table-3": [(8, LE32(3))],
    "table-32": [(8, LE32(32))],
    "table-1": [(8, LE32(1))],
    "header-huge": [(12, LE32(0xffffffff))],
    "header-0": [(12, LE32(0))],
    "size-odd": [(48, LE64(1000))],
    "size-huge": [(48, LE64(1 << 62))],
    "size-max": [(48, LE64(0xfffffffffffffe00))],
    "l1-unaligned": [(40, LE64(4096 + 8))],
    "l1-past-eof": [(40, LE64(1 << 40))],
    "l1-zero": [(40, LE64(0))],
    "l1-wraps": [(40, LE64(0xfffffffffffff000))],
    "backing-offset": [(16, LE64(1)), (56, LE32(4000)), (60, LE32(200))],
    "backing-wraps": [(16, LE64(1)), (56, LE32(0xffffffff)), (60, LE32(2))],
    "backing-long": [(12, LE32(2)), (16, LE64(1)), (56, LE32(64)),
                     (60, LE32(5000))],
    "backing-missing": [(16, LE64(1)), (56, LE32(64)), (60, LE32(4)),
                        (64, b"nope")],
    "no-probe-no-backing": [(16, LE64(4))],
    "short": None,
}

TABLE_CASES = {
    "autoclear": [(32, LE64(0xff))],
    "compat": [(24, LE64(0xff))],
    "need-check": [(16, LE64(2))],
    "l1-entry-unaligned": [(4096, LE64(0x5008))],
    "l1-entry-past-eof": [(4096, LE64(1 << 40))],
    "l1-entry-header": [(4096, LE64(0))],
    "l1-entry-self": [(4096, LE64(4096))],
    "l2-entry-past-eof": [(0x5000, LE64(1 << 40))],
    "l2-entry-unaligned": [(0x5000, LE64(0x4001))],
    "l2-entry-header": [(0x5000, LE64(0x10))],
    "l2-entry-2": [(0x5000, LE64(2))],
}


def hostile_setup(cases):
    """setup for each_case: a copy of one valid image, patched."""
    def setup(d, case):
        base = d / "base.qed"
        if not base.exists():
            run(REF, ["create", "-q", "-f", "qed", "-o", "cluster_size=4k",
                      base, "1M"], d)
            ref_io(base, "qed", "write -P 1 0 8k")
        img = d / f"{case}.img"
        if cases[case] is None:
            img.write_bytes(b"QED\0" + b"\0" * 20)   # a short file
            return
        img.write_bytes(base.read_bytes())
        patch(img, cases[case])
    return setup


def test_hostile_headers(pair):
    """Patched header fields: the same messages and statuses."""
    each_case(pair, sorted(HEADER_CASES), hostile_setup(HEADER_CASES), [
        ["info", "IMG"],
        ["convert", "-f", "qed", "-O", "raw", "IMG", "out.raw"],
    ])


def test_hostile_tables(pair):
    """Patched tables and feature bits: reads, maps, checks and repairs
    (writable opens) as 7.2's, never a crash."""
    each_case(pair, sorted(TABLE_CASES), hostile_setup(TABLE_CASES), [
        ["convert", "-f", "qed", "-O", "raw", "IMG", "out.raw"],
        ["map", "-f", "qed", "IMG"],
        ["check", "-f", "qed", "IMG"],
        ["check", "-f", "qed", "-r", "all", "IMG"],
        ["resize", "-f", "qed", "IMG", "2M"],
        ["info", "--output=json", "IMG"],
    ])


def test_huge_tables_refused(workdir):
    """A zero-size image with 1 GiB tables, which QEMU 7.2 opens by
    allocating and reading 1 GiB: qimg refuses it (docs/LIMITS.md,
    QED_MAX_TABLE_BYTES) with a clear message, in little memory."""
    img = workdir / "t.qed"
    run(REF, ["create", "-q", "-f", "qed", img, "0"], workdir)
    patch(img, [(4, LE32(64 << 20)), (8, LE32(16)), (40, LE64(64 << 20))])
    with open(img, "r+b") as f:
        f.truncate(2 << 30)
    q = run("/usr/bin/time", ["-f", "%M", QIMG, "info", img], workdir)
    assert q.rc == 1
    assert "larger than qimg's limit" in q.err
    assert int(q.err.strip().splitlines()[-1]) < 100 * 1024   # KiB
    # and create refuses to make such an image (7.2 writes a 1 GiB table)
    q = run(QIMG, ["create", "-f", "qed", "-o",
                   "cluster_size=64M,table_size=16", workdir / "n.qed", "0"],
            workdir)
    assert q.rc == 1 and "larger than qimg's limit" in q.err, q


def test_backing_self(workdir):
    """An image naming itself as its backing file: QEMU 7.2 recurses until
    memory runs out; qimg refuses at once (info, which does not open the
    backing file, works in both)."""
    img = workdir / "s.qed"
    run(REF, ["create", "-q", "-f", "qed", img, "1M"], workdir)
    patch(img, [(16, LE64(1)), (56, LE32(64) + LE32(5)), (64, b"s.qed")])
    q = run(QIMG, ["convert", "-O", "raw", img, workdir / "o.raw"], workdir)
    assert q.rc == 1 and "refers to itself" in q.err, q
    assert run(QIMG, ["info", img], workdir).rc == 0
