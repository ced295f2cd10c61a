"""check and repair of deliberately damaged qcow2 images, against the
reference: same messages, counts and exit codes for check, check -r leaks
and check -r all, and the repaired image must be clean for the reference."""
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
