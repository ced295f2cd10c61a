"""vhdx against qemu-img 7.2: create (every option, every error), images
byte-identical but for their random GUIDs, info/map/check/compare, I/O
cross-checked both ways (qemu-io writes into qimg's images, qimg-io into
the reference's), convert both ways, 7.2's refusals, and libvhdi's
vhdiinfo reading what qimg writes."""
import shutil
import subprocess

import pytest

from conftest import (BUILD, QEMU_IO, QIMG, REF, batches, qemu_io, run,
                      same_all)
from vhdx_image import assert_same_image

QIMG_IO = BUILD / "tests" / "qimg-io"
MiB = 1 << 20


def test_create_help(pair):
    for args in (["-f", "vhdx", "-o", "help"],
                 ["-f", "vhdx", "-o", "help", "x.vhdx"],
                 ["-f", "vhdx", "-o", "?", "x.vhdx", "1M"]):
        pair.same("create", *args)


# (options, size): each creates an image with both tools; outputs and the
# images (GUIDs aside) must be the same.
CREATE_CASES = [
    (None, "1G"), (None, "1000"), (None, "1M"), (None, "3G"),
    ("subformat=dynamic", "64M"), ("subformat=fixed", "20M"),
    ("subformat=fixed,block_state_zero=off", "20M"),
    ("block_state_zero=off", "64M"), ("block_state_zero=on", "64M"),
    ("block_size=1M", "64M"), ("block_size=2M,log_size=3M", "5M"),
    ("block_size=0", "64M"), ("block_size=1", "64M"),
    ("block_size=300M", "1G"), ("block_size=256M", "1G"),
    ("block_size=32M,subformat=fixed,block_state_zero=off", "40M"),
    ("log_size=1", "16M"), ("log_size=2M", "16M"), ("log_size=1.5M", "16M"),
    ("size=8M", None), ("block_size=1M,log_size=2M", "0"),
    ("subformat=fixed,block_size=1M", "3M"),
    ("preallocation=full", "10M"), ("preallocation=off", "10M"),
    ("nocow=on", "4M"), ("extent_size_hint=1M", "4M"),
]
# Errors: the file may be left behind (QEMU creates it first).
CREATE_ERRORS = [
    ("block_size=3M", "1G"), ("block_size=5M", "1G"), ("log_size=0", "1G"),
    ("log_size=5G", "1G"), ("log_size=4G", "1G"), ("subformat=foo", "1G"),
    ("subformat=", "1G"), ("block_state_zero=foo", "1G"), (None, "65T"),
    (None, "64T1"), ("size=abc", None), (None, None),
    ("preallocation=foo", "1M"), ("log_size=-1", "1M"), ("bogus=1", "1M"),
    ("block_size=1G", "1M"), (None, "-5"),
]


def create_args(opts, size):
    args = ["-f", "vhdx"] + (["-o", opts] if opts else []) + ["x.vhdx"]
    return args + ([size] if size else [])


@pytest.mark.parametrize("batch", batches(CREATE_CASES, 10))
def test_create_images(pair, batch):
    for opts, size in batch:
        pair.same("create", *create_args(opts, size))
        pair.same("info", "x.vhdx")
        pair.same("check", "x.vhdx")
        assert_same_image(pair.path_ref("x.vhdx"), pair.path_qimg("x.vhdx"))
        # Same space taken on disk: the BAT and metadata are written as
        # QEMU writes them, the rest left sparse.
        assert pair.path_ref("x.vhdx").stat().st_blocks == \
            pair.path_qimg("x.vhdx").stat().st_blocks, (opts, size)
        for d in pair.dirs():
            (d / "x.vhdx").unlink()


@pytest.mark.parametrize("batch", batches(CREATE_ERRORS, 9))
def test_create_errors(pair, batch):
    for opts, size in batch:
        pair.same("create", *create_args(opts, size))
        exists = [(d / "x.vhdx").exists() for d in pair.dirs()]
        assert exists[0] == exists[1], (opts, size)
        if exists[0]:
            assert (pair.path_ref("x.vhdx").stat().st_size ==
                    pair.path_qimg("x.vhdx").stat().st_size)
            for d in pair.dirs():
                (d / "x.vhdx").unlink()


def write_pattern(path, tool):
    """Data in blocks 0 (partly), 2 and the last, zeroes written in 3."""
    cmds = ["write -P 0x11 4k 60k", "write -P 0x22 16M 9M",
            "write -z 24M 1M", "write -P 0x33 63M 1M"]
    if tool == "qemu-io":
        qemu_io(path, *cmds, fmt="vhdx")
    else:
        r = run(QIMG_IO, ["-f", "vhdx", path] + cmds, path.parent)
        assert r.rc == 0, r


