"""Helpers shared by the differential tests of the table formats (qed,
qcow, parallels): images made the same way by both tools compared byte
for byte, writes mirrored between qemu-io and qimg-io, patched headers."""
import filecmp
import json
import os
import re
import struct
import subprocess

from conftest import BUILD, QEMU_IO, REF, run

QIMG_IO = BUILD / "tests" / "qimg-io"

LE32 = lambda v: struct.pack("<I", v)
LE64 = lambda v: struct.pack("<Q", v)
BE32 = lambda v: struct.pack(">I", v)
BE64 = lambda v: struct.pack(">Q", v)


def patch(path, patches):
    """Write (offset, bytes) pairs into a file."""
    with open(path, "r+b") as f:
        for off, data in patches:
            f.seek(off)
            f.write(data)


def data_extents(path):
    """(offset, bytes) of the data regions of a (sparse) file."""
    out = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(f.fileno(), off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            f.seek(start)
            out.append((start, f.read(end - start).rstrip(b"\0")))
            off = end
    return size, [(o, d) for o, d in out if d]


def files_equal(a, b):
    """Same length and bytes; holes and written zeroes compare equal, and
    only the data regions are read (images may be sparse and large)."""
    sa, ea = data_extents(a)
    sb, eb = data_extents(b)
    if sa != sb:
        return False
    if ea == eb:
        return True
    # extents may be split differently: compare the bytes themselves
    return filecmp.cmp(a, b, shallow=False)


def same_files(pair, *names):
    """Each named file is byte-identical in the two directories."""
    for n in names:
        a, b = pair.path_ref(n), pair.path_qimg(n)
        assert files_equal(a, b), f"{n} differs"


def ref_io(path, fmt, *cmds):
    """Write with the reference qemu-io (one process per command, as the
    qimg-io side runs them)."""
    for c in cmds:
        subprocess.run([str(QEMU_IO), "-f", fmt, "-c", c, str(path)],
                       check=True, capture_output=True)


def qimg_io(path, fmt, *cmds):
    r = subprocess.run([str(QIMG_IO), "-f", fmt, str(path), *cmds],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def mirror_writes(pair, fmt, name, cmds):
    """The reference writes into its copy with qemu-io, qimg into its own
    with qimg-io: the images must end up byte-identical."""
    ref_io(pair.path_ref(name), fmt, *cmds)
    qimg_io(pair.path_qimg(name), fmt, *cmds)
    same_files(pair, name)


def ref_check_clean(path, fmt):
    r = run(REF, ["check", "-f", fmt, path], path.parent)
    assert r.rc == 0, r


def ref_compare(a, b, fa, fb):
    r = run(REF, ["compare", "-f", fa, "-F", fb, a, b], a.parent)
    assert r.rc == 0, r


# The disk size the file system reports: it may differ by its own
# extent-tree blocks between two files of the same layout.
DISK_SIZE = re.compile(r'(disk size: .*|"actual-size": \d+)')


def each_case(pair, cases, setup, commands):
    """For each case name: setup(dir, case) in both directories, then each
    command (a list of arguments; "IMG" replaced by the case's file) run
    through both tools with rc/stdout/stderr compared (disk sizes left
    out).  Mismatches are reported together."""
    bad = []
    for case in cases:
        for d in pair.dirs():
            setup(d, case)
        for cmd in commands:
            args = [a.replace("IMG", f"{case}.img") for a in cmd]
            r, q = pair.both(*args)
            ro, qo = DISK_SIZE.sub("", r.out), DISK_SIZE.sub("", q.out)
            if (q.rc, qo, q.err) != (r.rc, ro, r.err):
                bad.append(f"case={case} args={args}\nREFERENCE {r!r}\n"
                           f"QIMG {q!r}")
            assert q.rc >= 0, f"qimg died: case={case} {q!r}"
    assert not bad, "\n\n".join(bad)


def info_no_disk_size(pair, name):
    """info --output=json, the disk size left out: the file system's
    allocation differs by its extent-tree blocks, and by what it keeps of
    a preallocation cut at close."""
    r, q = pair.both("info", "--output=json", name)
    rj, qj = json.loads(r.out or "{}"), json.loads(q.out or "{}")
    rj.pop("actual-size", None), qj.pop("actual-size", None)
    assert (q.rc, qj, q.err) == (r.rc, rj, r.err)


def make(pair, fmt, name, *args):
    """create -q -f fmt [options] name [size] with both tools (a trailing
    size-like argument goes after the name)."""
    size = []
    if args and args[-1][:1].isdigit():
        size, args = [args[-1]], args[:-1]
    pair.same("create", "-q", "-f", fmt, *args, name, *size)


def create_cases(pair, fmt, name, batch):
    """create -f fmt with each argument list: the same output and status,
    and the same file (or none) on both sides, removed after each case."""
    bad = []
    for args in batch:
        r, q = pair.both("create", "-f", fmt, *args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREF {r!r}\nQIMG {q!r}")
        ref, ours = pair.path_ref(name), pair.path_qimg(name)
        if ref.exists() != ours.exists():
            bad.append(f"args={args}: file exists only on one side")
        elif ref.exists():
            if not files_equal(ref, ours):
                bad.append(f"args={args}: images differ")
            ref.unlink()
            ours.unlink()
    assert not bad, "\n\n".join(bad)
