"""qemu-img rebase differential tests.

Unsafe mode (-u) only rewrites the header: the images both tools leave
behind are compared byte for byte.  Safe mode copies into the overlay every
512-byte sector its old backing chain and its new backing file see
differently where the overlay allocates nothing (zero writes where the old
chain ends); maps, checks and the guest content must match, with old and
new backing files shorter or longer than the overlay, raw and qcow2
backing files, a new backing file from the old chain (only what lies above
it is compared), -b "" (flatten), relative names in subdirectories, v2
images, -p progress lines (exact: rebase prints in fixed 2 MiB steps) and
every error path.
"""
import subprocess

import pytest

from conftest import QIMG, REF, qemu_io, run

MiB = 1 << 20


def io(path, *cmds, fmt="qcow2"):
    qemu_io(path, *cmds, fmt=fmt)


def mk(d, name, size=None, backing=None, bfmt="qcow2", opts=None, fmt="qcow2"):
    args = [str(REF), "create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    if backing is not None:
        args += ["-b", backing, "-F", bfmt] + (["-u"] if size else [])
    args.append(str(d / name))
    if size is not None:
        args.append(str(size))
    subprocess.run(args, check=True, capture_output=True)


def raw(d, name, size, *cmds):
    with open(d / name, "wb") as f:
        f.truncate(size)
    if cmds:
        io(d / name, *cmds, fmt="raw")


def snapshot_content(d, name="top.qcow2"):
    """The overlay's guest content before the rebase, to compare after."""
    subprocess.run([str(REF), "convert", "-O", "raw", str(d / name),
                    str(d / "before.raw")], check=True)


def same_result(pair, name="top.qcow2", content=True):
    r, q = pair.both("map", "--output=json", name)
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err), f"{name}\n{r}\n{q}"
    pair.same("check", name)
    c = run(REF, ["check", pair.path_qimg(name)], pair.qimg_dir)
    assert c.rc == 0, c
    r, q = pair.both("info", "--backing-chain", name)
    strip = lambda t: [l for l in t.splitlines() if not l.startswith("disk size")]
    assert (q.rc, strip(q.out), q.err) == (r.rc, strip(r.out), r.err)
    if content:
        # Nothing the guest sees changed.
        pair.same("compare", name, "before.raw")


# ---- scenarios ----------------------------------------------------------------

def basic(d):
    """old (qcow2, 4M) -> new differs in places, partly inside clusters."""
    mk(d, "old.qcow2", 4 * MiB)
    io(d / "old.qcow2", "write -P 1 0 3M")
    mk(d, "new.qcow2", 4 * MiB)
    io(d / "new.qcow2", "write -P 1 0 1M", "write -P 5 1M 4k",
       "write -P 1 1052672 1044480", "write -P 7 3M 1M", "write -P 1 2560k 1k")
    mk(d, "top.qcow2", backing="old.qcow2")
    io(d / "top.qcow2", "write -P 2 512k 64k", "write -z 2M 64k")
    snapshot_content(d)


def short_old(d):
    """The old backing file ends at 1M, the new one is longer (zeroes are
    written where the old chain ended), with data in odd places."""
    mk(d, "old.qcow2", 1 * MiB)
    io(d / "old.qcow2", "write -P 1 0 1M")
    raw(d, "new.raw", 6 * MiB, "write -P 1 0 512k", "write -P 9 700k 3k",
        "write -P 3 1M 1000", "write -P 4 1500k 64k", "write -P 5 4M 2M")
    mk(d, "top.qcow2", 5 * MiB, backing="old.qcow2")
    io(d / "top.qcow2", "write -P 2 4M 64k")
    snapshot_content(d)


def short_new(d):
    """The new backing file is shorter than the old one and the overlay."""
    raw(d, "old.raw", 4 * MiB, "write -P 1 0 4M")
    raw(d, "new.raw", 1536 * 1024 + 512, "write -P 1 0 1M")
    mk(d, "top.qcow2", 4 * MiB, backing="old.raw", bfmt="raw",
       opts="cluster_size=4k")
    io(d / "top.qcow2", "write -P 2 0 4k", "write -P 3 3M 8k")
    snapshot_content(d)