def test_io_cross(pair):
    """Each tool writes the same pattern into an image the other created;
    the results are identical (GUIDs aside) and read the same."""
    subprocess.run([str(REF), "create", "-q", "-f", "vhdx",
                    pair.path_qimg("a.vhdx"), "64M"], check=True)
    r = run(QIMG, ["create", "-q", "-f", "vhdx", pair.path_ref("a.vhdx"),
                   "64M"], pair.ref_dir)
    assert r.rc == 0, r
    write_pattern(pair.path_ref("a.vhdx"), "qemu-io")     # into qimg's
    write_pattern(pair.path_qimg("a.vhdx"), "qimg-io")    # into QEMU's
    assert_same_image(pair.path_ref("a.vhdx"), pair.path_qimg("a.vhdx"))
    for cmd in (["info", "a.vhdx"], ["check", "a.vhdx"],
                ["map", "--output=json", "a.vhdx"], ["map", "a.vhdx"],
                ["compare", "a.vhdx", "a.vhdx"]):
        pair.same(*cmd)
    r = run(REF, ["compare", pair.path_ref("a.vhdx"), pair.path_qimg("a.vhdx")],
            pair.ref_dir)
    assert r.rc == 0, r
    r = run(QEMU_IO, ["-f", "vhdx", "-c", "read -P 0x22 16M 8M", "-c",
                      "read -P 0 25M 38M", pair.path_qimg("a.vhdx")],
            pair.qimg_dir)
    assert r.rc == 0 and "Pattern verification failed" not in r.out, r


def test_io_fixed_and_rewrite(pair):
    """Writes into a fixed image (in place) and rewrites of present blocks;
    the last block partial (size not a multiple of the block size)."""
    pair.same("create", "-q", "-f", "vhdx", "-o",
              "subformat=fixed,block_state_zero=off,block_size=1M", "f.vhdx",
              "5000k")
    pair.same("create", "-q", "-f", "vhdx", "-o", "block_size=1M", "d.vhdx",
              "5000k")
    cmds = ["write -P 0x44 0 3M", "write -P 0x55 1M 4k",
            "write -P 0x66 4999k 1k"]
    for name in ("f.vhdx", "d.vhdx"):
        qemu_io(pair.path_ref(name), *cmds, fmt="vhdx")
        r = run(QIMG_IO, ["-f", "vhdx", pair.path_qimg(name)] + cmds,
                pair.qimg_dir)
        assert r.rc == 0, r
        assert_same_image(pair.path_ref(name), pair.path_qimg(name))
        pair.same("compare", name, name)
        pair.same("check", name)


CONVERT_CASES = [
    ["-O", "vhdx", "in.raw", "out.vhdx"],
    ["-O", "vhdx", "-o", "subformat=fixed", "in.raw", "out.vhdx"],
    ["-O", "vhdx", "-o", "subformat=fixed,block_state_zero=off", "in.raw",
     "out.vhdx"],
    ["-O", "vhdx", "-o", "block_state_zero=off", "in.raw", "out.vhdx"],
    ["-O", "vhdx", "-S", "0", "in.raw", "out.vhdx"],
    ["-O", "vhdx", "-S", "64k", "in.raw", "out.vhdx"],
    ["-O", "vhdx", "-c", "in.raw", "out.vhdx"],
    ["-f", "vhdx", "-O", "qcow2", "in.vhdx", "out.vhdx"],
    ["-p", "-f", "vhdx", "-O", "qcow2", "-o", "cluster_size=4k", "in.vhdx",
     "out.vhdx"],
    ["-p", "-f", "vhdx", "-O", "qcow2", "-S", "0", "in.vhdx", "out.vhdx"],
    ["-f", "vhdx", "-O", "qcow2", "-c", "in.vhdx", "out.vhdx"],
    ["-f", "vhdx", "-O", "raw", "in.vhdx", "out.vhdx"],
    ["-O", "vhdx", "in.vhdx", "out.vhdx"],
    ["-O", "vhdx", "-B", "in.raw", "in.raw", "out.vhdx"],
    ["-O", "vhdx", "-o", "subformat=bad", "in.raw", "out.vhdx"],
]


def make_inputs(pair):
    def mk(d):
        with open(d / "in.raw", "wb") as f:
            f.truncate(40 * MiB)
            for off, b in ((0, 0xa1), (9 * MiB + 512, 0xb2),
                           (30 * MiB, 0xc3)):
                f.seek(off)
                f.write(bytes([b]) * (300 << 10))
            f.seek(20 * MiB)
            f.write(bytes(MiB))         # allocated zeroes
        subprocess.run([str(REF), "convert", "-f", "raw", "-O", "vhdx",
                        d / "in.raw", d / "in.vhdx"], check=True)
    pair.setup(mk)


