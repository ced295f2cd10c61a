"""streamOptimized vmdk written strictly forward to a pipe or FIFO
(issue 19): `convert -O vmdk -o subformat=streamOptimized SRC /dev/stdout |
...`, where qemu-img 7.2 fails ("Could not resize file").  What comes out
of the pipe is checked by the reference (info, check, compare against the
source, info against its own streamOptimized convert of the same source),
by libvmdk (vmdkinfo, and the content read back with pyvmdk when the
binding is installed) and by qimg reading it back from a pipe."""
import json
import os
from pathlib import Path
import shutil
import struct
import subprocess

import pytest

from conftest import QIMG

REF = "/usr/bin/qemu-img"
QEMU_IO = "/usr/bin/qemu-io"
MiB = 1 << 20
STREAM = ["-O", "vmdk", "-o", "subformat=streamOptimized"]


def make_source(path, size, writes):
    """A qcow2 source of size bytes with qemu-io writes ("-P 5 0 1M")."""
    subprocess.run([REF, "create", "-q", "-f", "qcow2", str(path), str(size)],
                   check=True)
    for w in writes:
        subprocess.run([QEMU_IO, "-c", "write " + w, str(path)], check=True,
                       capture_output=True)


def to_pipe(args, out, cwd, fifo=False, stdin=None):
    """Run qimg convert ARGS TARGET where TARGET is /dev/stdout piped into
    `cat > out`, or a FIFO read by `cat FIFO > out`; (rc, stderr)."""
    with open(out, "wb") as f:
        if fifo:
            # the FIFO has the file's name: the extent line names it
            path = Path(cwd) / "fifo" / Path(out).name
            path.parent.mkdir(exist_ok=True)
            os.mkfifo(path)
            cat = subprocess.Popen(["cat", str(path)], stdout=f)
            p = subprocess.run([str(QIMG), "convert"] + args + [str(path)],
                               cwd=cwd, capture_output=True, text=True,
                               stdin=stdin)
            cat.wait()
            path.unlink()
        else:
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
            p = subprocess.run([str(QIMG), "convert"] + args + ["/dev/stdout"],
                               cwd=cwd, stdout=cat.stdin,
                               stderr=subprocess.PIPE, text=True, stdin=stdin)
            cat.stdin.close()
            cat.wait()
    return p.returncode, p.stderr


def ref(*args, cwd=None):
    return subprocess.run([REF] + [str(a) for a in args], cwd=cwd,
                          capture_output=True, text=True)


def info_json(path, cwd):
    """The reference's info, without what differs between two files of the
    same content (name, size on disk, random CID)."""
    r = ref("info", "--output=json", path.name, cwd=cwd)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for k in ("filename", "actual-size"):
        d.pop(k, None)
    data = d["format-specific"]["data"]
    data.pop("cid")
    for e in data["extents"]:
        e.pop("filename")
    return d


def has_eos(path):
    """Whether the file ends in footer marker, footer and end-of-stream."""
    b = Path(path).read_bytes()
    if len(b) < 1536:
        return False
    tail = b[-1536:]
    return (tail[12:16] == b"\x03\0\0\0" and tail[512:516] == b"KDMV" and
            tail[1024:] == bytes(512))


