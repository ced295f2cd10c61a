"""qemu-img map differential tests: human and JSON listings of sparse raw
files (data at several offsets, sizes not multiple of 512, empty files),
--start-offset/--max-length windows including odd and out-of-range values,
size parsing errors, --image-opts, json: filenames, -U and the usage errors.
"""
import subprocess

import pytest

from conftest import make_sparse, needs_format, same_help

K = 1024
M = 1024 * 1024


def populate(d):
    # Data at the start, in the middle (two runs 64 KiB apart) and at the
    # end; everything else a hole.
    make_sparse(d / "a.raw", 4 * M, [(0, b"x" * 4096),
                                     (M, b"y" * 4096),
                                     (M + 64 * K, b"z" * 4096),
                                     (4 * M - 4096, b"w" * 4096)])
    make_sparse(d / "hole.raw", 2 * M)                 # all hole
    make_sparse(d / "full.raw", 64 * K, [(0, b"f" * (64 * K))])
    (d / "odd.raw").write_bytes(b"o" * 1000)          # rounded to 1024
    make_sparse(d / "odd2.raw", 100000, [(99000, b"e")])
    make_sparse(d / "tail.raw", 3 * M + 5, [(3 * M, b"t" * 5)])
    (d / "empty.raw").write_bytes(b"")
    (d / "sub").mkdir()
    make_sparse(d / "sub" / "s.raw", M, [(8192, b"s" * 512)])


FILES = ["a.raw", "hole.raw", "full.raw", "odd.raw", "odd2.raw", "tail.raw",
         "empty.raw", "sub/s.raw"]


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("name", FILES)
def test_map_files(pair, name, output):
    pair.setup(populate)
    pair.same("map", "--output=" + output, name)


@pytest.mark.parametrize("window", [
    ["--start-offset=4096"],
    ["--start-offset=1"],
    ["--start-offset=4095"],
    ["--start-offset=1048577", "--max-length=10"],
    ["--start-offset=1048576", "--max-length=65537"],
    ["--max-length=0"],
    ["--max-length=1"],
    ["--max-length=4097"],
    ["--max-length=1M"],
    ["--start-offset=4194303"],
    ["--start-offset=4194304"],
    ["--start-offset=5000000"],
    ["--start-offset=5000000", "--max-length=1"],
    ["--start-offset=4194300", "--max-length=100"],
    ["--start-offset=1k"],
    ["--start-offset=1.5k"],
    ["--start-offset=0x10k"],
    ["--start-offset=0x1000"],
    ["--start-offset=512b"],
    ["--start-offset", "2048"],
    ["--max-length", "8192"],
    ["--start-offset=9223372036854775807"],
    ["--start-offset=9223372036854775807", "--max-length=9223372036854775807"],
    ["--max-length=9223372036854775807"],
    ["--start-offset=1", "--start-offset=8192"],
])
@pytest.mark.parametrize("output", ["human", "json"])
def test_map_window(pair, window, output):
    pair.setup(populate)
    pair.same("map", "--output=" + output, *window, "a.raw")


@pytest.mark.parametrize("window", [
    ["--start-offset=1000"], ["--start-offset=1023"], ["--start-offset=1024"],
    ["--start-offset=999", "--max-length=2"], ["--max-length=1001"],
])
def test_map_window_odd_size(pair, window):
    pair.setup(populate)
    pair.same("map", "--output=json", *window, "odd.raw")
    pair.same("map", *window, "odd2.raw")


@pytest.mark.parametrize("bad", [
    "--start-offset=-1", "--start-offset=abc", "--start-offset=",
    "--start-offset=1x", "--start-offset=9223372036854775808",
    "--start-offset=99999999999999999999", "--start-offset=8E",
    "--max-length=-5", "--max-length=abc", "--max-length=",
    "--max-length=99999999999999999999", "--max-length=1.5",
])
def test_map_bad_numbers(pair, bad):
    pair.setup(populate)
    pair.same("map", bad, "a.raw")