def test_convert(pair):
    make_inputs(pair)
    for args in CONVERT_CASES:
        r = pair.same("convert", *args)
        if r.rc == 0:
            fmt = args[args.index("-O") + 1]
            if fmt == "vhdx":
                assert_same_image(pair.path_ref("out.vhdx"),
                                  pair.path_qimg("out.vhdx"))
            elif "-c" not in args:
                # Reading a vhdx skips its zeroes (zero_hint): the qcow2
                # written must still be qemu-img's, byte for byte.
                assert (pair.path_ref("out.vhdx").read_bytes() ==
                        pair.path_qimg("out.vhdx").read_bytes()), args
            pair.same("compare", "-F", fmt, "in.raw", "out.vhdx")
            r = run(REF, ["compare", "-f", fmt, "-F", fmt,
                          pair.path_ref("out.vhdx"),
                          pair.path_qimg("out.vhdx")], pair.ref_dir)
            assert r.rc == 0, (args, r)
        for d in pair.dirs():
            if (d / "out.vhdx").exists():
                (d / "out.vhdx").unlink()


def test_convert_existing_target(pair):
    """-n into an existing vhdx writes zeroes as data (no zero write of
    its own), -n with --target-is-zero skips them."""
    make_inputs(pair)
    for extra in ([], ["--target-is-zero"]):
        pair.same("create", "-q", "-f", "vhdx", "t.vhdx", "40M")
        pair.same("convert", "-n", *extra, "-O", "vhdx", "in.raw", "t.vhdx")
        assert_same_image(pair.path_ref("t.vhdx"), pair.path_qimg("t.vhdx"))
        pair.same("compare", "in.raw", "t.vhdx")
    pair.same("dd", "if=in.vhdx", "of=dd.vhdx", "-O", "vhdx", "bs=1M")
    assert_same_image(pair.path_ref("dd.vhdx"), pair.path_qimg("dd.vhdx"))


REFUSALS = [
    ["measure", "-O", "vhdx", "in.vhdx"], ["measure", "-O", "vhdx", "--size",
                                           "1G"],
    ["measure", "-O", "qcow2", "in.vhdx"],
    ["resize", "in.vhdx", "64M"], ["resize", "--shrink", "in.vhdx", "8M"],
    ["resize", "in.vhdx", "+1M"],
    ["snapshot", "-l", "in.vhdx"], ["snapshot", "-c", "s", "in.vhdx"],
    ["snapshot", "-a", "s", "in.vhdx"], ["snapshot", "-d", "s", "in.vhdx"],
    ["amend", "-o", "size=1G", "in.vhdx"],
    ["amend", "-f", "vhdx", "-o", "log_size=2M", "in.vhdx"],
    ["rebase", "-u", "-b", "in.raw", "-F", "raw", "in.vhdx"],
    ["commit", "in.vhdx"],
    ["create", "-f", "vhdx", "-b", "in.raw", "-F", "raw", "x.vhdx"],
    ["create", "-f", "vhdx", "-o", "backing_file=in.raw", "x.vhdx", "1M"],
    ["info", "--backing-chain", "in.vhdx"],
    ["map", "in.vhdx"], ["map", "--output=json", "in.vhdx"],
    ["info", "--output=json", "in.vhdx"],
    ["check", "-r", "leaks", "in.vhdx"], ["check", "-r", "all", "in.vhdx"],
    ["check", "--output=json", "in.vhdx"],
]


@pytest.mark.parametrize("batch", batches(REFUSALS, 12))
def test_refusals_and_reports(pair, batch):
    make_inputs(pair)
    same_all(pair, batch)


def test_bitmap_refused(pair):
    make_inputs(pair)
    r, q = pair.both("bitmap", "--add", "in.vhdx", "bm")
    # The node name is QEMU's automatic one (#blockNNN): compare the rest.
    strip = lambda s: s.split("#block")[0]
    assert (q.rc, strip(q.err)) == (r.rc, strip(r.err)), (r, q)


def test_vhdiinfo_reads_qimg_images(pair):
    """An independent reader (libvhdi) opens what qimg writes."""
    vhdiinfo = shutil.which("vhdiinfo")
    if not vhdiinfo:
        pytest.skip("vhdiinfo not installed (scripts/deps.sh test)")
    make_inputs(pair)
    for opts in ([], ["-o", "subformat=fixed"], ["-o", "block_size=1M"],
                 ["-o", "block_state_zero=off"]):
        for d in pair.dirs():
            out = d / "v.vhdx"
            if out.exists():
                out.unlink()
        pair.same("convert", "-O", "vhdx", *opts, "in.raw", "v.vhdx")
        outs = []
        for d in pair.dirs():
            p = subprocess.run([vhdiinfo, str(d / "v.vhdx")],
                               capture_output=True, text=True)
            assert p.returncode == 0, (opts, p.stdout, p.stderr)
            # Identifiers are random: compare everything else.
            outs.append([ln for ln in p.stdout.splitlines()
                         if "identifier" not in ln.lower()])
        assert outs[0] == outs[1], opts
        assert any("Media size" in ln for ln in outs[1]), outs[1]
