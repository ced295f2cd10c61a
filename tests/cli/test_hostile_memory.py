"""Memory on hostile images: tables at their largest allowed size (L1,
refcount table, snapshot count), read past the end of a tiny file, must
keep every command under 1 GiB of resident memory (docs/LIMITS.md) and
finish within seconds."""
import os
import struct
import subprocess
import time

import pytest

from conftest import QIMG, REF, valgrind_skip

BE32 = lambda v: struct.pack(">I", v)
BE64 = lambda v: struct.pack(">Q", v)
GiB = 1 << 30

IMAGES = {
    "l1-reftable-max": ("cluster_size=512",
                        [(36, BE32(4 << 20)), (56, BE32(16384))]),
    "l1-reftable-max-64k": (None, [(36, BE32(4 << 20)), (56, BE32(128))]),
    "l1-max-2m": ("cluster_size=2M", [(36, BE32(4 << 20))]),
    "snapshots-max": (None, [(60, BE32(65536)), (64, BE64(1 << 30))]),
}
COMMANDS = [["info"], ["check"], ["map", "--output=json"], ["measure", "-O",
            "qcow2"], ["snapshot", "-l"], ["convert", "-O", "qcow2"],
            ["check", "-r", "all"]]


def peak_rss(args, cwd):
    """Run args; return (exit status, peak resident bytes, seconds)."""
    start = time.monotonic()
    p = subprocess.Popen([str(a) for a in args], cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss * 1024, time.monotonic() - start


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_hostile_tables_memory(tmp_path, name):
    valgrind_skip("measures qimg's own resident memory and time")
    opts, patches = IMAGES[name]
    img = tmp_path / "m.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2"] +
                   (["-o", opts] if opts else []) + [str(img), "4M"],
                   check=True)
    with open(img, "r+b") as f:
        for off, data in patches:
            f.seek(off)
            f.write(data)
    for cmd in COMMANDS:
        args = [QIMG] + cmd + ["m.qcow2"]
        if cmd[0] == "convert":
            args.append("out.qcow2")
        rc, rss, secs = peak_rss(args, tmp_path)
        assert rc >= 0, f"{cmd}: killed by signal {-rc}"
        assert rss < GiB, f"{cmd}: {rss >> 20} MiB resident"
        assert secs < 30, f"{cmd}: {secs:.1f} s"
    rc, rss, _ = peak_rss([QIMG, "compare", "m.qcow2", "m.qcow2"], tmp_path)
    assert rc >= 0 and rss < GiB, (rc, rss >> 20)
