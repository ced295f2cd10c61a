"""Persistent bitmaps between qimg and QEMU: guest writes mark enabled
bitmaps as QEMU marks them (qimg-io against qemu-io, in several geometries);
convert --bitmaps; bitmaps written by one tool read, changed and copied by
the other, their contents compared through qemu-nbd's dirty-bitmap export;
resize, measure, info, check, snapshot and commit on images with bitmaps.
"""
import shutil

import pytest

from conftest import QIMG, REF, run
from test_bitmap import (compare, dirty_extents, io, io_both, ref_sh, same,
                         set_bitmap_flags)

WRITES = ("write -P 1 100k 3k", "write -z 1M 64k", "discard 2M 4k",
          "writec -P 3 3M 64k", "write -P 4 3968k 128k",
          "write -z -u 1536k 64k")


@pytest.mark.parametrize("geom,compressed", [
    ([], "writec -P 3 3M 64k"),
    (["-o", "cluster_size=512"], "writec -P 3 3M 512"),
    (["-o", "cluster_size=4k"], "writec -P 3 3M 4k"),
    (["-o", "cluster_size=2M"], "writec -P 3 2M 2M"),
    (["-o", "extended_l2=on,cluster_size=128k"], "writec -P 3 3M 128k"),
    (["-o", "refcount_bits=1"], "writec -P 3 3M 64k"),
], ids=["64k", "512", "4k", "2M", "extl2", "rc1"])
def test_writes_mark_bitmaps(pair, geom, compressed):
    """The same writes through qemu-io and qimg-io: QEMU sees the same
    dirty areas in both images.  (Guest clusters may land elsewhere: qimg's
    cluster allocation and zero/discard handling are not QEMU's in every
    case, so the files are not compared here; test_bitmap.py compares
    them where they agree.)"""
    pair.setup(lambda d: ref_sh(
        d, ["create", "-q", "-f", "qcow2", *geom, "w.qcow2", "4100k"],
        ["bitmap", "--add", "w.qcow2", "dflt"],
        ["bitmap", "--add", "-g", "512", "w.qcow2", "fine"],
        ["bitmap", "--add", "-g", "2M", "w.qcow2", "coarse"],
        ["bitmap", "--add", "--disable", "w.qcow2", "off"]))
    io_both(pair, "w.qcow2", *[compressed if w.startswith("writec") else w
                               for w in WRITES])
    same_info(pair, "w.qcow2")
    chk = run(REF, ["check", "w.qcow2"], pair.qimg_dir)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    for name in ("dflt", "fine", "coarse", "off"):
        ext = dirty_extents(pair.path_qimg("w.qcow2"), name, pair.qimg_dir)
        assert ext == dirty_extents(pair.path_ref("w.qcow2"), name,
                                    pair.ref_dir), name
        assert (ext == []) == (name == "off"), (name, ext)


def make_source(d):
    ref_sh(d, ["create", "-q", "-f", "qcow2", "s.qcow2", "4M"])
    for args in (["x1"], ["-g", "512", "x2"], ["--disable", "x3"],
                 ["-g", "1M", "x4"], ["x5"]):
        ref_sh(d, ["bitmap", "--add", *args[:-1], "s.qcow2", args[-1]])
    io(True, d, d / "s.qcow2", "write -P 1 0 64k", "write -P 2 2M 3k")
    ref_sh(d, ["create", "-q", "-f", "qcow2", "e.qcow2", "4M"],
           ["bitmap", "--add", "e.qcow2", "x4"],
           ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2",
            "4M"],
           ["create", "-q", "-f", "raw", "r.img", "4M"])
    shutil.copy(d / "s.qcow2", d / "iu.qcow2")
    set_bitmap_flags(d / "iu.qcow2", 0, 3)
    set_bitmap_flags(d / "iu.qcow2", 2, 1)