def chain(d):
    """top (4M) -> mid (2M) -> base (4M): rebasing onto base compares only
    what mid allocates, and keeps the zeroes past mid's end."""
    mk(d, "base.qcow2", 4 * MiB)
    io(d / "base.qcow2", "write -P 1 0 4M")
    mk(d, "mid.qcow2", 2 * MiB, backing="base.qcow2")
    io(d / "mid.qcow2", "write -P 2 512k 512k", "write -z 1536k 4k")
    mk(d, "top.qcow2", 4 * MiB, backing="mid.qcow2")
    io(d / "top.qcow2", "write -P 3 0 64k")
    snapshot_content(d)


def subdir(d):
    """Images in a subdirectory: names relative to the overlay."""
    (d / "d").mkdir()
    chain(d / "d")
    mk(d / "d", "other.qcow2", 4 * MiB)
    io(d / "d" / "other.qcow2", "write -P 8 1M 1M")
    snapshot_content(d, "d/top.qcow2")


def standalone(d):
    """An overlay without a backing file gets one: its zeroes must stay."""
    mk(d, "new.qcow2", 4 * MiB)
    io(d / "new.qcow2", "write -P 1 0 2M")
    mk(d, "top.qcow2", 4 * MiB)
    io(d / "top.qcow2", "write -P 2 1M 64k")
    snapshot_content(d)


def v2(d):
    mk(d, "old.qcow2", 2 * MiB, opts="compat=0.10")
    io(d / "old.qcow2", "write -P 1 0 1M")
    raw(d, "new.raw", 3 * MiB, "write -P 6 0 4k", "write -P 7 2M 1M")
    mk(d, "top.qcow2", 3 * MiB, backing="old.qcow2", opts="compat=0.10")
    io(d / "top.qcow2", "write -P 2 0 1k")
    snapshot_content(d)


def big(d):
    """7 MiB: steps of 2 MiB give progress lines of 33.33% (4 steps)."""
    mk(d, "old.qcow2", 7 * MiB)
    io(d / "old.qcow2", "write -P 1 0 7M")
    mk(d, "new.qcow2", 7 * MiB)
    io(d / "new.qcow2", "write -P 1 0 3M")
    mk(d, "top.qcow2", backing="old.qcow2")
    io(d / "top.qcow2", "write -P 2 2M 2M")
    snapshot_content(d)


SAFE = [
    (basic, ["-b", "new.qcow2", "-F", "qcow2"]),
    (basic, ["-b", "", "-p"]),
    (basic, ["-p", "-b", "new.qcow2", "-F", "raw"]),    # new read as raw bytes
    (basic, ["-b", "old.qcow2", "-F", "qcow2"]),        # same backing file
    (basic, ["-t", "none", "-T", "none", "-b", "new.qcow2", "-F", "qcow2"]),
    (basic, ["-U", "-q", "-b", "new.qcow2", "-F", "qcow2"]),
    (basic, ["-f", "qcow2", "-b", "new.qcow2"]),        # no -F: refused late
    (short_old, ["-p", "-b", "new.raw", "-F", "raw"]),
    (short_old, ["-b", ""]),
    (short_new, ["-b", "new.raw", "-F", "raw"]),
    (short_new, ["-p", "-b", ""]),
    (chain, ["-b", "base.qcow2", "-F", "qcow2"]),
    (chain, ["-p", "-b", "base.qcow2", "-F", "raw"]),
    (chain, ["-b", "mid.qcow2", "-F", "qcow2"]),
    (chain, ["-b", "./base.qcow2", "-F", "qcow2"]),
    (chain, ["-b", ""]),
    (standalone, ["-b", "new.qcow2", "-F", "qcow2"]),
    (v2, ["-b", "new.raw", "-F", "raw"]),
    (big, ["-p", "-b", "new.qcow2", "-F", "qcow2"]),
    (big, ["-p", "-b", ""]),
]


@pytest.mark.parametrize("setup,args", SAFE,
                         ids=[f"{s.__name__}:{' '.join(a)}" for s, a in SAFE])
def test_rebase_safe(pair, setup, args):
    pair.setup(setup)
    pair.same("rebase", *args, "top.qcow2")
    same_result(pair)


