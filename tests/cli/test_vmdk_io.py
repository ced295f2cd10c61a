"""vmdk I/O: guest writes (qimg-io against qemu-io), convert both ways for
every subformat and option, commit and rebase onto vmdk backing files,
dd and compare, streamOptimized output (what the reference, libvmdk and
VMware's stream layout make of it), cross-checked with the reference."""
import struct
import subprocess

import pytest

from conftest import BUILD, QEMU_IO, REF, needs_format, run
from vmdkutil import same_files

pytestmark = needs_format("vmdk")

QIMG_IO = BUILD / "tests" / "qimg-io"
SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]


def qemu_io(d, f, *cmds, fmt="vmdk"):
    args = [str(QEMU_IO), "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run(args + [f], cwd=d, capture_output=True, text=True)


def qimg_io(d, f, *cmds, fmt="vmdk"):
    return subprocess.run([str(QIMG_IO), "-f", fmt, f, *cmds], cwd=d,
                          capture_output=True, text=True)


def ref_same_content(pair, a, b, fa="vmdk", fb="vmdk"):
    """The reference compares a (reference dir) with b (qimg dir)."""
    r = run(REF, ["compare", "-f", fa, "-F", fb, pair.path_ref(a),
                  pair.path_qimg(b)], pair.ref_dir)
    return None if r.rc == 0 else f"{a} vs {b}: {r!r}"


# ---- guest writes ---------------------------------------------------------------

WRITES = [
    "write -P 1 0 512", "write -P 2 70000 100000", "write -P 3 64k 64k",
    "write -z 1M 128k", "write -P 4 4990k 130k", "write -P 5 1000 10",
    "write -z 3000 70000", "write -P 6 2M 1M", "write -z 2M 64k",
]
STREAM_WRITES = ["write -P 1 0 64k", "write -P 2 128k 192k", "write -z 1M 64k",
                 "write -P 3 4992k 128k"]

WRITE_CASES = [
    ("subformat=monolithicSparse", WRITES),
    ("zeroed_grain=on", WRITES),
    ("subformat=twoGbMaxExtentSparse", WRITES),
    ("subformat=twoGbMaxExtentSparse,zeroed_grain=on", WRITES),
    ("subformat=monolithicFlat", WRITES),
    ("subformat=twoGbMaxExtentFlat", WRITES),
    ("subformat=streamOptimized", STREAM_WRITES),
    ("subformat=streamOptimized,zeroed_grain=on", STREAM_WRITES),
]


def test_writes(pair):
    """The same writes through each tool leave the same files; the stream
    images hold the same content."""
    bad = []
    for opts, cmds in WRITE_CASES:
        stream = "stream" in opts
        for d in pair.dirs():
            run(REF, ["create", "-q", "-f", "vmdk", "-o", opts, "t.vmdk",
                      "5M"], d)
        # one open for all the writes (each tool gives a new CID once)
        r = qemu_io(pair.ref_dir, "t.vmdk", *cmds)
        q = qimg_io(pair.qimg_dir, "t.vmdk", *cmds)
        if r.returncode or "failed" in r.stdout or q.returncode:
            bad.append(f"{opts}: qemu-io {r.stdout}{r.stderr} "
                       f"qimg-io {q.returncode} {q.stderr}")
        if stream:
            why = ref_same_content(pair, "t.vmdk", "t.vmdk")
            bad += [f"{opts}: {why}"] if why else []
            chk = run(REF, ["check", "t.vmdk"], pair.qimg_dir)
            if chk.rc:
                bad.append(f"{opts}: check {chk!r}")
        else:
            bad += [f"{opts}: {b}" for b in same_files(*pair.dirs())]
        for d in pair.dirs():
            for p in d.iterdir():
                p.unlink()
    assert not bad, "\n\n".join(bad)


def test_writes_past_tail_and_odd_sizes(pair):
    """Images whose size is not a whole number of grains."""
    bad = []
    for opts in ["subformat=monolithicSparse", "subformat=monolithicFlat",
                 "zeroed_grain=on"]:
        for d in pair.dirs():
            run(REF, ["create", "-q", "-f", "vmdk", "-o", opts, "t.vmdk",
                      "100000"], d)
        cmds = ["write -P 9 99840 512", "write -z 65536 34304",
                "write -P 8 0 100352"]
        qemu_io(pair.ref_dir, "t.vmdk", *cmds)
        qimg_io(pair.qimg_dir, "t.vmdk", *cmds)
        bad += [f"{opts}: {b}" for b in same_files(*pair.dirs())]
        for d in pair.dirs():
            for p in d.iterdir():
                p.unlink()
    assert not bad, "\n\n".join(bad)


# ---- convert ------------------------------------------------------------------

def _source(d):
    run(REF, ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k",
              "src.qcow2", "6M"], d)
    qemu_io(d, "src.qcow2", "write -P 1 0 100k", "write -P 2 1M 1M",
            "write -P 3 3000k 5k", "write -z 4M 512k", "write -P 4 5M 1M",
            "write -P 0 2M 64k", fmt="qcow2")
    run(REF, ["create", "-q", "-f", "vmdk", "base.vmdk", "6M"], d)
    qemu_io(d, "base.vmdk", "write -P 9 0 3M")