@pytest.mark.parametrize("args", [
    ["a.raw"],
    ["-f", "raw", "a.raw"],
    ["--format=raw", "a.raw"],
    ["-U", "a.raw"],
    ["--force-share", "--output=json", "a.raw"],
    ["--output", "json", "a.raw"],
    ["--output=human", "a.raw"],
    ["--output=xml", "a.raw"],
    ["--output=", "a.raw"],
    ["--output=bad"],
    ["--output=bad", "a.raw", "b.raw"],
    ["--output=bad", "--start-offset=x", "a.raw"],
    ["--start-offset=x", "--output=bad", "a.raw"],
    ["--output=bad", "-x", "a.raw"],
    ["--output=bad", "nonexist.raw"],
    ["nonexist.raw"],
    ["--output=json", "nonexist.raw"],
    ["-f", "foo", "a.raw"],
    ["sub"],
    [],
    ["a.raw", "b.raw"],
    ["-x", "a.raw"],
    ["--bogus", "a.raw"],
    ["-f"],
    ["--start-offset"],
    ["--max-length"],
    ["--output"],
    ["--image-opts", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "--output=json", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "driver=raw,file.filename=a.raw,offset=1048576,"
     "size=1048576"],
    ["--image-opts", "--output=json", "driver=raw,file.filename=a.raw,"
     "offset=1048576,size=1048576"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "a.raw"],
    ["--image-opts", "driver=raw,file.filename=nonexist.raw"],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"a.raw"}}'],
    ["--output=json",
     'json:{"driver":"raw","file":{"driver":"file","filename":"a.raw"}}'],
    ["--output=json", "--max-length=1",
     'json:{"file":{"driver":"file","filename":"a.raw"}}'],
    ['json:{"driver":"raw","offset":65536,'
     '"file":{"driver":"file","filename":"a.raw"}}'],
    ["--object", "secret,id=s0,data=x", "a.raw"],
    ["--object", "foo", "a.raw"],
])
def test_map_options(pair, args):
    pair.setup(populate)
    pair.same("map", *args)


def test_map_help_exit_status(pair):
    """-h prints 7.2's help and succeeds."""
    same_help(pair, "map", "-h")


def test_map_writer_present(pair):
    """map opens read-only sharing writes: it works while another process
    holds the image open for writing."""
    from conftest import QEMU_IO
    pair.setup(populate)
    holders = []
    try:
        for d in pair.dirs():
            p = subprocess.Popen([str(QEMU_IO), "-f", "raw", "a.raw"],
                                 cwd=d, stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            holders.append(p)
        # qemu-io opens the image before reading its first command; a
        # command round trip proves the lock is held.
        for p in holders:
            p.stdin.write(b"\n")
            p.stdin.flush()
        import time
        time.sleep(0.3)
        pair.same("map", "--output=json", "a.raw")
        pair.same("map", "-U", "a.raw")
    finally:
        for p in holders:
            p.stdin.close()
            p.wait(timeout=10)


needs = needs_format


@needs("qcow2")
def test_map_wrong_format(pair):
    pair.setup(populate)
    pair.same("map", "-f", "qcow2", "a.raw")


def make_chain(pair):
    """base.qcow2 <- top.qcow2 with data, zero writes and unallocated
    areas at both depths, a compressed copy of base, and
    short.qcow2 (1M) <- mid.qcow2 (4M) <- long.qcow2 (4M)."""
    pair.sh("qemu-img create -f qcow2 base.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' "
            "-c 'write -z 2M 64k' base.qcow2 && "
            "qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
            "qemu-io -f qcow2 -c 'write -P 3 32k 64k' -c 'write -z 1M 32k' "
            "-c 'write -z 3M 64k' top.qcow2 && "
            "qemu-img convert -c -O qcow2 base.qcow2 comp.qcow2 && "
            # a chain over a backing file shorter than its overlays
            "qemu-img create -f qcow2 short.qcow2 1M && "
            "qemu-io -f qcow2 -c 'write 0 64k' short.qcow2 && "
            "qemu-img create -f qcow2 -b short.qcow2 -F qcow2 mid.qcow2 4M && "
            "qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 long.qcow2 4M")


@needs("qcow2")
@pytest.mark.parametrize("args", [
    ["top.qcow2"], ["--output=json", "top.qcow2"],
    ["base.qcow2"], ["--output=json", "base.qcow2"],
    ["--start-offset=40000", "--max-length=1M", "--output=json", "top.qcow2"],
    ["comp.qcow2"], ["--output=json", "comp.qcow2"],
    ["-f", "raw", "top.qcow2"],
    ["--output=json", "mid.qcow2"], ["--output=json", "long.qcow2"],
    ["long.qcow2"],
])
def test_map_qcow2(pair, args):
    make_chain(pair)
    pair.same("map", *args)
