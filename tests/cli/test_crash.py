"""Crash consistency: qimg is killed with SIGKILL at many points while it
writes qcow2 images; the reference check must never find corruption (leaked
clusters are allowed and must be repaired by check -r leaks), and data
written before a completed run stays intact."""
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import BUILD, QEMU_IO, REF, run

QIMG = BUILD / "qemu-img"
QIMG_IO = BUILD / "tests" / "qimg-io"


def make_source(path, mib=24, seed=3):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(mib << 20)
        for _ in range(mib * 4):
            f.seek(rnd.randrange(mib << 20) & ~4095)
            f.write(bytes([rnd.randrange(1, 255)]) * rnd.choice([4096, 65536, 200000]))


def kill_after(args, delay, cwd):
    p = subprocess.Popen([str(a) for a in args], cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return p.returncode


UNDER_COUNT = __import__("re").compile(r"ERROR cluster \d+ refcount=(\d+) reference=(\d+)")
COPIED = __import__("re").compile(r"ERROR OFLAG_COPIED (?:data|L2) cluster: .* refcount=(\d+)")


def assert_consistent(img, cwd):
    """What a crash may leave must be harmless: leaked clusters (refcounts
    too high) and COPIED flags missing on unshared clusters (an extra copy
    on the next write).  Never a refcount below its number of users, nor a
    COPIED flag on a shared cluster: those would lose data.  Then check -r
    all (what QEMU itself does on open for dirty images) makes it clean."""
    chk = run(REF, ["check", img], cwd)
    if chk.rc == 0:
        return
    for m in UNDER_COUNT.finditer(chk.err):
        assert int(m.group(1)) > int(m.group(2)), chk
    for m in COPIED.finditer(chk.err):
        assert int(m.group(1)) == 1, chk
    fix = run(REF, ["check", "-r", "all", img], cwd)
    assert fix.rc == 0, (chk, fix)


@pytest.mark.parametrize("opts", [[], ["-c"], ["-o", "cluster_size=4k"],
                                  ["-o", "lazy_refcounts=on"],
                                  ["-o", "refcount_bits=1,cluster_size=512"]],
                         ids=["plain", "compressed", "4k", "lazy", "tiny"])
def test_kill_during_convert(tmp_path, opts):
    src = tmp_path / "src.raw"
    make_source(src)
    rnd = random.Random(11)
    for i in range(8):
        out = tmp_path / f"o{i}.qcow2"
        kill_after([QIMG, "convert", "-O", "qcow2", *opts, src, out],
                   rnd.uniform(0.005, 0.25), tmp_path)
        if out.exists() and out.stat().st_size >= 512:
            opened = run(REF, ["info", out], tmp_path)
            if opened.rc == 0:
                assert_consistent(out, tmp_path)


@pytest.mark.parametrize("geom", [[], ["-o", "cluster_size=4k,lazy_refcounts=on"]],
                         ids=["default", "4k-lazy"])
def test_kill_during_writes_snapshots_amend_resize(tmp_path, geom):
    img = tmp_path / "t.qcow2"
    run(REF, ["create", "-q", "-f", "qcow2", *geom, img, "32M"], tmp_path)
    subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 4M", str(img)],
                   check=True, capture_output=True)
    rnd = random.Random(int(os.environ.get("QIMG_CRASH_SEED", "5")))
    writes = [f"write -P {k} {k << 20} 3M" for k in range(2, 30, 3)]
    actions = [
        [QIMG_IO, "-f", "qcow2", img, *writes],
        [QIMG, "snapshot", "-c", "s", img],
        [QIMG, "resize", "-f", "qcow2", img, "+8M"],
        [QIMG, "amend", "-o", "refcount_bits=8", img],
        [QIMG, "amend", "-o", "compat=0.10", img],
        [QIMG, "amend", "-o", "compat=1.1", img],
        [QIMG, "snapshot", "-d", "s", img],
        [QIMG_IO, "-f", "qcow2", img, "write -z 0 8M", "discard 8M 4M"],
    ]
    for i in range(24):
        act = rnd.choice(actions)
        kill_after(act, rnd.uniform(0.0, 0.05), tmp_path)
        assert_consistent(img, tmp_path)
    # The first 4 MiB written before any of this is untouched unless an
    # action overwrote it: only zeroing does, so check against that.
    r = subprocess.run([str(QEMU_IO), "-r", "-c", "read 0 4M", str(img)],
                       capture_output=True, text=True)
    assert "read 4194304/4194304" in r.stdout, r.stdout + r.stderr


