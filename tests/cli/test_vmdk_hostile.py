"""Hostile vmdk input: damaged headers, descriptors and tables.  Where the
reference answers, qimg answers the same (info, map, check, the content
convert reads); where the reference crashes, hangs or loops (zero
granularity, no usable extent, recursive descriptors, thousands of
extents) qimg gives a clear error or a bounded answer (docs/LIMITS.md)."""
import hashlib
import struct

import pytest

from conftest import QEMU_IO, REF, batches, needs_format, run
from vmdkutil import (cowd_image, descriptor, sesparse_image, sparse_header,
                      sparse_image)

pytestmark = needs_format("vmdk")

MB = 1 << 20


def put(path, data, off):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _desc(d, name, lines, ct="monolithicFlat", extra=""):
    (d / name).write_text(descriptor(lines, ct=ct, extra=extra))


def make_zoo(d):
    (d / "flat.raw").write_bytes(bytes([1]) * 65536)
    sparse_image(d / "ok.vmdk", gt_entries=[(0, 128)])
    put(d / "ok.vmdk", b"\x42" * 65536, 128 * 512)
    for name, kw in {
        "gran-big": dict(gran=0x200001), "gran3": dict(gran=3),
        "gran0": dict(gran=0), "gtes0": dict(gtes=0), "gtes513": dict(gtes=513),
        "v4": dict(version=4), "v3": dict(version=3),
        "cap-huge": dict(capacity=1 << 40), "cap-wrap": dict(capacity=1 << 55),
        "cap-max": dict(capacity=(1 << 64) - 1),
        "l1-big": dict(capacity=1 << 45, gtes=1, gran=1),
        "truncated": dict(grain_off=1000), "gd-end": dict(gd=(1 << 64) - 1),
        "gd-far": dict(gd=1 << 30), "rgd-far": dict(rgd=1 << 40, flags=3),
        "stream-nomarker": dict(flags=1 | (1 << 16), compress=1, version=3),
        "desc-at-2": dict(desc_off=2),
    }.items():
        sparse_image(d / f"{name}.vmdk", **kw)
    # grain table entries: past the end of the file, at the header, the
    # zeroed-grain value without the feature, a broken directory entry
    sparse_image(d / "gte-past.vmdk", gt_entries=[(0, 1 << 30), (3, 200)])
    sparse_image(d / "gte-self.vmdk", gt_entries=[(0, 0), (1, 1), (2, 22)])
    sparse_image(d / "gd-past-eof.vmdk", gd_entry=1 << 31)
    sparse_image(d / "gd-zero.vmdk", gd_entry=0)
    # a footer that is not one
    sparse_image(d / "footer-bad.vmdk", gd=(1 << 64) - 1, rgd=0, flags=1)
    with open(d / "footer-bad.vmdk", "ab") as f:
        f.write(b"\0" * 1536)
    # a sparse file holding a descriptor that names the file itself
    sparse_image(d / "nest.vmdk", capacity=0, desc=descriptor(
        'RW 2048 SPARSE "nest.vmdk"', ct="twoGbMaxExtentSparse"))
    # COWD (vmfsSparse) and seSparse extents
    cowd_image(d / "cowd.vmdk", extra=b"\x33" * 8192)
    cowd_image(d / "cowd-gran0.vmdk", gran=0)
    cowd_image(d / "cowd-gran-big.vmdk", gran=1 << 22)
    sesparse_image(d / "se.raw")
    for name, over in {"se-magic": dict(magic=1), "se-version": dict(version=3),
                       "se-grain": dict(grain_size=16),
                       "se-gt": dict(gt_size=32), "se-flags": dict(flags=1),
                       "se-reserved": dict(r3=7), "se-vmagic": dict(vmagic=2),
                       "se-dirty": dict(replay=1)}.items():
        sesparse_image(d / f"{name}.raw", **over)
    # descriptors
    lines = {
        "d-ok": 'RW 128 FLAT "flat.raw" 0',
        "d-blank": '\n\n   \nRW 128 FLAT "flat.raw" 0',
        "d-neg": 'RW -5 FLAT "flat.raw" 0',
        "d-zero-sectors": 'RW 0 FLAT "flat.raw" 0',
        "d-negoff": 'RW 5 FLAT "flat.raw" -1',
        "d-bigoff": 'RW 5 FLAT "flat.raw" 99999999999999999999',
        "d-off": 'RW 5 FLAT "flat.raw" 1',
        "d-nooff": 'RW 5 FLAT "flat.raw"',
        "d-self": 'RW 128 FLAT "d-self.vmdk" 0',
        "d-missing": 'RW 128 FLAT "nonexist.raw" 0',
        "d-longname": 'RW 128 FLAT "%s" 0' % ("a" * 600),
        "d-unquoted": 'RW 128 FLAT flat.raw 0',
        "d-crlf": 'RW 128 FLAT "flat.raw" 0\r',
        "d-sum": 'RW 9223372036854775807 FLAT "flat.raw" 0\n'
                 'RW 9223372036854775807 FLAT "flat.raw" 0',
        "d-big": 'RW 18014398509481984 FLAT "flat.raw" 0',
        "d-zero-type": 'RW 128 ZERO "flat.raw"\nRW 128 FLAT "flat.raw" 0',
        "d-access": 'RDONLY 128 FLAT "flat.raw" 0\nNOACCESS 128 FLAT '
                    '"flat.raw" 0\nRW 128 FLAT "flat.raw" 0',
        "d-unknown-type": 'RW 128 FOO "flat.raw"',
        "d-sparse-not": 'RW 128 SPARSE "flat.raw"',
        "d-sparse-extra": 'RW 2048 SPARSE "ok.vmdk" 5',
        "d-vmfs-off": 'RW 128 VMFS "flat.raw" 5',
        "d-vmfs": 'RW 128 VMFS "flat.raw"',
        "d-two-sparse": 'RW 2048 SPARSE "ok.vmdk"\nRW 2048 SPARSE "ok.vmdk"',
        "d-mixed": 'RW 2048 SPARSE "ok.vmdk"\nRW 128 FLAT "flat.raw" 0',
        "d-cowd": 'RW 2048 VMFSSPARSE "cowd.vmdk"',
        "d-cowd-gran-big": 'RW 2048 VMFSSPARSE "cowd-gran-big.vmdk"',
        "d-cowd-gran0": 'RW 2048 VMFSSPARSE "cowd-gran0.vmdk"',
        "d-se": 'RW 2048 SESPARSE "se.raw"',
        "d-nest": 'RW 2048 SPARSE "nest.vmdk"',
        "d-stream": 'RW 2048 SPARSE "stream-nomarker.vmdk"',
    }
    for name, l in lines.items():
        _desc(d, f"{name}.vmdk", l)
    for name in ["se-magic", "se-version", "se-grain", "se-gt", "se-flags",
                 "se-reserved", "se-vmagic", "se-dirty"]:
        _desc(d, f"d-{name}.vmdk", f'RW 2048 SESPARSE "{name}.raw"',
              ct="seSparse")
    _desc(d, "d-ct-sparse.vmdk", 'RW 128 FLAT "flat.raw" 0',
          ct="monolithicSparse")
    _desc(d, "d-ct-long.vmdk", 'RW 128 FLAT "flat.raw" 0', ct="x" * 200)
    _desc(d, "d-parent.vmdk", 'RW 2048 SPARSE "ok.vmdk"',
          extra='parentFileNameHint="ok.vmdk"\n')
    _desc(d, "d-parent-open.vmdk", 'RW 128 FLAT "flat.raw" 0',
          extra='parentFileNameHint="ok.vmdk\n')
    _desc(d, "d-parent-raw.vmdk", 'RW 128 FLAT "flat.raw" 0',
          extra='parentFileNameHint="flat.raw"\n')
    (d / "d-nocid.vmdk").write_text(
        'version=1\ncreateType="monolithicFlat"\nRW 128 FLAT "flat.raw" 0\n')
    (d / "d-nocreatetype.vmdk").write_text(
        'version=1\nCID=1\nparentCID=2\nRW 128 FLAT "flat.raw" 0\n')
    (d / "d-onlyparentcid.vmdk").write_text(
        'version=1\nparentCID=2\ncreateType="monolithicFlat"\n'
        'RW 128 FLAT "flat.raw" 0\n')
    (d / "empty.vmdk").write_bytes(b"")
    (d / "one.vmdk").write_bytes(b"K")
    (d / "magic-only.vmdk").write_bytes(b"KDMV")
    (d / "cowd-short.vmdk").write_bytes(b"COWD\1\0")