def walk_stream(path):
    """Check the forward layout marker by marker: header with the directory
    at the end, descriptor, grains in guest order, each grain table right
    after the last grain it maps (before any grain of a later table), the
    directory pointing at those tables, footer and end-of-stream last.
    Returns the number of grains."""
    b = Path(path).read_bytes()
    hdr = struct.unpack_from("<IIIQQQQIQQQ", b, 0)
    version, flags, capacity, grain = hdr[1:5]
    gd_offset, overhead = hdr[9], hdr[10]
    assert b[:4] == b"KDMV" and version == 3, hdr
    assert flags == 0x30001 and gd_offset == (1 << 64) - 1, hdr
    assert b[512:534] == b"# Disk DescriptorFile\n"
    per_table = grain * 512
    pos, tables, grains, gd_sector = overhead * 512, {}, {}, None
    while True:
        val, size, mtype = struct.unpack_from("<QII", b, pos)
        if size:
            assert not grains or val > max(grains), (pos, val)
            assert val // per_table not in tables, ("grain after its table",
                                                     pos, val)
            grains[val] = pos // 512
            pos = (pos + 12 + size + 511) // 512 * 512
        elif mtype == 1:
            t = max(grains) // per_table
            assert t not in tables, pos
            tables[t] = pos // 512 + 1
            entries = struct.unpack_from("<512I", b, pos + 512)
            mine = {lba: sec for lba, sec in grains.items()
                    if lba // per_table == t}
            want = [mine.get(t * per_table + i * grain, 0) for i in range(512)]
            assert list(entries) == want, (pos, t)
            pos += (1 + val) * 512
        elif mtype == 2:
            assert set(tables) == {g // per_table for g in grains}, pos
            n = (capacity // grain + 511) // 512
            gd = struct.unpack_from("<%dI" % n, b, pos + 512)
            assert {i: e for i, e in enumerate(gd) if e} == tables, pos
            gd_sector = pos // 512 + 1
            pos += (1 + val) * 512
        elif mtype == 3:
            footer = struct.unpack_from("<IIIQQQQIQQQ", b, pos + 512)
            assert footer[:9] == hdr[:9] and footer[10] == hdr[10], footer
            assert footer[9] == gd_sector, footer
            pos += 1024
        else:
            assert mtype == 0 and val == 0 and gd_sector, (pos, mtype)
            assert pos + 512 == len(b) and b[pos:] == bytes(512), pos
            return len(grains)


CASES = [
    # name, size, qemu-io writes
    ("unallocated", 10 * MiB, []),
    ("allzero", 4 * MiB, ["-P 0 0 4M", "-z 1M 1M"]),
    ("partial", 8 * MiB, ["-P 0x5a 64k 200k", "-P 3 3M 1M"]),
    # data at the very end, a size that is no multiple of the 64 KiB grain
    ("oddsize", 5 * MiB + 1536, ["-P 7 0 512", "-P 9 5242880 1536"]),
    # three grain tables (32 MiB each), the middle one unused
    ("tables", 72 * MiB, ["-P 1 0 3M", "-P 4 66M 1M",
                          "-P 6 %d 1024" % (72 * MiB - 1024)]),
]


def test_stream_vmdk_read_by_reference_and_libvmdk(tmp_path):
    """Each source streamed to /dev/stdout piped and to a FIFO: the
    reference's info, check and compare, its own streamOptimized convert's
    info, vmdkinfo, libvmdk's content and qimg's pipe reader agree."""
    vmdkinfo = shutil.which("vmdkinfo")
    try:
        import pyvmdk
    except ImportError:
        pyvmdk = None
    for name, size, writes in CASES:
        src = tmp_path / (name + ".qcow2")
        make_source(src, size, writes)
        ref_vmdk = tmp_path / (name + ".ref.vmdk")
        r = ref("convert", *STREAM, src, ref_vmdk)
        assert r.returncode == 0, r.stderr
        raw = tmp_path / (name + ".raw")
        assert ref("convert", "-O", "raw", src, raw).returncode == 0
        want = info_json(ref_vmdk, tmp_path)
        for fifo in (False, True):
            out = tmp_path / ("%s.%s.vmdk" % (name, "fifo" if fifo else "pipe"))
            rc, err = to_pipe(STREAM + [src.name], out, tmp_path, fifo=fifo)
            case = (name, fifo)
            assert rc == 0 and err == "", (case, err)
            assert has_eos(out), case
            walk_stream(out)
            assert info_json(out, tmp_path) == want, case
            r = ref("check", out.name, cwd=tmp_path)
            assert r.returncode == 0, (case, r.stdout, r.stderr)
            r = ref("compare", src.name, out.name, cwd=tmp_path)
            assert r.returncode == 0, (case, r.stdout, r.stderr)
            if vmdkinfo:
                r = subprocess.run([vmdkinfo, str(out)], capture_output=True,
                                   text=True)
                assert r.returncode == 0, (case, r.stdout, r.stderr)
                assert "Stream optimized" in r.stdout, (case, r.stdout)
                assert "(%d bytes)" % size in r.stdout, (case, r.stdout)
            if pyvmdk and fifo:
                # libvmdk opens the file the extent line names: the FIFO
                # had the name of the file (the reference compared the
                # content of the stdout case)
                h = pyvmdk.handle()
                h.open(str(out))
                h.open_extent_data_files()
                try:
                    assert h.read_buffer(size) == raw.read_bytes(), case
                finally:
                    h.close()
        # qimg reads the stream back from a pipe (grain markers in order)
        back = tmp_path / (name + ".back.raw")
        with open(out, "rb") as f:
            p = subprocess.run([str(QIMG), "convert", "-f", "vmdk", "-O", "raw",
                                "-", str(back)], stdin=f, capture_output=True,
                               text=True)
        assert p.returncode == 0, (name, p.stderr)
        r = ref("compare", "-f", "raw", "-F", "raw", raw, back)
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    if not vmdkinfo:
        pytest.skip("vmdkinfo (libvmdk-utils) is not installed")


def test_stream_vmdk_empty_as_7_2(tmp_path):
    """A disk of size 0: 7.2's convert creates a streamOptimized file that
    it cannot open ("Unsupported image type"); the stream is refused with
    that message before anything is written."""
    src = tmp_path / "e.qcow2"
    make_source(src, 0, [])
    r = ref("convert", *STREAM, src.name, "e.vmdk", cwd=tmp_path)
    assert r.returncode == 1
    out = tmp_path / "e.pipe.vmdk"
    rc, err = to_pipe(STREAM + [src.name], out, tmp_path)
    assert rc == 1
    assert err == r.stderr.replace("e.vmdk", "/dev/stdout"), (err, r.stderr)
    assert out.stat().st_size == 0


def test_stream_vmdk_large_sparse_bounded(tmp_path):
    """64 GiB virtual, data at both ends: peak RSS stays small (only the
    grain directory and one grain table are held) and the result checks."""
    src = tmp_path / "big.qcow2"
    size = 64 << 30
    make_source(src, size, ["-P 1 0 1M", "-P 2 %d 1M" % (size - MiB)])
    out = tmp_path / "big.vmdk"
    rss = tmp_path / "rss"
    with open(out, "wb") as f:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss),
                            str(QIMG), "convert"] + STREAM +
                           [str(src), "/dev/stdout"], stdout=cat.stdin,
                           stderr=subprocess.PIPE, text=True)
        cat.stdin.close()
        cat.wait()
    assert p.returncode == 0, p.stderr
    peak_kib = int(rss.read_text().split()[-1])
    assert peak_kib < 64 * 1024, peak_kib
    assert out.stat().st_size < 4 * MiB
    r = ref("check", out)
    assert r.returncode == 0, r.stdout + r.stderr
    r = ref("compare", src, out)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stream_vmdk_failure_and_progress(tmp_path):
    """A source read error midway: non-zero exit, and what went down the
    pipe has no footer or end-of-stream marker, so no reader takes it for
    a whole image.  --progress=json still reports on stderr.  Other vmdk
    subformats and a backing file are refused before any output."""
    src = tmp_path / "s.qcow2"
    make_source(src, 8 * MiB, ["-P 1 0 1M", "-P 2 6M 1M"])
    # the host sector of the second data run: read after the first run
    # has gone down the pipe
    m = json.loads(ref("map", "--output=json", src).stdout)
    sector = [e["offset"] for e in m if e["data"]][1] // 512
    bad = ('json:{"driver": "qcow2", "file": {"driver": "blkdebug", '
           '"inject-error": [{"event": "read_aio", "errno": 5, '
           '"sector": %d}], "image": {"driver": "file", "filename": "%s"}}}'
           % (sector, src))
    out = tmp_path / "bad.vmdk"
    rc, err = to_pipe(STREAM + [bad], out, tmp_path)
    assert rc == 1, err
    assert "Input/output error" in err, err
    assert out.stat().st_size > 0
    assert not has_eos(out)
    r = ref("info", out)
    assert r.returncode != 0 and "footer" in r.stderr.lower(), r.stderr
    # a raw source from a pipe that ends before its declared size
    part = tmp_path / "part.raw"
    part.write_bytes(b"\1" * (3 * MiB))
    out2 = tmp_path / "cut.vmdk"
    with open(part, "rb") as f:
        rc, err = to_pipe(["-f", "raw", "-O", "vmdk", "-o",
                           "subformat=streamOptimized,size=8M", "-"], out2,
                          tmp_path, stdin=f)
    assert rc == 1 and "before its size" in err, err
    assert out2.stat().st_size > 3 * MiB // 100 and not has_eos(out2)

    out3 = tmp_path / "prog.vmdk"
    rc, err = to_pipe(["--progress=json"] + STREAM + [str(src)], out3,
                      tmp_path, fifo=True)
    assert rc == 0, err
    lines = [json.loads(l) for l in err.splitlines()]
    assert lines[-1]["done"] == lines[-1]["total"] == 8 * MiB, err
    assert lines[-1]["percent"] == 100, err
    assert ref("compare", src, out3).returncode == 0

    # option errors as 7.2 reports them for a file target
    for o in ("subformat=streamOptimized,compat6=on,hwversion=4",
              "subformat=streamOptimized,adapter_type=foo"):
        r = ref("convert", "-O", "vmdk", "-o", o, src.name, "x.vmdk",
                cwd=tmp_path)
        rc, err = to_pipe(["-O", "vmdk", "-o", o, src.name],
                          tmp_path / "o.vmdk", tmp_path)
        assert (rc, err) == (r.returncode, r.stderr.replace(
            "x.vmdk", "/dev/stdout")), (o, err, r.stderr)
    for extra in (["-o", "subformat=monolithicSparse"],
                  ["-o", "subformat=streamOptimized,backing_file=%s,"
                         "backing_fmt=vmdk" % out3]):
        out4 = tmp_path / "refused.vmdk"
        rc, err = to_pipe(["-O", "vmdk"] + extra + [str(src)], out4, tmp_path)
        assert rc == 1, (extra, err)
        assert "pipe" in err, (extra, err)
        assert out4.stat().st_size == 0, extra


