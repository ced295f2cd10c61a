"""Build Apple UDIF (.dmg) images for tests: no Debian tool writes them.

A dmg is a data fork of chunks, a table of chunks per partition ("mish"
blocks, in the resource fork or base64 in an XML property list) and a
512-byte "koly" trailer at the end of the file.  All numbers are
big-endian.  Layouts follow Apple's UDIF as documented publicly
(e.g. "DeMystifying the DMG file format"): this module writes what the
readers (QEMU 7.2 and qimg) look at, plus plausible values elsewhere.

    build_dmg(path, partitions, xml=True)

partitions is a list of chunk lists; a chunk is a tuple
    ("zero"|"ignore", sectors)
    ("raw"|"zlib"|"bzip2", data)         data: bytes, a multiple of 512
    ("lzfse"|"adc", sectors, payload)    stored as given (not decodable)
    ("comment",) / ("end",)
    ("raw-bytes", type, sector, count, offset, length)   anything at all
Each partition's chunks are numbered from its first sector on; partitions
follow each other.  The guest content of the image is returned (None
where a chunk cannot be decoded by a reader without lzfse/adc).
"""
import base64
import bz2
import struct
import zlib

SECTOR = 512
MAX_CONTENT = 256 << 20     # guest content is returned up to this size
TYPES = {
    "zero": 0x00000000, "raw": 0x00000001, "ignore": 0x00000002,
    "adc": 0x80000004, "zlib": 0x80000005, "bzip2": 0x80000006,
    "lzfse": 0x80000007, "comment": 0x7ffffffe, "end": 0xffffffff,
}


def _mish(first_sector, sectors, data_offset, entries):
    """One blkx table: a 204-byte header and 40 bytes per chunk."""
    head = struct.pack(">4sIQQQII", b"mish", 1, first_sector, sectors,
                       data_offset, 0x208, 0)
    head += bytes(24)                          # reserved
    head += struct.pack(">II", 2, 32) + bytes(128)   # checksum (CRC32 slot)
    head += struct.pack(">I", len(entries))
    assert len(head) == 204
    return head + b"".join(struct.pack(">IIQQQQ", *e) for e in entries)


def _encode(kind, data):
    if kind == "zlib":
        return zlib.compress(data, 6)
    if kind == "bzip2":
        return bz2.compress(data, 9)
    return data


def build_tables(partitions, data_start=0):
    """The data fork and one mish block per partition.
    Returns (fork bytes, [mish bytes], guest content or None)."""
    fork = bytearray()
    tables = []
    content = bytearray()
    decodable = True
    sector = 0
    for chunks in partitions:
        entries = []
        first = sector
        rel = 0
        base = len(fork)
        for c in chunks:
            kind = c[0]
            if kind in ("comment", "end"):
                entries.append((TYPES[kind], 0, rel, 0, len(fork) - base, 0))
                continue
            if kind == "raw-bytes":
                entries.append(tuple(c[1:2]) + (0,) + tuple(c[2:]))
                decodable = False
                continue
            if kind in ("zero", "ignore"):
                n = c[1]
                entries.append((TYPES[kind], 0, rel, n, len(fork) - base, 0))
                if len(content) + n * SECTOR <= MAX_CONTENT:
                    content += bytes(n * SECTOR)
                else:
                    decodable = False
            elif kind in ("lzfse", "adc"):
                n, payload = c[1], c[2]
                entries.append((TYPES[kind], 0, rel, n, len(fork) - base,
                                len(payload)))
                fork += payload
                decodable = False
            else:
                data = c[1]
                assert len(data) % SECTOR == 0
                n = len(data) // SECTOR
                enc = _encode(kind, data)
                entries.append((TYPES[kind], 0, rel, n, len(fork) - base,
                                len(enc)))
                fork += enc
                content += data
            rel += n
        tables.append(_mish(first, rel, data_start + base, entries))
        sector += rel
    return bytes(fork), tables, (bytes(content) if decodable else None)


