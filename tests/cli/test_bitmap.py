"""qemu-img bitmap against the reference: every option and error path,
operations alone and chained, on images made by the reference.  After each
command the image files of both tools must be byte for byte identical (qimg
lays bitmaps out as QEMU does), and info/check must agree.

QEMU names its block nodes "#block" + a counter + two random digits: that
name is normalised before comparing.  The helpers here are shared with the
other test_bitmap_*.py files.
"""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD, QEMU_IO, REF, batches, run

QEMU_NBD = Path("/usr/bin/qemu-nbd")
QIMG_IO = BUILD / "tests" / "qimg-io"
NODE_NAME = re.compile(r"#block\d+")


# ---- helpers (imported by test_bitmap_*.py) --------------------------------

def norm(r):
    return (r.rc, r.out, NODE_NAME.sub("#blockN", r.err))


def compare(pair, *args, files=()):
    """Run args through both tools; outputs (node names normalised) and
    the named files must be identical.  Returns the mismatch text or ''."""
    r, q = pair.both(*args)
    bad = ""
    if norm(q) != norm(r):
        bad = f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}\n"
    for name in files:
        a, b = pair.path_ref(name), pair.path_qimg(name)
        if a.exists() != b.exists() or (a.exists() and
                                        a.read_bytes() != b.read_bytes()):
            bad += f"args={args}: {name} differs between the tools\n"
    return bad


def same(pair, *args, files=()):
    bad = compare(pair, *args, files=files)
    assert not bad, bad


def ref_sh(d, *cmds):
    """Run reference qemu-img commands (lists of args) in d."""
    for c in cmds:
        subprocess.run([str(REF), *c], cwd=d, check=True, capture_output=True)


