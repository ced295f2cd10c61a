"""qemu-img amend differential tests: every option and error path on qcow2
images made by the reference; the amended images are cross-checked (the
reference's check must be clean, content and info equal to what the
reference's own amend produced)."""
import subprocess

import pytest

from conftest import QEMU_IO, REF, run

CASES = [
    # (create options, qemu-io command or None, amend arguments)
    ([], None, ["-o", "compat=0.10"]),
    ([], "write -P 1 0 64k", ["-o", "compat=0.10"]),
    ([], "write -z 0 64k", ["-o", "compat=0.10"]),
    (["-o", "lazy_refcounts=on"], "write -P 1 0 64k", ["-o", "compat=0.10"]),
    (["-o", "refcount_bits=8"], None, ["-o", "compat=0.10"]),
    (["-o", "extended_l2=on"], None, ["-o", "compat=0.10"]),
    (["-o", "compression_type=zstd"], None, ["-o", "compat=0.10"]),
    (["-o", "data_file=dd.raw"], None, ["-o", "compat=0.10"]),
    (["-o", "compat=0.10"], "write -P 1 3M 1M", ["-o", "compat=1.1"]),
    (["-o", "compat=0.10"], None, ["-o", "compat=1.1,lazy_refcounts=on"]),
    (["-o", "compat=0.10"], None, ["-o", "lazy_refcounts=on"]),
    ([], None, ["-o", "compat=0.10,refcount_bits=8"]),
    ([], None, ["-o", "compat=0.9"]),
    ([], None, ["-o", "compat=0.10", "-o", "compat=1.1"]),
    ([], "write -P 3 0 1M", ["-o", "refcount_bits=64"]),
    ([], "write -P 3 0 1M", ["-o", "refcount_bits=1"]),
    ([], "write -P 3 0 1M", ["-o", "refcount_bits=2"]),
    ([], None, ["-o", "refcount_bits=3"]),
    ([], None, ["-o", "refcount_bits=xx"]),
    ([], None, ["-o", "lazy_refcounts=on"]),
    (["-o", "lazy_refcounts=on"], None, ["-o", "lazy_refcounts=off"]),
    ([], None, ["-o", "lazy_refcounts=maybe"]),
    ([], "write -P 1 3M 1M", ["-o", "size=8M"]),
    ([], "write -P 1 3M 1M", ["-o", "size=1M"]),
    ([], None, ["-o", "size=xx"]),
    ([], None, ["-o", "data_file=x.raw"]),
    ([], None, ["-o", "data_file_raw=on"]),
    (["-o", "data_file=dd.raw,data_file_raw=on"], None, ["-o", "data_file_raw=off"]),
    (["-o", "data_file=dd.raw"], None, ["-o", "data_file=other.raw"]),
    ([], None, ["-o", "backing_file=b.raw"]),
    ([], None, ["-o", "backing_fmt=raw"]),
    ([], None, ["-o", "cluster_size=4k"]),
    ([], None, ["-o", "extended_l2=on"]),
    ([], None, ["-o", "compression_type=zstd"]),
    ([], None, ["-o", "preallocation=full"]),
    ([], None, ["-o", "encrypt.format=luks"]),
    ([], None, ["-o", "foo=bar"]),
    ([], None, ["-o", "help"]),
    ([], None, ["-o", "?"]),
    ([], None, ["-f", "qcow2", "-o", "help"]),
    ([], None, ["-q", "-o", "size=1G,help"]),
    ([], None, ["-t", "none", "-o", "lazy_refcounts=on"]),
    ([], None, ["-t", "bad", "-o", "lazy_refcounts=on"]),
    ([], None, ["--force", "-o", "lazy_refcounts=on"]),
    ([], None, ["-p", "-o", "compat=0.10"]),
    ([], None, ["-q", "-o", "compat=0.10"]),
    ([], None, []),
]


def make(d, create, io):
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", *create, "t.qcow2",
                    "4M"], cwd=d, check=True)
    if io:
        subprocess.run([str(QEMU_IO), "-c", io, "t.qcow2"], cwd=d, check=True,
                       capture_output=True)


@pytest.mark.parametrize("create,io,args", CASES)
def test_amend(pair, create, io, args):
    pair.setup(lambda d: make(d, create, io))
    r = pair.same("amend", *args, "t.qcow2")
    qchk = run(REF, ["check", "t.qcow2"], pair.qimg_dir)
    rchk = run(REF, ["check", "t.qcow2"], pair.ref_dir)
    assert qchk.rc == rchk.rc, (rchk, qchk)
    if rchk.rc != 0:
        return   # e.g. a data file name that does not exist
    cmp = run(REF, ["compare", pair.path_ref("t.qcow2"), pair.path_qimg("t.qcow2")],
              pair.ref_dir)
    assert cmp.rc == 0, cmp
    ri = run(REF, ["info", "--output=json", "t.qcow2"], pair.ref_dir)
    qi = run(REF, ["info", "--output=json", "t.qcow2"], pair.qimg_dir)
    strip = lambda s: [l for l in s.splitlines() if "actual-size" not in l]
    assert strip(qi.out) == strip(ri.out)


@pytest.mark.parametrize("args", [
    ["-o", "size=1M", "nonexist"],
    ["-f", "qcow2", "-o", "help", "x.qcow2"],
    ["-f", "raw", "-o", "help"],
    ["-f", "foo", "-o", "help"],
    ["-o", "help"],
    ["-o", "size=1M", "a.img"],
    ["-f", "raw", "-o", "size=1M", "a.img"],
    ["-o", "size=1M", "a.img", "b.img"],
])
def test_amend_errors(pair, args):
    pair.sh("truncate -s 1M a.img")
    pair.same("amend", *args)