NAMES = None


def names(d):
    return sorted(p.name for p in d.iterdir() if p.suffix == ".vmdk" and
                  p.name not in QEMU_BREAKS or p.name == "d-access.vmdk")


# Where qemu-img 7.2 crashes (SIGFPE, assertion) or does not return: qimg
# is checked on its own.  name: {command: (rc, expected text in stderr or
# stdout)}
QEMU_BREAKS = {
    "d-cowd-gran0.vmdk": [(["map"], 1, "Invalid granularity"),
                          (["check"], 1, "Check failed"),
                          (["info"], 0, "format: VMFSSPARSE")],
    "nest.vmdk": [(["info"], 1, "nested more than")],
    "d-nest.vmdk": [(["info"], 1, "nested more than")],
    "d-neg.vmdk": [(["info"], 0, "virtual size: 0 B")],
    "d-zero-sectors.vmdk": [(["info"], 0, "virtual size: 0 B")],
    "d-unquoted.vmdk": [(["info"], 0, "virtual size: 0 B")],
    "d-unknown-type.vmdk": [(["info"], 0, "virtual size: 0 B")],
    "d-access.vmdk": [(["info"], 0, "virtual size: 64 KiB")],
    # QEMU walks every grain of these (for hours): qimg skips the grains
    # of directory entries without a table
    "cap-huge.vmdk": [(["map", "--output=json"], 0,
                       '"length": 562949953421312'),
                      (["check"], 0, "No errors")],
    # QEMU opens it, then fails to size it (its sector count overflows)
    "cap-wrap.vmdk": [(["info"], 1, "Could not refresh total sector count")],
}
# Only info is compared for these: the reference's map, check and
# convert walk petabytes grain by grain.
INFO_ONLY = {"cap-max.vmdk", "l1-big.vmdk"}


