"""parallels against qemu-img 7.2: create (every option and error),
images made by the same writes byte-identical (qemu-io / qimg-io, the
runtime preallocation options too), both signatures, the in-use flag,
check and repair, the Format Extension of read-only opens, convert both
ways, the commands parallels has no support for, and hostile headers."""
import hashlib
import re
import struct

import pytest

from conftest import QIMG, REF, batches, needs_format, run, same_each
import fmtcommon
from fmtcommon import (create_cases, LE32, LE64, each_case, info_no_disk_size,
                       mirror_writes,
                       patch, qimg_io, ref_compare, ref_io, same_files)

pytestmark = needs_format("parallels")


def make(pair, name, *args):
    fmtcommon.make(pair, "parallels", name, *args)


CREATE_CASES = [
    ["x.p", "4M"],
    ["x.p", "0"],
    ["x.p", "1000"],
    ["-o", "cluster_size=4k", "x.p", "64M"],
    ["-o", "cluster_size=1000", "x.p", "1M"],     # rounded up to 1024
    ["-o", "cluster_size=512", "x.p", "1M"],
    ["-o", "cluster_size=0", "x.p", "1M"],
    ["-o", "cluster_size=3G", "x.p", "1M"],
    ["-o", "cluster_size=512", "x.p", "4T"],
    ["x.p", "8E"],
    ["-o", "preallocation=full", "x.p", "1M"],
    ["-o", "preallocation=metadata", "x.p", "1M"],
    ["-o", "backing_file=b", "x.p", "1M"],
    ["-b", "b", "-F", "raw", "x.p", "1M"],
    ["-o", "help"],
    ["-o", "help", "x.p"],
]


@pytest.mark.parametrize("batch", batches(CREATE_CASES, 17))
def test_create(pair, batch):
    create_cases(pair, "parallels", "x.p", batch)


WRITES = [
    "write -P 0x11 0 100k",
    "write -P 0x22 1M 4k",
    "write -P 0x33 70000 3000",
    "write -z 2M 1M",
    "write -P 0x44 3M 900k",
    "write -P 0x55 100k 512",
]


@pytest.mark.parametrize("geom", [[], ["-o", "cluster_size=4k"],
                                  ["-o", "cluster_size=1536"]],
                         ids=["default", "4k", "1536"])
def test_writes_byte_identical(pair, geom):
    make(pair, "w.p", *geom, "4M")
    mirror_writes(pair, "parallels", "w.p", WRITES)
    pair.same("check", "w.p")
    pair.same("map", "--output=json", "w.p")


def json_name(path, **opts):
    o = ",".join(f'"{k}": "{v}"' for k, v in opts.items())
    return ('json:{"driver": "parallels", ' + o +
            f', "file": {{"driver": "file", "filename": "{path}"}}}}')


def test_prealloc_options(pair):
    """prealloc-mode and prealloc-size change how the file grows while it
    is open, not the image: the same bytes at close."""
    for mode, size in (("truncate", "1M"), ("falloc", "0"),
                       ("falloc", "1G")):
        make(pair, f"{mode}{size}.p", "-o", "cluster_size=64k", "8M")
        for d in pair.dirs():
            name = json_name(d / f"{mode}{size}.p",
                             **{"prealloc-mode": mode, "prealloc-size": size})
            cmds = ["write -P 1 0 70k", "write -P 2 5M 1k"]
            if d == pair.ref_dir:
                ref_io(name, "parallels", *cmds)
            else:
                qimg_io(name, "parallels", *cmds)
        same_files(pair, f"{mode}{size}.p")
    same_each(pair, "info", [
        ["--image-opts", "driver=parallels,file.filename=truncate1M.p,"
         "prealloc-mode=bogus"],
        ["--image-opts", "driver=parallels,file.filename=truncate1M.p,"
         "prealloc-size=abc"],
        ["--image-opts", "driver=parallels,file.filename=truncate1M.p,"
         "foo=1"],
    ], scratch=())


