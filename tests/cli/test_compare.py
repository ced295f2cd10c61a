"""qemu-img compare differential tests: identical and different raw images,
mismatch offsets (first byte, middle, last byte, odd sizes), size
mismatches with zero and non-zero tails, strict mode (sizes and allocation),
-q, -p progress lines, -T, -U, --image-opts, json: names, backing chains
and every error path with its exit status."""
import random
import subprocess

import pytest

from conftest import QIMG, REF, Pair, make_sparse, run, same_help

MiB = 1 << 20


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


def alternating(d, name, size, step, seed):
    """Data extents every other step bytes (many extents: progress lines)."""
    make_sparse(d / name, size,
                [(off, rnd(step, seed + off)) for off in range(0, size, 2 * step)])


def populate(d):
    make_sparse(d / "z4.img", 4 * MiB)
    make_sparse(d / "z4b.img", 4 * MiB)
    make_sparse(d / "z5.img", 5 * MiB)
    make_sparse(d / "first.img", 4 * MiB, [(0, b"x")])
    make_sparse(d / "mid.img", 4 * MiB, [(2 * MiB + 1, b"x")])
    make_sparse(d / "last.img", 4 * MiB, [(4 * MiB - 1, b"x")])
    data = rnd(4 * MiB, 1)
    (d / "r.img").write_bytes(data)
    (d / "r_copy.img").write_bytes(data)
    changed = bytearray(data)
    changed[3000000] ^= 0xff
    (d / "r_changed.img").write_bytes(bytes(changed))
    (d / "r5.img").write_bytes(data + b"\0" * MiB)        # allocated zero tail
    (d / "r5x.img").write_bytes(data + b"\0" * 1000 + b"y" + b"\0" * (MiB - 1001))
    make_sparse(d / "z5tail.img", 5 * MiB, [(5000000, b"x")])
    make_sparse(d / "z5zeros.img", 5 * MiB, [(4 * MiB, b"\0" * MiB)])
    make_sparse(d / "zhead.img", 4 * MiB, [(0, b"\0" * MiB)])     # allocated zeroes
    make_sparse(d / "ztail.img", 4 * MiB, [(3 * MiB, b"\0" * MiB)])
    make_sparse(d / "zmid4k.img", 4 * MiB, [(4096, b"\0" * 4096)])
    make_sparse(d / "x4k.img", 4 * MiB, [(4096, b"x" * 4096)])
    make_sparse(d / "odd.img", 4194000)
    make_sparse(d / "odd_x.img", 5 * MiB, [(4194100, b"x")])
    make_sparse(d / "odd_y.img", 5 * MiB, [(4194904, b"y")])
    alternating(d, "alt.img", 4 * MiB, 64 << 10, 7)
    alternating(d, "alt_copy.img", 4 * MiB, 64 << 10, 7)
    alternating(d, "alt50.img", 3200 << 10, 64 << 10, 9)   # 2% per extent
    alternating(d, "alt50_copy.img", 3200 << 10, 64 << 10, 9)
    (d / "empty.img").write_bytes(b"")
    (d / "empty2.img").write_bytes(b"")
    (d / "three.img").write_bytes(b"abc")
    (d / "three0.img").write_bytes(b"\0\0\0")
    (d / "sub").mkdir()
    make_sparse(d / "sub" / "s.img", 4 * MiB)