@pytest.mark.parametrize("args", [
    ["-b", "base.qcow2", "-F", "qcow2"],        # relative to the overlay
    ["-b", "other.qcow2", "-F", "qcow2"],
    ["-b", "d/base.qcow2", "-F", "qcow2"],      # not found from d/
    ["-p", "-b", "mid.qcow2", "-F", "qcow2"],
    ["-b", ""],
])
def test_rebase_subdir(pair, args):
    pair.setup(subdir)
    pair.same("rebase", *args, "d/top.qcow2")
    same_result(pair, "d/top.qcow2")


def test_rebase_absolute(pair):
    """An absolute name: each tool gets its own directory's path."""
    pair.setup(subdir)
    r = pair.ref("rebase", "-b", pair.path_ref("d/base.qcow2"), "-F", "qcow2",
                 "d/top.qcow2")
    q = pair.qimg("rebase", "-b", pair.path_qimg("d/base.qcow2"), "-F",
                  "qcow2", "d/top.qcow2")
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err) == (0, "", "")
    r, q = pair.both("map", "--output=json", "d/top.qcow2")
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)
    pair.same("compare", "d/top.qcow2", "before.raw")


# ---- unsafe mode: byte-identical headers -------------------------------------

def unsafe_images(d):
    mk(d, "top.qcow2", 4 * MiB, backing="a_rather_long_backing_file_name.qcow2")
    mk(d, "v2.qcow2", 4 * MiB, backing="base.raw", bfmt="raw",
       opts="compat=0.10")
    mk(d, "plain.qcow2", 4 * MiB)
    mk(d, "small.qcow2", 1 * MiB, opts="cluster_size=512")
    mk(d, "ext.qcow2", 1 * MiB, opts="extended_l2=on,cluster_size=128k")
    (d / "r.raw").write_bytes(b"\0" * MiB)


LONG = "y" * 1000
TOO_LONG = "x" * 1100


@pytest.mark.parametrize("image,args", [
    ("top.qcow2", ["-u", "-b", "b.qcow2", "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-b", "nonexist.qcow2", "-F", "raw"]),
    ("top.qcow2", ["-u", "-b", "sub/dir/b.img", "-F", "raw"]),
    ("top.qcow2", ["-u", "-b", "/abs/b.qcow2", "-F", "qcow2"]),
    ("top.qcow2", ["-u"]),                               # removes it
    ("top.qcow2", ["-u", "-b", ""]),
    ("top.qcow2", ["-u", "-b", "", "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-b", LONG, "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-b", TOO_LONG, "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-b", "b.qcow2"]),              # format required
    ("top.qcow2", ["-u", "-b", "b.qcow2", "-F", "bogus"]),
    ("top.qcow2", ["-p", "-u", "-b", "b.qcow2", "-F", "qcow2"]),
    ("top.qcow2", ["-q", "-p", "-u", "-b", "b.qcow2", "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-U", "-b", "b.qcow2", "-F", "qcow2"]),
    ("top.qcow2", ["-u", "-t", "none", "-T", "directsync", "-b", "b.qcow2",
                   "-F", "qcow2"]),
    ("v2.qcow2", ["-u", "-b", "b.qcow2", "-F", "qcow2"]),
    ("v2.qcow2", ["-u", "-b", ""]),
    ("plain.qcow2", ["-u", "-b", "b.qcow2", "-F", "qcow2"]),
    ("small.qcow2", ["-u", "-b", LONG, "-F", "qcow2"]),   # header too small
    ("small.qcow2", ["-u", "-b", "b", "-F", "qcow2"]),
    ("ext.qcow2", ["-u", "-b", "b.qcow2", "-F", "raw"]),
    ("r.raw", ["-u", "-b", "b.qcow2", "-F", "qcow2"]),   # probed: warning
    ("r.raw", ["-u", "-f", "raw"]),
    ("r.raw", ["-u", "-f", "raw", "-b", ""]),
    ("r.raw", ["-f", "raw", "-b", ""]),
    ("r.raw", ["-f", "raw", "-b", "plain.qcow2", "-F", "qcow2"]),
    ("driver=qcow2,file.filename=top.qcow2",
     ["--image-opts", "-u", "-b", "b.qcow2", "-F", "qcow2"]),
    ("top.qcow2", ["--image-opts", "-u", "-b", "b.qcow2", "-F", "qcow2"]),
])
def test_rebase_unsafe(pair, image, args):
    pair.setup(unsafe_images)
    pair.same("rebase", *args, image)
    for name in ("top.qcow2", "v2.qcow2", "plain.qcow2", "small.qcow2",
                 "ext.qcow2", "r.raw"):
        assert pair.path_qimg(name).read_bytes() == \
            pair.path_ref(name).read_bytes(), name
    if image.endswith(".qcow2"):
        pair.same("info", "--output=json", image)