def v1_image(d, name, data_off_zero=False):
    """A "WithoutFreeSpace" image: offsets in sectors (made from a v2 one
    the reference wrote)."""
    img = d / name
    run(REF, ["create", "-q", "-f", "parallels", "-o", "cluster_size=4k",
              img, "1M"], d)
    ref_io(img, "parallels", "write -P 7 0 8k", "write -P 8 512k 4k")
    b = bytearray(img.read_bytes())
    b[0:16] = b"WithoutFreeSpace"
    n = struct.unpack_from("<I", b, 32)[0]
    for i in range(n):
        e = struct.unpack_from("<I", b, 64 + 4 * i)[0]
        struct.pack_into("<I", b, 64 + 4 * i, e * 8)
    if data_off_zero:
        struct.pack_into("<I", b, 48, 0)
    img.write_bytes(bytes(b))


def test_v1_signature(pair):
    for d in pair.dirs():
        v1_image(d, "v1.p")
        v1_image(d, "v1z.p", data_off_zero=True)
    for n in ("v1.p", "v1z.p"):
        pair.same("info", n)
        pair.same("map", n)
        pair.same("check", n)
        pair.same("convert", "-O", "raw", n, "o.raw")
        same_files(pair, "o.raw")
    mirror_writes(pair, "parallels", "v1.p", ["write -P 9 300k 10k"])
    mirror_writes(pair, "parallels", "v1z.p", ["write -P 9 300k 10k"])


def set_inuse(d, name):
    patch(d / name, [(44, LE32(0x746F6E59))])


def test_inuse_flag(pair):
    """An image not closed cleanly opens read-only; check reports it and
    repairs it; writable opens are refused."""
    make(pair, "u.p", "-o", "cluster_size=4k", "1M")
    for d in pair.dirs():
        ref_io(d / "u.p", "parallels", "write -P 1 0 8k")
        set_inuse(d, "u.p")
    info_no_disk_size(pair, "u.p")
    pair.same("convert", "-O", "raw", "u.p", "o.raw")
    pair.same("check", "u.p")
    pair.same("check", "-r", "leaks", "u.p")
    pair.same("rebase", "-u", "-b", "", "u.p")
    pair.same("commit", "u.p")
    same_files(pair, "u.p")
    pair.same("check", "-r", "all", "u.p")
    same_files(pair, "u.p")
    pair.same("check", "u.p")


def test_check_and_repair(pair):
    make(pair, "c.p", "-o", "cluster_size=4k", "1M")
    for d in pair.dirs():
        ref_io(d / "c.p", "parallels", "write -P 1 0 12k")
        # entry 5: past the end; the file: 3 clusters leaked at its end
        patch(d / "c.p", [(64 + 4 * 5, LE32(1000))])
        with open(d / "c.p", "ab") as f:
            f.write(b"\1" * 10000)
    pair.same("check", "c.p")
    pair.same("check", "--output=json", "c.p")
    for d in pair.dirs():
        (d / "c2.p").write_bytes((d / "c.p").read_bytes())
    pair.same("check", "-r", "leaks", "c.p")
    same_files(pair, "c.p")
    pair.same("check", "-r", "all", "c2.p")
    same_files(pair, "c2.p")
    pair.same("check", "--output=json", "c2.p")
    # an empty image whose BAT outgrows a cluster (7.2's check cuts it)
    make(pair, "e.p", "-o", "cluster_size=4k", "64M")
    pair.same("check", "e.p")
    pair.same("check", "-r", "all", "e.p")
    same_files(pair, "e.p")


def test_convert(pair):
    for d in pair.dirs():
        with open(d / "s.raw", "wb") as f:
            f.truncate(5 << 20)
            f.write(b"\x03" * 1500000)
            f.seek(4 << 20)
            f.write(b"\x04" * 5000)
    for geom in ([], ["-o", "cluster_size=64k"]):
        pair.same("convert", "-O", "parallels", *geom, "s.raw", "c.p")
        same_files(pair, "c.p")
    pair.same("convert", "-O", "raw", "c.p", "c.raw")
    same_files(pair, "c.raw")
    pair.same("convert", "-O", "qcow2", "c.p", "c.qcow2")
    same_files(pair, "c.qcow2")
    pair.same("convert", "-c", "-O", "parallels", "s.raw", "z.p")
    pair.same("convert", "-n", "-O", "parallels", "s.raw", "c.p")
    same_files(pair, "c.p")
    pair.same("compare", "c.p", "s.raw")
    ref_compare(pair.path_ref("c.p"), pair.path_qimg("c.raw"), "parallels",
                "raw")


