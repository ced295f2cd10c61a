"""vpc (VHD): create with every option (images byte-identical to the
reference's up to timestamp and UUID, readable by libvhdi), the sizes the
creator-app rules give, guest I/O cross-checked with qemu-io both ways,
the commands 7.2 supports and refuses, convert both ways, and the Azure
recipe of the README."""
import json
import struct

import pytest

from conftest import QIMG, REF, batches, needs_format, run, same_each
from vhdvdi import (assert_same_image, bat_entry, create_cases_differ,
                    fix_footer, have_vhdiinfo, patch, qemu_io, ref_create,
                    vhdiinfo)

pytestmark = needs_format("vpc")

QIMG_IO = QIMG.parent / "tests" / "qimg-io"

CREATE_CASES = [
    (opts, "3M")
    for opts in ["subformat=dynamic", "subformat=fixed", "force_size=off",
                 "force_size=yes", "subformat=foo", "force_size=foo",
                 "size=4M", "preallocation=full", "preallocation=falloc,"
                 "subformat=fixed", "preallocation=metadata", "nocow=on",
                 "foo=bar"]
] + [(o, s) for o in ["", "force_size"]
     for s in ["0", "1", "1000", "127M", "2040G", "2041G", "3000G", "127G"]
] + [("subformat=fixed", "1000"), ("subformat=fixed,force_size", "2040G"),
     ("subformat=fixed", "2041G")
# geometry thresholds of the CHS algorithm (17, 31, 63, 255 sectors per
# track; 65535 x 16 x 63 sectors; the maximum geometry) and odd sizes
] + [("", s) for s in ["8912896", "35651584", "66060288", "65536k", "140M",
                       "200M", "247M", "250M", "4G", "33030144512",
                       "33030144513", "31G", "32G", "128G", "136899993600",
                       "136899993601", "1000G", "123456789"]]


@pytest.mark.parametrize("batch", batches(CREATE_CASES, 16))
def test_vpc_create(pair, batch):
    """Output, status and the image written, case by case."""
    bad = create_cases_differ(pair, "vpc", "t.vhd", batch)
    assert not bad, "\n\n".join(bad)


def test_vpc_create_help(pair):
    same_each(pair, "create", [["-f", "vpc", "-o", "help"],
                               ["-f", "vpc", "-o", "help", "t.vhd"],
                               ["-f", "vpc", "-o", "?", "t.vhd", "1M"]])


@pytest.mark.skipif(not have_vhdiinfo(), reason="libvhdi-utils missing")
@pytest.mark.parametrize("opts", ["", "subformat=fixed", "force_size",
                                  "subformat=fixed,force_size"])
def test_vpc_vhdiinfo(pair, opts):
    """libvhdi reads what qimg writes as it reads the reference's image:
    before and after data is written."""
    for d, tool in ((pair.qimg_dir, QIMG), (pair.ref_dir, REF)):
        args = ["create", "-q", "-f", "vpc"] + (["-o", opts] if opts else [])
        assert run(tool, args + ["t.vhd", "50M"], d).rc == 0
    for step in range(2):
        (rq, q), (rr, r) = (vhdiinfo(pair.path_qimg("t.vhd")),
                            vhdiinfo(pair.path_ref("t.vhd")))
        strip = lambda s: [l for l in s.splitlines() if "Identifier" not in l]
        assert rq == 0 and strip(q) == strip(r), q
        if step == 0:
            qemu_io(pair.ref_dir, "vpc", "t.vhd", "write -P 7 1M 3M")
            p = run(QIMG_IO, ["-f", "vpc", "t.vhd", "write -P 7 1M 3M"],
                    pair.qimg_dir)
            assert p.rc == 0, p


WRITES = ["write -P 1 0 512", "write -P 2 3M 100k", "write -P 3 1M 1",
          "write -P 4 1400k 100k", "write -z 5M 1M", "write -P 5 2044k 8k",
          "write -P 6 7M 1M"]


