"""qemu-img create differential tests (raw): sizes, -o lists, help,
preallocation, errors; images cross-checked with the reference."""
import os

import pytest

SIZES = ["0", "1", "512", "1000", "1.5k", "1.k", "0x1k", "0X10", "1m", "1G",
         "1b", "1.0", "1.", " 1", "0.5k", "1.00000000000000000001k",
         # errors
         "1.5", "1e3", "1kk", "1Q", "-1", "0x", "00x10", "0x1.5k", "8E", "16E",
         "99E", "18446744073709551616", "0x8000000000000000", "abc", ""]


@pytest.mark.parametrize("size", SIZES)
def test_sizes(pair, size):
    pair.same("create", "-f", "raw", "x.img", size)
    if os.path.exists(pair.path_ref("x.img")):
        assert os.path.getsize(pair.path_qimg("x.img")) == \
            os.path.getsize(pair.path_ref("x.img"))


@pytest.mark.parametrize("args", [
    ["-f", "raw", "x.img", "1M"],
    ["x.img", "1M"],
    ["-q", "-f", "raw", "x.img", "1M"],
    ["-f", "raw", "-o", "size=2M", "x.img"],
    ["-f", "raw", "-o", "size=2M", "x.img", "3M"],
    ["-f", "raw", "-o", "size=1M", "-o", "size=2M", "x.img"],
    ["-f", "raw", "-o", "size=1M,,x=y", "x.img"],
    ["-f", "raw", "-o", "", "x.img", "1M"],
    ["-f", "raw", "-o", "size=1,", "x.img"],
    ["-f", "raw", "-o", "preallocation=full", "x.img", "1M"],
    ["-f", "raw", "-o", "preallocation=falloc", "x.img", "1M"],
    ["-f", "raw", "-o", "preallocation=off", "x.img", "1M"],
    ["-f", "raw", "-o", "preallocation=metadata", "x.img", "1M"],
    ["-f", "raw", "-o", "preallocation=bad", "x.img", "1M"],
    ["-f", "raw", "-o", "preallocation=full,nocow=on,extent_size_hint=1M",
     "x.img", "1M"],
    ["-f", "raw", "-o", "extent_size_hint=-1", "x.img", "1M"],
    ["-f", "raw", "-o", "nocow=maybe", "x.img", "1M"],
    ["-f", "raw", "-o", "nocow", "x.img", "1M"],
    ["-f", "raw", "-o", "foo=bar", "x.img", "1M"],
    ["-f", "raw", "x.img"],
    ["-f", "raw"],
    ["x.img", "1M", "2"],
    ["-f", "foo", "x.img", "1M"],
    ["-f", "raw", "-b", "base.img", "x.img"],
    ["-f", "raw", "-F", "raw", "x.img", "1M"],
    ["-f", "raw", "nodir/x.img", "1M"],
    ["-u", "-f", "raw", "x.img", "1M"],
    ["--object", "secret,id=s0,data=abc", "-f", "raw", "x.img", "1M"],
    ["--object", "secret,id=s0", "-f", "raw", "x.img", "1M"],
    ["--object", "foo,id=s0", "-f", "raw", "x.img", "1M"],
])
def test_create_args(pair, args):
    pair.same("create", *args)
    name = "x.img"
    if os.path.exists(pair.path_ref(name)):
        assert os.path.getsize(pair.path_qimg(name)) == \
            os.path.getsize(pair.path_ref(name))
        pair.same_content(name)


@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
def test_preallocation_allocates_like_reference(pair, prealloc):
    pair.same("create", "-f", "raw", "-o", f"preallocation={prealloc}",
              "x.img", "3M")
    ref_blocks = os.stat(pair.path_ref("x.img")).st_blocks
    q_blocks = os.stat(pair.path_qimg("x.img")).st_blocks
    assert (q_blocks == 0) == (ref_blocks == 0)
    assert abs(q_blocks - ref_blocks) <= 8


@pytest.mark.parametrize("args", [
    ["-f", "raw", "-o", "help"],
    ["-f", "raw", "-o", "?"],
    ["-f", "raw", "-o", "help", "x.img"],
    ["-f", "raw", "-o", "?", "x.img", "1M"],
    ["-o", "help"],
    ["-f", "raw", "-o", "size=1M,help", "x.img"],
    ["-f", "raw", "-o", "help", "-o", "foo", "x.img"],
])
def test_option_help(pair, args):
    pair.same("create", *args)


def test_existing_file_is_truncated(pair):
    pair.sh("head -c 100000 /dev/urandom > x.img")
    pair.same("create", "-f", "raw", "x.img", "64k")
    pair.same_content("x.img")
