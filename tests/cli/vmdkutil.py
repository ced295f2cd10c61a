"""Helpers shared by the vmdk tests: comparing the files two tools wrote
(the CID is random: only it is normalised), building hosted sparse, COWD
and seSparse headers and descriptors for hostile-input tests."""
import os
import re
import struct
from pathlib import Path

# CID and parentCID: random, and a parent made apart in each directory
# has its own (the parent CID check is tested by reading the chains)
CID_RE = re.compile(rb"CID=[0-9a-fA-F]+")


def _norm_text(t: bytes) -> bytes:
    return CID_RE.sub(b"CID=", t)


def _norm_head(b: bytes) -> bytes:
    """The first block of a file with the descriptor's CIDs taken out.
    CIDs are random and their hex length varies, which shifts the text
    after them; a CID update rewrites the descriptor area, leaving what
    was past the end of a longer text after the new one (QEMU's way, ours
    too), so only the text up to its end is compared."""
    if b[:4] == b"KDMV" and len(b) >= 512:
        do, ds = struct.unpack_from("<QQ", b, 28)
        do, de = do * 512, (do + ds) * 512
        if 0 < do < de <= len(b):
            text = b[do:de].split(b"\0", 1)[0]
            return b[:do] + _norm_text(text) + b"\0" + b[de:]
        return b
    if b.startswith(b"#") or b"createType" in b[:4096]:
        return _norm_text(b.split(b"\0", 1)[0])
    return b


def _next_data(f, off):
    try:
        return os.lseek(f.fileno(), off, os.SEEK_DATA)
    except OSError:
        return None


def files_of(d: Path):
    return sorted(p.name for p in d.iterdir() if p.is_file())


def same_file(a: Path, b: Path):
    """None when a and b hold the same bytes (CID aside), else why not.
    Holes of both files are skipped, so big sparse files cost little."""
    chunk = 1 << 20
    with open(a, "rb") as fa, open(b, "rb") as fb:
        x, y = fa.read(chunk), fb.read(chunk)
        if x != y:
            nx, ny = _norm_head(x), _norm_head(y)
            if nx != ny:
                at = next((i for i in range(min(len(nx), len(ny)))
                           if nx[i] != ny[i]), min(len(nx), len(ny)))
                return (f"differs in its first MiB (normalised at {at:#x}: "
                        f"{nx[at:at + 16]!r} vs {ny[at:at + 16]!r})")
        sa, sb = os.fstat(fa.fileno()).st_size, os.fstat(fb.fileno()).st_size
        if sa != sb and max(sa, sb) > chunk:
            return f"size {sa} != {sb}"
        off = chunk
        while off < sa:
            na, nb = _next_data(fa, off), _next_data(fb, off)
            if na is None and nb is None:
                break
            nxt = min(v for v in (na, nb) if v is not None)
            off = max(off, nxt - nxt % chunk)
            fa.seek(off)
            fb.seek(off)
            if fa.read(chunk) != fb.read(chunk):
                return f"differs in the MiB at {off:#x}"
            off += chunk
    return None


def same_files(ref_dir: Path, qimg_dir: Path, names=None):
    """Every file (or the names given) byte-identical but for the CID;
    returns a list of differences (empty: identical)."""
    bad = []
    if names is None:
        names = files_of(ref_dir)
        if names != files_of(qimg_dir):
            bad.append(f"files {names} != {files_of(qimg_dir)}")
    for n in names:
        if not (qimg_dir / n).exists():
            bad.append(f"{n}: missing")
            continue
        why = same_file(ref_dir / n, qimg_dir / n)
        if why:
            bad.append(f"{n}: {why}")
    return bad


def strip_cid(text: str) -> str:
    """info output without CID values (human and JSON)."""
    text = re.sub(r"(\n\s*cid: )\d+", r"\1N", text)
    return re.sub(r'("cid": )\d+', r"\1N", text)