def acked_writes(out, cmds):
    """(durable, later): the writes ("write -P pat off len") followed by an
    acknowledged flush, which a crash must not lose, and every write after
    each of them that may have reached the image (acknowledged or in
    flight when the kill came), whose data may legitimately cover them."""
    acked = [line[3:] for line in out.splitlines() if line.startswith("ok ")]
    assert acked == cmds[:len(acked)], (acked, cmds)
    started = cmds[:len(acked) + 1]
    last_flush = max((i for i, c in enumerate(acked) if c == "flush"),
                     default=-1)
    writes = [(i, c.split()[2:5]) for i, c in enumerate(started)
              if c.startswith("write -P")]
    durable = [(i, w) for i, w in writes if i < last_flush]
    return [(w, [x for k, x in writes if k > i]) for i, w in durable]


@pytest.mark.parametrize("geom", [[], ["-o", "cluster_size=4k,lazy_refcounts=on"],
                                  ["-o", "compat=0.10"]],
                         ids=["default", "4k-lazy", "v2"])
def test_flushed_writes_survive_kill(tmp_path, geom):
    """Kill qimg while it writes and flushes: every write acknowledged by a
    completed flush reads back, and the image is consistent."""
    img = tmp_path / "t.qcow2"
    rnd = random.Random(int(os.environ.get("QIMG_CRASH_SEED", "9")))
    verified = 0
    for i in range(10):
        if img.exists():
            img.unlink()
        run(REF, ["create", "-q", "-f", "qcow2", *geom, img, "64M"], tmp_path)
        cmds = []
        for k in range(1, 40):
            off = rnd.randrange(64) << 20
            cmds += [f"write -P {k} {off} {rnd.choice([4096, 65536, 1 << 20])}",
                     "flush"]
        p = subprocess.Popen([str(QIMG_IO), "-a", "-f", "qcow2", str(img), *cmds],
                             cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        time.sleep(rnd.uniform(0.0, 0.08))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        assert_consistent(img, tmp_path)
        # Later writes may overlap earlier ones: check only writes that
        # nothing started afterwards may have overwritten.
        for (pat, off, ln), later in acked_writes(out, cmds):
            start, end = int(off), int(off) + int(ln)
            if any(int(o) < end and start < int(o) + int(n)
                   for _, o, n in later):
                continue
            r = subprocess.run([str(QEMU_IO), "-r", "-f", "qcow2", "-c",
                                f"read -P {pat} {off} {ln}", str(img)],
                               capture_output=True, text=True)
            assert "Pattern verification failed" not in r.stdout, \
                (i, pat, off, ln, r.stdout)
            assert f"read {ln}/{ln}" in r.stdout, r.stdout + r.stderr
            verified += 1
    assert verified > 0, "no kill came after an acknowledged flush"


def test_kill_during_commit(tmp_path):
    """Kill qimg commit: the base and the overlay stay consistent, and a
    commit run to completion afterwards gives the overlay's content."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    rnd = random.Random(int(os.environ.get("QIMG_CRASH_SEED", "13")))
    for i in range(8):
        for f in (base, top):
            if f.exists():
                f.unlink()
        run(REF, ["create", "-q", "-f", "qcow2", base, "32M"], tmp_path)
        subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 32M", str(base)],
                       check=True, capture_output=True)
        run(REF, ["create", "-q", "-f", "qcow2", "-b", base.name, "-F",
                  "qcow2", top, "32M"], tmp_path)
        subprocess.run([str(QEMU_IO), "-c", "write -P 2 0 20M",
                        "-c", "write -z 24M 4M", str(top)],
                       check=True, capture_output=True)
        kill_after([QIMG, "commit", "-d", top], rnd.uniform(0.0, 0.1), tmp_path)
        assert_consistent(base, tmp_path)
        assert_consistent(top, tmp_path)
        r = run(QIMG, ["commit", "-d", top], tmp_path)
        assert r.rc == 0, r
        for cmd in ("read -P 2 0 20M", "read -P 1 20M 4M", "read -P 0 24M 4M",
                    "read -P 1 28M 4M"):
            q = subprocess.run([str(QEMU_IO), "-r", "-c", cmd, str(base)],
                               capture_output=True, text=True)
            assert "verification failed" not in q.stdout, (i, cmd, q.stdout)
