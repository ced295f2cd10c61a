"""qemu-img resize differential tests on raw images: absolute and relative
sizes (including negative ones with and without "--"), shrinking with and
without --shrink, sizes that end up not positive or too large, size
syntax errors, every --preallocation mode, -q, the probed-raw warning,
--image-opts and json: names, and the argument count rules.  After each
run the files must have the same size, allocation and content."""
import os
import subprocess

import pytest

from conftest import REF, make_sparse, needs_format, run, same_each, same_help

MiB = 1 << 20


def populate(d):
    make_sparse(d / "a.img", 4 * MiB, [(0, b"\xab" * 65536),
                                       (3 * MiB, b"x" * 4096)])
    make_sparse(d / "odd.img", 1000, [(0, b"o" * 1000)])
    (d / "empty.img").write_bytes(b"")
    (d / "sub").mkdir()


def state(d):
    """Size and allocated blocks of every regular file in d."""
    out = {}
    for name in sorted(os.listdir(d)):
        st = os.stat(d / name)
        if os.path.isfile(d / name):
            out[name] = (st.st_size, st.st_blocks)
    return out


CASES = [
    # growing and shrinking
    ["-f", "raw", "a.img", "8M"],
    ["a.img", "8M"],                       # probed raw: warning
    ["-f", "raw", "a.img", "+1M"],
    ["-f", "raw", "a.img", "+0"],
    ["-f", "raw", "a.img", "4M"],
    ["-f", "raw", "a.img", "--", "-0"],
    ["-f", "raw", "a.img", "-1M"],
    ["-f", "raw", "a.img", "--", "-1M"],
    ["-f", "raw", "--", "a.img", "-1M"],
    ["-f", "raw", "a.img", "1M"],
    ["-f", "raw", "--shrink", "a.img", "1M"],
    ["-f", "raw", "--shrink", "a.img", "-3M"],
    ["-f", "raw", "--shrink", "a.img", "--", "-3M"],
    ["-f", "raw", "--shrink", "a.img", "-4M"],
    ["-f", "raw", "--shrink", "a.img", "-5M"],
    ["-f", "raw", "a.img", "-20M"],
    ["-f", "raw", "a.img", "0"],
    ["-f", "raw", "--shrink", "a.img", "0"],
    ["-f", "raw", "a.img", "1T"],
    ["-f", "raw", "a.img", "+1T"],
    ["-f", "raw", "a.img", "4097"],
    ["-f", "raw", "--shrink", "a.img", "4097"],
    ["-f", "raw", "a.img", "5.5M"],
    ["-f", "raw", "a.img", "1.5"],
    ["-f", "raw", "a.img", "8388608b"],
    ["-f", "raw", "a.img", "0x800000"],
    ["-f", "raw", "a.img", "0x10k"],
    ["-f", "raw", "a.img", " 8M"],
    ["-f", "raw", "odd.img", "3000"],
    ["-f", "raw", "odd.img", "1000"],
    ["-f", "raw", "odd.img", "1024"],
    ["-f", "raw", "odd.img", "+1000"],
    ["-f", "raw", "--shrink", "odd.img", "10"],
    ["-f", "raw", "empty.img", "1M"],
    ["-f", "raw", "empty.img", "+512"],
    # sizes out of range
    ["-f", "raw", "a.img", "foo"],
    ["-f", "raw", "a.img", ""],
    ["-f", "raw", "a.img", "+"],
    ["-f", "raw", "a.img", "--", "-"],
    ["-f", "raw", "a.img", "--", "+-1"],
    ["-f", "raw", "a.img", "1e3"],
    ["-f", "raw", "a.img", "16E"],
    ["-f", "raw", "a.img", "17E"],
    ["-f", "raw", "a.img", "18446744073709551616"],
    ["-f", "raw", "a.img", "18446744073709551615"],
    ["-f", "raw", "a.img", "15.99E"],
    ["-f", "raw", "a.img", "8E"],
    ["-f", "raw", "a.img", "9E"],
    ["-f", "raw", "a.img", "+8E"],
    ["-f", "raw", "a.img", "--", "-9E"],
    ["-f", "raw", "a.img", "9223372036854775807"],
    ["-f", "raw", "a.img", "9223372035781033985"],
    ["-f", "raw", "a.img", "9223372035781033984"],
    ["-f", "raw", "a.img", "7E"],
    ["-f", "raw", "--shrink", "a.img", "9223372035781033985"],
    # preallocation
    ["-f", "raw", "--preallocation=off", "a.img", "6M"],
    ["-f", "raw", "--preallocation=falloc", "a.img", "8M"],
    ["-f", "raw", "--preallocation=full", "a.img", "8M"],
    ["-f", "raw", "--preallocation=metadata", "a.img", "8M"],
    ["-f", "raw", "--preallocation=bogus", "a.img", "8M"],
    ["-f", "raw", "--preallocation", "full", "a.img", "+1M"],
    ["-f", "raw", "--preallocation=falloc", "a.img", "4M"],
    ["-f", "raw", "--preallocation=metadata", "a.img", "4M"],
    ["-f", "raw", "--preallocation=falloc", "a.img", "1M"],
    ["-f", "raw", "--preallocation=full", "--shrink", "a.img", "1M"],
    ["-f", "raw", "--preallocation=off", "a.img", "1M"],
    ["-f", "raw", "--preallocation=off", "--shrink", "a.img", "1M"],
    ["-f", "raw", "--preallocation=falloc", "a.img", "0"],
    ["-f", "raw", "--preallocation=falloc", "a.img", "8E"],
    ["-f", "raw", "--preallocation=falloc", "a.img", "7E"],
    ["-f", "raw", "--preallocation=full", "a.img", "7E"],
    ["-f", "raw", "--preallocation=metadata", "a.img", "9223372036854775807"],
    ["-f", "raw", "--preallocation=falloc", "--preallocation=off", "a.img", "5M"],
    ["-f", "raw", "--preallocation=falloc", "empty.img", "1M"],
    ["-f", "raw", "--preallocation=full", "empty.img", "1M"],
    ["-f", "raw", "--preallocation=falloc", "odd.img", "1030"],
    ["-f", "raw", "--preallocation=full", "odd.img", "1020"],
    ["--preallocation=full", "a.img", "4M"],
    # quiet
    ["-q", "-f", "raw", "a.img", "5M"],
    ["-q", "a.img", "5M"],
    ["-q", "-f", "raw", "a.img", "1M"],
    ["-f", "raw", "a.img", "5M", "-q"],
    # --image-opts, json:, objects
    ["--image-opts", "driver=raw,file.filename=a.img", "5M"],
    ["--image-opts", "file.filename=a.img", "6M"],
    ["--image-opts", "a.img", "6M"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=a.img", "5M"],
    ["--image-opts", "driver=raw,file.filename=a.img,size=1048576", "6M"],
    ["--image-opts", "driver=raw,file.filename=a.img,offset=512", "6M"],
    ["--image-opts", "driver=raw,file.filename=a.img,offset=512",
     "--preallocation=falloc", "+1M"],
    ["--image-opts", "driver=raw,file.filename=a.img,offset=1G",
     "9223372035781033984"],
    ["--image-opts", "driver=raw,file.filename=a.img,offset=1G",
     "9223372034707292160"],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"a.img"}}', "7M"],
    ['json:{"file":{"driver":"file","filename":"a.img"}}', "7M"],
    ["--object", "secret,id=s,data=x", "-f", "raw", "a.img", "5M"],
    ["--object", "secret,id=s", "-f", "raw", "a.img", "5M"],
    ["-f", "raw", "-f", "raw", "a.img", "5M"],
    # errors and argument rules
    ["-f", "raw", "nope.img", "4M"],
    ["nope.img", "0"],
    ["nope.img", "foo"],
    ["nope.img", "0x10k"],
    ["--preallocation=bogus", "nope.img", "4M"],
    ["-f", "bogus", "a.img", "4M"],
    ["-f", "raw", "sub", "4M"],
    [],
    ["a.img"],
    ["-h"],
    ["a.img", "-h"],
    ["a.img", "4M", "x"],
    ["-f", "raw", "-x", "a.img", "5M"],
    ["--bogus", "a.img", "5M"],
    ["-f", "raw", "--preallocation"],
    ["-f", "raw", "-f"],
    ["a.img", "-f", "4M"],
    ["-f", "raw"],
]


