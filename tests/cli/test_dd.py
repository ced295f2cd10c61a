"""qemu-img dd differential tests: operands and their errors, block size,
count and skip arithmetic (including 7.2's quirks), output formats and
existing outputs; outputs cross-checked with the reference."""
import os
import subprocess

import pytest

from conftest import REF, batches, run, same_each

MiB = 1 << 20


def make_input(path, size=MiB):
    """Data, a hole and a run of allocated zeroes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(0, size // 2, 4096):
            f.seek(i)
            f.write(bytes([(i // 4096) % 250 + 1]) * 1000)
        f.seek(size * 3 // 4)
        f.write(b"\0" * 8192)


@pytest.fixture
def inp(pair):
    pair.setup(lambda d: make_input(d / "in.img"))
    return "in.img"


def ref_map(directory, name, fmt="raw"):
    return run(REF, ["map", "--output=json", "-f", fmt, name], directory).out


def same_output(pair, name="out.img", fmt="raw"):
    if not os.path.exists(pair.path_ref(name)):
        assert not os.path.exists(pair.path_qimg(name))
        return
    assert os.path.getsize(pair.path_qimg(name)) == \
        os.path.getsize(pair.path_ref(name))
    pair.same_content(name, fmt)
    assert ref_map(pair.qimg_dir, name, fmt) == ref_map(pair.ref_dir, name, fmt)


@pytest.mark.parametrize("ops", [
    [], ["bs=1k"], ["bs=1.5k"], ["bs=100"], ["bs=513"], ["bs=4k"],
    ["bs=64k"], ["bs=1G"], ["bs=2147483647", "count=1"], ["bs=0x200"],
    ["bs=1k", "count=3"], ["count=0"], ["count=1k"], ["count=1"],
    ["count=9223372036854775807"], ["bs=1k", "count=9223372036854775807"],
    ["skip=1"], ["skip=2048"], ["skip=2049"], ["skip=9223372036854775807"],
    ["bs=4", "skip=9223372036854775807"], ["bs=512", "count=4", "skip=3"],
    ["bs=1k", "count=1", "skip=1023"], ["bs=1k", "skip=1024"],
    ["bs=1k", "skip=1025"], ["count=0", "skip=1"], ["count=1", "skip=1"],
    ["bs=100", "skip=1"], ["bs=100", "count=3"], ["bs=3000", "skip=5"],
    ["bs=1k", "bs=2k", "count=1"], ["bs=4k", "skip=0x10"],
    ["bs=1k", "count=0x10k"], ["bs=64k", "count=5", "skip=2"],
])
def test_dd(pair, inp, ops):
    pair.same("dd", f"if={inp}", "of=out.img", *ops)
    same_output(pair)


@pytest.mark.parametrize("opts", [
    ["-f", "raw"], ["-O", "raw"], ["-f", "raw", "-O", "raw"], ["-U"],
    ["--force-share"], ["--object", "secret,id=a,data=b"],
])
def test_dd_options(pair, inp, opts):
    pair.same("dd", *opts, f"if={inp}", "of=out.img", "bs=4k", "count=100")
    same_output(pair)


def test_dd_image_opts(pair, inp):
    pair.same("dd", "--image-opts", "if=driver=raw,file.filename=in.img",
              "of=out.img")
    same_output(pair)
    pair.same("dd", "--image-opts",
              "if=driver=raw,offset=4096,size=64k,file.filename=in.img",
              "of=o2.img")
    same_output(pair, "o2.img")


def test_dd_options_after_operands(pair, inp):
    pair.same("dd", f"if={inp}", "of=out.img", "-O", "raw", "count=8")
    same_output(pair)


def test_dd_later_operands_win(pair, inp):
    pair.same("dd", "if=missing.img", f"if={inp}", "of=a.img", "of=out.img",
              "count=8")
    same_output(pair)
    assert not os.path.exists(pair.path_qimg("a.img"))


def test_dd_replaces_existing_output(pair, inp):
    def setup(d):
        with open(d / "out.img", "wb") as f:
            f.write(b"\x99" * 8 * MiB)
    pair.setup(setup)
    pair.same("dd", f"if={inp}", "of=out.img", "bs=1k", "count=10")
    same_output(pair)


def test_dd_sparse_input_fully_allocated(pair):
    def setup(d):
        with open(d / "sp.img", "wb") as f:
            f.truncate(4 * MiB)
            f.seek(MiB)
            f.write(b"\7" * 4096)
    pair.setup(setup)
    pair.same("dd", "if=sp.img", "of=out.img", "bs=64k")
    same_output(pair)
    assert os.stat(pair.path_qimg("out.img")).st_blocks == \
        os.stat(pair.path_ref("out.img")).st_blocks


def test_dd_tiny_input(pair):
    def setup(d):
        with open(d / "tiny.img", "wb") as f:
            f.write(b"abc")
    pair.setup(setup)
    pair.same("dd", "if=tiny.img", "of=out.img")
    same_output(pair)
    pair.same("dd", "if=tiny.img", "of=o2.img", "bs=1", "skip=1")
    same_output(pair, "o2.img")


def test_dd_same_file(pair, inp):
    pair.same("dd", f"if={inp}", f"of={inp}")
    same_output(pair, inp)


def test_dd_to_qcow2(pair, inp):
    pair.same("dd", f"if={inp}", "of=out.qcow2", "-O", "qcow2", "bs=4k",
              "skip=3")
    pair.same_content("out.qcow2", "qcow2")


def test_dd_from_qcow2(pair, inp):
    pair.same("convert", "-O", "qcow2", inp, "in.qcow2")
    pair.same("dd", "-f", "qcow2", "if=in.qcow2", "of=out.img", "bs=1k",
              "skip=7", "count=500")
    same_output(pair)


DD_ERRORS = [
    [], ["if=in.img"], ["of=out.img"], ["if=in.img,of=out.img"],
    ["if=in.img", "of=out.img", "bs=0"], ["if=in.img", "of=out.img", "bs=abc"],
    ["if=in.img", "of=out.img", "bs=-1"], ["if=in.img", "of=out.img", "bs=2G"],
    ["if=in.img", "of=out.img", "bs=3G"], ["if=in.img", "of=out.img", "bs=1E"],
    ["if=in.img", "of=out.img", "bs=1.5"], ["if=in.img", "of=out.img", "bs="],
    ["if=in.img", "of=out.img", "bs=2147483648"],
    ["if=in.img", "of=out.img", "count=-1"], ["if=in.img", "of=out.img", "count=abc"],
    ["if=in.img", "of=out.img", "count=1.5"], ["if=in.img", "of=out.img", "count="],
    ["if=in.img", "of=out.img", "count=9999999999999999999"],
    ["if=in.img", "of=out.img", "skip=-1"], ["if=in.img", "of=out.img", "skip=abc"],
    ["if=in.img", "of=out.img", "skip="],
    ["if=in.img", "of=out.img", "skip=9223372036854775808"],
    ["if=in.img", "of=out.img", "foo=bar"], ["if=in.img", "of=out.img", "foo"],
    ["if=in.img", "of=out.img", "=x"], ["if=in.img", "of=out.img", "extra"],
    ["if=in.img", "of=out.img", "conv=notrunc"], ["IF=in.img", "of=out.img"],
    ["if", "of=out.img"], ["if=in.img", "of"], ["bs", "if=in.img", "of=out.img"],
    ["bs=0", "foo=bar", "if=in.img", "of=out.img"], ["foo=bar", "bs=0"],
    ["bs=0"], ["foo=bar"],
    ["if=missing.img", "of=out.img"], ["if=in.img=x", "of=out.img"],
    ["if==in.img", "of=out.img"],
    ["-O", "foo", "if=in.img", "of=out.img"], ["-O", "foo", "if=missing.img", "of=o"],
    ["-O", "foo", "if=in.img"], ["-f", "foo", "if=in.img", "of=out.img"],
    ["-f", "qcow2", "if=in.img", "of=out.img"],
    ["if=in.img", "of=out.img", "-Z"], ["-Z", "if=in.img", "of=out.img", "bs=0"],
    ["if=in.img", "of=out.img", "bs=0", "-Z"],
    ["-q", "if=in.img", "of=out.img"], ["-p", "if=in.img", "of=out.img"],
    ["-n", "if=in.img", "of=out.img"], ["-o", "size=1", "if=in.img", "of=out.img"],
    ["--foo", "if=in.img", "of=out.img"], ["-f"], ["-O"], ["--object"],
    ["--object", "foo", "if=in.img", "of=out.img"],
    ["--image-opts", "if=in.img", "of=out.img"],
    ["--image-opts", "-f", "raw", "if=driver=raw,file.filename=in.img", "of=o"],
    ["if=in.img", "of=abc:def"], ["if=in.img", "of=nodir/out.img"],
    ["if=in.img", "of=dir"], ["if=in.img", "of=dir", "skip=2049"],
    ["if=in.img", "of=out.img", "-O", "qcow2", "skip=2049"],
]


@pytest.mark.parametrize("batch", batches(DD_ERRORS))
def test_dd_errors(pair, inp, batch):
    pair.sh("mkdir -p dir")
    same_each(pair, "dd", batch, ("out.img", "o"))


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


@pytest.mark.parametrize("ops", [[], ["bs=4k", "skip=3"], ["count=0"]])
def test_dd_read_error(pair, ops):
    pair.setup(make_corrupt)
    pair.same("dd", "-f", "qcow2", "if=c.qcow2", "of=out.img", *ops)
