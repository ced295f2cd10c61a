"""convert of several inputs into one target against qemu-img 7.2: raw and
qcow2 inputs of different sizes concatenated into a new or an existing
(-n) target, -O, -B/-F (refused with several inputs, before the backing
format rule), --target-image-opts, -l, --bitmaps, -c, -S 0, errors; the
images written are compared with the reference's."""
import shutil
import subprocess

import pytest

from conftest import REF, QEMU_IO, batches, needs_format

needs_qcow2 = needs_format("qcow2")


def sh(d, *args):
    subprocess.run([str(a) for a in args], cwd=d, check=True,
                   capture_output=True)


def populate(d):
    sh(d, REF, "create", "-f", "raw", "a.img", "1M")
    sh(d, QEMU_IO, "-f", "raw", "-c", "write -P 1 0 64k", "a.img")
    sh(d, REF, "create", "-f", "raw", "b.img", "512k")
    sh(d, QEMU_IO, "-f", "raw", "-c", "write -P 2 4k 64k", "b.img")
    sh(d, REF, "create", "-f", "qcow2", "c.qcow2", "3M")
    sh(d, QEMU_IO, "-f", "qcow2", "-c", "write -P 3 1M 64k", "c.qcow2")
    sh(d, REF, "create", "-f", "raw", "t.img", "4M")
    sh(d, REF, "create", "-f", "qcow2", "t.qcow2", "4M")
    sh(d, REF, "create", "-f", "raw", "small.img", "1M")


CASES = [
    ["a.img", "b.img", "out.img"],
    ["-O", "raw", "a.img", "b.img", "out.img"],
    ["-O", "qcow2", "a.img", "b.img", "c.qcow2", "out.img"],
    ["-O", "qcow2", "a.img", "c.qcow2", "out.img"],
    ["-O", "raw", "c.qcow2", "a.img", "c.qcow2", "out.img"],
    ["-n", "a.img", "b.img", "t.img"],
    ["-n", "-O", "qcow2", "a.img", "b.img", "t.qcow2"],
    ["-n", "a.img", "b.img", "c.qcow2", "small.img"],
    ["-n", "-O", "raw", "a.img", "b.img", "t.img"],
    ["-O", "qcow2", "-B", "a.img", "a.img", "b.img", "out.img"],
    ["-O", "qcow2", "-B", "a.img", "-F", "raw", "a.img", "b.img", "out.img"],
    ["-O", "qcow2", "-B", "b.img", "-o", "backing_fmt=raw", "a.img", "b.img",
     "out.img"],
    ["-O", "qcow2", "-o", "backing_file=b.img", "a.img", "b.img", "out.img"],
    ["-O", "qcow2", "-B", "a.img", "--target-is-zero", "a.img", "b.img",
     "out.img"],
    ["-O", "qcow2", "-B", "a.img", "-c", "a.img", "b.img", "out.img"],
    ["-n", "-B", "a.img", "a.img", "b.img", "t.qcow2"],
    ["-O", "raw", "-B", "b.img", "a.img", "b.img", "out.img"],
    ["--target-image-opts", "a.img", "b.img", "driver=raw,file.filename=t.img"],
    ["-n", "--target-image-opts", "a.img", "b.img",
     "driver=raw,file.filename=t.img"],
    ["-n", "--target-image-opts", "-O", "raw", "a.img", "b.img",
     "driver=raw,file.filename=t.img"],
    ["-n", "--target-image-opts", "a.img", "b.img",
     "driver=raw,file.filename=small.img"],
    ["-O", "qcow2", "-c", "a.img", "b.img", "out.img"],
    ["-l", "s1", "a.img", "b.img", "out.img"],
    ["-l", "s1", "a.img", "nonexist", "out.img"],
    ["-l", "snapshot.name=s1", "a.img", "b.img", "out.img"],
    ["-s", "s1", "a.img", "b.img", "out.img"],
    ["-O", "raw", "a.img", "nonexist.img", "out.img"],
    ["-O", "raw", "a.img", "a.img", "a.img", "out.img"],
    ["-O", "raw", "-f", "raw", "a.img", "c.qcow2", "out.img"],
    ["-O", "raw", "a.img", "b.img"],
    ["a.img", "b.img", "-O", "raw", "out.img"],
    ["-O", "qcow2", "-o", "size=1M", "a.img", "b.img", "out.img"],
    ["-S", "0", "-O", "raw", "a.img", "b.img", "out.img"],
    ["-O", "raw", "--image-opts", "driver=raw,file.filename=a.img",
     "driver=raw,file.filename=b.img", "out.img"],
    ["--salvage", "-O", "raw", "a.img", "b.img", "out.img"],
    ["-m", "2", "-W", "-O", "raw", "a.img", "b.img", "out.img"],
    ["--bitmaps", "-O", "qcow2", "c.qcow2", "c.qcow2", "out.img"],
    ["-C", "-O", "raw", "a.img", "b.img", "out.img"],
    ["--target-is-zero", "-n", "a.img", "b.img", "t.img"],
    ["--target-is-zero", "a.img", "b.img", "out.img"],
    # option conflicts, in qemu-img's order
    ["-C", "--salvage", "-O", "raw", "a.img", "b.img", "out.img"],
    ["--salvage", "-C", "-c", "-O", "qcow2", "a.img", "out.img"],
    ["--skip-broken-bitmaps", "-C", "--salvage", "a.img", "out.img"],
    ["-C", "--salvage", "--target-image-opts", "a.img", "out.img"],
]