@pytest.mark.parametrize("args", CASES)
def test_resize(pair, args):
    pair.setup(populate)
    pair.same("resize", *args)
    assert state(pair.qimg_dir) == state(pair.ref_dir)
    for name in ("a.img", "odd.img", "empty.img"):
        pair.same_content(name)


def test_help(pair):
    same_help(pair, "resize", "-h", "4M")


def test_repeated_resizes(pair):
    """A sequence of operations leaves identical files at every step."""
    pair.setup(populate)
    steps = [["+1M"], ["--shrink", "--", "-3M"], ["--preallocation=falloc", "+2M"],
             ["--shrink", "100000"], ["--preallocation=full", "200000"],
             ["1M"], ["-q", "--shrink", "512"]]
    for extra in steps:
        opts, size = extra[:-1], extra[-1]
        pair.same("resize", "-f", "raw", *opts, "a.img", size)
        assert state(pair.qimg_dir) == state(pair.ref_dir)
        pair.same_content("a.img")


# ---- qcow2 (runs once qimg opens qcow2) -----------------------------------

def qcow2_setup(d):
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "q.qcow2", "4M"],
                   cwd=d, check=True)
    subprocess.run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "write 3M 64k",
                    "q.qcow2"], cwd=d, check=True, capture_output=True)
    make_sparse(d / "a.img", 4 * MiB)