def test_stream_vmdk_hostile_from_pipe(tmp_path):
    """A stream read forward from a pipe with broken markers: a grain
    beyond the disk, grains out of order, an unknown marker: clear errors,
    never a hang or a wrong image.  A stream that ends before its footer
    is an error (a cut download is no disk)."""
    src = tmp_path / "s.qcow2"
    make_source(src, 8 * MiB, ["-P 1 0 128k", "-P 2 6M 64k"])
    good = tmp_path / "good.vmdk"
    rc, err = to_pipe(STREAM + [src.name], good, tmp_path)
    assert rc == 0, err
    b = bytearray(good.read_bytes())
    first = 65536
    size = struct.unpack_from("<I", b, first + 8)[0]
    second = (first + 12 + size + 511) // 512 * 512

    def read_back(data):
        f = tmp_path / "h.vmdk"
        f.write_bytes(bytes(data))
        with open(f, "rb") as fin:
            return subprocess.run([str(QIMG), "convert", "-f", "vmdk", "-O",
                                   "raw", "-", str(tmp_path / "h.raw")],
                                  stdin=fin, capture_output=True, text=True)

    beyond = bytearray(b)
    struct.pack_into("<Q", beyond, first, 8 * MiB // 512)
    p = read_back(beyond)
    assert p.returncode == 1 and "Invalid grain marker" in p.stderr, p.stderr
    back = bytearray(b)
    struct.pack_into("<Q", back, second, 0)
    p = read_back(back)
    assert p.returncode == 1 and "out of order" in p.stderr, p.stderr
    unknown = bytearray(b)
    struct.pack_into("<QII", unknown, second, 0, 0, 9)
    p = read_back(unknown)
    assert p.returncode == 1 and "Invalid stream marker" in p.stderr, p.stderr
    for cut in (second, len(b) - 1536):
        p = read_back(b[:cut])
        assert p.returncode == 1, (cut, p.stderr)
        assert "The stream ended at offset" in p.stderr, p.stderr
    # only the end-of-stream sector missing: everything is there
    p = read_back(b[:-512])
    assert p.returncode == 0, p.stderr
    r = ref("compare", "-F", "raw", src, tmp_path / "h.raw")
    assert r.returncode == 0, r.stdout + r.stderr