TARGETS = {"out.img": None, "t.img": "raw", "t.qcow2": "qcow2",
           "small.img": "raw"}


def compare_targets(pair):
    """Whatever either tool wrote reads the same (reference compare)."""
    for name, fmt in TARGETS.items():
        r, q = pair.path_ref(name), pair.path_qimg(name)
        assert r.exists() == q.exists(), name
        if r.exists():
            args = [str(REF), "compare"] + (["-f", fmt, "-F", fmt] if fmt
                                            else []) + [str(r), str(q)]
            res = subprocess.run(args, capture_output=True, text=True)
            assert res.returncode == 0, f"{name}: {res.stdout}{res.stderr}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The inputs, made once: each case gets fresh copies."""
    d = tmp_path_factory.mktemp("inputs")
    populate(d)
    return d


def copy_inputs(src):
    def copy(d):
        for f in src.iterdir():
            shutil.copy(f, d / f.name)
    return copy


@needs_qcow2
@pytest.mark.parametrize("batch", batches(CASES, 20))
def test_convert_several_inputs(pair, inputs, batch):
    bad = []
    for args in batch:
        pair.setup(copy_inputs(inputs))
        r, q = pair.both("convert", *args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        else:
            try:
                compare_targets(pair)
            except AssertionError as e:
                bad.append(f"args={args}: {e}")
        for d in pair.dirs():
            for f in d.iterdir():
                f.unlink()
    assert not bad, "\n\n".join(bad)


@needs_qcow2
def test_snapshot_larger_than_image(pair):
    """convert -l copies as much as the image's size when opened, even
    when the snapshot is larger (QEMU takes the sizes before loading it)."""
    def make(d):
        sh(d, REF, "create", "-f", "qcow2", "-o", "cluster_size=512",
           "s.qcow2", "64M")
        sh(d, REF, "snapshot", "-c", "foo", "s.qcow2")
        with open(d / "s.qcow2", "r+b") as f:
            f.seek(24)
            f.write((512).to_bytes(8, "big"))     # virtual size
            f.seek(36)
            f.write((1).to_bytes(4, "big"))       # L1 size
    pair.setup(make)
    pair.same("convert", "-l", "foo", "s.qcow2", "out.img")
    compare_targets(pair)


@needs_qcow2
def test_convert_n_into_compat010(pair):
    """-n into a compat=0.10 qcow2 (no zero flag): without a backing file
    the zero areas are discarded, as QEMU's v2 zero writes do (iotest
    122), so an empty target stays unallocated and old data is freed."""
    def make(d):
        sh(d, REF, "create", "-f", "qcow2", "o.qcow2", "4M")
        sh(d, REF, "create", "-f", "raw", "s.img", "4M")
        sh(d, QEMU_IO, "-f", "raw", "-c", "write -P 1 100k 200k", "s.img")
        for t in ("t1", "t2"):
            sh(d, REF, "create", "-f", "qcow2", "-o", "compat=0.10",
               t + ".qcow2", "4M")
        sh(d, QEMU_IO, "-f", "qcow2", "-c", "write -P 2 0 4M", "t2.qcow2")
    pair.setup(make)
    pair.same("convert", "-O", "qcow2", "-n", "o.qcow2", "t1.qcow2")
    pair.same("convert", "-O", "qcow2", "-n", "s.img", "t2.qcow2")
    for t in ("t1.qcow2", "t2.qcow2"):
        maps = [subprocess.run([str(REF), "map", "--output=json", t], cwd=d,
                               capture_output=True, text=True).stdout
                for d in pair.dirs()]
        checks = [subprocess.run([str(REF), "check", t], cwd=d,
                                 capture_output=True, text=True).stdout
                  for d in pair.dirs()]
        assert maps[0] == maps[1] and checks[0] == checks[1], (maps, checks)
