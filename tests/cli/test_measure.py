"""qemu-img measure differential tests: --size and source images (sizes not
multiple of 512, empty, sparse), human and JSON output, -O/-o handling
(file options accepted, unknown keys, bad values, help as a plain key),
-l parsing and its refusal on raw, --image-opts, json: filenames and every
argument-combination error.  getopt errors print QEMU's help, which qimg
words differently, so those compare status and stderr only.
"""
import pytest

from conftest import make_sparse, needs_format, same_help

M = 1024 * 1024


def populate(d):
    make_sparse(d / "a.raw", 4 * M, [(0, b"x" * 4096), (M, b"y" * 4096)])
    (d / "odd.raw").write_bytes(b"o" * 1000)
    make_sparse(d / "odd2.raw", 100000, [(99000, b"e")])
    (d / "empty.raw").write_bytes(b"")


@pytest.mark.parametrize("size", [
    "0", "1", "511", "512", "513", "1000", "1k", "1M", "1.5M", "3G", "1T",
    "0x200", "0x1k", "1b", "8E", "9223372036854775296",
    "9223372036854775807",
])
@pytest.mark.parametrize("output", ["human", "json"])
def test_measure_size(pair, size, output):
    pair.same("measure", "--output=" + output, "--size", size)


@pytest.mark.parametrize("name", ["a.raw", "odd.raw", "odd2.raw",
                                  "empty.raw"])
@pytest.mark.parametrize("output", ["human", "json"])
def test_measure_file(pair, name, output):
    pair.setup(populate)
    pair.same("measure", "--output=" + output, name)
    pair.same("measure", "--output=" + output, "-f", "raw", "-O", "raw", name)


@pytest.mark.parametrize("args", [
    # -O and -o
    ["-O", "raw", "--size", "1M"],
    ["-O", "foo", "--size", "1M"],
    ["-O", "foo", "-o", "bad=1", "--size", "1"],
    ["-O", "foo", "nonexist.raw"],
    ["-o", "size=2M", "--size", "1M"],
    ["-o", "size=2M", "a.raw"],
    ["-o", "size=1k,size=2k", "--size", "1"],
    ["-o", "size=1k", "-o", "size=abc", "--size", "1"],
    ["-o", "size=abc", "--size", "1M"],
    ["-o", "size=abc,foo=1", "--size", "1"],
    ["-o", "foo=1,size=abc", "--size", "1"],
    ["-o", "preallocation=full", "--size", "1M"],
    ["-o", "preallocation=bogus", "--size", "1M"],
    ["-o", "preallocation", "--size", "1"],
    ["-o", "nocow=on", "--size", "1M"],
    ["-o", "nocow=foo", "--size", "1"],
    ["-o", "nocow=x,nocow=on", "--size", "1"],
    ["-o", "nocow", "--size", "1"],
    ["-o", "nonocow", "--size", "1"],
    ["-o", "foo=bar", "--size", "1M"],
    ["-o", "foo", "--size", "1M"],
    ["-o", "a,,b=1", "--size", "1"],
    ["-o", "a=b", "-o", "c=d", "--size", "1"],
    ["-o", "help", "--size", "1M"],
    ["-o", "?", "--size", "1"],
    ["-o", "help,foo", "--size", "1"],
    ["-o", "help", "a.raw"],
    ["-o", "help"],
    ["-O", "raw", "-o", "help"],
    ["-o", "", "--size", "1"],
    ["-o", ",", "--size", "1M"],
    ["-o", ",size=1", "--size", "1"],
    ["-o", ",,a=1", "--size", "1"],
    ["-o", "size=1,,", "--size", "1"],
    ["-o", "a=1,,,", "--size", "1"],
    ["-o", "bad=1", "nonexist.raw"],
    # --size
    ["--size", "abc"],
    ["--size", "-1"],
    ["--size", ""],
    ["--size", "1x"],
    ["--size", "99999999999999999999"],
    ["--size", "1k", "--size", "2k"],
    ["--size", "abc", "--output=xml"],
    ["--output=xml", "--size", "abc"],
    ["--output=xml", "--size", "1k"],
    ["--output=bad", "a", "b"],
    ["--output", "json", "--size", "1k"],
    # argument combinations
    [],
    ["--size", "1M", "a.raw"],
    ["a.raw", "b.raw"],
    ["--size", "1", "a", "b"],
    ["-f", "raw", "a", "b"],
    ["-f", "raw"],
    ["--image-opts"],
    ["--image-opts", "--size", "1M"],
    ["-l", "x"],
    ["-l", "snap", "--size", "1M"],
    ["-f", "raw", "-l", "x", "--size", "1"],
    ["-U", "--size", "1M"],
    ["--force-share", "--size", "1"],
    ["-U", "a.raw"],
    # opening the source
    ["nonexist.raw"],
    ["-f", "foo", "a.raw"],
    ["-f", "raw", "a.raw"],
    ["--image-opts", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "--output=json", "driver=raw,file.filename=odd.raw"],
    ["--image-opts", "a.raw"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=a.raw"],
    ["--image-opts", "driver=raw,file.filename=a.raw,offset=1048576"],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"a.raw"}}'],
    ['json:{"file":{"driver":"file","filename":"odd.raw"}}'],
    ["--object", "secret,id=s,data=x", "--size", "1k"],
    ["--object", "foo", "--size", "1"],
    ["--image-opts", "driver=raw,file.filename=a.raw",
     "--object", "secret,id=s,data=x"],
    # -l
    ["-l", "snap", "a.raw"],
    ["-l", "", "a.raw"],
    ["-l", "snapshotx", "a.raw"],
    ["-l", "snapshot.name=x", "a.raw"],
    ["-l", "snapshot.id=1", "a.raw"],
    ["-l", "snapshot.id=1,snapshot.name=x", "a.raw"],
    ["-l", "snapshot.id=1,snapshot.id=2", "a.raw"],
    ["-l", "snapshot.name=a,,b", "a.raw"],
    ["-l", "snapshot.id", "a.raw"],
    ["-l", "snapshot.foo=x", "a.raw"],
    ["-l", "snapshot.x=1", "nonexist.raw"],
    ["-l", "snapshot.x=1", "--size", "1"],
    ["-l", "snapshot.name=a,snapshot.x", "a.raw"],
    ["-l", "snapshot.", "a.raw"],
    ["-l", "snapshot.id=1,nosnapshot.name", "a.raw"],
    ["-l", "snapshot.id=1,help", "a.raw"],
    ["-l", "snapshot.id=1,?", "--size", "1"],
    ["-l", "snapshot.x=1,help", "a.raw"],
    ["-l", "help,snapshot.x=1", "a.raw"],
    ["-l", "snapshot.name=1,help=on", "a.raw"],
    ["-l", "snapshot.id=1,", "a.raw"],
    ["-l", "snapshot.id=1,=x", "a.raw"],
    ["-O", "foo", "-l", "snapshot.x=1", "a.raw"],
    ["-O", "foo", "-l", "x", "a.raw"],
    ["-o", "bad=1", "-l", "x", "a.raw"],
    ["-l", "x", "nonexist.raw"],
])
def test_measure_options(pair, args):
    pair.setup(populate)
    pair.same("measure", *args)