def test_refusals(pair):
    make(pair, "f.p", "1M")
    same_each(pair, "resize", [["f.p", "2M"]], scratch=())
    same_each(pair, "amend", [["-o", "size=2M", "f.p"]], scratch=())
    same_each(pair, "rebase", [["-u", "-b", "foo", "-F", "raw", "f.p"]],
              scratch=())
    same_each(pair, "commit", [["f.p"]], scratch=())
    same_each(pair, "snapshot", [["-l", "f.p"], ["-c", "s", "f.p"],
                                 ["-a", "s", "f.p"], ["-d", "s", "f.p"]],
              scratch=())
    same_each(pair, "measure", [["-O", "parallels", "--size", "1M"],
                                ["-O", "qcow2", "f.p"]], scratch=())
    r, q = pair.both("bitmap", "--add", "f.p", "b")
    assert (q.rc, q.out) == (r.rc, r.out)
    assert re.sub(r"#block\d+", "N", q.err) == re.sub(r"#block\d+", "N", r.err)
    same_files(pair, "f.p")


# ---- Format Extension ------------------------------------------------------

CS = 4096            # the test images' cluster size
DISK = 1 << 20       # and virtual size: 2048 sectors


def ext_cluster(features, magic=0xAB234CEF23DCEA87, bad_sum=False):
    """An extension cluster: header, MD5 of the rest, the features."""
    body = b""
    for fmagic, flags, data in features:
        body += struct.pack("<QQII", fmagic, flags, len(data), 0) + data
        body += b"\0" * (-len(body) % 8)
    body = body.ljust(CS - 24, b"\0")
    digest = hashlib.md5(body).digest()
    if bad_sum:
        digest = bytes(16)
    return struct.pack("<Q", magic) + digest + body


