"""qcow2 write path interop: qimg writes patterns, zeroes, discards and
compressed clusters into qcow2 images of every geometry; the reference
qemu-img must find them clean (check) and identical in content (compare) to
a raw image the reference qemu-io wrote with the same operations.  And the
other way round: qimg reads what qemu-io wrote into reference-made images."""
import subprocess

import pytest

from conftest import BUILD, QEMU_IO, REF, run

QIMG_IO = BUILD / "tests" / "qimg-io"

GEOMETRIES = [
    [],
    ["-o", "cluster_size=4k"],
    ["-o", "cluster_size=512"],
    ["-o", "cluster_size=2M"],
    ["-o", "compat=0.10"],
    ["-o", "extended_l2=on"],
    ["-o", "extended_l2=on,cluster_size=16k"],
    ["-o", "refcount_bits=1"],
    ["-o", "refcount_bits=2"],
    ["-o", "refcount_bits=4"],
    ["-o", "refcount_bits=8"],
    ["-o", "refcount_bits=32"],
    ["-o", "refcount_bits=64,cluster_size=512"],
    ["-o", "compression_type=zstd"],
    ["-o", "lazy_refcounts=on"],
    ["-o", "preallocation=metadata"],
    ["-o", "preallocation=full,cluster_size=16k"],
]


def ops_for(cluster):
    """Operations as (qimg-io command, qemu-io command for the raw mirror)."""
    c = cluster
    ops = [
        ("write -P 0x11 0 100k", "write -P 0x11 0 100k"),
        ("write -P 0x22 1M 4k", "write -P 0x22 1M 4k"),
        ("write -P 0x33 70000 3000", "write -P 0x33 70000 3000"),
        ("write -P 0x44 19M 1M", "write -P 0x44 19M 1M"),
        ("write -z 4M 2M", "write -z 4M 2M"),
        ("write -P 0x55 4M 512", "write -P 0x55 4M 512"),
        ("write -z -u 5M 300k", "write -z 5M 300k"),
        (f"writec -P 0x66 8M {c}", f"write -P 0x66 8M {c}"),
        (f"writec -P 0x67 {8*1024*1024 + c} {c}",
         f"write -P 0x67 {8*1024*1024 + c} {c}"),
        ("write -P 0x77 8M 100", "write -P 0x77 8M 100"),
        ("write -P 0x88 12M 3M", "write -P 0x88 12M 3M"),
    ]
    return ops


def cluster_of(geom):
    for g in geom:
        for kv in g.split(","):
            if kv.startswith("cluster_size="):
                v = kv.split("=")[1]
                return int(v[:-1]) * 1024 if v.endswith("k") else \
                    int(v[:-1]) << 20 if v.endswith("M") else int(v)
    return 65536


def qemu_io_raw(path, cmds):
    args = [str(QEMU_IO), "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    args.append(str(path))
    subprocess.run(args, check=True, capture_output=True)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: ",".join(g) or "default")
def test_qimg_writes_reference_reads(tmp_path, geom):
    img, mirror = tmp_path / "t.qcow2", tmp_path / "t.raw"
    r = run(QIMG_IO.parent.parent / "qimg",
            ["create", "-q", "-f", "qcow2"] + geom + [img, "20M"], tmp_path)
    assert r.rc == 0, r
    run(REF, ["create", "-q", "-f", "raw", mirror, "20M"], tmp_path)
    ops = ops_for(cluster_of(geom))
    if any("preallocation=" in g for g in geom):
        # every cluster is allocated: compressed writes are refused there
        # (test_compressed_write_into_allocated_cluster)
        ops = [(q.replace("writec", "write"), r) for q, r in ops]
    r = run(QIMG_IO, ["-f", "qcow2", img] + [o[0] for o in ops], tmp_path)
    assert r.rc == 0, r
    qemu_io_raw(mirror, [o[1] for o in ops])
    chk = run(REF, ["check", img], tmp_path)
    assert chk.rc == 0 and "No errors were found" in chk.out, chk
    cmp = run(REF, ["compare", "-f", "qcow2", "-F", "raw", img, mirror], tmp_path)
    assert cmp.rc == 0, cmp
    # And qimg reads back what it wrote, identically to the reference.
    for args in (["map", "--output=json", img], ["info", img],
                 ["check", img]):
        q = run(BUILD / "qemu-img", args, tmp_path)
        r = run(REF, args, tmp_path)
        assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err), (args, r, q)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: ",".join(g) or "default")