# ---- errors --------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [], ["top.qcow2"], ["-F", "qcow2", "top.qcow2"], ["-b"],
    ["-b", "x", "top.qcow2", "extra"], ["-x", "-b", "x", "top.qcow2"],
    ["-o", "x", "-b", "x", "top.qcow2"],
    ["-b", "x", "-F", "bogus", "nonexist"], ["-b", "x", "nonexist"],
    ["-b", "x", "-F", "bogus", "top.qcow2"],
    ["-b", "nonexist.qcow2", "-F", "qcow2", "top.qcow2"],
    ["-b", "nonexist.qcow2", "top.qcow2"],
    ["-b", "new.qcow2", "-F", "raw", "-t", "bogus", "top.qcow2"],
    ["-b", "new.qcow2", "-F", "raw", "-T", "bogus", "top.qcow2"],
    ["-b", "old.qcow2", "-F", "qcow2", "dangling.qcow2"],
    ["-b", "", "dangling.qcow2"],
    ["-u", "-b", "old.qcow2", "-F", "qcow2", "dangling.qcow2"],
    ["-b", "dangling.qcow2", "-F", "qcow2", "top.qcow2"],
    ["-b", "new.qcow2", "-F", "qcow2", "-f", "bogus", "top.qcow2"],
    ["--object", "bogus", "-b", "new.qcow2", "top.qcow2"],
    ["-p", "-b", "nonexist", "-F", "qcow2", "top.qcow2"],
    ["-p", "-t", "bogus", "-b", "x", "top.qcow2"],
    ["-p", "-T", "bogus", "-b", "x", "top.qcow2"],
    ["-p", "-b", "x", "-F", "bogus", "top.qcow2"],
    ["-p", "nonexist", "-b", "x"],
    ["-p", "-b", "new.qcow2", "top.qcow2"],
    ["-p", "-q", "-b", "x", "top.qcow2"],
])
def test_rebase_errors(pair, args):
    def setup(d):
        basic(d)
        mk(d, "dangling.qcow2", 4 * MiB, backing="gone.qcow2")
    pair.setup(setup)
    pair.same("rebase", *args)
    pair.same("map", "--output=json", "top.qcow2")
    pair.same("info", "--output=json", "top.qcow2")


def test_rebase_interop(pair):
    """A chain qimg made (create -b, qimg-io) rebased by qimg, read by the
    reference; and qimg reads what the reference rebased."""
    qimg_io = QIMG.parent / "tests" / "qimg-io"

    def make(d, tool, write):
        for name, size in (("old.qcow2", "4M"), ("new.qcow2", "4M")):
            subprocess.run([str(tool), "create", "-q", "-f", "qcow2",
                            str(d / name), size], check=True)
        subprocess.run([str(tool), "create", "-q", "-f", "qcow2", "-b",
                        "old.qcow2", "-F", "qcow2", str(d / "top.qcow2")],
                       check=True)
        write(d, "old.qcow2", "write -P 1 0 3M")
        write(d, "new.qcow2", "write -P 1 0 1M")
        write(d, "top.qcow2", "write -P 2 1M 64k")
        snapshot_content(d)

    def with_qemu_io(d, name, cmd):
        io(d / name, cmd)

    def with_qimg_io(d, name, cmd):
        subprocess.run([str(qimg_io), "-f", "qcow2", str(d / name), cmd],
                       check=True)
    make(pair.ref_dir, REF, with_qemu_io)
    make(pair.qimg_dir, QIMG, with_qimg_io)
    pair.same("rebase", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2")
    same_result(pair)
    q = run(QIMG, ["map", "--output=json", "top.qcow2"], pair.ref_dir)
    r = run(REF, ["map", "--output=json", "top.qcow2"], pair.ref_dir)
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)