QCOW2_CASES = [
    ["q.qcow2", "8M"],
    ["q.qcow2", "1M"],
    ["--shrink", "q.qcow2", "1M"],
    ["--shrink", "q.qcow2", "-64k"],
    ["-f", "qcow2", "q.qcow2", "+1M"],
    ["--preallocation=metadata", "q.qcow2", "+1M"],
    ["--preallocation=falloc", "q.qcow2", "+1M"],
    ["--preallocation=full", "q.qcow2", "+1M"],
    ["-f", "qcow2", "a.img", "4M"],
]


@needs_format("qcow2")
@pytest.mark.parametrize("args", QCOW2_CASES)
def test_resize_qcow2(pair, args):
    pair.setup(qcow2_setup)
    pair.same("resize", *args)
    pair.same_content("q.qcow2", fmt="qcow2")
    r = run(REF, ["check", "q.qcow2"], pair.qimg_dir)
    assert r.rc == 0, r


def test_resize_device_files(pair):
    """Device files keep their size: resize asks for it exactly, so any
    other size is refused with 7.2's "Cannot resize device files"."""
    same_each(pair, "resize", [
        ["-f", "raw", "/dev/null", "1M"], ["-f", "raw", "/dev/zero", "+1M"],
        ["-f", "raw", "/dev/null", "0"], ["-f", "raw", "--shrink", "/dev/null",
                                          "0"],
        ["-f", "raw", "--preallocation=full", "/dev/null", "1M"],
        ["-f", "qcow2", "/dev/null", "1M"],
        ["--image-opts", "driver=raw,file.driver=host_device,"
         "file.filename=/dev/null", "1M"]], scratch=())


def test_preallocation_full_allocation(pair):
    """preallocation=full writes its zeroes in requests of 1 MiB built
    from a 64 KiB zero source (and tries fallocate's WRITE_ZEROES first):
    growths that end inside a source piece and inside a request, on raw
    and qcow2, must leave files of the same bytes, allocation and host
    mapping as 7.2's, and a qcow2 its check accepts."""
    def setup(d):
        populate(d)
        subprocess.run([REF, "create", "-q", "-f", "qcow2", "q.qcow2", "1M"],
                       cwd=d, check=True)
    pair.setup(setup)
    for args in (["-f", "raw", "--preallocation=full", "a.img", "+3000001"],
                 ["-f", "raw", "--preallocation=full", "odd.img", "+65535"],
                 ["-f", "raw", "--preallocation=full", "empty.img",
                  str(2 * MiB + 65536 + 512)],
                 ["--preallocation=full", "q.qcow2", "+2000000"]):
        pair.same("resize", *args)
    assert state(pair.qimg_dir) == state(pair.ref_dir)
    for name in ("a.img", "odd.img", "empty.img"):
        pair.same_content(name)
        maps = [run(REF, ["map", "--output=json", "-f", "raw", name], d).out
                for d in pair.dirs()]
        assert maps[0] == maps[1], name
    pair.same_content("q.qcow2", fmt="qcow2")
    checks = [run(REF, ["check", "q.qcow2"], d) for d in pair.dirs()]
    assert checks[0].rc == checks[1].rc == 0 and checks[0].out == checks[1].out
    assert state(pair.qimg_dir)["q.qcow2"] == state(pair.ref_dir)["q.qcow2"]