def test_reference_writes_qimg_reads(tmp_path, geom):
    img, mirror = tmp_path / "t.qcow2", tmp_path / "t.raw"
    r = run(REF, ["create", "-q", "-f", "qcow2"] + geom + [img, "20M"], tmp_path)
    assert r.rc == 0, r
    ops = [o[1] for o in ops_for(cluster_of(geom))]
    args = [str(QEMU_IO), "-f", "qcow2"]
    for c in ops:
        args += ["-c", c]
    subprocess.run(args + [str(img)], check=True, capture_output=True)
    # Compressed clusters from the reference too.
    r = run(REF, ["convert", "-c", "-O", "qcow2"] + geom[:0] + [img, tmp_path / "c.qcow2"],
            tmp_path)
    assert r.rc == 0, r
    for name in ("t.qcow2", "c.qcow2"):
        for a in (["map", "--output=json", name], ["map", name], ["check", name],
                  ["info", "--output=json", name],
                  ["compare", name, "t.qcow2"]):
            q = run(BUILD / "qemu-img", a, tmp_path)
            rr = run(REF, a, tmp_path)
            assert (q.rc, q.out, q.err) == (rr.rc, rr.out, rr.err), (a, rr, q)


def test_dirty_image_repaired_on_writable_open(tmp_path):
    """An image left dirty (lazy refcounts after a crash) with a leaked
    cluster is repaired and marked clean when qimg opens it for writing,
    and left alone by read-only commands, as QEMU does."""
    img = tmp_path / "d.qcow2"
    run(REF, ["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "4M"],
        tmp_path)
    subprocess.run([str(QEMU_IO), "-c", "write -P 5 0 64k", str(img)], check=True,
                   capture_output=True)
    with open(img, "r+b") as f:
        f.seek(79)
        f.write(b"\x01")                       # dirty bit
        f.seek(0x20000 + 2 * 9)
        f.write(b"\x00\x01")                   # leak cluster 9
        f.truncate(10 * 65536)
    for args in (["info", img], ["check", img], ["map", "--output=json", img]):
        q = run(BUILD / "qemu-img", args, tmp_path)
        r = run(REF, args, tmp_path)
        assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err), (args, r, q)
    r = run(QIMG_IO, ["-f", "qcow2", img, "read -P 5 0 64k"], tmp_path)
    assert r.rc == 0, r
    with open(img, "rb") as f:
        f.seek(72)
        assert f.read(8) == bytes(8), "dirty bit not cleared"
    chk = run(REF, ["check", img], tmp_path)
    assert chk.rc == 0 and "No errors" in chk.out, chk


def _compressed_pair(tmp_path, ctype, cluster, src):
    """convert -c src with both tools; the paths of their outputs."""
    opts = ["-o", f"compression_type={ctype},cluster_size={cluster}"]
    r = run(REF, ["convert", "-c", "-O", "qcow2", *opts, src, tmp_path / "r.qcow2"],
            tmp_path)
    q = run(BUILD / "qemu-img", ["convert", "-c", "-O", "qcow2", *opts, src,
                                 tmp_path / "q.qcow2"], tmp_path)
    assert r.rc == q.rc == 0, (r, q)
    return tmp_path / "r.qcow2", tmp_path / "q.qcow2"


def _mixed_source(tmp_path):
    import random
    rnd = random.Random(7)
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        for i in range(48):
            if i % 7 == 3:
                f.write(bytes(65536))
            else:
                f.write(bytes(rnd.choice(b"\0\1\2AB") for _ in range(65536)))
    return src


@pytest.mark.parametrize("cluster", ["64k", "4k"])
def test_compressed_convert_zstd_is_byte_identical(tmp_path, cluster):
    """convert -c with zstd lays out and packs compressed clusters exactly
    as qemu-img does (same allocation, same sector padding at the end)."""
    r, q = _compressed_pair(tmp_path, "zstd", cluster, _mixed_source(tmp_path))
    assert r.read_bytes() == q.read_bytes()