CONVERT = [
    ["-O", "qcow2", "s.qcow2", "c.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=4k", "s.qcow2", "c.qcow2"],
    ["-c", "-O", "qcow2", "s.qcow2", "c.qcow2"],
    ["-O", "qcow2", "iu.qcow2", "c.qcow2"],
    ["--skip-broken-bitmaps", "-O", "qcow2", "iu.qcow2", "c.qcow2"],
    ["--skip-broken-bitmaps", "-n", "-O", "qcow2", "iu.qcow2", "e.qcow2"],
    ["-n", "-O", "qcow2", "s.qcow2", "e.qcow2"],
    ["-n", "s.qcow2", "e.qcow2"],
    ["-n", "-O", "qcow2", "s.qcow2", "v2.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10", "s.qcow2", "c.qcow2"],
    ["-O", "raw", "s.qcow2", "c.raw"],
    ["-O", "qcow2", "r.img", "c.qcow2"],
    ["-O", "qcow2", "v2.qcow2", "c.qcow2"],
    ["-O", "qcow2", "s.qcow2", "r.img", "c.qcow2"],
    ["-O", "qcow2", "-B", "r.img", "-F", "raw", "s.qcow2", "c.qcow2"],
]


@pytest.mark.parametrize("args", CONVERT)
def test_convert_bitmaps(pair, args):
    pair.setup(make_source)
    files = ("c.qcow2", "e.qcow2", "v2.qcow2", "c.raw")
    same(pair, "convert", "--bitmaps", *args, files=files)
    if pair.path_ref("c.qcow2").exists():
        same(pair, "info", "--output=json", "c.qcow2")
        same(pair, "check", "c.qcow2")


def test_convert_skip_broken_needs_bitmaps(pair):
    pair.setup(make_source)
    same(pair, "convert", "--skip-broken-bitmaps", "-O", "qcow2", "s.qcow2",
         "c.qcow2", files=("c.qcow2",))


def bitmap_listing(d, img):
    """The bitmaps section of the reference's info."""
    import json
    r = run(REF, ["info", "--output=json", img], d)
    assert r.rc == 0, r
    return json.loads(r.out)["format-specific"]["data"]["bitmaps"]


def test_cross_tool_round_trip(pair):
    """Bitmaps made by qimg copied by QEMU and the other way round: every
    copy shows the original's dirty areas to QEMU."""
    pair.setup(lambda d: ref_sh(d, ["create", "-q", "-f", "qcow2", "m.qcow2",
                                    "4M"]))
    d = pair.qimg_dir
    for args in (["a"], ["-g", "512", "b"], ["-g", "128k", "--disable", "c"]):
        r = run(QIMG, ["bitmap", "--add", "m.qcow2", *args[:-1], args[-1]], d)
        assert r.rc == 0, r
    io(False, d, d / "m.qcow2", *WRITES)
    r = run(QIMG, ["bitmap", "--enable", "--merge", "b", "m.qcow2", "c"], d)
    assert r.rc == 0, r
    chk = run(REF, ["check", "m.qcow2"], d)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    listing = bitmap_listing(d, "m.qcow2")
    # QEMU copies qimg's bitmaps; qimg copies QEMU's copy back.
    for tool, src, dst in ((REF, "m.qcow2", "q1.qcow2"),
                           (QIMG, "q1.qcow2", "q2.qcow2")):
        r = run(tool, ["convert", "--bitmaps", "-O", "qcow2", src, dst], d)
        assert r.rc == 0, r
        assert bitmap_listing(d, dst) == listing
    # QEMU adds and merges into a qimg-made image, qimg reads it again.
    r = run(REF, ["bitmap", "--add", "--merge", "a", "-g", "4k", "m.qcow2",
                  "byref"], d)
    assert r.rc == 0, r
    r = run(QIMG, ["convert", "--bitmaps", "-O", "qcow2", "m.qcow2",
                   "q3.qcow2"], d)
    assert r.rc == 0, r
    for img in ("q1.qcow2", "q2.qcow2", "q3.qcow2"):
        chk = run(REF, ["check", img], d)
        assert chk.rc == 0 and "No errors" in chk.out, chk
        for name in ("a", "b", "c"):
            assert dirty_extents(d / img, name, d) == \
                dirty_extents(d / "m.qcow2", name, d), (img, name)
    assert dirty_extents(d / "q3.qcow2", "byref", d) == \
        dirty_extents(d / "m.qcow2", "a", d)