@pytest.mark.parametrize("args", [
    ["-h"], ["--help"], ["-x"], ["-x", "--size", "1"], ["--foo"],
    ["--format=raw", "a.raw"], ["--size"], ["-O"], ["-o"], ["-l"], ["-f"],
    ["--output"], ["--size", "1", "-q"],
])
def test_measure_getopt_errors(pair, args):
    """Bad options: getopt's message, then the help, status 0."""
    pair.setup(populate)
    same_help(pair, "measure", *args)


needs_qcow2 = needs_format("qcow2")


@needs_qcow2
@pytest.mark.parametrize("args", [
    ["-O", "qcow2", "--size", "1M"],
    ["-O", "qcow2", "--output=json", "--size", "1G"],
    ["-O", "qcow2", "a.raw"],
    ["-O", "qcow2", "-o", "cluster_size=4k", "--size", "1M"],
    ["-O", "qcow2", "-o", "cluster_size=3k", "--size", "1"],
    ["-O", "qcow2", "-o", "cluster_size=abc", "--size", "1"],
    ["-O", "qcow2", "-o", "preallocation=full", "--size", "1M"],
    ["-O", "qcow2", "-o", "preallocation=bogus", "--size", "1M"],
    ["-O", "qcow2", "-o", "lazy_refcounts", "--size", "1"],
    ["-O", "qcow2", "-o", "help", "--size", "1"],
    ["-O", "qcow2", "q.qcow2"],
    ["-O", "qcow2", "--output=json", "q.qcow2"],
    ["-O", "raw", "q.qcow2"],
    ["q.qcow2"],
    ["-O", "qcow2", "bm.qcow2"],
    ["-O", "qcow2", "--output=json", "bm.qcow2"],
    ["-O", "raw", "bm.qcow2"],
    ["-l", "s1", "q.qcow2"],
    ["-l", "snapshot.name=s1", "-O", "qcow2", "q.qcow2"],
    ["-l", "nosuch", "q.qcow2"],
])
def test_measure_qcow2(pair, args):
    pair.setup(populate)
    pair.sh("qemu-img create -f qcow2 q.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write 0 512k' q.qcow2 && "
            "qemu-img snapshot -c s1 q.qcow2 && "
            "qemu-img create -f qcow2 bm.qcow2 4M && "
            "qemu-img bitmap --add bm.qcow2 b0")
    pair.same("measure", *args)
