"""Backing chains everywhere: info --backing-chain (human and JSON) on
chains of one to four images with raw and qcow2 layers, relative names in
subdirectories and absolute names; images opened one by one as qemu-img
does (a missing image is named, a loop is caught by name); create -b with
and without -F, -u and a size; reads through chains (map, compare) with
short backing files; growing an overlay over a longer backing file; loops
refused with a clear error; chains written by either tool read by both.
"""
import struct
import subprocess

import pytest

from conftest import QIMG, REF, Pair, qemu_io, run

MiB = 1 << 20
QIMG_IO = QIMG.parent / "tests" / "qimg-io"


def mk(d, name, size=None, backing=None, bfmt="qcow2", opts=None, fmt="qcow2",
       unsafe=False):
    args = [str(REF), "create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    if backing is not None:
        args += ["-b", backing]
        if bfmt:
            args += ["-F", bfmt]
    if unsafe:
        args.append("-u")
    args.append(str(d / name))
    if size is not None:
        args.append(str(size))
    subprocess.run(args, check=True, capture_output=True)


def io(path, *cmds, fmt="qcow2"):
    qemu_io(path, *cmds, fmt=fmt)


def drop_backing_format(path):
    """Rename the backing format header extension to an unknown one: the
    backing file's format is then probed (qemu-img 7.2 no longer creates
    such images)."""
    data = bytearray(path.read_bytes())
    i = data.index(struct.pack(">I", 0xE2792ACA), 104)
    data[i:i + 4] = struct.pack(">I", 0x0BADF00D)
    path.write_bytes(bytes(data))


def chains(d):
    """raw <- qcow2 <- qcow2 (shorter) <- qcow2 (longer), and a chain
    across directories with relative names."""
    with open(d / "base.raw", "wb") as f:
        f.truncate(4 * MiB)
    io(d / "base.raw", "write -P 1 0 1M", "write -P 5 3M 512k", fmt="raw")
    mk(d, "l1.qcow2", backing="base.raw", bfmt="raw")
    io(d / "l1.qcow2", "write -P 2 1M 1M", "write -z 3M 64k")
    mk(d, "l2.qcow2", 3 * MiB, backing="l1.qcow2")
    io(d / "l2.qcow2", "write -P 3 2M 512k", "discard 1M 64k")
    mk(d, "l3.qcow2", 5 * MiB, backing="l2.qcow2", opts="cluster_size=4k")
    io(d / "l3.qcow2", "write -P 4 4M 4k", "write -z 0 4k")
    (d / "a" / "b").mkdir(parents=True)
    mk(d / "a", "mid.qcow2", backing="../l1.qcow2")
    mk(d / "a" / "b", "top.qcow2", backing="../mid.qcow2")
    io(d / "a" / "b" / "top.qcow2", "write -P 6 0 64k")
    mk(d, "v2.qcow2", backing="l2.qcow2", opts="compat=0.10")
    mk(d, "noformat.qcow2", 1 * MiB, backing="base.raw", bfmt="raw",
       unsafe=True)
    drop_backing_format(d / "noformat.qcow2")
    mk(d, "dangling.qcow2", 1 * MiB, backing="gone.qcow2", unsafe=True)
    mk(d, "d2.qcow2", 1 * MiB, backing="dangling.qcow2", unsafe=True)
    mk(d, "wrongfmt.qcow2", 1 * MiB, backing="l1.qcow2", bfmt="raw",
       unsafe=True)
    mk(d, "loop_a.qcow2", 1 * MiB, backing="loop_b.qcow2", unsafe=True)
    mk(d, "loop_b.qcow2", 1 * MiB, backing="loop_a.qcow2", unsafe=True)
    mk(d, "self.qcow2", 1 * MiB, backing="./self.qcow2", unsafe=True)


IMAGES = ["base.raw", "l1.qcow2", "l2.qcow2", "l3.qcow2", "a/b/top.qcow2",
          "v2.qcow2", "noformat.qcow2", "wrongfmt.qcow2"]


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    """Built once: the tests using it only read (create writes new names
    that no other test reads)."""
    pair = Pair(tmp_path_factory.mktemp("chains"))
    # One set of files seen by both tools: disk sizes cannot differ.
    pair.setup_once(chains)
    return pair


@pytest.mark.parametrize("image", IMAGES + ["dangling.qcow2", "d2.qcow2",
                                            "loop_a.qcow2", "loop_b.qcow2"])
@pytest.mark.parametrize("opts", [[], ["--output=json"], ["-U"]])
def test_info_backing_chain(chained, image, opts):
    chained.same("info", "--backing-chain", *opts, image)
    chained.same("info", *opts, image)


@pytest.mark.parametrize("args", [
    ["--image-opts", "driver=qcow2,file.filename=l3.qcow2"],
    ["-f", "qcow2", "l3.qcow2"], ["-f", "raw", "l3.qcow2"],
    ['json:{"file.filename":"a/b/top.qcow2"}'],
])
def test_info_backing_chain_opts(chained, args):
    chained.same("info", "--backing-chain", *args)
    chained.same("info", "--backing-chain", "--output=json", *args)


def test_info_self_reference(chained):
    """"./self.qcow2" is a new name each time: qemu-img's name grows until
    it is too long to open (the message, longer than 8 KiB, is cut in
    qimg's)."""
    r, q = chained.both("info", "--backing-chain", "self.qcow2")
    assert q.rc == r.rc == 1 and q.out == r.out == ""
    assert q.err.startswith("qemu-img: Could not open '././././")
    assert r.err[:1000] == q.err[:1000]


def test_info_absolute_names(pair):
    """Absolute backing names: each directory's own path, else identical."""
    def setup(d):
        mk(d, "base.qcow2", 4 * MiB)
        (d / "s").mkdir()
        mk(d / "s", "t.qcow2", backing=str(d / "base.qcow2"))
        mk(d, "abs.qcow2", backing=str(d / "s" / "t.qcow2"))
    pair.setup(setup)
    for args in (["--backing-chain", "abs.qcow2"],
                 ["--backing-chain", "--output=json", "abs.qcow2"]):
        r, q = pair.both("info", *args)
        assert q.rc == r.rc == 0
        assert q.out.replace(str(pair.qimg_dir), "D") == \
            r.out.replace(str(pair.ref_dir), "D")


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("opts", [["--output=json"], []])
def test_map_through_chains(chained, image, opts):
    chained.same("map", *opts, image)


@pytest.mark.parametrize("a,b,opts", [
    ("l3.qcow2", "l2.qcow2", []), ("l2.qcow2", "l1.qcow2", ["-s"]),
    ("l1.qcow2", "base.raw", []), ("l3.qcow2", "base.raw", ["-s"]),
    ("a/b/top.qcow2", "l1.qcow2", []), ("v2.qcow2", "l2.qcow2", ["-s"]),
    ("l3.qcow2", "l3.qcow2", ["-s"]), ("noformat.qcow2", "base.raw", []),
])
def test_compare_through_chains(chained, a, b, opts):
    chained.same("compare", *opts, a, b)


@pytest.mark.parametrize("cmd", [["map"], ["compare", "loop_b.qcow2"],
                                 ["convert", "-O", "raw"]])
def test_loops_refused(chained, cmd):
    """QEMU never returns on these (it opens the loop forever); qimg says
    what is wrong."""
    args = cmd[:1] + ["loop_a.qcow2"] + cmd[1:]
    if cmd[0] == "convert":
        args.append("out.raw")
    q = run(QIMG, args, chained.qimg_dir, timeout=20)
    assert q.rc == (2 if cmd[0] == "compare" else 1), q
    assert "infinite loop" in q.err, q
    q = run(QIMG, ["map", "self.qcow2"], chained.qimg_dir, timeout=20)
    assert q.rc == 1 and "refers to itself" in q.err, q


# ---- create -b -----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["-b", "l1.qcow2", "-F", "qcow2", "o.qcow2"],
    ["-b", "l1.qcow2", "-F", "qcow2", "o.qcow2", "1M"],
    ["-b", "base.raw", "-F", "raw", "a/o.qcow2"],
    ["-b", "../base.raw", "-F", "raw", "a/o.qcow2"],
    ["-b", "base.raw", "-F", "qcow2", "o.qcow2"],
    ["-b", "base.raw", "o.qcow2"],
    ["-b", "l2.qcow2", "o.qcow2", "1M"],
    ["-b", "gone", "-F", "raw", "o.qcow2"],
    ["-b", "gone", "-F", "raw", "o.qcow2", "1M"],
    ["-u", "-b", "gone", "-F", "raw", "o.qcow2", "1M"],
    ["-u", "-b", "gone", "-F", "raw", "o.qcow2"],
    ["-u", "-b", "base.raw", "o.qcow2", "1M"],
    ["-u", "-b", "base.raw", "o.qcow2"],
    ["-u", "-o", "backing_file=base.raw", "o.qcow2", "1M"],
    ["-u", "-b", "x", "-o", "bogus=1", "o.qcow2"],
    ["-u", "-b", "o.qcow2", "o.qcow2"],
    ["-b", "dangling.qcow2", "-F", "qcow2", "o.qcow2"],
    ["-b", "l1.qcow2", "-F", "bogus", "o.qcow2"],
    ["-b", "", "-F", "raw", "o.qcow2", "1M"],
    ["-b", "l1.qcow2", "-F", "qcow2", "-o", "size=1M", "o.qcow2"],
    ["-o", "backing_file=l2.qcow2,backing_fmt=qcow2", "o.qcow2"],
    ["-o", "backing_fmt=raw", "o.qcow2", "1M"],
    ["-b", "l1.qcow2", "-F", "qcow2", "-o", "compat=0.10", "o.qcow2"],
    ["-f", "raw", "-b", "base.raw", "-F", "raw", "o.raw"],
])
def test_create_backing(pair, args):
    def setup(d):
        with open(d / "base.raw", "wb") as f:
            f.truncate(4 * MiB)
        mk(d, "l1.qcow2", backing="base.raw", bfmt="raw")
        mk(d, "l2.qcow2", 3 * MiB, backing="l1.qcow2")
        mk(d, "dangling.qcow2", 1 * MiB, backing="gone.qcow2", unsafe=True)
        (d / "a").mkdir()
    pair.setup(setup)
    chained = pair
    if "-f" not in args:
        args = ["-f", "qcow2"] + args
    chained.same("create", *args)
    out = [a for a in args if a.endswith(("o.qcow2", "o.raw"))][-1]
    if chained.path_ref(out).exists():
        chained.same("info", "--backing-chain", out)
        chained.same("map", "--output=json", out)