@pytest.mark.parametrize("opts", ["", "subformat=fixed", "force_size"])
def test_vpc_writes_cross(pair, opts):
    """The same writes through qemu-io (reference) and qimg-io give the
    same file; then each tool's image read by the other, and qemu-io
    writing into qimg's image."""
    pair.setup(lambda d: ref_create(d, "vpc", "t.vhd", "9M", opts))
    qemu_io(pair.ref_dir, "vpc", "t.vhd", *WRITES)
    p = run(QIMG_IO, ["-f", "vpc", "t.vhd", *WRITES], pair.qimg_dir)
    assert p.rc == 0, p
    assert_same_image(pair, "t.vhd")
    r = run(REF, ["compare", "-f", "vpc", "-F", "vpc", pair.path_ref("t.vhd"),
                  pair.path_qimg("t.vhd")], pair.ref_dir)
    assert r.rc == 0, r
    pair.same("map", "--output=json", "-f", "vpc", "t.vhd")
    pair.same("info", "-f", "vpc", "t.vhd")
    # qimg-created, qemu-io written: the reference reads what it wrote.
    run(QIMG, ["create", "-q", "-f", "vpc"] + (["-o", opts] if opts else []) +
        ["u.vhd", "9M"], pair.qimg_dir)
    qemu_io(pair.qimg_dir, "vpc", "u.vhd", *WRITES)
    out = qemu_io(pair.qimg_dir, "vpc", "u.vhd", "read -P 6 7M 1M",
                  "read -P 5 2044k 8k", "read -P 0 5M 1M")
    assert "Pattern verification failed" not in out
    r = run(REF, ["compare", "-f", "vpc", "-F", "vpc", "t.vhd", "u.vhd"],
            pair.qimg_dir)
    assert r.rc == 0, r


def test_vpc_bitmaps_set_before_write(pair):
    """A block whose sector bitmap is partly clear (as other tools write
    them) gets a full bitmap when written into, as QEMU sets it."""
    def setup(d):
        ref_create(d, "vpc", "t.vhd", "8M")
        qemu_io(d, "vpc", "t.vhd", "write -P 1 0 4M")

    def clear_bitmaps(b):
        for i in range(2):
            off = bat_entry(b, i) * 512
            b[off:off + 512] = bytes(512)
    pair.setup(setup)
    for d in pair.dirs():
        patch(d / "t.vhd", clear_bitmaps)
    qemu_io(pair.ref_dir, "vpc", "t.vhd", "write -P 2 2M 4k")
    p = run(QIMG_IO, ["-f", "vpc", "t.vhd", "write -P 2 2M 4k"], pair.qimg_dir)
    assert p.rc == 0, p
    assert_same_image(pair, "t.vhd")


def make_data(d):
    ref_create(d, "vpc", "t.vhd", "10M")
    qemu_io(d, "vpc", "t.vhd", "write -P 1 0 3M", "write -P 2 9M 1k")
    ref_create(d, "vpc", "f.vhd", "10M", "subformat=fixed")
    qemu_io(d, "vpc", "f.vhd", "write -P 1 0 3M", "write -P 2 9M 1k")
    ref_create(d, "raw", "base.raw", "10M")