def test_resize_measure_info(pair):
    pair.setup(make_source)
    steps = [
        ["resize", "s.qcow2", "6M"], ["resize", "--shrink", "s.qcow2", "3M"],
        ["resize", "iu.qcow2", "8M"], ["resize", "--shrink", "iu.qcow2", "1M"],
        ["resize", "iu.qcow2", "1000"],
        ["measure", "-O", "qcow2", "s.qcow2"],
        ["measure", "--output=json", "-O", "qcow2", "iu.qcow2"],
        ["measure", "-O", "qcow2", "-o", "cluster_size=4k", "s.qcow2"],
        ["measure", "-O", "raw", "s.qcow2"],
        ["info", "iu.qcow2"], ["info", "--output=json", "iu.qcow2"],
        ["check", "iu.qcow2"],
        ["amend", "-o", "lazy_refcounts=on", "s.qcow2"],
    ]
    bad = [compare(pair, *s, files=("s.qcow2", "iu.qcow2")) for s in steps]
    # A refcount width change lays clusters out differently (bitmaps or
    # not): outputs only.
    bad.append(compare(pair, "amend", "-o", "refcount_bits=4", "iu.qcow2"))
    chk = run(REF, ["check", "iu.qcow2"], pair.qimg_dir)
    if chk.rc or "No errors" not in chk.out:
        bad.append(f"after amend: {chk!r}")
    # check -r stores the bitmaps back where QEMU does.
    bad.append(compare(pair, "check", "-r", "all", "s.qcow2",
                       files=("s.qcow2",)))
    chk = run(REF, ["check", "s.qcow2"], pair.qimg_dir)
    if chk.rc or "No errors" not in chk.out:
        bad.append(f"after check -r: {chk!r}")
    bad = [b for b in bad if b]
    assert not bad, "\n".join(bad)


def test_snapshots_with_bitmaps(pair):
    """QEMU refuses to revert under bitmaps; creating and deleting
    snapshots keeps them (snapshots carry timestamps: one image for both)."""
    d = pair.ref_dir
    make_source(d)
    ref_sh(d, ["snapshot", "-c", "sn", "s.qcow2"])
    for f in ("s.qcow2", "iu.qcow2"):
        shutil.copy(d / f, pair.qimg_dir / f)
    for args in (["-a", "sn", "s.qcow2"], ["-a", "nope", "s.qcow2"],
                 ["-a", "sn", "iu.qcow2"]):
        same(pair, "snapshot", *args, files=("s.qcow2", "iu.qcow2"))
    # Deleting a snapshot frees clusters in another order than QEMU (with
    # or without bitmaps): outputs and contents only.
    same(pair, "snapshot", "-d", "sn", "s.qcow2")
    same(pair, "snapshot", "-a", "sn", "s.qcow2")
    same(pair, "check", "s.qcow2")
    r, q = pair.both("snapshot", "-c", "new", "s.qcow2")
    assert (r.rc, r.out, r.err) == (q.rc, q.out, q.err)
    chk = run(REF, ["check", "s.qcow2"], pair.qimg_dir)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    assert dirty_extents(pair.path_qimg("s.qcow2"), "x2", pair.qimg_dir) == \
        dirty_extents(pair.path_ref("s.qcow2"), "x2", pair.ref_dir)


def same_info(pair, img):
    """info alike but for "disk size" (freed clusters are punched out
    differently)."""
    r, q = pair.both("info", img)
    strip = lambda t: "\n".join(l for l in t.splitlines()
                                if not l.startswith("disk size:"))
    assert (q.rc, strip(q.out), q.err) == (r.rc, strip(r.out), r.err), (r, q)