CONVERT_CASES = (
    [(f"subformat={s}", []) for s in SUBFORMATS] +
    [("subformat=monolithicSparse", f) for f in
     (["-S", "0"], ["-S", "64k"], ["-c"], ["-W", "-m", "4"])] +
    [("subformat=streamOptimized", f) for f in (["-c"], ["-S", "0"])] +
    [("subformat=twoGbMaxExtentSparse,zeroed_grain=on", []),
     ("subformat=monolithicFlat", ["-S", "0"]),
     ("zeroed_grain=on,adapter_type=lsilogic,hwversion=14", [])])


def test_convert_to_vmdk(pair):
    pair.setup(_source)
    bad = []
    for opts, flags in CONVERT_CASES:
        args = ["convert", *flags, "-O", "vmdk", "-o", opts, "src.qcow2",
                "o.vmdk"]
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        elif r.rc == 0:
            # compressed grains differ (libdeflate), the rest does not;
            # -W writes in any order, so grains land anywhere
            if "stream" in opts or "-W" in flags:
                why = ref_same_content(pair, "src.qcow2", "o.vmdk",
                                       fa="qcow2")
                bad += [f"{args}: {why}"] if why else []
                chk = run(REF, ["check", "o.vmdk"], pair.qimg_dir)
                if chk.rc:
                    bad.append(f"{args}: reference check {chk!r}")
            else:
                bad += [f"{args}: {b}" for b in
                        same_files(*pair.dirs(),
                                   [p.name for p in pair.ref_dir.glob("o*")])]
        for d in pair.dirs():
            for p in d.glob("o*"):
                p.unlink()
    assert not bad, "\n\n".join(bad)


def test_convert_backing_and_existing(pair):
    pair.setup(_source)
    bad = []
    cases = [
        ["convert", "-O", "vmdk", "-B", "base.vmdk", "-F", "vmdk", "src.qcow2",
         "o.vmdk"],
        ["convert", "-O", "vmdk", "-B", "base.vmdk", "src.qcow2", "o.vmdk"],
        ["convert", "-O", "vmdk", "-o", "subformat=monolithicFlat", "-B",
         "base.vmdk", "-F", "vmdk", "src.qcow2", "o.vmdk"],
    ]
    for args in cases:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        bad += [f"{args}: {b}" for b in same_files(*pair.dirs())]
        for d in pair.dirs():
            for p in d.glob("o*"):
                p.unlink()
    # -n into images the tools created; twice into a stream: refused
    for sub in SUBFORMATS:
        for d in pair.dirs():
            run(REF, ["create", "-q", "-f", "vmdk", "-o", f"subformat={sub}",
                      "o.vmdk", "6M"], d)
        for n in range(2 if sub == "streamOptimized" else 1):
            args = ["convert", "-n", "-O", "vmdk", "src.qcow2", "o.vmdk"]
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"{sub} {args}\nREF {r!r}\nQIMG {q!r}")
        why = ref_same_content(pair, "src.qcow2", "o.vmdk", fa="qcow2")
        bad += [f"{sub} -n: {why}"] if why else []
        for d in pair.dirs():
            for p in d.glob("o*"):
                p.unlink()
    assert not bad, "\n\n".join(bad)


def _vmdk_sources(d):
    _source(d)
    for s in SUBFORMATS + ["zg"]:
        opts = "zeroed_grain=on" if s == "zg" else f"subformat={s}"
        run(REF, ["convert", "-O", "vmdk", "-o", opts, "src.qcow2",
                  f"{s}.vmdk"], d)
    qemu_io(d, "zg.vmdk", "write -z 0 64k", "write -z 1M 128k")
    run(REF, ["create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk",
              "over.vmdk"], d)
    qemu_io(d, "over.vmdk", "write -P 5 1M 64k", "write -P 6 2M 4k")