def _digest(d, name):
    p = d / name
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def _cases(pair, name):
    bad = []
    r, q = pair.both("info", name)
    if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
        return [f"info {name}\nREF {r!r}\nQIMG {q!r}"]
    if r.rc or name in INFO_ONLY:
        return []
    for a in (["info", "--output=json"], ["map", "--output=json"], ["check"]):
        r, q = pair.both(*a, name)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{a} {name}\nREF {r!r}\nQIMG {q!r}")
    r, q = pair.both("convert", "-O", "raw", name, "out.raw")
    if (q.rc, q.err) != (r.rc, r.err) or \
            _digest(pair.ref_dir, "out.raw") != _digest(pair.qimg_dir, "out.raw"):
        bad.append(f"convert {name}\nREF {r!r}\nQIMG {q!r}")
    for d in pair.dirs():
        (d / "out.raw").unlink(missing_ok=True)
    return bad


ALL = None


def _all_names(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    make_zoo(d)
    return names(d)


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        import tempfile
        from pathlib import Path
        with tempfile.TemporaryDirectory() as t:
            make_zoo(Path(t))
            metafunc.parametrize("batch", batches(names(Path(t)), 24))


def test_hostile_same(pair, batch):
    pair.setup(make_zoo)
    bad = []
    for name in batch:
        bad += _cases(pair, name)
    assert not bad, "\n\n".join(bad)


def test_hostile_where_qemu_breaks(pair):
    pair.setup(make_zoo)
    bad = []
    for name, cmds in QEMU_BREAKS.items():
        for args, rc, text in cmds:
            q = pair.qimg(*args, name, timeout=30)
            if q.rc != rc or text not in q.out + q.err:
                bad.append(f"{args} {name}: {q!r}")
    assert not bad, "\n\n".join(bad)


def test_many_extents(pair):
    """Thousands of extent lines: qemu-img 7.2 takes minutes (it rescans
    the descriptor at each line); qimg opens them in bounded time, and
    refuses more than its limit."""
    d = pair.qimg_dir
    (d / "flat.raw").write_bytes(bytes([1]) * 4096)
    _desc(d, "many.vmdk", '\n'.join(['RW 8 FLAT "flat.raw" 0'] * 900))
    q = pair.qimg("info", "--output=json", "many.vmdk", timeout=60)
    assert q.rc == 0 and '"virtual-size": 3686400' in q.out, q
    q = pair.qimg("check", "many.vmdk", timeout=60)
    assert q.rc == 0, q
    # the line limit, without opening anything: lines to an extent that
    # does not exist would fail at the first, so use blank lines, which
    # repeat the extent after them (as in QEMU)
    _desc(d, "blank.vmdk", "\n" * 300000 + 'RW 8 FLAT "flat.raw" 0')
    q = pair.qimg("info", "blank.vmdk", timeout=60)
    assert q.rc == 1 and "Too many extents" in q.err, q
    # a 1 MiB descriptor of short lines is read in linear time
    _desc(d, "lines.vmdk", "x\n" * 500000)
    q = pair.qimg("info", "lines.vmdk", timeout=60)
    assert q.rc == 0, q


def test_writes_into_missing_tables(pair):
    """A grain directory entry without a table (what other tools write):
    qemu-img 7.2 writes through it to a random place; qimg allocates a
    table, and the reference reads the result back."""
    d = pair.qimg_dir
    sparse_image(d / "t.vmdk", capacity=8192, gd_entry=0, flags=3, rgd=23)
    from test_vmdk_io import qimg_io
    q = qimg_io(d, "t.vmdk", "write -P 7 1M 64k", "write -P 8 3M 4k")
    assert q.returncode == 0, q.stderr
    r = run(REF, ["check", "t.vmdk"], d)
    assert r.rc == 0, r
    import subprocess
    r = subprocess.run([str(QEMU_IO), "-f", "vmdk", "-c", "read -P 7 1M 64k",
                        "-c", "read -P 8 3M 4k", "-c", "read -P 0 0 1M",
                        "t.vmdk"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr
