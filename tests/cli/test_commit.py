"""qemu-img commit differential tests: what the overlay and the images
between it and the base allocate ends up in the base (data, zero clusters,
compressed clusters, discarded areas), the base grows to the overlay's size,
the overlay is emptied (v3 images reset to a fresh layout, v2 images and
images with snapshots discarded cluster by cluster) unless -d or -b, raw
bases (the job's 64 KiB granularity leaves whole chunks allocated), -b by
every kind of name, -r, -t, -p, -q and every error path.

QEMU's commit job copies with up to 16 requests in flight, so where new
clusters land in the base (map's "offset") varies from run to run even
with QEMU alone: maps are compared without host offsets, merged into runs.
"""
import json
import re
import os
import subprocess

import pytest

from conftest import QEMU_IO, QIMG, REF, Pair, qemu_io, run

MiB = 1 << 20


# ---- helpers -----------------------------------------------------------------

def io(path, *cmds, fmt="qcow2"):
    qemu_io(path, *cmds, fmt=fmt)


def mk(d, name, size=None, backing=None, bfmt="qcow2", opts=None, fmt="qcow2"):
    args = [str(REF), "create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    if backing:
        args += ["-b", backing, "-F", bfmt]
    args.append(str(d / name))
    if size is not None:
        args.append(str(size))
    subprocess.run(args, check=True, capture_output=True)


def map_runs(text):
    """map --output=json without host offsets, adjacent equal runs merged."""
    runs = []
    for e in json.loads(text):
        key = (e["depth"], e["present"], e["zero"], e["data"])
        if runs and runs[-1][0] == key and runs[-1][1] + runs[-1][2] == e["start"]:
            runs[-1][2] += e["length"]
        else:
            runs.append([key, e["start"], e["length"]])
    return runs


def check_core(text):
    """check output without the layout-dependent lines."""
    return [l for l in text.splitlines()
            if "fragmented" not in l and not l.startswith("Image end offset")]


def same_result(pair, *images):
    """Maps, checks and guest content of the written images agree."""
    for name in images:
        r, q = pair.both("map", "--output=json", name)
        assert (r.rc, q.rc) == (0, 0), (r, q)
        assert map_runs(q.out) == map_runs(r.out), f"{name}\nREF {r.out}\nQIMG {q.out}"
        r, q = pair.both("check", name)
        assert (q.rc, check_core(q.out), q.err) == (r.rc, check_core(r.out), r.err)
        if name.endswith(".qcow2"):
            # The reference finds qimg's image consistent too.
            c = run(REF, ["check", pair.path_qimg(name)], pair.qimg_dir)
            assert c.rc == 0, c
        pair.same_content(name, "qcow2" if name.endswith(".qcow2") else "raw")


def info_lines(text):
    """info output without the disk size (it depends on host extents) and
    snapshot dates."""
    return [l for l in text.splitlines() if not l.startswith("disk size")
            and not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", l)]


# ---- scenarios ----------------------------------------------------------------

def two_layers(d):
    mk(d, "base.qcow2", 4 * MiB)
    io(d / "base.qcow2", "write -P 1 0 1M", "write -P 9 3M 64k")
    mk(d, "top.qcow2", backing="base.qcow2")
    io(d / "top.qcow2", "write -P 2 512k 1M", "write -z 2M 64k",
       "discard 3M 64k", "write -c -P 3 3584k 64k")


def three_layers(d):
    """top (5M) -> mid (3M) -> base (2M, smaller than both)."""
    mk(d, "base.qcow2", 2 * MiB)
    io(d / "base.qcow2", "write -P 1 0 2M")
    mk(d, "mid.qcow2", 3 * MiB, backing="base.qcow2")
    io(d / "mid.qcow2", "write -P 2 1M 1M", "write -z 1536k 64k")
    mk(d, "top.qcow2", 5 * MiB, backing="mid.qcow2")
    io(d / "top.qcow2", "write -P 3 1536k 3M", "write -z 0 64k")


def raw_base(d):
    """4 KiB clusters over raw: partial chunks are copied whole."""
    (d / "base.raw").write_bytes(b"")
    subprocess.run(["truncate", "-s", "4M", str(d / "base.raw")], check=True)
    io(d / "base.raw", "write -P 7 1M 4k", fmt="raw")
    mk(d, "top.qcow2", backing="base.raw", bfmt="raw", opts="cluster_size=4k")
    io(d / "top.qcow2", "write -P 2 4k 4k", "write -z 256k 128k",
       "write -z 1M 8k", "write -P 0 2M 64k", "write -P 5 4092k 4k")


def short_mid(d):
    """top (4M) -> mid (2M) -> base (4M): past mid's end top reads zero."""
    mk(d, "base.qcow2", 4 * MiB)
    io(d / "base.qcow2", "write -P 1 0 4M")
    mk(d, "mid.qcow2", 2 * MiB, backing="base.qcow2")
    io(d / "mid.qcow2", "write -P 2 512k 512k")
    mk(d, "top.qcow2", 4 * MiB, backing="mid.qcow2")
    io(d / "top.qcow2", "write -P 3 0 64k")


def v2_layers(d):
    mk(d, "base.qcow2", 4 * MiB, opts="compat=0.10")
    mk(d, "top.qcow2", backing="base.qcow2", opts="compat=0.10")
    io(d / "top.qcow2", "write -P 2 0 1M", "write -z 2M 64k")


def with_snapshot(d):
    """A snapshot in the overlay: emptied cluster by cluster."""
    mk(d, "base.qcow2", 4 * MiB)
    mk(d, "top.qcow2", backing="base.qcow2")
    io(d / "top.qcow2", "write -P 2 0 1M")
    subprocess.run([str(REF), "snapshot", "-c", "s1", str(d / "top.qcow2")],
                   check=True)
    io(d / "top.qcow2", "write -P 3 512k 1M", "write -z 3M 64k")


def small_base_raw(d):
    """A raw base smaller than the overlay is grown."""
    (d / "base.raw").write_bytes(b"\1" * (1 * MiB))
    mk(d, "top.qcow2", 3 * MiB, backing="base.raw", bfmt="raw")
    io(d / "top.qcow2", "write -P 4 2M 512k")


def big_clusters(d):
    """2 MiB clusters in the base: granularity 64 KiB, zeroes only by
    whole base clusters."""
    mk(d, "base.qcow2", 8 * MiB, opts="cluster_size=2M")
    io(d / "base.qcow2", "write -P 1 0 8M")
    mk(d, "top.qcow2", backing="base.qcow2", opts="cluster_size=64k")
    io(d / "top.qcow2", "write -z 0 2M", "write -z 2M 64k", "write -P 3 5M 4k")


def small_top(d):
    """The overlay is smaller than its base: the base keeps its size."""
    mk(d, "base.qcow2", 4 * MiB)
    io(d / "base.qcow2", "write -P 1 0 4M")
    mk(d, "top.qcow2", 1 * MiB, backing="base.qcow2")
    io(d / "top.qcow2", "write -P 2 0 1M")


SCENARIOS = {
    "two": (two_layers, ["top.qcow2", "base.qcow2"]),
    "three": (three_layers, ["top.qcow2", "mid.qcow2", "base.qcow2"]),
    "raw_base": (raw_base, ["top.qcow2", "base.raw"]),
    "short_mid": (short_mid, ["top.qcow2", "mid.qcow2", "base.qcow2"]),
    "v2": (v2_layers, ["top.qcow2", "base.qcow2"]),
    "snapshot": (with_snapshot, ["top.qcow2", "base.qcow2"]),
    "small_base_raw": (small_base_raw, ["top.qcow2", "base.raw"]),
    "big_clusters": (big_clusters, ["top.qcow2", "base.qcow2"]),
    "small_top": (small_top, ["top.qcow2", "base.qcow2"]),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("args", [[], ["-d"]])
def test_commit_result(pair, scenario, args):
    setup, images = SCENARIOS[scenario]
    pair.setup(setup)
    pair.same("commit", *args, "top.qcow2")
    same_result(pair, *images)
    r, q = pair.both("info", "--backing-chain", "top.qcow2")
    assert (q.rc, info_lines(q.out), q.err) == (r.rc, info_lines(r.out), r.err)


@pytest.mark.parametrize("scenario,args", [
    ("three", ["-b", "base.qcow2"]),        # implies -d
    ("three", ["-b", "mid.qcow2"]),
    ("three", ["-b", "base.qcow2", "-d"]),
    ("short_mid", ["-b", "base.qcow2"]),    # zeroes past mid's end
    ("three", ["-f", "qcow2", "-t", "none", "-r", "64M"]),
    ("three", ["-t", "writethrough", "-q"]),
    ("raw_base", ["-q", "-d"]),
    ("three", ["-t", "directsync", "-d"]),
])
def test_commit_options(pair, scenario, args):
    setup, images = SCENARIOS[scenario]
    pair.setup(setup)
    pair.same("commit", *args, "top.qcow2")
    same_result(pair, *images)


def test_commit_middle_layer(pair):
    """Committing mid into base empties mid; top still reads the same."""
    pair.setup(three_layers)
    pair.sh(f"{REF} convert -O raw top.qcow2 before.raw")
    pair.same("commit", "mid.qcow2")
    same_result(pair, "mid.qcow2", "base.qcow2")
    pair.same("compare", "top.qcow2", "before.raw")
    pair.same("commit", "top.qcow2")
    same_result(pair, "top.qcow2", "mid.qcow2", "base.qcow2")
    pair.same("compare", "top.qcow2", "before.raw")


def test_commit_base_names(pair):
    """-b names an image relative to the overlay's directory, through
    symbolic paths, or absolutely; other spellings are not found."""
    def setup(d):
        (d / "d").mkdir()
        mk(d / "d", "base.qcow2", 4 * MiB)
        mk(d / "d", "mid.qcow2", backing="base.qcow2")
        mk(d / "d", "top.qcow2", backing="mid.qcow2")
        io(d / "d" / "top.qcow2", "write -P 1 0 64k")
    pair.setup(setup)
    for name in ["d/base.qcow2", "./d/base.qcow2", "d/../d/base.qcow2",
                 "d/mid.qcow2", "top.qcow2", "d/top.qcow2", "",
                 'json:{"file.filename":"d/base.qcow2"}', "base.qcow2",
                 "mid.qcow2", "./base.qcow2", "../d/mid.qcow2"]:
        pair.same("commit", "-b", name, "d/top.qcow2")
    # Absolute names: each tool gets the path into its own directory.
    r = pair.ref("commit", "-b", pair.path_ref("d/base.qcow2"), "d/top.qcow2")
    q = pair.qimg("commit", "-b", pair.path_qimg("d/base.qcow2"), "d/top.qcow2")
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err) == (0, "Image committed.\n", "")
    same_result(pair, "d/top.qcow2", "d/base.qcow2")


@pytest.mark.parametrize("args", [
    ["top.qcow2", "extra"], [], ["-x", "top.qcow2"], ["-b"],
    ["-b", "nonexist", "top.qcow2"], ["-q", "-b", "nonexist", "top.qcow2"],
    ["-r", "abc", "top.qcow2"], ["-r", "-1", "top.qcow2"],
    ["-r", "1x", "top.qcow2"], ["-t", "bogus", "top.qcow2"],
    ["base.qcow2"], ["-f", "raw", "top.qcow2"], ["standalone.raw"],
    ["-f", "raw", "standalone.raw"], ["nonexist.qcow2"],
    ["--image-opts", "top.qcow2"],
    ["--image-opts", "driver=qcow2,file.filename=top.qcow2"],
    ["--image-opts", "-f", "qcow2", "driver=qcow2,file.filename=top.qcow2"],
    ["-f", "bogus", "top.qcow2"], ["dangling.qcow2"],
    ["--object", "secret,id=s0,data=x", "top.qcow2"],
    ["--object", "bogus", "top.qcow2"],
    ["-p", "-b", "nonexist", "top.qcow2"], ["-p", "base.qcow2"],
    ["-p", "nonexist.qcow2"], ["-p", "-t", "bogus", "top.qcow2"],
    ["-q", "-p", "-b", "nonexist", "top.qcow2"],
    ["-p", "-q", "top.qcow2"],
])
def test_commit_errors(pair, args):
    def setup(d):
        two_layers(d)
        (d / "standalone.raw").write_bytes(b"\0" * MiB)
        mk(d, "dangling.qcow2", 1 * MiB)
        subprocess.run([str(REF), "rebase", "-u", "-b", "gone.qcow2", "-F",
                        "qcow2", str(d / "dangling.qcow2")], check=True)
    pair.setup(setup)
    pair.same("commit", *args)
    for name in ("top.qcow2", "base.qcow2"):
        r, q = pair.both("map", "--output=json", name)
        assert map_runs(q.out) == map_runs(r.out), name


def progress_values(out):
    """The percentages of a progress output, consecutive repeats dropped
    (the runner reads text: each '\\r' arrives as a newline)."""
    vals = []
    for part in out.splitlines():
        part = part.strip()
        if part.startswith("(") and part.endswith("/100%)"):
            v = float(part[1:-6])
            if not vals or vals[-1] != v:
                vals.append(v)
    return vals


def test_commit_progress(pair):
    """-p: QEMU prints from its job loop, as often as it polls; the values
    start at 0, never go back and end at 100, then the message."""
    pair.setup(three_layers)
    r, q = pair.both("commit", "-p", "top.qcow2")
    assert (q.rc, q.err) == (r.rc, r.err) == (0, "")
    for res in (r, q):
        assert res.out.endswith("(100.00/100%)\n\nImage committed.\n") or \
            res.out.endswith("(100.00/100%)\nImage committed.\n"), repr(res.out)
        vals = progress_values(res.out)
        assert vals[0] == 0 and vals[-1] == 100 and vals == sorted(vals), vals
    same_result(pair, "top.qcow2", "mid.qcow2", "base.qcow2")


def test_commit_rate_limit(pair):
    """-r bounds the copy rate: 2 MiB of data at 4 MiB/s take a while."""
    import time

    def setup(d):
        mk(d, "base.qcow2", 4 * MiB)
        mk(d, "top.qcow2", backing="base.qcow2")
        io(d / "top.qcow2", "write -P 1 0 2M")
    pair.setup(setup)
    t0 = time.monotonic()
    q = pair.qimg("commit", "-r", "4M", "top.qcow2")
    elapsed = time.monotonic() - t0
    assert (q.rc, q.out) == (0, "Image committed.\n")
    assert elapsed >= 0.3, elapsed
    pair.ref("commit", "-r", "4M", "top.qcow2")
    same_result(pair, "top.qcow2", "base.qcow2")


def test_commit_interop(pair):
    """qimg commits a chain qimg wrote (create -b, qimg-io) and the
    reference reads the result the same as its own."""
    qimg_io = QIMG.parent / "tests" / "qimg-io"

    def setup(d, tool, writer):
        subprocess.run([str(tool), "create", "-q", "-f", "qcow2",
                        str(d / "base.qcow2"), "4M"], check=True)
        subprocess.run([str(tool), "create", "-q", "-f", "qcow2", "-b",
                        "base.qcow2", "-F", "qcow2", str(d / "top.qcow2")],
                       check=True)
        writer(d)

    def ref_writes(d):
        io(d / "base.qcow2", "write -P 1 0 3M")
        io(d / "top.qcow2", "write -P 2 1M 1M", "write -z 3M 64k")

    def qimg_writes(d):
        subprocess.run([str(qimg_io), "-f", "qcow2", str(d / "base.qcow2"),
                        "write -P 1 0 3M"], check=True)
        subprocess.run([str(qimg_io), "-f", "qcow2", str(d / "top.qcow2"),
                        "write -P 2 1M 1M", "write -z 3M 64k"], check=True)
    setup(pair.ref_dir, REF, ref_writes)
    setup(pair.qimg_dir, QIMG, qimg_writes)
    pair.same("map", "--output=json", "top.qcow2")
    pair.same("commit", "top.qcow2")
    same_result(pair, "top.qcow2", "base.qcow2")
    # And the other way: qimg reads what the reference committed.
    for name in ("top.qcow2", "base.qcow2"):
        r = run(REF, ["map", "--output=json", name], pair.ref_dir)
        q = run(QIMG, ["map", "--output=json", name], pair.ref_dir)
        assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)


def has_locks(path):
    """Whether some process holds an OFD/POSIX lock on path."""
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any(line.split()[5:6] == [ident] for line in f)


def test_commit_locked_base(pair):
    """A base another process writes cannot be committed into."""
    import time
    pair.setup(two_layers)
    procs = []
    try:
        for d in pair.dirs():
            procs.append(subprocess.Popen(
                [str(QEMU_IO), "-f", "qcow2", str(d / "base.qcow2")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True))
        # Wait until both holders have taken their locks.
        deadline = time.monotonic() + 30
        for d, p in zip(pair.dirs(), procs):
            # Watch /proc/locks: probing with another qemu-img would take
            # locks of its own that could stop qemu-io from starting.
            while not has_locks(d / "base.qcow2"):
                assert p.poll() is None, p.stderr.read()
                assert time.monotonic() < deadline, "qemu-io took no lock"
                time.sleep(0.05)
        pair.same("commit", "top.qcow2")
        pair.same("commit", "-d", "top.qcow2")
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