def io(tool_is_ref, d, img, *cmds):
    """Guest I/O with qemu-io (reference) or qimg-io: cmds in qimg-io's
    syntax ("write -P 1 0 64k", "write -z ...", "discard ...", "writec")."""
    if tool_is_ref:
        args = [str(QEMU_IO), "-f", "qcow2"]
        for c in cmds:
            args += ["-c", c.replace("writec", "write -c")]
        args.append(str(img))
    else:
        args = [str(QIMG_IO), "-f", "qcow2", str(img), *cmds]
    r = subprocess.run(args, cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r


def io_both(pair, img, *cmds):
    io(True, pair.ref_dir, img, *cmds)
    io(False, pair.qimg_dir, img, *cmds)


def set_bitmap_flags(path, index, flags):
    """Overwrite the flags of directory entry index (e.g. 3: in use)."""
    data = bytearray(Path(path).read_bytes())
    pos = directory_entry(data, index)
    data[pos + 12:pos + 16] = flags.to_bytes(4, "big")
    Path(path).write_bytes(bytes(data))


def bitmap_flags(path, index):
    data = Path(path).read_bytes()
    try:
        pos = directory_entry(data, index)
    except AssertionError:
        return 0
    return int.from_bytes(data[pos + 12:pos + 16], "big")


def bitmaps_extension(data):
    """Offset of the bitmaps header extension's data in image bytes."""
    off = int.from_bytes(data[100:104], "big")
    while off + 8 <= len(data):
        typ = int.from_bytes(data[off:off + 4], "big")
        length = int.from_bytes(data[off + 4:off + 8], "big")
        if typ == 0x23852875:
            return off + 8
        if typ == 0:
            break
        off += 8 + (length + 7) // 8 * 8
    raise AssertionError("no bitmaps extension")


def directory_entry(data, index):
    ext = bitmaps_extension(data)
    pos = int.from_bytes(data[ext + 16:ext + 24], "big")
    for _ in range(index):
        name_size = int.from_bytes(data[pos + 18:pos + 20], "big")
        extra = int.from_bytes(data[pos + 20:pos + 24], "big")
        pos += (24 + extra + name_size + 7) // 8 * 8
    return pos


def dirty_extents(img, name, workdir):
    """The dirty areas of bitmap name as QEMU sees them: qemu-nbd exports
    the bitmap, and qemu-img map shows dirty areas as "data": false."""
    sock = Path(workdir) / f"nbd-{os.getpid()}.sock"
    if sock.exists():
        sock.unlink()
    nbd = subprocess.Popen([str(QEMU_NBD), "-r", "-B", name, "-f", "qcow2",
                            "-k", str(sock), str(img)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert nbd.poll() is None, nbd.stderr.read()
            assert time.monotonic() < deadline, "qemu-nbd did not start"
            time.sleep(0.02)
        # The socket may exist a moment before qemu-nbd listens on it.
        while True:
            r = run(REF, ["map", "--output=json", "--image-opts",
                          "driver=nbd,server.type=unix,server.path=" +
                          str(sock) + ",x-dirty-bitmap=qemu:dirty-bitmap:" +
                          name], workdir, timeout=30)
            if r.rc == 0 or "Connection refused" not in r.err or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.rc == 0, r
    finally:
        nbd.kill()
        nbd.wait(timeout=10)
        if sock.exists():
            sock.unlink()
    import json
    return [(e["start"], e["length"]) for e in json.loads(r.out)
            if not e["data"]]


# ---- inputs -----------------------------------------------------------------

def make_inputs(d):
    """a.qcow2: b0 (enabled), b1 (disabled, 512 B granularity) with writes;
    src.qcow2: s0; s8.qcow2 (8 MiB): x; iu.qcow2: a copy with b0 in use;
    a raw image and a v2 qcow2."""
    ref_sh(d, ["create", "-q", "-f", "qcow2", "a.qcow2", "4M"],
           ["bitmap", "--add", "a.qcow2", "b0"],
           ["bitmap", "--add", "-g", "512", "--disable", "a.qcow2", "b1"],
           ["create", "-q", "-f", "qcow2", "src.qcow2", "4M"],
           ["bitmap", "--add", "src.qcow2", "s0"],
           ["create", "-q", "-f", "qcow2", "s8.qcow2", "8M"],
           ["bitmap", "--add", "s8.qcow2", "x"],
           ["create", "-q", "-f", "raw", "r.img", "4M"],
           ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2",
            "4M"])
    io(True, d, d / "a.qcow2", "write -P 1 100k 3k", "write -P 2 2M 128k")
    io(True, d, d / "src.qcow2", "write -P 3 1M 64k", "write -P 4 3M 512")
    shutil.copy(d / "a.qcow2", d / "iu.qcow2")
    set_bitmap_flags(d / "iu.qcow2", 0, 3)


FILES = ("a.qcow2", "src.qcow2", "s8.qcow2", "iu.qcow2", "r.img", "v2.qcow2")
LONG = "n" * 1024

# Each case runs on fresh inputs; the files must end up identical.
CASES = [
    [], ["--add"], ["--add", "a.qcow2"], ["--add", "a.qcow2", "n", "extra"],
    ["-g", "64k", "a.qcow2", "n"], ["--clear", "-g", "64k", "a.qcow2", "b0"],
    ["--add", "-b", "src.qcow2", "a.qcow2", "n"],
    ["--add", "-F", "qcow2", "a.qcow2", "n"],
    ["--merge"], ["-b"], ["-F"], ["-g"], ["-f"], ["--object"], ["-x"],
    ["--foo"], ["-U", "--add", "a.qcow2", "n"], ["-q", "--add", "a.qcow2", "n"],
    ["--output=json", "--add", "a.qcow2", "n"],
    ["--add", "-g", "x", "a.qcow2", "n"], ["--add", "-g", "-1", "a.qcow2", "n"],
    ["--add", "-g", "100", "a.qcow2", "n"], ["--add", "-g", "3000", "a.qcow2", "n"],
    ["--add", "-g", "1.5k", "a.qcow2", "n"], ["--add", "-g", "4G", "a.qcow2", "n"],
    ["--add", "-g", "16E", "a.qcow2", "n"],
    ["--add", "-g", "0x1000", "a.qcow2", "n"],
    ["--add", "-g", "0", "a.qcow2", "n"],
    ["--add", "-g", "4294968320", "a.qcow2", "n"],
    ["--add", "-g", "2G", "a.qcow2", "n"],
    ["--add", "nonexist.qcow2", "n"], ["--add", "-f", "foo", "a.qcow2", "n"],
    ["--add", "-f", "raw", "a.qcow2", "n"], ["--add", "r.img", "n"],
    ["--add", "-f", "raw", "r.img", "n"], ["--remove", "r.img", "n"],
    ["--add", "v2.qcow2", "n"], ["--remove", "v2.qcow2", "n"],
    ["--add", "a.qcow2", ""], ["--add", "a.qcow2", LONG],
    ["--add", "a.qcow2", LONG[:1023]], ["--remove", "a.qcow2", LONG],
    ["--add", "a.qcow2", "b0"], ["--remove", "a.qcow2", "nope"],
    ["--clear", "a.qcow2", "nope"], ["--enable", "a.qcow2", "nope"],
    ["--disable", "a.qcow2", "nope"], ["--merge", "b0", "a.qcow2", "nope"],
    ["--merge", "nope", "a.qcow2", "b0"],
    ["--merge", "s0", "-b", "src.qcow2", "a.qcow2", "b0"],
    ["--merge", "s0", "-b", "src.qcow2", "-F", "qcow2", "a.qcow2", "b1"],
    ["--merge", "s0", "-b", "src.qcow2", "-F", "raw", "a.qcow2", "b1"],
    ["--merge", "s0", "-b", "nonexist", "a.qcow2", "b1"],
    ["--merge", "nope", "-b", "src.qcow2", "a.qcow2", "b1"],
    ["--merge", "x", "-b", "s8.qcow2", "a.qcow2", "b1"],
    ["--merge", "b0", "-b", "a.qcow2", "a.qcow2", "b1"],
    ["--merge", "s0", "-b", "r.img", "a.qcow2", "b1"],
    ["--merge", "b0", "a.qcow2", "b1"], ["--merge", "b1", "a.qcow2", "b0"],
    ["--merge", "b0", "a.qcow2", "b0"],
    ["--clear", "a.qcow2", "b0"], ["--disable", "a.qcow2", "b0"],
    ["--enable", "a.qcow2", "b1"], ["--remove", "a.qcow2", "b0"],
    ["--remove", "a.qcow2", "b1"], ["--remove", "--remove", "a.qcow2", "b1"],
    ["--add", "--disable", "a.qcow2", "n"], ["--disable", "--add", "a.qcow2", "n"],
    ["--disable", "--enable", "--add", "a.qcow2", "n"],
    ["--add", "a.qcow2", "b0", "--remove"], ["--remove", "--add", "a.qcow2", "b0"],
    ["--add", "--merge", "b0", "--merge", "b1", "-g", "1M", "a.qcow2", "n"],
    ["--add", "--merge", "s0", "-b", "src.qcow2", "a.qcow2", "n"],
    ["--add", "--clear", "--remove", "a.qcow2", "n"],
    ["--add", "--remove", "--add", "a.qcow2", "n"],
    ["--add", "--merge", "b1", "a.qcow2", "n"],
    ["--clear", "iu.qcow2", "b0"], ["--enable", "iu.qcow2", "b0"],
    ["--disable", "iu.qcow2", "b0"], ["--merge", "b0", "iu.qcow2", "b1"],
    ["--merge", "b1", "iu.qcow2", "b0"], ["--add", "iu.qcow2", "b0"],
    ["--remove", "iu.qcow2", "b0"], ["--add", "iu.qcow2", "n"],
    ["--remove", "iu.qcow2", "b1"], ["--clear", "--remove", "iu.qcow2", "b1"],
    ["--merge", "b0", "-b", "iu.qcow2", "a.qcow2", "b1"],
    ["--object", "foo", "--add", "a.qcow2", "n"],
    ["--object", "secret,id=s,data=x", "--add", "a.qcow2", "n"],
    ["--image-opts", "--add", "driver=qcow2,file.filename=a.qcow2", "n"],
    ["--image-opts", "--add", "driver=raw,file.filename=r.img", "n"],
    ["--image-opts", "-f", "qcow2", "--add", "a.qcow2", "n"],
    ["-f", "qcow2", "--add", "a.qcow2", "n"],
    ["--granularity", "4k", "--add", "a.qcow2", "n"],
    ["--merge", "s0", "--source-file", "src.qcow2", "--source-format",
     "qcow2", "a.qcow2", "b1"],
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """make_inputs once per module: the files are copied for each case."""
    d = tmp_path_factory.mktemp("bitmap-inputs")
    make_inputs(d)
    return d


def fresh_inputs(pair, template):
    for d in pair.dirs():
        for f in FILES:
            shutil.copy(template / f, d / f)


@pytest.mark.parametrize("batch", batches(CASES, 16))
def test_bitmap_cases(pair, inputs, batch):
    bad = []
    for args in batch:
        fresh_inputs(pair, inputs)
        bad.append(compare(pair, "bitmap", *args, files=FILES))
        bad.append(compare(pair, "info", "a.qcow2"))
        bad.append(compare(pair, "check", "a.qcow2"))
    bad = [b for b in bad if b]
    assert not bad, "\n".join(bad)


def test_sequence_with_writes(pair):
    """Adds, writes by each tool's I/O program, merges, clears, removals:
    the images stay byte-identical and QEMU sees the same dirty areas."""
    pair.setup(lambda d: ref_sh(d, ["create", "-q", "-f", "qcow2", "s.qcow2",
                                     "4M"]))
    steps = [
        ["bitmap", "--add", "s.qcow2", "a"],
        ["bitmap", "--add", "-g", "512", "s.qcow2", "fine"],
        ["bitmap", "--add", "-g", "1M", "--disable", "s.qcow2", "off"],
        ("write -P 1 100k 3k", "write -z 1M 64k", "discard 2M 4k",
         "writec -P 3 3M 64k"),
        ["bitmap", "--enable", "--merge", "fine", "s.qcow2", "off"],
        ("write -P 5 4032k 64k",),
        ["bitmap", "--add", "--merge", "a", "-g", "4k", "s.qcow2", "new"],
        ["bitmap", "--clear", "s.qcow2", "a"],
        ("write -P 6 0 512",),
        ["bitmap", "--remove", "s.qcow2", "fine"],
        ["bitmap", "--disable", "s.qcow2", "new"],
        ("write -P 7 512k 512",),
    ]
    for step in steps:
        if isinstance(step, tuple):
            io_both(pair, "s.qcow2", *step)
            same(pair, "info", "s.qcow2", files=("s.qcow2",))
        else:
            same(pair, *step, files=("s.qcow2",))
        same(pair, "check", "s.qcow2")
    for name in ("a", "off", "new"):
        assert dirty_extents(pair.path_qimg("s.qcow2"), name, pair.qimg_dir) == \
            dirty_extents(pair.path_ref("s.qcow2"), name, pair.ref_dir)
    assert dirty_extents(pair.path_qimg("s.qcow2"), "off", pair.qimg_dir) == \
        [(0, 4 << 20)]


def test_readonly_file(pair, inputs):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    fresh_inputs(pair, inputs)
    pair.setup(lambda d: os.chmod(d / "a.qcow2", 0o444))
    same(pair, "bitmap", "--add", "a.qcow2", "n", files=("a.qcow2",))


def test_locked_image(pair, inputs):
    """An image a QEMU process holds open for writing."""
    fresh_inputs(pair, inputs)
    holders = []
    try:
        for d in pair.dirs():
            holders.append(subprocess.Popen(
                [str(QEMU_NBD), "-f", "qcow2", "-k", str(d / "h.sock"),
                 str(d / "a.qcow2")], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
        # The holder has finished opening when it has marked b0 in use
        # and set the autoclear bit again.
        deadline = time.monotonic() + 10
        while not all(bitmap_flags(d / "a.qcow2", 0) & 1 and
                      (d / "a.qcow2").read_bytes()[95] & 1 and
                      (d / "h.sock").exists() for d in pair.dirs()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        same(pair, "bitmap", "--add", "a.qcow2", "n")
        same(pair, "bitmap", "--merge", "b0", "-b", "a.qcow2", "src.qcow2",
             "s0")
    finally:
        for h in holders:
            h.kill()
            h.wait(timeout=10)


def test_backing_and_data_file(pair):
    """bitmap opens no backing chain (a missing backing file is fine);
    images with an external data file keep bitmaps in the qcow2 file."""
    pair.setup(lambda d: ref_sh(
        d, ["create", "-q", "-f", "qcow2", "-u", "-b", "nonexist.qcow2", "-F",
            "qcow2", "o.qcow2", "4M"],
        ["create", "-q", "-f", "qcow2", "-o", "data_file=d.raw", "x.qcow2",
         "4M"],
        ["create", "-q", "-f", "qcow2", "-o", "data_file=d2.raw,data_file_raw=on",
         "y.qcow2", "4M"]))
    files = ("o.qcow2", "x.qcow2", "y.qcow2", "c.qcow2")
    for args in (["bitmap", "--add", "o.qcow2", "b"], ["info", "o.qcow2"],
                 ["bitmap", "--add", "x.qcow2", "b"],
                 ["bitmap", "--add", "-g", "1k", "y.qcow2", "b"],
                 ["info", "y.qcow2"], ["check", "y.qcow2"],
                 ["convert", "--bitmaps", "-O", "qcow2", "x.qcow2", "c.qcow2"],
                 ["bitmap", "--remove", "x.qcow2", "b"], ["check", "x.qcow2"]):
        same(pair, *args, files=files)


def test_empty_image(pair):
    """A 0-byte image: QEMU adds the bitmap but cannot store it at close
    and says so; the command still succeeds and the file is unchanged."""
    pair.setup(lambda d: ref_sh(d, ["create", "-q", "-f", "qcow2", "z.qcow2",
                                    "0"]))
    for args in (["bitmap", "--add", "z.qcow2", "b"], ["info", "z.qcow2"],
                 ["check", "z.qcow2"]):
        same(pair, *args, files=("z.qcow2",))
