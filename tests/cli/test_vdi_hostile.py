"""vdi images damaged field by field: signature, version, offsets,
sector and block sizes, disk size against the map, UUIDs, block counts,
block map entries out of range, shared or past the end of the file,
truncated files.  Where 7.2 gives an error, reads the image or reports
corruption in check we do the same; where it allocates gigabytes or
would give two blocks the same data we stay bounded and refuse with our
own message (docs/LIMITS.md)."""
import pytest

import subprocess

from conftest import QEMU_IO, QIMG, batches, needs_format, run
from test_hostile_memory import peak_rss
from vhdvdi import le32, le64, normalised, qemu_io, ref_create, rss_budget

pytestmark = needs_format("vdi")

QIMG_IO = QIMG.parent / "tests" / "qimg-io"


def f32(off, v):
    return lambda b: le32(b, off, v)


def cut(n):
    def f(b):
        del b[n:]
    return f


def both(*fs):
    def f(b):
        for g in fs:
            g(b)
    return f


# on an 8 MiB dynamic image with blocks 0 and 1 allocated (entries 0, 2)
CASES = {
    "signature": f32(0x40, 0x12345678),
    "version-1.2": f32(0x44, 0x00010002),
    "version-0": f32(0x44, 0),
    "bmap-offset-unaligned": f32(0x154, 0x201),
    "data-offset-unaligned": f32(0x158, 0x401),
    "sector-size": f32(0x168, 4096),
    "block-size-0": f32(0x178, 0),
    "block-size-2M": f32(0x178, 2 << 20),
    "block-size-odd": f32(0x178, (1 << 20) - 1),
    "map-too-small": f32(0x180, 3),
    "link-uuid": lambda b: b.__setitem__(0x1a8, 1),
    "parent-uuid": lambda b: b.__setitem__(0x1b8, 1),
    "too-many-blocks": f32(0x180, 0x1fffff81),
    "max-size": both(lambda b: le64(b, 0x170, 0x1fffff8000000),
                     f32(0x180, 0x1fffff80)),
    "size-too-large": lambda b: le64(b, 0x170, 0x1fffff8010000),
    "size-odd": lambda b: le64(b, 0x170, (8 << 20) - 1000),
    "size-0": lambda b: le64(b, 0x170, 0),
    "map-into-data": f32(0x180, 0x800),
    "bmap-offset-eof": f32(0x154, 1 << 30),
    "data-offset-eof": f32(0x158, 0xfffffe00),
    "image-type-9": f32(0x4c, 9),
    "image-type-static": f32(0x4c, 2),
    "entry-too-large": f32(512, 0x7ffffff0),
    "entry-max": f32(512, 0xfffffffd),
    "entry-shared": both(f32(512, 0), f32(516, 0)),
    "entries-swapped": both(f32(512, 1), f32(516, 0)),
    "entry-discarded": f32(512, 0xfffffffe),
    "allocated-count-high": f32(0x184, 5),
    "allocated-count-low": f32(0x184, 0),
    "allocated-count-huge": f32(0x184, 0xfffffff0),
    "truncated-data": cut(1024 + (1 << 20)),
    "truncated-map": cut(516),
    "tiny": cut(100),
    "empty": cut(0),
}

COMMANDS = [["info"], ["check"], ["map", "--output=json"],
            ["convert", "-O", "raw"]]
# map lists half a billion one-block extents (zero entries past EOF, all
# naming block 0) and QEMU's check allocates 4 GiB: test_vdi_huge_map_bounded
SLOW = {"max-size", "too-many-blocks"}


def make_all(d, names):
    ref_create(d, "vdi", "base.vdi", "8M")
    qemu_io(d, "vdi", "base.vdi", "write -P 1 0 1M", "write -P 2 2M 4k")
    base = (d / "base.vdi").read_bytes()
    for name in names:
        b = bytearray(base)
        CASES[name](b)
        (d / f"{name}.vdi").write_bytes(bytes(b))


@pytest.mark.parametrize("batch", batches(sorted(CASES), 17))
def test_vdi_hostile_same(pair, batch):
    pair.setup_once(lambda d: make_all(d, batch))
    bad = []
    for name in batch:
        for cmd in COMMANDS if name not in SLOW else COMMANDS[:1]:
            args = [*cmd[:1], "-f", "vdi", *cmd[1:], f"{name}.vdi"]
            if cmd[0] == "convert":
                args.append("out.raw")
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
            elif cmd[0] == "convert" and r.rc == 0:
                if pair.path_ref("out.raw").read_bytes() != \
                        pair.path_qimg("out.raw").read_bytes():
                    bad.append(f"{name}: converted content differs")
            for d in pair.dirs():
                (d / "out.raw").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)