CASES = [
    # identical / different content
    ["z4.img", "z4b.img"],
    ["-f", "raw", "-F", "raw", "z4.img", "z4b.img"],
    ["z4.img", "first.img"],
    ["first.img", "z4.img"],
    ["z4.img", "mid.img"],
    ["z4.img", "last.img"],
    ["r.img", "r_copy.img"],
    ["r.img", "r_changed.img"],
    ["r.img", "z4.img"],
    ["z4.img", "r.img"],
    ["zhead.img", "z4.img"],
    ["x4k.img", "zmid4k.img"],
    ["empty.img", "empty2.img"],
    ["three.img", "three0.img"],
    ["three0.img", "empty.img"],
    ["odd.img", "z4.img"],
    ["sub/s.img", "z4.img"],
    # size mismatch: the larger image's tail must read as zero
    ["z4.img", "z5.img"],
    ["z5.img", "z4.img"],
    ["z4.img", "z5tail.img"],
    ["z5tail.img", "z4.img"],
    ["z4.img", "z5zeros.img"],
    ["r.img", "r5.img"],
    ["r5.img", "r.img"],
    ["r.img", "r5x.img"],
    ["r5x.img", "r.img"],
    ["odd.img", "odd_x.img"],
    ["odd.img", "odd_y.img"],
    ["empty.img", "three.img"],
    ["empty.img", "z4.img"],
    # strict mode
    ["-s", "z4.img", "z4b.img"],
    ["-s", "z4.img", "z5.img"],
    ["-s", "z5.img", "z4.img"],
    ["-s", "z4.img", "zhead.img"],
    ["-s", "zhead.img", "z4.img"],
    ["-s", "z4.img", "ztail.img"],
    ["-s", "z4.img", "zmid4k.img"],
    ["-s", "z4.img", "x4k.img"],
    ["-s", "zmid4k.img", "x4k.img"],
    ["-s", "r.img", "r_copy.img"],
    ["-s", "r.img", "r_changed.img"],
    ["-s", "alt.img", "alt_copy.img"],
    ["-s", "empty.img", "empty2.img"],
    ["-s", "-q", "z4.img", "z5.img"],
    # quiet
    ["-q", "z4.img", "z4b.img"],
    ["-q", "z4.img", "mid.img"],
    ["-q", "z4.img", "z5.img"],
    ["-q", "z4.img", "z5tail.img"],
    # progress
    ["-p", "z4.img", "z4b.img"],
    ["-p", "r.img", "r_copy.img"],
    ["-p", "r.img", "r_changed.img"],
    ["-p", "z4.img", "last.img"],
    ["-p", "r.img", "r5.img"],
    ["-p", "r.img", "r5x.img"],
    ["-p", "z4.img", "z5tail.img"],
    ["-p", "-s", "z4.img", "z5.img"],
    ["-p", "-s", "z4.img", "zhead.img"],
    ["-p", "alt.img", "alt_copy.img"],
    ["-p", "alt50.img", "alt50_copy.img"],
    ["-p", "empty.img", "empty2.img"],
    ["-p", "-q", "r.img", "r_copy.img"],
    ["-p", "-q", "r.img", "r_changed.img"],
    # cache modes, sharing, objects, option forms
    ["-T", "none", "r.img", "r_changed.img"],
    ["-T", "writeback", "z4.img", "z4b.img"],
    ["-T", "directsync", "alt.img", "alt_copy.img"],
    ["-T", "unsafe", "z4.img", "z4b.img"],
    ["-T", "bogus", "z4.img", "z4b.img"],
    ["-p", "-T", "bogus", "z4.img", "z4b.img"],
    ["-U", "z4.img", "mid.img"],
    ["--force-share", "-s", "z4.img", "z4b.img"],
    ["--object", "secret,id=s,data=x", "z4.img", "z4b.img"],
    ["--object", "secret,id=s", "z4.img", "z4b.img"],
    ["-p", "--object", "secret,id=s", "z4.img", "z4b.img"],
    ["--image-opts", "driver=raw,file.filename=z4.img",
     "driver=raw,file.filename=mid.img"],
    ["--image-opts", "file.filename=z4.img", "file.filename=z4b.img"],
    ["--image-opts", "driver=raw,file.filename=r.img,offset=1048576",
     "driver=raw,file.filename=r_changed.img,offset=1048576"],
    ["--image-opts", "z4.img", "z4b.img"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=z4.img",
     "driver=raw,file.filename=z4b.img"],
    ["-p", "--image-opts", "-F", "raw", "driver=raw,file.filename=z4.img",
     "driver=raw,file.filename=z4b.img"],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"z4.img"}}',
     "mid.img"],
    # errors
    ["z4.img", "nope.img"],
    ["nope.img", "z4.img"],
    ["-p", "nope.img", "z4.img"],
    ["-p", "z4.img", "nope.img"],
    ["z4.img", "sub"],
    ["-f", "bogus", "z4.img", "z4b.img"],
    ["-p", "-f", "bogus", "z4.img", "z4b.img"],
    ["z4.img"],
    [],
    ["-p", "z4.img"],
    ["z4.img", "z4b.img", "z5.img"],
    ["-x", "z4.img", "z4b.img"],
    ["--bogus", "z4.img", "z4b.img"],
    ["-f"],
    ["-T"],
    ["z4.img", "z4b.img", "-f"],
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """compare never writes, so all cases share one populated pair."""
    p = Pair(tmp_path_factory.mktemp("compare"))
    p.setup(populate)
    return p


@pytest.mark.parametrize("args", CASES)
def test_compare(images, args):
    images.same("compare", *args)


def test_help(images):
    same_help(images, "compare", "-h")