COMMANDS = [
    ["info", "t.vhd"], ["info", "--output=json", "t.vhd"],
    ["info", "-f", "vpc", "f.vhd"], ["info", "f.vhd"],
    ["info", "--output=json", "-f", "vpc", "f.vhd"],
    ["info", "--image-opts", "driver=vpc,file.filename=t.vhd"],
    ["info", "--image-opts", "driver=vpc,force_size_calc=chs,"
     "file.filename=t.vhd"],
    ["info", "--image-opts", "driver=vpc,force_size_calc=bogus,"
     "file.filename=t.vhd"],
    ["info", "--image-opts", "driver=vpc,bogus=1,file.filename=t.vhd"],
    ["map", "t.vhd"], ["map", "--output=json", "t.vhd"],
    ["map", "-f", "vpc", "f.vhd"], ["map", "--output=json", "-f", "vpc",
                                    "f.vhd"],
    ["check", "t.vhd"], ["check", "-r", "all", "t.vhd"],
    ["check", "--output=json", "-f", "vpc", "f.vhd"],
    ["snapshot", "-l", "t.vhd"], ["snapshot", "-c", "s", "t.vhd"],
    ["snapshot", "-a", "s", "t.vhd"], ["snapshot", "-d", "s", "t.vhd"],
    ["amend", "-o", "size=1G", "t.vhd"], ["amend", "-o", "help", "-f", "vpc",
                                          "t.vhd"],
    ["resize", "t.vhd", "20M"], ["resize", "-f", "vpc", "f.vhd", "+1M"],
    ["resize", "--shrink", "t.vhd", "1M"],
    ["measure", "-O", "vpc", "--size", "1G"], ["measure", "-O", "vpc",
                                               "t.vhd"],
    ["compare", "t.vhd", "base.raw"], ["compare", "-f", "vpc", "-F", "vpc",
                                       "t.vhd", "f.vhd"],
    ["compare", "-s", "t.vhd", "base.raw"],
    ["convert", "-c", "-O", "vpc", "t.vhd", "out.img"],
    ["convert", "-O", "vpc", "-B", "base.raw", "t.vhd", "out.img"],
    ["create", "-f", "vpc", "-b", "base.raw", "-F", "raw", "out.img"],
    ["commit", "t.vhd"], ["rebase", "-u", "-b", "base.raw", "t.vhd"],
    ["dd", "if=t.vhd", "of=out.img", "-O", "raw", "bs=64k", "count=16"],
]


@pytest.mark.parametrize("batch", batches(COMMANDS, 12))
def test_vpc_commands(pair, batch):
    pair.setup(make_data)
    bad = []
    for args in batch:
        r, q = pair.both(*args)
        # the automatic node name in bitmap messages is random
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            (d / "out.img").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)


def test_vpc_bitmap_refused(pair):
    pair.setup(make_data)
    r, q = pair.both("bitmap", "--add", "t.vhd", "b0")
    strip = lambda s: s.replace(s.split("to ")[-1].split(":")[0], "NODE")
    assert (q.rc, strip(q.err)) == (r.rc, strip(r.err)) and r.rc == 1, (r, q)


CONVERTS = [
    ["-O", "vpc", "src.raw", "out.img"],
    ["-O", "vpc", "-o", "subformat=fixed", "src.raw", "out.img"],
    ["-O", "vpc", "-o", "force_size", "src.raw", "out.img"],
    ["-O", "vpc", "-o", "subformat=fixed,force_size", "src.raw", "out.img"],
    ["-O", "vpc", "-S", "0", "src.raw", "out.img"],
    ["-O", "vpc", "-S", "64k", "src.raw", "out.img"],
    ["-O", "vpc", "-o", "subformat=fixed", "-S", "0", "src.raw", "out.img"],
    ["-O", "vpc", "src.qcow2", "out.img"],
    ["-O", "vpc", "-o", "subformat=bogus", "src.raw", "out.img"],
    ["-f", "vpc", "-O", "raw", "t.vhd", "out.img"],
    ["-f", "vpc", "-O", "qcow2", "t.vhd", "out.img"],
    ["-O", "raw", "-f", "vpc", "f.vhd", "out.img"],
    ["-O", "vpc", "t.vhd", "out.img"],
]


@pytest.mark.parametrize("batch", batches(CONVERTS, 7))
def test_vpc_convert(pair, batch):
    """convert into and out of vpc: same output, same target bytes (up to
    timestamp and UUID), content the reference calls identical."""
    def setup(d):
        make_data(d)
        ref_create(d, "raw", "src.raw", "7M")
        qemu_io(d, "raw", "src.raw", "write -P 3 0 1M", "write -P 4 3M 1536k",
                "write -P 0 5M 64k", "write -P 9 6M 4k")
        run(REF, ["convert", "-O", "qcow2", "src.raw", "src.qcow2"], d)
    pair.setup(setup)
    bad = []
    for args in batch:
        r, q = pair.both("convert", *args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        elif r.rc == 0:
            src, fmt = args[-2], args[args.index("-O") + 1]
            try:
                assert_same_image(pair, "out.img")
            except AssertionError as e:
                bad.append(f"{args}: {e}")
            sf = ["-f", args[args.index("-f") + 1]] if "-f" in args else []
            c = run(REF, ["compare", *sf, "-F", fmt, src, "out.img"],
                    pair.qimg_dir)
            if c.rc != 0:
                bad.append(f"{args}: {c!r}")
        for d in pair.dirs():
            (d / "out.img").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)