def test_convert_from_vmdk(pair):
    """Images the reference wrote, read by both; outputs byte-identical."""
    pair.setup_once(_vmdk_sources)
    cases = [(s, "qcow2", []) for s in SUBFORMATS + ["zg", "over"]] + [
        ("monolithicSparse", "raw", ["-S", "0"]),
        ("streamOptimized", "qcow2", ["-c"]), ("zg", "raw", []),
        ("over", "qcow2", ["-B", "base.vmdk", "-F", "vmdk"])]
    bad = []
    for s, out, extra in cases:
        args = ["convert", *extra, "-O", out, f"{s}.vmdk", f"out.{out}"]
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        elif "-c" not in extra:
            bad += [f"{args}: {b}" for b in
                    same_files(*pair.dirs(), [f"out.{out}"])]
        for d in pair.dirs():
            (d / f"out.{out}").unlink(missing_ok=True)
    for args in [["compare", "streamOptimized.vmdk", "src.qcow2"],
                 ["compare", "twoGbMaxExtentFlat.vmdk", "src.qcow2"],
                 ["compare", "-s", "over.vmdk", "base.vmdk"],
                 ["compare", "zg.vmdk", "monolithicSparse.vmdk"],
                 ["dd", "-O", "raw", "if=over.vmdk", "of=dd.raw", "bs=64k"],
                 ["dd", "-O", "raw", "if=streamOptimized.vmdk", "of=dd.raw",
                  "bs=100k", "skip=3"]]:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n\n".join(bad)


def test_dd_into_vmdk(pair):
    pair.setup(_source)
    bad = []
    for sub, bs in [("monolithicSparse", "4k"), ("streamOptimized", "64k"),
                    ("streamOptimized", "4k"), ("monolithicFlat", "1M")]:
        for d in pair.dirs():
            run(REF, ["create", "-q", "-f", "vmdk", "-o", f"subformat={sub}",
                      "o.vmdk", "6M"], d)
        args = ["dd", "-f", "qcow2", "-O", "vmdk", "if=src.qcow2", "of=o.vmdk",
                f"bs={bs}"]
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        elif r.rc == 0:
            why = ref_same_content(pair, "src.qcow2", "o.vmdk", fa="qcow2")
            bad += [f"{args}: {why}"] if why else []
        for d in pair.dirs():
            for p in d.glob("o*"):
                p.unlink()
    assert not bad, "\n\n".join(bad)


# ---- commit and rebase ---------------------------------------------------------

def _chain(d):
    run(REF, ["create", "-q", "-f", "vmdk", "b.vmdk", "4M"], d)
    run(REF, ["create", "-q", "-f", "vmdk", "c.vmdk", "4M"], d)
    qemu_io(d, "b.vmdk", "write -P 1 0 1M")
    qemu_io(d, "c.vmdk", "write -P 3 512k 1M")
    run(REF, ["create", "-q", "-f", "vmdk", "-b", "b.vmdk", "-F", "vmdk",
              "o.vmdk"], d)
    qemu_io(d, "o.vmdk", "write -P 2 64k 100k", "write -P 4 3M 4k")
    run(REF, ["create", "-q", "-f", "vmdk", "-b", "o.vmdk", "-F", "vmdk",
              "t.vmdk"], d)
    qemu_io(d, "t.vmdk", "write -P 5 2M 64k")


def test_commit_rebase(pair, tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    _chain(template)
    bad = []
    for args in [["commit", "o.vmdk"], ["commit", "-d", "o.vmdk"],
                 ["commit", "-b", "b.vmdk", "t.vmdk"], ["commit", "-d", "t.vmdk"],
                 ["rebase", "-b", "c.vmdk", "-F", "vmdk", "o.vmdk"],
                 ["rebase", "-b", "c.vmdk", "-F", "vmdk", "t.vmdk"],
                 ["rebase", "-b", "", "o.vmdk"]]:
        for d in pair.dirs():
            for p in template.iterdir():
                (d / p.name).write_bytes(p.read_bytes())
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        bad += [f"{args}: {b}" for b in same_files(*pair.dirs())]
        # what the chain reads afterwards, through each tool (the parent
        # CID check of a changed base makes reads fail, in both)
        for img in ("t.vmdk", "o.vmdk"):
            r, q = pair.both("convert", "-O", "raw", img, "out.raw")
            # reads failing in parallel each report (qemu-img's vmdk
            # serialises its reads, so it stops at the first): the
            # first words only
            first = lambda s: s.split(" at byte")[0]
            if (q.rc, first(q.err)) != (r.rc, first(r.err)):
                bad.append(f"{args} then convert {img}\nREF {r!r}\n"
                           f"QIMG {q!r}")
            elif r.rc == 0:
                bad += [f"{args} then {img}: {b}" for b in
                        same_files(*pair.dirs(), ["out.raw"])]
            for d in pair.dirs():
                (d / "out.raw").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)