def bitmap(sectors=DISK // 512, gran=8, l1=(0,), uid=b"\x11" * 16):
    return (struct.pack("<Q", sectors) + uid + struct.pack("<II", gran, len(l1))
            + b"".join(struct.pack("<Q", e) for e in l1))


BM = 0x20385FAE252CB34A
EXTENSIONS = {
    "ext-ok": [(BM, 0, bitmap()), (0, 0, b"")],
    "ext-two": [(BM, 0, bitmap()), (BM, 0, bitmap(uid=b"\x22" * 16)),
                (0, 0, b"")],
    "ext-ones": [(BM, 0, bitmap(l1=(1,))), (0, 0, b"")],
    "ext-data": [(BM, 0, bitmap(l1=(8,))), (0, 0, b"")],
    "ext-dup": [(BM, 0, bitmap()), (BM, 0, bitmap()), (0, 0, b"")],
    "ext-magic": "magic",
    "ext-sum": "sum",
    "ext-flags": [(BM, 1, bitmap()), (0, 0, b"")],
    "ext-unknown": [(0x1234, 0, b"abc"), (0, 0, b"")],
    "ext-no-end": [(BM, 0, bitmap())] * 1,
    "ext-small": [(BM, 0, b"\0" * 10), (0, 0, b"")],
    "ext-size": [(BM, 0, bitmap(sectors=5)), (0, 0, b"")],
    "ext-l1-big": [(BM, 0, bitmap()[:28] + struct.pack("<I", 1000)),
                   (0, 0, b"")],
    "ext-table": [(BM, 0, bitmap(l1=(0, 0))), (0, 0, b"")],
    "ext-off-past-eof": "far",
}


def ext_setup(d, case):
    img = d / f"{case}.img"
    run(REF, ["create", "-q", "-f", "parallels", "-o", f"cluster_size={CS}",
              img, str(DISK)], d)
    ref_io(img, "parallels", "write -P 5 0 8k")
    spec = EXTENSIONS[case]
    if spec == "magic":
        c = ext_cluster([(0, 0, b"")], magic=1)
    elif spec == "sum":
        c = ext_cluster([(0, 0, b"")], bad_sum=True)
    elif spec == "far":
        c = b""
    else:
        c = ext_cluster(spec)
    size = img.stat().st_size
    ext_off = (1 << 40) if spec == "far" else size
    with open(img, "ab") as f:
        f.write(c)
    patch(img, [(56, LE64(ext_off // 512))])


def test_format_extension(pair):
    """Read-only opens check the extension as 7.2 does; writable ones
    ignore it with a warning."""
    each_case(pair, sorted(EXTENSIONS), ext_setup, [
        ["info", "IMG"],
        ["convert", "-O", "raw", "IMG", "out.raw"],
        ["check", "-r", "leaks", "IMG"],
    ])


HOSTILE = {
    "magic": [(0, b"WithoutFreeSpacX")],
    "version": [(16, LE32(3))],
    "tracks-0": [(28, LE32(0))],
    "tracks-huge": [(28, LE32(0x7fffffff // 513 + 1))],
    "tracks-big": [(28, LE32(1 << 20))],          # 512 MiB clusters
    "bat-huge": [(32, LE32(0x7fffffff // 4 + 1))],
    "bat-big": [(32, LE32(0x20000000))],           # a 2 GiB BAT
    "bat-small": [(32, LE32(1))],
    "sectors-huge": [(36, LE64((1 << 54) - 1))],
    "sectors-v1-high": [(0, b"WithoutFreeSpace"), (36, LE64(1 << 40 | 8))],
    "data-off-0": [(48, LE32(0))],
    "data-off-huge": [(48, LE32(0xffffffff))],
    "bat-entry-past-eof": [(64, LE32(0xffffff))],
    "bat-entry-max": [(64, LE32(0xffffffff))],
    "bat-entry-header": [(64, LE32(0))],
    "inuse-other": [(44, LE32(0x312e3276))],
    "short": None,
}


def hostile_setup(d, case):
    base = d / "base.p"
    if not base.exists():
        run(REF, ["create", "-q", "-f", "parallels", "-o", "cluster_size=4k",
                  base, "1M"], d)
        ref_io(base, "parallels", "write -P 1 0 8k")
    img = d / f"{case}.img"
    if HOSTILE[case] is None:
        img.write_bytes(b"WithouFreSpacExt\2\0\0\0" + b"\0" * 20)
        return
    img.write_bytes(base.read_bytes())
    patch(img, HOSTILE[case])


@pytest.mark.parametrize("batch", batches(sorted(HOSTILE), 9))
def test_hostile(pair, batch):
    each_case(pair, batch, hostile_setup, [
        ["info", "IMG"],
        ["convert", "-f", "parallels", "-O", "raw", "IMG", "out.raw"],
        ["check", "-f", "parallels", "IMG"],
    ])


@pytest.mark.parametrize("gran", [0, 3])
def test_extension_granularity(workdir, gran):
    """A bitmap granularity that is not a power of two makes QEMU 7.2
    abort on an assertion; qimg refuses the image with a message."""
    EXTENSIONS["g"] = [(BM, 0, bitmap(gran=gran)), (0, 0, b"")]
    ext_setup(workdir, "g")
    q = run(QIMG, ["info", "g.img"], workdir)
    assert q.rc == 1 and "Invalid granularity" in q.err, q


def test_backing_fill(pair):
    """With a backing file (given at open: parallels names none itself) a
    new cluster gets the backing file's data around the write, as QEMU
    copies it; without one it stays zero."""
    pair.sh(f"{REF} create -q -f raw base.raw 4M")
    for d in pair.dirs():
        ref_io(d / "base.raw", "raw", "write -P 0x77 0 4M")
    make(pair, "b.p", "-o", "cluster_size=64k", "4M")
    make(pair, "n.p", "-o", "cluster_size=64k", "4M")
    cmds = ["write -P 1 4k 4k", "write -P 2 100k 70k", "write -P 3 1M 64k"]
    for d in pair.dirs():
        name = ('json:{"driver": "parallels", "file": {"driver": "file", '
                f'"filename": "{d / "b.p"}"}}, "backing": {{"driver": "raw", '
                f'"file": {{"driver": "file", "filename": "{d / "base.raw"}"'
                '}}}')
        io = ref_io if d == pair.ref_dir else qimg_io
        io(name, "parallels", *cmds)
        io(d / "n.p", "parallels", *cmds)
    same_files(pair, "b.p", "n.p")
    pair.same("compare", "-f", "parallels", "-F", "parallels", "b.p", "n.p")
