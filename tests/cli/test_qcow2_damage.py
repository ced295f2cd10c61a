"""check and repair of deliberately damaged qcow2 images, against the
reference: same messages, counts and exit codes for check, check -r leaks
and check -r all, and the repaired image must be clean for the reference."""
import shutil
import struct
import subprocess

import pytest

from conftest import QEMU_IO, REF, run

# (file offset, 64-bit big-endian value) patches on a 4 MiB image with data
# at 0-128k (clusters 5, 6) and 1M (cluster 7); L1 at 0x30000, L2 at 0x40000,
# refcount table at 0x10000, refcount block at 0x20000.
DAMAGE = {
    "l2-past-eof": [(0x40000, 0x8000000100000000)],
    "l2-duplicate": [(0x40008, 0x8000000000050000)],
    "l2-points-at-refblock": [(0x40000, 0x8000000000020000)],
    "l1-points-at-refblock": [(0x30000, 0x8000000000020000)],
    "l2-not-copied": [(0x40000, 0x0000000000050000)],
    "l2-unaligned": [(0x40000, 0x8000000000050001)],
    "l2-extra-entry": [(0x40080, 0x8000000000050000)],
    "l1-second-entry-same-l2": [(0x30008, 0x8000000000040000)],
    "l2-points-past-used": [(0x40000, 0x8000000000090000)],
    "l1-not-copied": [(0x30000, 0x0000000000040000)],
    "leak-and-corrupt": [(0x20000 + 2 * 6 - 6, 0x0000000000010000)],
}


def make(d, patches):
    img = d / "dm.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", str(img), "4M"],
                   check=True)
    subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 128k", "-c",
                    "write -P 2 1M 64k", str(img)], check=True, capture_output=True)
    with open(img, "r+b") as f:
        for off, val in patches:
            f.seek(off)
            f.write(struct.pack(">Q", val))


@pytest.mark.parametrize("name", sorted(DAMAGE))
@pytest.mark.parametrize("mode", [[], ["-r", "leaks"], ["-r", "all"],
                                  ["--output=json"]],
                         ids=["check", "leaks", "all", "json"])
def test_damaged(pair, name, mode):
    pair.setup(lambda d: make(d, DAMAGE[name]))
    pair.same("check", *mode, "dm.qcow2")
    if mode and mode[0] == "-r":
        r = run(REF, ["check", "dm.qcow2"], pair.qimg_dir)
        rr = run(REF, ["check", "dm.qcow2"], pair.ref_dir)
        assert r.rc == rr.rc, (rr, r)
        assert pair.path_ref("dm.qcow2").read_bytes() == \
            pair.path_qimg("dm.qcow2").read_bytes()


def break_refcounts(path, mode):
    """'reftable' drops the only refcount block from the table, 'refzero'
    zeroes the first data cluster's refcount (both need a rebuild),
    'leak' raises it to 2."""
    with open(path, "r+b") as f:
        data = f.read()
        u64 = lambda off: struct.unpack(">Q", data[off:off + 8])[0]
        reftable, mask = u64(48), 0x00fffffffffffe00
        cluster = u64(u64(u64(40)) & mask) & mask
        value = {"reftable": None, "refzero": 0, "leak": 2}[mode]
        if value is None:
            f.seek(reftable)
            f.write(b"\0" * 8)
        else:
            f.seek(u64(reftable) + 2 * (cluster >> 16))
            f.write(struct.pack(">H", value))


# Not "-r leaks" of "reftable": the check fails and the bitmaps stored at
# close need clusters that the broken refcounts call free: QEMU's write
# overlap checks stop it there (docs/LIMITS.md).
@pytest.mark.parametrize("damage,repair", [
    ("reftable", "all"), ("refzero", "leaks"), ("refzero", "all"),
    ("leak", "leaks"), ("leak", "all")])
def test_repair_with_bitmaps(pair, damage, repair):
    """Repairs free and allocate clusters where QEMU does: the bitmaps
    stored back when the repaired image closes land in the same places."""
    def make(d):
        img = d / "b.qcow2"
        for args in (["create", "-q", "-f", "qcow2", img, "4M"],
                     ["bitmap", "--add", img, "b0"],
                     ["bitmap", "--add", "--disable", img, "b1"]):
            subprocess.run([str(REF), *map(str, args)], check=True)
        subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 128k", str(img)],
                       check=True, capture_output=True)
        break_refcounts(img, damage)
    pair.setup(make)
    pair.same("check", "-r", repair, "b.qcow2")
    pair.same("check", "b.qcow2")
    assert pair.path_ref("b.qcow2").read_bytes() == \
        pair.path_qimg("b.qcow2").read_bytes()


def make_incomplete_snapshot(d):
    """A snapshot entry without the extra data version 3 requires."""
    img = d / "s.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", str(img), "4M"],
                   check=True)
    subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 64k", str(img)],
                   check=True, capture_output=True)
    subprocess.run([str(REF), "snapshot", "-c", "snap", str(img)], check=True)
    data = bytearray(img.read_bytes())
    table = struct.unpack(">Q", data[64:72])[0]
    extra = struct.unpack(">I", data[table + 36:table + 40])[0]
    names = data[table + 40 + extra:table + 40 + extra + 5]
    struct.pack_into(">I", data, table + 36, 0)
    data[table + 40:table + 40 + extra + 5] = names + b"\0" * extra
    img.write_bytes(bytes(data))


@pytest.mark.parametrize("mode", [[], ["-r", "leaks"], ["-r", "all"],
                                  ["--output=json"]],
                         ids=["check", "leaks", "all", "json"])
def test_incomplete_snapshot_entry(pair, mode):
    """check reports the entry; -r all completes it and rewrites the
    table where QEMU does (the snapshot's date: one image copied)."""
    make_incomplete_snapshot(pair.ref_dir)
    shutil.copy(pair.path_ref("s.qcow2"), pair.path_qimg("s.qcow2"))
    pair.same("check", *mode, "s.qcow2")
    assert pair.path_ref("s.qcow2").read_bytes() == \
        pair.path_qimg("s.qcow2").read_bytes()
    pair.same("snapshot", "-l", "s.qcow2")