WRITABLE = ["size-odd", "entry-shared", "entries-swapped", "entry-discarded",
            "allocated-count-high", "image-type-static", "map-into-data",
            "truncated-data", "entry-too-large"]


def test_vdi_hostile_write(pair):
    """Writes into damaged images that 7.2 writes safely: same bytes."""
    pair.setup(lambda d: make_all(d, WRITABLE))
    bad = []
    for name in WRITABLE:
        img = f"{name}.vdi"
        cmds = ["write -P 9 0 4k", "write -P 8 5M 4k"]
        ref = subprocess.run([str(QEMU_IO), "-f", "vdi", "-c", cmds[0], "-c",
                              cmds[1], img], cwd=pair.ref_dir,
                             capture_output=True, text=True)
        ref_failed = ref.returncode != 0 or "failed" in ref.stdout
        p = run(QIMG_IO, ["-f", "vdi", img, *cmds], pair.qimg_dir)
        if (p.rc != 0) != ref_failed:
            bad.append(f"{name}: {p!r}\nREFERENCE {ref.stdout}")
        if ref_failed:     # qimg-io stops at the first failed command
            continue
        if normalised(pair.path_ref(img).read_bytes()) != \
                normalised(pair.path_qimg(img).read_bytes()):
            bad.append(f"{name}: images differ")
    assert not bad, "\n\n".join(bad)


@pytest.mark.parametrize("name", ["allocated-count-low",
                                  "allocated-count-huge"])
def test_vdi_no_shared_allocation(pair, name):
    """A blocks_allocated count below the blocks in use would make QEMU
    put a new block over an existing one (data of two guest blocks then
    shared); we refuse the allocating write and leave the image alone."""
    pair.setup(lambda d: make_all(d, [name]))
    img = pair.path_qimg(f"{name}.vdi")
    before = img.read_bytes()
    p = run(QIMG_IO, ["-f", "vdi", img.name, "write -P 9 5M 4k"],
            pair.qimg_dir)
    assert p.rc != 0 and "Cannot allocate a block" in p.err, p
    assert img.read_bytes() == before
    # writes into allocated blocks still work
    p = run(QIMG_IO, ["-f", "vdi", img.name, "write -P 9 0 4k"], pair.qimg_dir)
    assert p.rc == 0, p


def test_vdi_huge_map_bounded(pair, tmp_path):
    """A 1 KiB file claiming half a billion blocks (QEMU allocates its
    2 GiB map to open it and 4 GiB to check it): info as 7.2, check with
    exact counts, in little memory and time, its lines capped."""
    make_all(tmp_path, ["max-size"])
    # (map would print half a billion one-block extents, as QEMU does)
    budget = rss_budget(tmp_path, 96 << 20)   # check's bitmap: 64 MiB
    for cmd in (["info"], ["check"]):
        rc, rss, secs = peak_rss([QIMG, *cmd, "max-size.vdi"], tmp_path)
        assert rc in (0, 2) and rss < budget and secs < 60, \
            (cmd, rc, rss >> 20, secs)
    r = run(QIMG, ["check", "max-size.vdi"], tmp_path)
    lines = r.err.splitlines()
    assert len(lines) == 10002 and lines[10000] == \
        "ERROR: further errors not shown", lines[-3:]
    errors = int(r.out.split()[0])
    assert errors > 536000000 and r.out.strip().startswith(f"{errors} errors were "
                                                   "found on the image."), r


def test_vdi_big_map_in_file_bounded(tmp_path):
    """A block map larger than our bound, lying inside a (sparse) file:
    refused before it is read, with our limit named."""
    make_all(tmp_path, [])
    img = tmp_path / "base.vdi"
    b = bytearray(img.read_bytes())
    le64(b, 0x170, 200 << 40)
    le32(b, 0x180, 200 << 20)
    le32(b, 0x158, 512 + (800 << 20))
    img.write_bytes(bytes(b))
    with open(img, "r+b") as f:
        f.truncate(512 + (800 << 20) + 4096)
    rc, rss, _ = peak_rss([QIMG, "info", "base.vdi"], tmp_path)
    assert rc == 1 and rss < rss_budget(tmp_path, 32 << 20)
    r = run(QIMG, ["info", "base.vdi"], tmp_path)
    assert "is more than the 512 MiB supported" in r.err, r