def sparse_header(version=1, flags=3, capacity=2048, gran=128, desc_off=1,
                  desc_size=20, gtes=512, rgd=21, gd=26, grain_off=128,
                  compress=0, magic=b"KDMV"):
    h = magic + struct.pack("<IIQQQQIQQQ", version, flags, capacity, gran,
                            desc_off, desc_size, gtes, rgd, gd, grain_off)
    h += b"\0\n \r\n" + struct.pack("<H", compress)
    return h.ljust(512, b"\0")


DESC = ('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
        'createType="{ct}"\n{extra}\n# Extent description\n{lines}\n'
        '# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\n')


def descriptor(lines, ct="monolithicFlat", extra=""):
    return DESC.format(ct=ct, extra=extra, lines=lines)


def sparse_image(path, capacity=2048, desc=None, gt_entries=(),
                 gd_entry=None, **kw):
    """A hosted sparse file: header, embedded descriptor, one grain
    directory entry per 512 grains at sector 22 (pointing at tables from
    sector 26 on), grains from sector 128.  gt_entries: (index, value)."""
    kw.setdefault("gd", 22)
    kw.setdefault("rgd", 0)
    kw.setdefault("flags", 1)
    h = sparse_header(capacity=capacity, **kw)
    text = desc if desc is not None else descriptor(
        f'RW {capacity} SPARSE "{Path(path).name}"', ct="monolithicSparse")
    body = bytearray((h + text.encode().ljust(20 * 512, b"\0")).ljust(
        128 * 512, b"\0"))
    ngt = max(1, -(-capacity // (128 * 512)))
    for i in range(min(ngt, 4)):
        body[22 * 512 + 4 * i:22 * 512 + 4 * i + 4] = struct.pack(
            "<I", 26 + 4 * i if gd_entry is None else gd_entry)
    for idx, val in gt_entries:
        body[26 * 512 + 4 * idx:26 * 512 + 4 * idx + 4] = struct.pack("<I", val)
    Path(path).write_bytes(bytes(body))


def cowd_image(path, sectors=2048, gran=16, l1off=4, l1size=1, extra=b""):
    h = b"COWD" + struct.pack("<10I", 1, 3, sectors, gran, l1off, l1size, 0,
                              0, 0, 0)
    Path(path).write_bytes((h.ljust(64 * 1024, b"\0")) + extra)


def sesparse_image(path, capacity=2048, **over):
    """An seSparse file: const header at 0, volatile header at sector 1,
    grain directory at 2 (1 sector), tables at 3, grains at 67."""
    f = dict(magic=0xcafebabe, version=0x200000001, capacity=capacity,
             grain_size=8, gt_size=64, flags=0, r1=0, r2=0, r3=0, r4=0,
             vol_off=1, vol_size=1, jh_off=0, jh_size=0, j_off=0, j_size=0,
             gd_off=2, gd_size=1, gt_off=3, gt_sz=64, fb_off=0, fb_size=0,
             bm_off=0, bm_size=0, grains_off=67, grains_size=64)
    vol = dict(vmagic=0xcafecafe, free=0, txn=0, replay=0)
    for k, v in over.items():
        (vol if k in vol else f)[k] = v
    h = struct.pack("<26Q", *f.values()).ljust(512, b"\0")
    v = struct.pack("<4Q", *vol.values()).ljust(512, b"\0")
    gd = struct.pack("<Q", 0x1000000000000000).ljust(512, b"\0")
    gt = bytearray(64 * 512)
    # grain 0 allocated (cluster 0), grain 1 zero, grain 2 unmapped
    gt[0:8] = struct.pack("<Q", 0x3000000000000000)
    gt[8:16] = struct.pack("<Q", 0x2000000000000000)
    gt[16:24] = struct.pack("<Q", 0x1000000000000000)
    grains = bytes([0x5a]) * 4096
    Path(path).write_bytes(h + v + gd + bytes(gt) + grains)
