"""Writes that would land on metadata are refused, as QEMU refuses them:
on a damaged image whose L2 entry points at a table, guest data must not
overwrite it.  qemu-img marks the image corrupt and fails with EIO; qimg
must print the same and leave the very same file."""
import re
import struct
import subprocess

import pytest

from conftest import QEMU_IO, REF

MiB = 1 << 20
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def header(f):
    f.seek(0)
    return f.read(104)


def l1_offset(f):
    return struct.unpack(">Q", header(f)[40:48])[0]


def first_l2(f):
    f.seek(l1_offset(f))
    return struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00


def target(name, f):
    h = header(f)
    if name == "header":
        return 0
    if name == "l1":
        return l1_offset(f)
    if name == "refcount-table":
        return struct.unpack(">Q", h[48:56])[0]
    if name == "snapshot-table":
        return struct.unpack(">Q", h[64:72])[0]
    if name == "l2":
        return first_l2(f)
    if name == "refcount-block":
        f.seek(struct.unpack(">Q", h[48:56])[0])
        return struct.unpack(">Q", f.read(8))[0]
    if name == "inactive-l1":
        f.seek(struct.unpack(">Q", h[64:72])[0])
        return struct.unpack(">Q", f.read(8))[0]
    raise ValueError(name)


def make_damaged(what, snapshot):
    def make(d):
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "t.qcow2",
                        "4M"], cwd=d, check=True)
        subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 128k", "t.qcow2"],
                       cwd=d, check=True, capture_output=True)
        if snapshot:
            subprocess.run([str(REF), "snapshot", "-c", "s", "t.qcow2"],
                           cwd=d, check=True)
            # a new cluster for guest cluster 1 (copied flag set again)
            subprocess.run([str(QEMU_IO), "-c", "write -P 2 64k 64k",
                            "t.qcow2"], cwd=d, check=True, capture_output=True)
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-b",
                        "t.qcow2", "-F", "qcow2", "top.qcow2"], cwd=d,
                       check=True)
        subprocess.run([str(QEMU_IO), "-c", "write -P 9 64k 4k", "top.qcow2"],
                       cwd=d, check=True, capture_output=True)
        with open(d / "t.qcow2", "r+b") as f:
            if what.startswith("table-on-"):
                # the L2 table is the metadata cluster: updating it (a
                # metadata write) would overwrite that structure
                meta = target(what[len("table-on-"):], f)
                f.seek(l1_offset(f))
                f.write(struct.pack(">Q", (1 << 63) | meta))
            else:
                l2, meta = first_l2(f), target(what, f)
                # guest cluster 1 now claims the metadata cluster as its data
                f.seek(l2 + 8)
                f.write(struct.pack(">Q", (1 << 63) | meta))
        subprocess.run([str(REF), "create", "-q", "-f", "raw", "src.raw", "4M"],
                       cwd=d, check=True)
        subprocess.run([str(QEMU_IO), "-f", "raw", "-c", "write -P 7 0 256k",
                        "src.raw"], cwd=d, check=True, capture_output=True)
    return make


CASES = [("header", False), ("l1", False), ("refcount-table", False),
         ("snapshot-table", True), ("l2", False), ("refcount-block", False),
         ("inactive-l1", True), ("table-on-refcount-block", False),
         ("table-on-refcount-table", False)]
COMMANDS = [
    ["convert", "-n", "-f", "raw", "-O", "qcow2", "src.raw", "t.qcow2"],
    ["commit", "top.qcow2"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
@pytest.mark.parametrize("what,snapshot", CASES, ids=[c[0] for c in CASES])
def test_write_over_metadata_refused(pair, what, snapshot, args):
    pair.setup(make_damaged(what, snapshot))
    if what.startswith("table-on-"):
        # QEMU's later steps here (its ignored cache flush failures, rc 0
        # for convert) are not reproduced: the same corruption event, a
        # failure, and the structure left as QEMU leaves it.
        r, q = pair.both(*args)
        assert q.err.splitlines()[0] == r.err.splitlines()[0], (r, q)
        assert q.rc == 1, q
        with open(pair.ref_dir / "t.qcow2", "rb") as f:
            meta = target(what[len("table-on-"):], f)
        cuts = [(d / "t.qcow2").read_bytes()[meta:meta + 65536]
                for d in pair.dirs()]
        assert cuts[0] == cuts[1]
        return
    pair.same(*args)
    if snapshot:
        # QEMU installs the L2 entries of a request only once all of its
        # data is written, qimg cluster by cluster: which clusters end up
        # leaked differs.  What matters is that the table survived.
        r, q = pair.both("snapshot", "-l", "t.qcow2")
        assert (q.rc, DATE.sub("D", q.out)) == (r.rc, DATE.sub("D", r.out))
        assert "\n1         s " in q.out, q
        return
    r = (pair.ref_dir / "t.qcow2").read_bytes()
    q = (pair.qimg_dir / "t.qcow2").read_bytes()
    assert r == q
    pair.same("check", "t.qcow2")