def test_vpc_convert_n(pair):
    """convert -n into an existing vpc image of each subformat."""
    def setup(d):
        make_data(d)
        ref_create(d, "vpc", "dst.vhd", "10M")
        ref_create(d, "vpc", "dstf.vhd", "10M", "subformat=fixed")
    pair.setup(setup)
    pair.same("convert", "-n", "-O", "vpc", "base.raw", "dst.vhd")
    pair.same("convert", "-n", "-f", "vpc", "-O", "vpc", "t.vhd", "dst.vhd")
    pair.same("convert", "-n", "-f", "vpc", "-O", "vpc", "t.vhd", "dstf.vhd")
    assert_same_image(pair, "dst.vhd")
    assert_same_image(pair, "dstf.vhd")


CREATOR_APPS = [b"vpc ", b"qemu", b"qem2", b"win ", b"d2v ", b"tap\0",
                b"CTXS", b"tap ", b"xxxx"]


def patch_footers(path, func):
    """func(footer bytearray) on each footer copy, checksum fixed after;
    only the two copies are read and written (fixed images are large)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        head = f.read(8)
        for off in ([0] if head == b"conectix" else []) + [size - 512]:
            f.seek(off)
            b = bytearray(f.read(512))
            func(b)
            fix_footer(b)
            f.seek(off)
            f.write(b)


@pytest.mark.parametrize("fixed", [False, True])
def test_vpc_size_rules(pair, fixed):
    """The virtual size each creator app gets (CHS geometry or the
    footer's current_size), with the geometry at its maximum, and with
    the force_size_calc open option."""
    opts = "subformat=fixed" if fixed else None
    cases = []

    def setup(d):
        for i, app in enumerate(CREATOR_APPS):
            for maxgeo in (False, True):
                if maxgeo and app not in (b"qemu", b"win "):
                    continue
                name = f"a{i}{int(maxgeo)}.vhd"
                ref_create(d, "vpc", name, "2M", opts)

                def edit(b, app=app, maxgeo=maxgeo):
                    b[28:32] = app
                    b[48:56] = struct.pack(">Q", 100 << 20)
                    if maxgeo:
                        b[56:60] = struct.pack(">HBB", 65535, 16, 255)
                patch_footers(d / name, edit)
                if d == pair.ref_dir:
                    cases.append(["-f", "vpc", name])
                    if app in (b"qemu", b"win "):
                        cases.extend(["--output=json", "--image-opts",
                                      f"driver=vpc,force_size_calc={c},"
                                      f"file.filename={name}"]
                                     for c in ("chs", "current_size"))
    pair.setup(setup)
    same_each(pair, "info", cases, ())


def test_vpc_azure(pair, tmp_path):
    """The README's Azure recipe: a MiB-aligned raw image becomes a fixed
    VHD of the same virtual size, a whole number of MiB, footer only."""
    def setup(d):
        ref_create(d, "raw", "disk.raw", "30M")
        qemu_io(d, "raw", "disk.raw", "write -P 5 1M 1M")
    pair.setup(setup)
    pair.same("convert", "-f", "raw", "-O", "vpc", "-o",
              "subformat=fixed,force_size", "disk.raw", "disk.vhd")
    assert_same_image(pair, "disk.vhd")
    info = json.loads(run(REF, ["info", "--output=json", "-f", "vpc",
                                "disk.vhd"], pair.qimg_dir).out)
    assert info["virtual-size"] == 30 << 20
    data = pair.path_qimg("disk.vhd").read_bytes()
    assert len(data) == (30 << 20) + 512
    assert data[-512:-504] == b"conectix" and data[:8] != b"conectix"
    assert struct.unpack(">I", data[-512 + 60:-512 + 64])[0] == 2   # fixed
    if have_vhdiinfo():
        rc, out = vhdiinfo(pair.path_qimg("disk.vhd"))
        assert rc == 0 and "(31457280 bytes)" in out and "Fixed" in out, out
