"""Resizing qcow2 images that have internal snapshots: version 3 images
resize (their snapshots keep their own disk size, restored on apply),
version 2 images refuse, as qemu-img 7.2 does."""
import re
import subprocess

import pytest

from conftest import QEMU_IO, REF

MiB = 1 << 20


def with_snapshot(compat):
    def make(d):
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-o",
                        f"compat={compat}", "x.qcow2", "16M"], cwd=d, check=True)
        subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 16M", "x.qcow2"],
                       cwd=d, check=True, capture_output=True)
        subprocess.run([str(REF), "snapshot", "-c", "s", "x.qcow2"], cwd=d,
                       check=True)
    return make


DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def same_info(pair):
    """info of both images, the snapshot's creation time aside (each side
    made its snapshot at its own second)."""
    r, q = pair.both("info", "x.qcow2")
    assert (q.rc, DATE.sub("D", q.out), q.err) == \
        (r.rc, DATE.sub("D", r.out), r.err), (r, q)


STEPS = [
    [["resize", "--shrink", "x.qcow2", "4M"], ["resize", "x.qcow2", "32M"]],
    [["resize", "x.qcow2", "+8M"], ["resize", "--shrink", "x.qcow2", "-20M"]],
    [["amend", "-o", "size=8M", "x.qcow2"]],
    [["resize", "--preallocation=metadata", "x.qcow2", "24M"]],
]


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
@pytest.mark.parametrize("steps", STEPS, ids=lambda s: "+".join(a[1] + a[-1] for a in s))
def test_resize_with_snapshots(pair, compat, steps):
    pair.setup(with_snapshot(compat))
    for args in steps:
        pair.same(*args)
    pair.same("check", "x.qcow2")
    same_info(pair)
    pair.same_content("x.qcow2", fmt="qcow2")
    # applying the snapshot brings back its own size and data
    pair.same("snapshot", "-a", "s", "x.qcow2")
    same_info(pair)
    pair.same("check", "x.qcow2")
    pair.same_content("x.qcow2", fmt="qcow2")