# ---- growing over a longer backing file -------------------------------------

@pytest.mark.parametrize("args", [
    ["mid.qcow2", "3M"], ["mid.qcow2", "+64k"],
    ["--preallocation=falloc", "mid.qcow2", "3M"],
    ["--preallocation=full", "mid.qcow2", "3M"],
    ["v2.qcow2", "3M"],         # v2 cannot zero: refused, size unchanged
    ["short.qcow2", "5M"],      # the backing file is not longer: no zeroes
    ["ext.qcow2", "3M"],
])
def test_grow_hides_backing(pair, args):
    def setup(d):
        mk(d, "base.qcow2", 4 * MiB)
        io(d / "base.qcow2", "write -P 1 0 4M")
        mk(d, "mid.qcow2", 1 * MiB, backing="base.qcow2")
        mk(d, "v2.qcow2", 1 * MiB, backing="base.qcow2", opts="compat=0.10")
        mk(d, "short.qcow2", 4 * MiB, backing="base.qcow2")
        mk(d, "ext.qcow2", 1 * MiB, backing="base.qcow2",
           opts="extended_l2=on")
    pair.setup(setup)
    pair.same("resize", *args)
    name = [a for a in args if a.endswith(".qcow2")][0]
    pair.same("map", "--output=json", name)
    pair.same_content(name, "qcow2")
    c = run(REF, ["check", pair.path_qimg(name)], pair.qimg_dir)
    assert c.rc == 0, c


