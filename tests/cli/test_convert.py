"""qemu-img convert differential tests: every option and error path,
targets cross-checked with the reference (content, `map` layout and
allocated blocks), progress output, multiple sources, -n, copy offloading,
qcow2 targets and the newer long option names."""
import os
import random
import subprocess

import pytest

from conftest import REF, batches, run, same_each

MiB = 1 << 20


def make_source(path, size=4 * MiB, seed=1):
    """A raw image mixing holes, allocated zeroes, data, and sectors where
    zero and non-zero alternate (what -S decides about)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            n = min(rnd.choice([512, 1536, 4096, 12288, 65536, 300000, MiB]),
                    size - pos)
            k = rnd.random()
            f.seek(pos)
            if k < 0.3:
                pass                                    # hole
            elif k < 0.5:
                f.write(b"\0" * n)                      # allocated zeroes
            elif k < 0.75:
                f.write(b"".join(                       # mixed sectors
                    (b"\0" if rnd.random() < 0.5 else bytes([rnd.randrange(1, 256)]))
                    * min(512, n - s) for s in range(0, n, 512)))
            else:
                f.write(bytes([rnd.randrange(1, 256)]) * n)
            pos += n


def make_filled(path, size, byte=0xAA):
    with open(path, "wb") as f:
        f.write(bytes([byte]) * size)


@pytest.fixture
def src(pair):
    pair.setup(lambda d: make_source(d / "src.img"))
    return "src.img"


def ref_map(directory, name, fmt="raw"):
    return run(REF, ["map", "--output=json", "-f", fmt, name], directory).out


def same_image(pair, name, fmt="raw", blocks=True):
    """Same content, same `map` (holes) and, for raw, same allocation."""
    pair.same_content(name, fmt)
    assert ref_map(pair.qimg_dir, name, fmt) == ref_map(pair.ref_dir, name, fmt)
    if blocks and fmt == "raw":
        # Same allocation, up to the filesystem's own extent-tree blocks,
        # which depend on how fragmented the writes left the file (ext4
        # adds a 4 KiB index block now and then): preallocation mistakes
        # are megabytes.
        got = os.stat(pair.path_qimg(name)).st_blocks
        want = os.stat(pair.path_ref(name)).st_blocks
        assert abs(got - want) <= 16, (got, want)


# ---- successful conversions ------------------------------------------------

@pytest.mark.parametrize("opts", [
    [], ["-O", "raw"], ["-f", "raw"], ["-f", "raw", "-O", "raw"],
    ["-S", "0"], ["-S", "512"], ["-S", "1k"], ["-S", "3k"], ["-S", "8k"],
    ["-S", "64k"], ["-S", "16M"], ["-S", "1.5k"], ["-S", "0x1k"],
    ["-m", "1"], ["-m", "0x10"], ["-W"], ["-m", "1", "-W"],
    ["-m", "3", "-W", "-S", "1k"],
    ["-C"], ["-C", "-m", "1"], ["-C", "-W"],
    ["-t", "none"], ["-t", "writeback"], ["-t", "writethrough"],
    ["-t", "directsync"], ["-T", "none"], ["-T", "directsync"],
    ["-t", "none", "-S", "1k"],
    ["-U"], ["--force-share"], ["--salvage"], ["-q"],
    ["-r", "1G"], ["-r", "0"], ["-r", "0x10M"],
    ["-o", "preallocation=off"], ["-o", "preallocation=full"],
    ["-o", "preallocation=falloc"], ["-o", "size=1M"], ["-o", "size=64M"],
    ["-o", "nocow=on"], ["-o", "extent_size_hint=1M"],
    ["-o", "preallocation=full", "-S", "0"],
    ["--object", "secret,id=s0,data=x"],
    ["-O", "raw", "--"],
])
def test_convert_raw(pair, src, opts):
    pair.same("convert", *opts, src, "out.img")
    same_image(pair, "out.img")


def test_convert_image_opts_source(pair, src):
    pair.same("convert", "--image-opts", "driver=raw,file.filename=src.img",
              "out.img")
    same_image(pair, "out.img")
    pair.same("convert", "--image-opts",
              "driver=raw,offset=4096,size=1M,file.filename=src.img", "o2.img")
    same_image(pair, "o2.img")


def test_convert_json_source(pair, src):
    pair.same("convert", 'json:{"driver":"raw","file":{"driver":"file",'
              '"filename":"src.img"}}', "out.img")
    same_image(pair, "out.img")


def test_convert_probed_source(pair):
    pair.setup(lambda d: make_source(d / "s.img", 2 * MiB, seed=5))
    pair.same("convert", "s.img", "out.img")
    same_image(pair, "out.img")


@pytest.mark.parametrize("sizes", [
    [MiB, MiB], [MiB, 3, 512 * 1024], [3, 5, 7], [0, MiB], [MiB, 0, 1000],
])
def test_multiple_sources(pair, sizes):
    def setup(d):
        for i, size in enumerate(sizes):
            make_source(d / f"s{i}.img", size, seed=i + 10)
    pair.setup(setup)
    names = [f"s{i}.img" for i in range(len(sizes))]
    pair.same("convert", *names, "out.img")
    same_image(pair, "out.img")
    pair.same("convert", "-S", "0", "-m", "2", *names, "o0.img")
    same_image(pair, "o0.img")


def test_same_source_twice(pair, src):
    pair.same("convert", src, src, "out.img")
    same_image(pair, "out.img")


def test_sparse_patterns(pair):
    """Zero runs of every size and alignment inside data, for several -S."""
    def setup(d):
        with open(d / "p.img", "wb") as f:
            f.truncate(2 * MiB)
            pos = 0
            for i in range(1, 60):
                f.seek(pos)
                f.write(b"\x11" * (512 * (i % 7 + 1)))
                pos += 512 * (i % 7 + 1) + 512 * i
    pair.setup(setup)
    for s in ["512", "1k", "2k", "4k", "5k", "8k", "32k"]:
        pair.same("convert", "-S", s, "p.img", f"o{s}.img")
        same_image(pair, f"o{s}.img")


def test_empty_and_tiny_sources(pair):
    def setup(d):
        open(d / "empty.img", "wb").close()
        with open(d / "tiny.img", "wb") as f:
            f.write(b"abc")
    pair.setup(setup)
    pair.same("convert", "empty.img", "o1.img")
    assert os.path.getsize(pair.path_qimg("o1.img")) == 0
    pair.same("convert", "tiny.img", "o2.img")
    same_image(pair, "o2.img")


def test_overwrites_existing_target(pair, src):
    pair.setup(lambda d: make_filled(d / "out.img", 8 * MiB))
    pair.same("convert", src, "out.img")
    same_image(pair, "out.img")


# ---- -n, --target-is-zero, --target-image-opts ---------------------------------

@pytest.mark.parametrize("opts,size", [
    (["-n"], 4 * MiB), (["-n"], 6 * MiB), (["-n", "-S", "0"], 4 * MiB),
    (["-n", "-S", "1k"], 4 * MiB), (["-n", "-m", "1"], 4 * MiB),
    (["-n", "-W"], 4 * MiB), (["-n", "-C"], 4 * MiB),
    (["-n", "--target-is-zero"], 4 * MiB),
    (["-n", "--target-is-zero", "-S", "0"], 4 * MiB),
    (["-n", "-B", "x.img"], 4 * MiB), (["-n", "-F", "raw"], 4 * MiB),
    (["-n", "-O", "raw"], 4 * MiB), (["-n", "-t", "none"], 4 * MiB),
    (["-n", "-q"], 4 * MiB),
])
def test_no_create(pair, src, opts, size):
    pair.setup(lambda d: make_filled(d / "t.img", size))
    pair.same("convert", *opts, src, "t.img")
    same_image(pair, "t.img")


def test_no_create_sparse_target(pair, src):
    def setup(d):
        with open(d / "t.img", "wb") as f:
            f.truncate(4 * MiB)
    pair.setup(setup)
    pair.same("convert", "-n", src, "t.img")
    same_image(pair, "t.img")


def test_target_image_opts(pair, src):
    pair.setup(lambda d: make_filled(d / "t.img", 5 * MiB))
    pair.same("convert", "-n", "--target-image-opts", src,
              "driver=raw,file.filename=t.img")
    same_image(pair, "t.img")
    pair.same("convert", "-n", "--target-image-opts", src,
              "driver=raw,offset=512k,file.filename=t.img")
    same_image(pair, "t.img")


NO_CREATE_ERRORS = [
    ["-n", "src.img", "small.img"],
    ["-n", "src.img", "missing.img"],
    ["-n", "src.img", "src.img"],
    ["-n", "-f", "raw", "src.img", "src.img"],
    ["-n", "-O", "foo", "src.img", "t.img"],
    ["-n", "-O", "qcow2", "src.img", "t.img"],
    ["-n", "-c", "src.img", "t.img"],
    ["-n", "-t", "foo", "src.img", "missing.img"],
    ["-n", "-t", "foo", "--bitmaps", "src.img", "t.img"],
    ["-n", "--bitmaps", "src.img", "missing.img"],
    ["-n", "-c", "--bitmaps", "src.img", "t.img"],
    ["-n", "-o", "x=y", "src.img", "t.img"],
    ["-n", "-o", "help", "src.img", "t.img"],
    ["-n", "-o", "x=y", "--target-image-opts", "src.img", "t.img"],
    ["-n", "--target-image-opts", "src.img", "t.img"],
    ["-n", "--target-image-opts", "-O", "raw", "src.img",
     "driver=raw,file.filename=t.img"],
    ["-n", "--target-image-opts", "src.img", "driver=raw,file.filename=small.img"],
    ["-n", "--target-image-opts", "src.img", "json:{}"],
    ["-n", "--image-opts", "src.img", "t.img"],
    ["-n", "--target-is-zero", "-B", "x", "src.img", "t.img"],
    ["-n", "--target-is-zero", "-B", "x", "-c", "src.img", "t.img"],
    ["-n", "--target-is-zero", "-B", "x", "missing.img", "t.img"],
    ["-n", "-T", "foo", "src.img", "missing.img"],
]


@pytest.mark.parametrize("batch", batches(NO_CREATE_ERRORS))
def test_no_create_errors(pair, src, batch):
    def setup(d):
        make_filled(d / "t.img", 4 * MiB)
        make_filled(d / "small.img", 100 * 1024)
    pair.setup(setup)
    same_each(pair, "convert", batch)
    pair.same_content("t.img")


# ---- errors ----------------------------------------------------------------------

ERRORS = [
    [], ["src.img"], ["missing.img", "out.img"], ["src.img", "missing.img", "out.img"],
    ["-m", "0", "src.img", "out.img"], ["-m", "17", "src.img", "out.img"],
    ["-m", "abc", "src.img", "out.img"], ["-m", "08", "src.img", "out.img"],
    ["-m", "1k", "src.img", "out.img"], ["-m", "", "src.img", "out.img"],
    ["-m", "-1", "src.img", "out.img"], ["-m", "99999999999999999999", "src.img", "out.img"],
    ["-m", "0", "-S", "bad", "src.img", "out.img"],
    ["-S", "bad", "-m", "0", "src.img", "out.img"],
    ["-S", "511", "src.img", "out.img"], ["-S", "-1", "src.img", "out.img"],
    ["-S", "16896k", "src.img", "out.img"], ["-S", "32M", "src.img", "out.img"],
    ["-S", "9E", "src.img", "out.img"], ["-S", "0x1k", "-S", "bad", "src.img", "out.img"],
    ["-S", "1.5", "src.img", "out.img"],
    ["-r", "bad", "src.img", "out.img"], ["-r", "-1", "src.img", "out.img"],
    ["-r", "9E", "src.img", "out.img"], ["-r", "bad", "-m", "0", "src.img", "out.img"],
    ["-o", ",", "src.img", "out.img"], ["-o", ",", "-m", "0", "src.img", "out.img"],
    ["-o", "foo=bar", "src.img", "out.img"], ["-o", "size=abc", "src.img", "out.img"],
    ["-o", "size=-1", "src.img", "out.img"],
    ["-o", "preallocation=metadata", "src.img", "out.img"],
    ["-o", "preallocation=bad", "src.img", "out.img"],
    ["-o", "nocow=maybe", "src.img", "out.img"],
    ["-o", "foo=bar", "-B", "x", "src.img", "out.img"],
    ["-c", "src.img", "out.img"], ["-c", "-W", "src.img", "out.img"],
    ["-c", "-B", "x", "src.img", "out.img"], ["-c", "-o", "foo=bar", "src.img", "out.img"],
    ["-c", "-o", "preallocation=full", "src.img", "out.img"],
    ["-c", "--bitmaps", "src.img", "out.img"], ["-t", "foo", "-c", "src.img", "out.img"],
    ["-B", "b.img", "src.img", "out.img"], ["-F", "raw", "src.img", "out.img"],
    ["-B", "b.img", "-F", "raw", "src.img", "out.img"],
    ["-B", "x", "src.img", "src.img", "out.img"],
    ["-B", "x", "missing.img", "out.img"],
    ["-O", "qcow2", "-B", "x", "src.img", "out.img"],
    ["-l", "snap", "src.img", "out.img"], ["-l", "snapshot.name=x", "src.img", "out.img"],
    ["-l", "snapshot.id=1", "src.img", "out.img"],
    ["-l", "snapshot.foo=x", "src.img", "out.img"],
    ["-l", "snapshot.name", "src.img", "out.img"],
    ["-l", "snapshot.", "src.img", "out.img"],
    ["-l", "snapshot.id=1,nofoo", "src.img", "out.img"],
    ["-l", "snapshot.id=1,nosnapshot.name", "src.img", "out.img"],
    ["-l", "snapshot.id=1,foo", "src.img", "out.img"],
    ["-l", "snapshot.id=1,,foo=2", "src.img", "out.img"],
    ["-l", "snapshot.id=1,help", "src.img", "out.img"],
    ["-l", "snapshot.id=1,?", "src.img", "out.img"],
    ["-l", "snapshot.id=1,=3", "src.img", "out.img"],
    ["-l", "", "src.img", "out.img"], ["-l", "x", "-l", "y", "src.img", "out.img"],
    ["-l", "x", "src.img", "src.img", "out.img"],
    ["-l", "snapshot.id=1", "src.img", "src.img", "out.img"],
    ["-l", "x", "missing.img", "out.img"], ["-l", "x", "-T", "foo", "src.img", "out.img"],
    ["-l", "x", "-o", "help", "src.img", "out.img"], ["-l", "x", "-O", "foo", "src.img", "out.img"],
    ["--bitmaps", "src.img", "out.img"], ["--bitmaps", "src.img", "src.img", "out.img"],
    ["--bitmaps", "-O", "foo", "src.img", "out.img"], ["--bitmaps", "-l", "x", "src.img", "out.img"],
    ["--bitmaps", "-o", "foo=bar", "src.img", "out.img"],
    ["--bitmaps", "-o", "preallocation=bad", "src.img", "out.img"],
    ["--bitmaps", "-t", "foo", "src.img", "out.img"],
    ["--skip-broken-bitmaps", "src.img", "out.img"],
    ["--skip-broken-bitmaps", "--bitmaps", "src.img", "out.img"],
    ["--skip-broken-bitmaps", "-C", "-c", "src.img", "out.img"],
    ["--skip-broken-bitmaps"],
    ["-t", "foo", "src.img", "out.img"], ["-T", "foo", "src.img", "out.img"],
    ["-t", "foo", "-T", "foo", "src.img", "out.img"], ["-T", "foo", "-O", "foo", "src.img", "out.img"],
    ["-t", "foo", "-O", "foo", "src.img", "out.img"], ["-T", "foo", "missing.img", "out.img"],
    ["-t", "foo", "missing.img", "out.img"], ["-T", "foo"], ["-T", "foo", "-o", "help", "src.img", "out.img"],
    ["-t", "foo", "-o", "preallocation=bad", "src.img", "out.img"],
    ["-O", "foo", "src.img", "out.img"], ["-O", "foo", "missing.img", "out.img"],
    ["-O", "foo", "-B", "x", "src.img", "out.img"], ["-f", "foo", "src.img", "out.img"],
    ["-f", "qcow2", "src.img", "out.img"],
    ["-C", "-c", "src.img", "out.img"], ["-C", "-S", "0", "src.img", "out.img"],
    ["-C", "-S", "4k", "src.img", "out.img"], ["-c", "-C", "-S", "0", "src.img", "out.img"],
    ["-C", "-S", "0", "-c", "src.img", "out.img"], ["-C", "-c"], ["-C", "-B", "x", "src.img", "out.img"],
    ["--target-is-zero", "src.img", "out.img"], ["--target-is-zero", "-C", "-c", "src.img", "out.img"],
    ["--target-image-opts", "src.img", "out.img"],
    ["--target-image-opts", "--target-is-zero", "src.img", "out.img"],
    ["--image-opts", "src.img", "out.img"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=src.img", "out.img"],
    ["-o", "help"], ["-o", "?"], ["-o", "help", "src.img"], ["-o", "help", "src.img", "out.img"],
    ["-o", "help", "missing.img", "out.img"], ["-o", "help", "-O", "foo", "src.img", "out.img"],
    ["-o", "help", "-O", "qcow2"], ["-o", "help", "-O", "qcow2", "src.img", "out.img"],
    ["-o", "help", "-c", "src.img", "out.img"], ["-o", "help", "-m", "0", "src.img", "out.img"],
    ["-o", "help", "--target-is-zero", "src.img", "out.img"],
    ["-o", "preallocation=full,help", "src.img", "out.img"],
    ["-Z", "src.img", "out.img"], ["-Z", "-m", "0", "src.img", "out.img"],
    ["-m", "0", "-Z", "src.img", "out.img"], ["--foo", "src.img", "out.img"],
    ["--target", "src.img", "out.img"], ["--s", "src.img", "out.img"],
    ["--sk", "src.img", "out.img"], ["--salvage=1", "src.img", "out.img"],
    ["--target-image-opts=x", "src.img", "out.img"],
    ["--object"], ["-m"], ["-S"], ["src.img", "out.img", "-O"],
    ["--object", "foo", "src.img", "out.img"],
    ["src.img", "src.img"], ["-f", "raw", "src.img", "src.img"],
    ["src.img", "nodir/out.img"], ["src.img", "abc:def"],
    ["src.img", 'json:{"driver":"raw","file":{"driver":"file","filename":"o"}}'],
]


@pytest.mark.parametrize("batch", batches(ERRORS))
def test_errors(pair, src, batch):
    same_each(pair, "convert", batch, ("out.img", "o"))


def test_directory_target(pair, src):
    pair.sh("mkdir dir")
    pair.same("convert", src, "dir")


# ---- progress --------------------------------------------------------------------

def make_data(path, size, byte=1):
    make_filled(path, size, byte)


@pytest.mark.parametrize("opts", [
    ["-p"], ["-p", "-S", "0"], ["-p", "-q"], ["-q", "-p"], ["-p", "-m", "1"],
    ["-p", "-W"], ["-p", "-C"], ["-p", "-n"],
])
def test_progress(pair, opts):
    def setup(d):
        make_data(d / "data.img", 5 * MiB)
        with open(d / "sp.img", "wb") as f:
            f.truncate(8 * MiB)
            f.seek(0)
            f.write(b"\1" * MiB)
            f.seek(6 * MiB)
            f.write(b"\1" * 512)
        make_filled(d / "t1.img", 5 * MiB)
        make_filled(d / "t2.img", 18 * MiB)
    pair.setup(setup)
    n = "-n" in opts
    pair.same("convert", *opts, "data.img", "t1.img" if n else "o1.img")
    pair.same("convert", *opts, "sp.img", "t2.img" if n else "o2.img")
    pair.same("convert", *opts, "data.img", "sp.img", "data.img",
              "o3.img" if not n else "t2.img")


def test_progress_small_steps(pair):
    """100 tiny data extents: steps of exactly 1% print every other one."""
    def setup(d):
        with open(d / "steps.img", "wb") as f:
            f.truncate(100 * 65536)
            for i in range(100):
                f.seek(i * 65536)
                f.write(b"\5" * 4096)
    pair.setup(setup)
    pair.same("convert", "-p", "steps.img", "out.img")
    same_image(pair, "out.img")


PROGRESS_ERRORS = [
    ["-p", "missing.img", "out.img"], ["-p", "-O", "foo", "src.img", "out.img"],
    ["-p", "-n", "src.img", "missing.img"], ["-p", "-T", "foo", "src.img", "out.img"],
    ["-p"], ["-p", "src.img"], ["-p", "-n", "-o", "x=y", "src.img", "out.img"],
    ["-p", "-C", "-c", "src.img", "out.img"], ["-p", "-l", "x", "src.img", "src.img", "out.img"],
    ["-p", "-o", "help", "src.img", "out.img"], ["-p", "--target-is-zero", "src.img", "out.img"],
    ["-p", "-n", "--target-is-zero", "-B", "x", "src.img", "out.img"],
    ["-p", "-l", "x", "src.img", "out.img"], ["-p", "-m", "0", "src.img", "out.img"],
]


@pytest.mark.parametrize("batch", batches(PROGRESS_ERRORS))
def test_progress_errors(pair, src, batch):
    pair.setup(lambda d: make_filled(d / "small.img", 4096))
    same_each(pair, "convert", batch)


# ---- rate limit ---------------------------------------------------------------------

def test_rate_limit_first_request_free(pair):
    """A single request is never delayed, whatever the limit."""
    pair.setup(lambda d: make_data(d / "d.img", MiB))
    pair.same("convert", "-r", "1k", "d.img", "out.img", timeout=20)
    same_image(pair, "out.img")


def test_rate_limit_slows_down(pair):
    import time
    pair.setup(lambda d: make_data(d / "d.img", 6 * MiB))
    t = time.monotonic()
    r = pair.qimg("convert", "-r", "8M", "d.img", "out.img")
    elapsed = time.monotonic() - t
    assert r.rc == 0
    # 3 requests of 2 MiB at 8 MiB/s: the 2nd and 3rd wait ~0.25 s each
    assert 0.3 < elapsed < 5
    pair.ref("convert", "d.img", "out.img")
    same_image(pair, "out.img")


# ---- newer long option names --------------------------------------------------------

ALIASES = [
    (["--source-format", "raw"], ["-f", "raw"]),
    (["--source-format=raw"], ["-f", "raw"]),
    (["--target-format", "raw"], ["-O", "raw"]),
    (["--target-format-options", "preallocation=full"], ["-o", "preallocation=full"]),
    (["--sparse-size", "1k"], ["-S", "1k"]),
    (["--sparse-size=0"], ["-S", "0"]),
    (["--parallel", "2"], ["-m", "2"]),
    (["--parallel", "0"], ["-m", "0"]),
    (["--oob-writes"], ["-W"]),
    (["--progress"], ["-p"]),
    (["--quiet", "--progress"], ["-q", "-p"]),
    (["--source-cache", "none"], ["-T", "none"]),
    (["--source-cache", "foo"], ["-T", "foo"]),
    (["--target-cache", "none"], ["-t", "none"]),
    (["--rate-limit", "1G"], ["-r", "1G"]),
    (["--compress"], ["-c"]),
    (["--copy-range-offloading"], ["-C"]),
    (["--snapshot", "x"], ["-l", "x"]),
    (["--target-backing", "x"], ["-B", "x"]),
    (["--target-backing-format", "raw"], ["-F", "raw"]),
    (["--backing", "x"], ["-B", "x"]),
    (["--backing-format=raw"], ["-F", "raw"]),
]


@pytest.mark.parametrize("alias,short", ALIASES)
def test_long_aliases(pair, src, alias, short):
    """qimg with the new name does what the reference does with -X."""
    r = pair.ref("convert", *short, src, "out.img")
    q = pair.qimg("convert", *alias, src, "out.img")
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)
    if r.rc == 0:
        same_image(pair, "out.img")


def test_no_create_alias(pair, src):
    pair.setup(lambda d: make_filled(d / "t.img", 4 * MiB))
    r = pair.ref("convert", "-n", src, "t.img")
    q = pair.qimg("convert", "--no-create", src, "t.img")
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)
    same_image(pair, "t.img")


@pytest.mark.parametrize("opt", ["--source-format", "--parallel"])
def test_alias_missing_argument(pair, opt):
    q = pair.qimg("convert", "src.img", "out.img", opt)
    assert q.rc == 1
    assert q.err == (f"qemu-img: missing argument for option '{opt}'\n"
                     "Try 'qemu-img --help' for more information\n")


# ---- qcow2 targets and sources -------------------------------------------------------

@pytest.mark.parametrize("opts", [
    ["-O", "qcow2"], ["-O", "qcow2", "-S", "0"], ["-O", "qcow2", "-m", "1"],
    ["-O", "qcow2", "-o", "cluster_size=4k"], ["-O", "qcow2", "-c"],
    ["-O", "qcow2", "-c", "-m", "1"], ["-O", "qcow2", "-c", "-S", "0"],
    ["-O", "qcow2", "-C"],
    ["-O", "qcow2", "-o", "preallocation=metadata"],
])
def test_to_qcow2(pair, src, opts):
    pair.same("convert", *opts, src, "out.qcow2")
    pair.same_content("out.qcow2", "qcow2")
    assert ref_map(pair.qimg_dir, "out.qcow2", "qcow2") == \
        ref_map(pair.ref_dir, "out.qcow2", "qcow2")
    r = run(REF, ["compare", "-f", "raw", "-F", "qcow2", src, "out.qcow2"],
            pair.qimg_dir)
    assert r.rc == 0, r


def test_qcow2_round_trip(pair, src):
    pair.same("convert", "-O", "qcow2", src, "a.qcow2")
    pair.same("convert", "-f", "qcow2", "a.qcow2", "b.img")
    same_image(pair, "b.img")
    pair.same("convert", "-O", "qcow2", "-B", "a.qcow2", "-F", "qcow2",
              "b.img", "c.qcow2")
    pair.same_content("c.qcow2", "qcow2")


@pytest.mark.parametrize("args", [
    ["-O", "qcow2", "-c", "-o", "preallocation=full", "src.img", "o.qcow2"],
    ["-O", "qcow2", "-B", "nonexist", "-F", "raw", "src.img", "o.qcow2"],
    ["-O", "qcow2", "-B", "x", "-n", "src.img", "t.img"],
    ["-O", "qcow2", "-o", "help", "src.img", "o.qcow2"],
])
def test_qcow2_errors(pair, src, args):
    pair.setup(lambda d: make_filled(d / "t.img", 4 * MiB))
    pair.same("convert", *args)


CHAIN_SETUP = (
    "qemu-img create -q -f qcow2 b.qcow2 3M && "
    "qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -z 1M 64k' b.qcow2 && "
    "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 top.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 9 100k 300k' -c 'write -z 2M 128k' "
    "-c 'write -P 7 3M 64k' -c 'write -z 3200k 128k' "
    "-c 'discard 1200k 64k' top.qcow2")


@pytest.mark.parametrize("opts,out", [
    (["-p"], "flat.img"), (["-p", "-S", "0"], "flat.img"),
    (["-p", "-m", "1"], "flat.img"), (["-p", "-C"], "flat.img"),
    (["-p", "-O", "qcow2"], "o.qcow2"), (["-p", "-O", "qcow2", "-c"], "o.qcow2"),
    (["-p", "-O", "qcow2", "-C"], "o.qcow2"),
    (["-p", "-O", "qcow2", "-B", "b.qcow2", "-F", "qcow2"], "o.qcow2"),
    (["-p", "-O", "qcow2", "-o", "backing_file=b.qcow2,backing_fmt=qcow2"],
     "o.qcow2"),
    (["-p", "-O", "qcow2", "-B", "b.qcow2", "-F", "qcow2", "-S", "0"], "o.qcow2"),
])
def test_backing_chain(pair, opts, out):
    """A qcow2 overlay over a shorter backing file: chain walking, -B,
    progress cut at cluster boundaries."""
    pair.sh(CHAIN_SETUP)
    pair.same("convert", *opts, "top.qcow2", out)
    fmt = "qcow2" if out.endswith("qcow2") else "raw"
    assert ref_map(pair.qimg_dir, out, fmt) == ref_map(pair.ref_dir, out, fmt)
    r = run(REF, ["compare", "top.qcow2", out], pair.qimg_dir)
    assert r.rc == 0, r


@pytest.mark.parametrize("opts", [["-n"], ["-n", "-S", "0"],
                                  ["-n", "--target-is-zero"]])
def test_no_create_qcow2_target(pair, src, opts):
    pair.sh("qemu-img create -q -f qcow2 t.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 3 0 4M' t.qcow2")
    pair.same("convert", *opts, "-O", "qcow2", src, "t.qcow2")
    assert ref_map(pair.qimg_dir, "t.qcow2", "qcow2") == \
        ref_map(pair.ref_dir, "t.qcow2", "qcow2")
    pair.same_content("t.qcow2", "qcow2")


def test_snapshot_source(pair, src):
    pair.sh("qemu-img convert -O qcow2 src.img s.qcow2 && "
            "qemu-img snapshot -c snap1 s.qcow2 && "
            "qemu-io -f qcow2 -c 'write -P 5 0 1M' s.qcow2")
    for i, arg in enumerate(["snap1", "1", "snapshot.name=snap1",
                             "snapshot.id=1", "snapshot.id=1,snapshot.name=snap1",
                             "nosuch", "snapshot.id=7"]):
        pair.same("convert", "-l", arg, "s.qcow2", f"o{i}.img")
        if os.path.exists(pair.path_ref(f"o{i}.img")):
            same_image(pair, f"o{i}.img")


# ---- read errors and --salvage ---------------------------------------------------------

def make_corrupt(d):
    """A qcow2 image whose compressed clusters no longer decompress."""
    subprocess.run("qemu-img create -q -f raw r.img 1M && "
                   "qemu-io -f raw -c 'write -P 0x41 0 1M' r.img >/dev/null && "
                   "qemu-img convert -c -O qcow2 r.img c.qcow2",
                   shell=True, cwd=d, check=True)
    size = os.path.getsize(d / "c.qcow2")
    with open(d / "c.qcow2", "r+b") as f:
        f.seek(327680)
        f.write(b"\x13" * (size - 327680))


@pytest.mark.parametrize("opts", [
    ["-m", "1"], ["-m", "1", "--salvage"], ["-m", "1", "--salvage", "-q"],
    ["-m", "1", "-p"], ["-m", "1", "-p", "--salvage"],
    ["-m", "1", "-O", "qcow2"], ["-m", "1", "-S", "0"], ["-m", "1", "-C"],
])
def test_read_errors(pair, opts):
    pair.setup(make_corrupt)
    out = "o.qcow2" if "qcow2" in opts else "o.img"
    pair.same("convert", *opts, "c.qcow2", out)
    if "--salvage" in opts:
        same_image(pair, out)


def test_read_errors_parallel(pair):
    """Every request in flight reports its failure, in any order."""
    pair.setup(make_corrupt)
    for m in ["2", "8"]:
        r, q = pair.both("convert", "-m", m, "c.qcow2", "o.img")
        assert (q.rc, q.out) == (r.rc, r.out)
        assert sorted(q.err.splitlines()) == sorted(r.err.splitlines())