def test_mismatch_every_sector_position(pair):
    """The reported offset is the first differing 512-byte sector."""
    offsets = [1, 511, 512, 513, 4095, 4096, 65537, MiB - 1, 2 * MiB - 1,
               2 * MiB, 3 * MiB + 777]

    def setup(d):
        make_sparse(d / "base.img", 4 * MiB)
        for off in offsets:
            make_sparse(d / f"m{off}.img", 4 * MiB, [(off, b"\x01")])
    pair.setup(setup)
    for off in offsets:
        pair.same("compare", "base.img", f"m{off}.img")
        pair.same("compare", "-p", f"m{off}.img", "base.img")


def test_images_not_modified(images):
    """compare opens read-only: contents and sizes stay as they were."""
    before = (images.qimg_dir / "r.img").read_bytes()
    images.same("compare", "r.img", "r5x.img")
    assert (images.qimg_dir / "r.img").read_bytes() == before
    assert (images.qimg_dir / "r5x.img").stat().st_size == 5 * MiB


# ---- formats with allocation of their own (needs qimg qcow2 support) ----

def qimg_knows(fmt, workdir):
    make_sparse(workdir / "probe.raw", MiB)
    subprocess.run([str(REF), "create", "-q", "-f", fmt, str(workdir / "probe"),
                    "1M"], check=True)
    return run(QIMG, ["info", "-f", fmt, "probe"], workdir).rc == 0


def qcow2_setup(d):
    io = "/usr/bin/qemu-io"

    def q(*args):
        subprocess.run([str(REF)] + list(args), cwd=d, check=True,
                       capture_output=True)

    def w(img, *cmds):
        args = [io, "-f", "qcow2"]
        for c in cmds:
            args += ["-c", c]
        subprocess.run(args + [img], cwd=d, check=True, capture_output=True)

    make_sparse(d / "z4.img", 4 * MiB)
    make_sparse(d / "base.raw", 4 * MiB, [(0, b"b" * 65536)])
    q("create", "-f", "qcow2", "empty.qcow2", "4M")
    q("create", "-f", "qcow2", "data.qcow2", "4M")
    w("data.qcow2", "write -P 0x61 1M 64k")
    q("create", "-f", "qcow2", "zero.qcow2", "4M")
    w("zero.qcow2", "write -z 1M 64k")
    q("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "over.qcow2")
    w("over.qcow2", "write -P 0x61 1M 64k")
    q("convert", "-O", "raw", "over.qcow2", "over_flat.raw")


QCOW2_CASES = [
    ["-f", "qcow2", "z4.img", "z4.img"],
    ["-F", "qcow2", "z4.img", "z4.img"],
    ["empty.qcow2", "z4.img"],
    ["-s", "empty.qcow2", "z4.img"],
    ["-s", "empty.qcow2", "zero.qcow2"],
    ["empty.qcow2", "zero.qcow2"],
    ["data.qcow2", "empty.qcow2"],
    ["-s", "data.qcow2", "data.qcow2"],
    ["over.qcow2", "over_flat.raw"],
    ["-s", "over.qcow2", "over_flat.raw"],
    ["-p", "over.qcow2", "data.qcow2"],
    ["over.qcow2", "base.raw"],
]


@pytest.mark.parametrize("args", QCOW2_CASES)
def test_compare_qcow2(pair, workdir, args):
    if not qimg_knows("qcow2", workdir):
        pytest.skip("qimg does not open qcow2 yet")
    pair.setup(qcow2_setup)
    pair.same("compare", *args)


# ---- pieces (cmd-compare.c reads each 2 MiB step in 256 KiB pieces) --------

def test_differences_in_every_piece(tmp_path):
    """A difference in any 256 KiB piece of a step, at a piece's first or
    last byte, is found at the reference's offset, with and without -T
    none (O_DIRECT reads)."""
    base = rnd(5 * MiB + 4096, 3)
    (tmp_path / "p.img").write_bytes(base)
    offsets = [0, (256 << 10) - 1, 256 << 10, 1500000, 2 * MiB - 1,
               2 * MiB + (768 << 10), 5 * MiB + 4095]
    for n, at in enumerate(offsets):
        changed = bytearray(base)
        changed[at] ^= 0x40
        (tmp_path / f"p{n}.img").write_bytes(bytes(changed))
    for cache in ([], ["-T", "none"]):
        for n in range(len(offsets)):
            args = ["compare", *cache, "p.img", f"p{n}.img"]
            ref = run(REF, args, tmp_path)
            got = run(QIMG, args, tmp_path)
            assert (got.rc, got.out, got.err) == (ref.rc, ref.out, ref.err), \
                (args, got, ref)