# ---- interop --------------------------------------------------------------------

def test_chain_written_by_qimg(pair):
    """A chain created and written by qimg reads the same in both tools as
    the one the reference made."""
    def make(d, tool, write):
        subprocess.run([str(tool), "create", "-q", "-f", "raw",
                        str(d / "base.raw"), "3M"], check=True)
        subprocess.run([str(tool), "create", "-q", "-f", "qcow2", "-b",
                        "base.raw", "-F", "raw", str(d / "mid.qcow2"), "4M"],
                       check=True)
        subprocess.run([str(tool), "create", "-q", "-f", "qcow2", "-b",
                        "mid.qcow2", "-F", "qcow2", str(d / "top.qcow2")],
                       check=True)
        write(d, "base.raw", "raw", "write -P 1 0 2M")
        write(d, "mid.qcow2", "qcow2", "write -P 2 1M 1M")
        write(d, "top.qcow2", "qcow2", "write -z 1536k 64k")

    def qemu(d, name, fmt, cmd):
        io(d / name, cmd, fmt=fmt)

    def ours(d, name, fmt, cmd):
        subprocess.run([str(QIMG_IO), "-f", fmt, str(d / name), cmd],
                       check=True)
    make(pair.ref_dir, REF, qemu)
    make(pair.qimg_dir, QIMG, ours)
    for tool in (REF, QIMG):
        for args in (["map", "--output=json", "top.qcow2"],
                     ["info", "--backing-chain", "top.qcow2"],
                     ["compare", "top.qcow2", "base.raw"],
                     ["check", "top.qcow2"]):
            r = run(tool, args, pair.ref_dir)
            q = run(tool, args, pair.qimg_dir)
            assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err), (tool, args)