# ---- streamOptimized ---------------------------------------------------------

def _stream_layout(path):
    """The header, the footer and the end-of-stream marker VMware's
    readers need: (header gd_offset, footer gd_offset, eos ok)."""
    data = path.read_bytes()
    assert data[:4] == b"KDMV" and len(data) % 512 == 0
    version, flags = struct.unpack_from("<II", data, 4)
    hdr_gd = struct.unpack_from("<Q", data, 56)[0]
    fm = data[-1536:-1024]
    footer = data[-1024:-512]
    eos = data[-512:]
    assert struct.unpack_from("<QII", fm) == (1, 0, 3), "footer marker"
    assert footer[:4] == b"KDMV", "footer magic"
    assert eos == b"\0" * 512, "end-of-stream marker"
    assert version == 3 and flags & 0x30000 == 0x30000
    return hdr_gd, struct.unpack_from("<Q", footer, 56)[0]


def _libvmdk_read(path, size):
    """What Debian's libvmdk (an independent reader) reads."""
    code = ("import pyvmdk, sys\nh = pyvmdk.handle()\nh.open(sys.argv[1])\n"
            "h.open_extent_data_files()\n"
            "sys.stdout.buffer.write(h.read_buffer_at_offset(int(sys.argv[2]),"
            " 0))\n")
    p = subprocess.run(["/usr/bin/python3", "-c", code, str(path), str(size)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_stream_output(pair):
    """convert -O vmdk -o subformat=streamOptimized: parallel compression
    into VMware's layout, readable by the reference and by libvmdk."""
    pair.setup(_source)
    for d in pair.dirs():
        run(REF, ["convert", "-O", "raw", "src.qcow2", "src.raw"], d)
    q = pair.qimg("convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                  "src.qcow2", "s.vmdk")
    assert q.rc == 0, q
    hdr_gd, foot_gd = _stream_layout(pair.path_qimg("s.vmdk"))
    assert hdr_gd == 0xffffffffffffffff and 0 < foot_gd < (1 << 40)
    assert _libvmdk_read(pair.path_qimg("s.vmdk"), 6 << 20) == \
        pair.path_qimg("src.raw").read_bytes()
    info = subprocess.run(["vmdkinfo", "s.vmdk"], cwd=pair.qimg_dir,
                          capture_output=True, text=True)
    assert info.returncode == 0 and "Stream optimized" in info.stdout, info
    for a in [["check", "s.vmdk"], ["compare", "src.qcow2", "s.vmdk"],
              ["map", "--output=json", "s.vmdk"]]:
        r = run(REF, a, pair.qimg_dir)
        assert r.rc == 0, (a, r)
    # the reference's own stream, and ours, read the same through both
    pair.ref("convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
             "src.qcow2", "s.vmdk")
    for a in [["info", "s.vmdk"], ["map", "--output=json", "s.vmdk"],
              ["check", "s.vmdk"]]:
        r, q = pair.both(*a)
        assert (q.rc, q.err) == (r.rc, r.err), (a, r, q)
    # an empty disk is a whole stream too; appending grains moves the end
    pair.path_qimg("z.raw").write_bytes(bytes(1 << 20))
    q = pair.qimg("convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                  "-f", "raw", "z.raw", "e.vmdk")
    assert q.rc == 0, q
    _stream_layout(pair.path_qimg("e.vmdk"))
    q = pair.qimg("create", "-q", "-f", "vmdk", "-o",
                  "subformat=streamOptimized", "a.vmdk", "4M")
    assert q.rc == 0
    for c in ["write -P 1 0 64k", "write -P 2 1M 64k", "write -P 3 2M 64k"]:
        assert qimg_io(pair.qimg_dir, "a.vmdk", c).returncode == 0
        _stream_layout(pair.path_qimg("a.vmdk"))
        r = run(REF, ["check", "a.vmdk"], pair.qimg_dir)
        assert r.rc == 0, r
    r = qemu_io(pair.qimg_dir, "a.vmdk", "read -P 1 0 64k", "read -P 2 1M 64k",
                "read -P 3 2M 64k", "read -P 0 64k 960k")
    assert "failed" not in r.stdout and r.returncode == 0, r.stdout + r.stderr
    data = _libvmdk_read(pair.path_qimg("a.vmdk"), 4 << 20)
    assert data[:65536] == b"\1" * 65536 and data[2 << 20:(2 << 20) + 65536] \
        == b"\3" * 65536
