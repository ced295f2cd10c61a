"""Helpers of the vpc and vdi tests: editing headers in place (with the
VHD checksums kept right), and comparing images up to the fields that
differ between two creations (timestamps, UUIDs)."""
import os
import shutil
import struct
import subprocess

from conftest import QEMU_IO, REF, run

# ---- vpc (VHD) ------------------------------------------------------------

FOOTER = 512
DYN = 512           # where QEMU puts the dynamic header
BAT = 1536          # and the BAT


def vhd_checksum(buf, skip):
    total = sum(b for i, b in enumerate(buf) if not skip <= i < skip + 4)
    return ~total & 0xffffffff


def fix_footer(b, off=0):
    b[off + 64:off + 68] = struct.pack(">I", vhd_checksum(b[off:off + 512], 64))


def fix_dyn(b, off=DYN):
    b[off + 36:off + 40] = struct.pack(">I",
                                       vhd_checksum(b[off:off + 1024], 36))


def footers(b):
    """Offsets of the footer copies of a vpc file."""
    offs = []
    if b[:8] == b"conectix":
        offs.append(0)
    if len(b) >= 512 and b[-512:-504] == b"conectix" and len(b) > 512:
        offs.append(len(b) - 512)
    return offs


def set_footer(b, field_off, data):
    """Change a footer field in every copy, checksums updated."""
    for off in footers(b):
        b[off + field_off:off + field_off + len(data)] = data
        fix_footer(b, off)


def bat_entry(b, i):
    return struct.unpack(">I", b[BAT + 4 * i:BAT + 4 * i + 4])[0]


def set_bat_entry(b, i, v):
    b[BAT + 4 * i:BAT + 4 * i + 4] = struct.pack(">I", v)

# ---- vdi ------------------------------------------------------------------

VDI_SIG = bytes.fromhex("7f10dabe")


def le32(b, off, v):
    b[off:off + 4] = struct.pack("<I", v)


def le64(b, off, v):
    b[off:off + 8] = struct.pack("<Q", v)

# ---- both -----------------------------------------------------------------


def normalised(data):
    """The bytes of a vpc or vdi image with what differs between two
    creations zeroed: footer timestamp, checksum and UUID; vdi UUIDs."""
    b = bytearray(data)
    for off in footers(b):
        b[off + 24:off + 28] = bytes(4)
        b[off + 64:off + 84] = bytes(20)
    if b[0x40:0x44] == VDI_SIG:
        b[0x188:0x1a8] = bytes(32)
    return bytes(b)


def data_extents(path):
    """(offset, length) of the data (non-hole) extents of a file."""
    out = []
    with open(path, "rb") as f:
        fd, end, off = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while off < end:
            try:
                off = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, off, os.SEEK_HOLE)
            out.append((off, hole - off))
            off = hole
    return out


PAGE = 4096


def _normalise_page(b, page_off, size):
    """normalised() for one page of a file of size bytes."""
    b = bytearray(b)
    spots = [0] if page_off == 0 and b[:8] == b"conectix" else []
    tail = size - 512
    if size > 512 and page_off <= tail < page_off + len(b) and \
            b[tail - page_off:tail - page_off + 8] == b"conectix":
        spots.append(tail - page_off)
    for o in spots:
        b[o + 24:o + 28] = bytes(4)
        b[o + 64:o + 84] = bytes(20)
    if page_off == 0 and b[0x40:0x44] == VDI_SIG:
        b[0x188:0x1a8] = bytes(32)
    return bytes(b)


def image_pages(path):
    """(size, {offset: page}) for the non-zero 4 KiB pages of a file, read
    from its data extents only (a fixed image of terabytes costs what it
    holds), normalised as normalised() does."""
    size = os.path.getsize(path)
    pages = {}
    with open(path, "rb") as f:
        for off, n in data_extents(path):
            start = off - off % PAGE
            f.seek(start)
            data = f.read(off + n - start)
            for i in range(0, len(data), PAGE):
                pg = data[i:i + PAGE]
                if pg.strip(b"\0"):
                    pages[start + i] = _normalise_page(pg, start + i, size)
    return size, pages


def assert_same_image(pair, name):
    """The file each tool wrote is byte-identical up to what differs
    between creations (holes and written zeroes are not told apart)."""
    qs, qp = image_pages(pair.path_qimg(name))
    rs, rp = image_pages(pair.path_ref(name))
    assert qs == rs, f"{name}: {qs} bytes, reference {rs}"
    diff = sorted(set(qp) ^ set(rp)) + sorted(o for o in set(qp) & set(rp)
                                              if qp[o] != rp[o])
    assert not diff, f"{name} differs at offsets {diff[:8]}"


def create_cases_differ(pair, fmt, name, batch):
    """Run `create -f fmt [-o opts] name size` for each (opts, size) of
    batch in both tools; return the cases whose output, status or written
    image differ (the images are removed after each case)."""
    bad = []
    for opts, size in batch:
        args = ["create", "-f", fmt] + (["-o", opts] if opts else []) + \
            [name, size]
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        elif pair.path_ref(name).exists():
            try:
                assert_same_image(pair, name)
            except AssertionError as e:
                bad.append(f"{args}: {e}")
        for d in pair.dirs():
            (d / name).unlink(missing_ok=True)
    return bad


def patch(path, func):
    b = bytearray(path.read_bytes())
    func(b)
    path.write_bytes(bytes(b))


def ref_create(d, fmt, name, size, opts=None):
    args = ["create", "-q", "-f", fmt] + (["-o", opts] if opts else []) + \
        [name, str(size)]
    r = run(REF, args, d)
    assert r.rc == 0, r


def qemu_io(d, fmt, name, *cmds):
    args = [str(QEMU_IO), "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    args.append(name)
    p = subprocess.run(args, cwd=d, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def copy_to_both(pair, src_dir, name):
    """Copy a file made in src_dir into both tool directories."""
    for d in pair.dirs():
        if d != src_dir:
            shutil.copy(src_dir / name, d / name)


def vhdiinfo(path):
    """libvhdi's reading of a VHD: (rc, text)."""
    p = subprocess.run(["vhdiinfo", str(path)], capture_output=True,
                       text=True)
    return p.returncode, p.stdout + p.stderr


def have_vhdiinfo():
    return shutil.which("vhdiinfo") is not None


def rss_budget(tmp_path, extra):
    """The peak resident size a qimg command may reach: what `qimg
    --version` shows from this process (Linux counts the forking
    process's pages in a child's peak) plus extra bytes."""
    from test_hostile_memory import peak_rss
    from conftest import QIMG
    _, base, _ = peak_rss([QIMG, "--version"], tmp_path)
    return base + extra