def plist_xml(tables, extra_data=()):
    """An XML property list holding the tables as blkx entries."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
           '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n',
           '<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n'
           '\t<dict>\n\t\t<key>blkx</key>\n\t\t<array>\n']
    for i, t in enumerate(tables):
        b64 = base64.b64encode(t).decode()
        lines = "\n".join("\t\t\t\t" + b64[j:j + 52]
                          for j in range(0, len(b64), 52))
        out.append('\t\t\t<dict>\n\t\t\t\t<key>Attributes</key>\n'
                   '\t\t\t\t<string>0x0050</string>\n'
                   '\t\t\t\t<key>CFName</key>\n'
                   f'\t\t\t\t<string>partition {i}</string>\n'
                   f'\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n{lines}\n'
                   '\t\t\t\t</data>\n\t\t\t\t<key>ID</key>\n'
                   f'\t\t\t\t<string>{i}</string>\n\t\t\t</dict>\n')
    out.append('\t\t</array>\n')
    for d in extra_data:
        out.append(f'\t\t<key>plst</key>\n\t\t<data>{d}</data>\n')
    out.append('\t</dict>\n</dict>\n</plist>\n')
    return "".join(out).encode()


def resource_fork(tables):
    """A classic resource fork: 16-byte header (data offset, map offset,
    data length, map length), padding to 256, then each resource as a
    32-bit length and its bytes, then an (empty) map."""
    data = b"".join(struct.pack(">I", len(t)) + t for t in tables)
    data_off = 256
    map_off = data_off + len(data)
    rmap = bytes(30)
    head = struct.pack(">IIII", data_off, map_off, len(data), len(rmap))
    return head + bytes(data_off - len(head)) + data + rmap


def koly(data_off, data_len, rsrc_off, rsrc_len, xml_off, xml_len, sectors):
    k = bytearray(512)
    struct.pack_into(">4sIII", k, 0, b"koly", 4, 512, 1)
    struct.pack_into(">QQQQQ", k, 0x10, 0, data_off, data_len, rsrc_off,
                     rsrc_len)
    struct.pack_into(">II", k, 0x38, 1, 1)
    struct.pack_into(">QQ", k, 0xd8, xml_off, xml_len)
    struct.pack_into(">I", k, 0x1e8, 1)
    struct.pack_into(">Q", k, 0x1ec, sectors)
    return k


def build_dmg(path, partitions, xml=True, sectors=None, pad=0,
              xml_extra=(), koly_patch=None, tail_pad=0):
    """Write a dmg to path; returns the guest content (see module doc).
    sectors overrides the trailer's SectorCount; pad puts bytes before the
    data fork; koly_patch(bytearray) may edit the trailer; tail_pad bytes
    after the trailer make it end off a sector boundary."""
    fork, tables, content = build_tables(partitions, data_start=0)
    body = bytes(pad) + fork
    if xml:
        meta = plist_xml(tables, xml_extra)
        xml_off, xml_len, rsrc_off, rsrc_len = len(body), len(meta), 0, 0
    else:
        meta = resource_fork(tables)
        xml_off, xml_len, rsrc_off, rsrc_len = 0, 0, len(body), len(meta)
    total = sum(struct.unpack_from(">Q", t, 0x10)[0] for t in tables)
    k = koly(pad, len(fork), rsrc_off, rsrc_len, xml_off, xml_len,
             total if sectors is None else sectors)
    if koly_patch:
        koly_patch(k)
    with open(path, "wb") as f:
        f.write(body + meta + bytes(k) + bytes(tail_pad))
    return content


def pattern(n_sectors, seed=1):
    """Compressible but not trivial guest data."""
    out = bytearray()
    for i in range(n_sectors):
        out += struct.pack(">IIII", seed, i, seed * 7 + i, 0xdeadbeef) * 32
    return bytes(out)


def dmg_from_raw(raw_path, path, chunk_sectors=2048, level=6):
    """A dmg of the raw image at raw_path, streamed (for benchmarks): one
    zlib chunk per chunk_sectors sectors, zero chunks where the raw image
    reads as zero, one partition, XML property list."""
    entries = []
    step = chunk_sectors * SECTOR
    with open(raw_path, "rb") as src, open(path, "wb") as out:
        sector = 0
        while True:
            data = src.read(step)
            if not data:
                break
            data += bytes(-len(data) % SECTOR)
            n = len(data) // SECTOR
            if data.count(0) == len(data):
                entries.append((TYPES["zero"], 0, sector, n, out.tell(), 0))
            else:
                enc = zlib.compress(data, level)
                entries.append((TYPES["zlib"], 0, sector, n, out.tell(),
                                len(enc)))
                out.write(enc)
            sector += n
        entries.append((TYPES["end"], 0, sector, 0, out.tell(), 0))
        fork_len = out.tell()
        meta = plist_xml([_mish(0, sector, 0, entries)])
        out.write(meta)
        out.write(koly(0, fork_len, 0, 0, fork_len, len(meta), sector))
