"""qemu-img create -f qcow2: every option, default and error, compared with
the reference; the images qimg writes must be clean for the reference and
describe the same image (info), and for the common cases be byte-identical
to what the reference writes."""
import pytest

from conftest import REF, run, same_each

OPTIONS = [
    "", "compat=0.10", "compat=v2", "compat=1.1", "compat=v3", "compat=0.9",
    "cluster_size=512", "cluster_size=4k", "cluster_size=2M", "cluster_size=1000",
    "cluster_size=256", "cluster_size=4M", "cluster_size=x",
    "extended_l2=on", "extended_l2=on,cluster_size=16k",
    "extended_l2=on,cluster_size=4k", "compat=0.10,extended_l2=on",
    "refcount_bits=1", "refcount_bits=2", "refcount_bits=4", "refcount_bits=8",
    "refcount_bits=32", "refcount_bits=64", "refcount_bits=3",
    "refcount_bits=128", "refcount_bits=0", "compat=0.10,refcount_bits=8",
    "lazy_refcounts=on", "compat=0.10,lazy_refcounts=on", "lazy_refcounts=x",
    "compression_type=zstd", "compression_type=zlib", "compression_type=lz4",
    "compression_type=zstd,compat=0.10",
    "preallocation=off", "preallocation=metadata", "preallocation=falloc",
    "preallocation=full", "preallocation=bogus",
    "preallocation=metadata,cluster_size=4k",
    "data_file=d.raw", "data_file=d.raw,data_file_raw=on", "data_file_raw=on",
    "compat=0.10,data_file=d.raw",
    "backing_file=base.raw,backing_fmt=raw",
    "backing_file=base.raw,backing_fmt=raw,preallocation=full",
    "backing_file=base.raw,backing_fmt=raw,data_file=d.raw,data_file_raw=on",
    "backing_fmt=raw", "encryption=on", "encrypt.format=luks",
    "encrypt.format=luks,encrypt.key-secret=nosuch",
    "nocow=on", "extent_size_hint=1M", "foo=bar", "size=2M",
]

BYTE_IDENTICAL_EXCEPT = {"preallocation=full", "preallocation=falloc"}


def make(d):
    run(REF, ["create", "-q", "-f", "raw", "base.raw", "3M"], d)


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("size", ["5M", "1000"])
def test_create_qcow2(pair, opts, size):
    pair.setup(make)
    args = ["create", "-f", "qcow2"] + (["-o", opts] if opts else []) + \
        ["t.qcow2", size]
    r = pair.same(*args)
    if r.rc != 0:
        return
    chk = run(REF, ["check", "t.qcow2"], pair.qimg_dir)
    assert chk.rc == 0, chk
    ri = run(REF, ["info", "--output=json", "t.qcow2"], pair.ref_dir)
    qi = run(REF, ["info", "--output=json", "t.qcow2"], pair.qimg_dir)
    strip = lambda s: [l for l in s.splitlines() if "actual-size" not in l]
    assert strip(qi.out) == strip(ri.out)
    if opts not in BYTE_IDENTICAL_EXCEPT:
        assert pair.path_qimg("t.qcow2").read_bytes() == \
            pair.path_ref("t.qcow2").read_bytes()


@pytest.mark.parametrize("args", [
    ["-f", "qcow2", "-o", "help"],
    ["-f", "qcow2", "-o", "?", "t.qcow2"],
    ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "t.qcow2"],
    ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "t.qcow2", "8M"],
    ["-f", "qcow2", "-b", "base.raw", "t.qcow2"],
    ["-f", "qcow2", "-b", "nonexist.raw", "-F", "raw", "t.qcow2"],
    ["-f", "qcow2", "-u", "-b", "nonexist.raw", "-F", "raw", "t.qcow2", "1M"],
    ["-f", "qcow2", "-u", "-b", "nonexist.raw", "-F", "raw", "t.qcow2"],
    ["-f", "qcow2", "-b", "t.qcow2", "t.qcow2"],
    ["-f", "qcow2", "-b", "", "t.qcow2", "1M"],
    ["-f", "qcow2", "-F", "raw", "t.qcow2", "1M"],
])
def test_create_qcow2_backing(pair, args):
    pair.setup(make)
    pair.same("create", *args)


def test_create_on_character_device(pair):
    """create onto /dev/null (written, never read back, cannot flush)
    fails as 7.2's does: when the new image is opened."""
    same_each(pair, "create", [
        ["-f", "qcow2", "/dev/null", "1M"],
        ["-f", "qcow2", "-o", "preallocation=metadata", "/dev/null", "1M"],
        ["-f", "qcow2", "-o", "cluster_size=4k,extended_l2=on", "/dev/null",
         "1M"],
        ["-f", "raw", "/dev/null", "1M"]], scratch=())