def test_compressed_convert_any_worker_count_same_image(tmp_path):
    """Compression contexts are shared through a pool (qcow2-compress.c):
    one worker, or the most workers -m allows (16), still gives
    qemu-img's zstd image byte for byte, and zlib images read as the
    source with the reference."""
    src = _mixed_source(tmp_path)
    r, _ = _compressed_pair(tmp_path, "zstd", "64k", src)
    for ctype in ("zstd", "zlib"):
        for m in ("1", "16"):
            out = tmp_path / f"q-{ctype}-{m}.qcow2"
            q = run(BUILD / "qemu-img", ["convert", "-c", "-m", m, "-O", "qcow2",
                                         "-o", f"compression_type={ctype}",
                                         src, out], tmp_path)
            assert q.rc == 0, q
            if ctype == "zstd":
                assert out.read_bytes() == r.read_bytes(), m
            c = run(REF, ["compare", "-f", "raw", "-F", "qcow2", src, out],
                    tmp_path)
            assert c.rc == 0, (ctype, m, c)


@pytest.mark.parametrize("cluster", ["64k", "4k"])
def test_compressed_convert_zlib_reads_as_reference(tmp_path, cluster):
    """zlib clusters come from libdeflate, whose streams differ from zlib's:
    the image is not byte-identical, but the reference reads the same
    content, finds it clean, and maps the same clusters as compressed; the
    header and the guest layout are qemu-img's; and it is no larger."""
    src = _mixed_source(tmp_path)
    r, q = _compressed_pair(tmp_path, "zlib", cluster, src)
    counts = []
    for img in (r, q):
        c = run(REF, ["compare", "-f", "raw", "-F", "qcow2", src, img], tmp_path)
        assert c.rc == 0, c
        counts.append(_checked_counts(tmp_path, img))
    assert counts[0] == counts[1] and counts[0][2] != "0.00", counts
    maps = [run(REF, ["map", "--output=json", img], tmp_path) for img in (r, q)]
    assert maps[0].out == maps[1].out
    assert r.read_bytes()[:512] == q.read_bytes()[:512]
    assert q.stat().st_size <= r.stat().st_size * 1.02


def _checked_counts(tmp_path, img):
    """qemu-img check must find img clean; its allocated/total clusters
    and share of compressed clusters."""
    import re
    c = run(REF, ["check", img], tmp_path)
    assert c.rc == 0 and "No errors" in c.out, c
    m = re.search(r"(\d+)/(\d+) = .* ([\d.]+)% compressed clusters", c.out)
    assert m, c
    return m.groups()


def test_compressed_long_matches_read_by_reference(tmp_path):
    """QEMU deflates with a 4 KiB window but inflates a cluster in one call,
    so matches reaching further back (which libdeflate makes) must read
    back right: a cluster of a 16 KiB random block repeated four times
    shrinks to about a quarter, and the reference reads it as written."""
    import os
    src = tmp_path / "src.raw"
    block = os.urandom(16384)
    src.write_bytes(block * 4 * 4)
    r, q = _compressed_pair(tmp_path, "zlib", "64k", src)
    c = run(REF, ["compare", "-f", "raw", "-F", "qcow2", src, q], tmp_path)
    assert c.rc == 0, c
    io = subprocess.run([str(QEMU_IO), "-f", "qcow2", "-c", "read -v 65536 16",
                         str(q)], capture_output=True, text=True)
    assert io.returncode == 0 and "read 16/16" in io.stdout, io
    # Without the long matches every cluster would stay uncompressed, as
    # the reference's do.
    assert _checked_counts(tmp_path, q)[2] == "100.00"
    assert _checked_counts(tmp_path, r)[2] == "0.00"


@pytest.mark.parametrize("opts", ["cluster_size=512", "cluster_size=512,refcount_bits=1",
                                  "cluster_size=1k,refcount_bits=32", "cluster_size=4k"])
def test_convert_layout_across_refcount_blocks(tmp_path, opts):
    """Allocating writes go in batches (one run of host clusters per L2
    table's worth of a request); a refcount block the run needs goes right
    after it, as QEMU places it, so converted images stay byte-identical to
    the reference's even when small clusters cross many refcount blocks."""
    import os
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(3 << 20))
    out = {}
    for name, tool in (("r", REF), ("q", BUILD / "qemu-img")):
        img = tmp_path / f"{name}.qcow2"
        r = run(tool, ["convert", "-O", "qcow2", "-o", opts, src, img], tmp_path)
        assert r.rc == 0, r
        out[name] = img.read_bytes()
    assert out["r"] == out["q"]
    c = run(REF, ["check", tmp_path / "q.qcow2"], tmp_path)
    assert c.rc == 0, c