def test_commit_with_bitmaps(pair):
    def make(d):
        ref_sh(d, ["create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
               ["bitmap", "--add", "base.qcow2", "bb"],
               ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
                "qcow2", "top.qcow2"],
               ["bitmap", "--add", "top.qcow2", "tb"])
        io(True, d, d / "top.qcow2", "write -P 1 0 64k", "write -P 2 1M 4k")
    pair.setup(make)
    # QEMU's commit job allocates in no fixed order: no byte comparison.
    same(pair, "commit", "top.qcow2")
    for img in ("base.qcow2", "top.qcow2"):
        chk = run(REF, ["check", img], pair.qimg_dir)
        assert chk.rc == 0 and "No errors" in chk.out, chk
        same_info(pair, img)
    for img, name in (("base.qcow2", "bb"), ("top.qcow2", "tb")):
        assert dirty_extents(pair.path_qimg(img), name, pair.qimg_dir) == \
            dirty_extents(pair.path_ref(img), name, pair.ref_dir)


def test_stale_bitmaps(pair):
    """A program without bitmap support cleared the autoclear bit: the
    bitmaps are ignored with QEMU's warning and dropped by a writable
    open; check reports their clusters as leaked."""
    def make(d):
        make_source(d)
        for img in ("s.qcow2", "iu.qcow2"):
            data = bytearray((d / img).read_bytes())
            data[95] &= 0xfe
            (d / img).write_bytes(bytes(data))
    pair.setup(make)
    for args in (["info", "s.qcow2"], ["check", "s.qcow2"],
                 ["convert", "--bitmaps", "-O", "qcow2", "s.qcow2", "c.qcow2"],
                 ["measure", "-O", "qcow2", "s.qcow2"],
                 ["bitmap", "--add", "iu.qcow2", "n"]):
        same(pair, *args, files=("s.qcow2", "c.qcow2", "iu.qcow2"))
    # The repair leaves the same refcounts; it allocates nothing here.
    for args in (["check", "-r", "all", "s.qcow2"], ["check", "s.qcow2"]):
        same(pair, *args)
    same_info(pair, "s.qcow2")


def test_parallel_writers_mark(pair):
    """convert -W -m 8 writes from several threads into a target with
    enabled bitmaps: every write is marked, as in QEMU."""
    def make(d):
        ref_sh(d, ["create", "-q", "-f", "qcow2", "src.qcow2", "8M"],
               ["create", "-q", "-f", "qcow2", "t.qcow2", "8M"],
               ["bitmap", "--add", "-g", "512", "t.qcow2", "fine"],
               ["bitmap", "--add", "--disable", "t.qcow2", "off"])
        io(True, d, d / "src.qcow2", "write -P 1 0 1M", "write -P 2 3M 512k",
           "write -P 3 7M 64k")
    pair.setup(make)
    same(pair, "convert", "-n", "-W", "-m", "8", "--target-is-zero", "-O",
         "qcow2", "src.qcow2", "t.qcow2")
    chk = run(REF, ["check", "t.qcow2"], pair.qimg_dir)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    for name in ("fine", "off"):
        ext = dirty_extents(pair.path_qimg("t.qcow2"), name, pair.qimg_dir)
        assert ext == dirty_extents(pair.path_ref("t.qcow2"), name,
                                    pair.ref_dir)
        # Only the data areas were written: some, not all, are dirty.
        assert (0 < len(ext) and ext != [(0, 8 << 20)]) == (name == "fine")


def test_downgrade_with_bitmaps(pair):
    """amend to compat=0.10 keeps the extension in a v2 header, where
    nothing can vouch for it: the next opens warn and ignore it."""
    pair.setup(make_source)
    for args in (["amend", "-o", "compat=0.10", "s.qcow2"],
                 ["info", "s.qcow2"], ["check", "s.qcow2"],
                 ["bitmap", "--add", "s.qcow2", "n"],
                 ["amend", "-o", "compat=1.1", "s.qcow2"],
                 ["bitmap", "--add", "s.qcow2", "n"], ["info", "s.qcow2"]):
        same(pair, *args, files=("s.qcow2",))
