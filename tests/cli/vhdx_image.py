"""Reading and patching VHDX images for tests (MS-VHDX layout): CRC-32C,
headers, region table, metadata, BAT and log entries.  Used to make the
damaged, hostile and dirty images the differential tests feed both tools.
"""
import struct

MiB = 1 << 20
HEADER_OFFSETS = (64 << 10, 128 << 10)
REGION_OFFSETS = (192 << 10, 256 << 10)
BAT_GUID = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")
METADATA_GUID = bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e")
FILE_PARAM_GUID = bytes.fromhex("3767a1ca36fa434db3b633f0aa44e76b")
VSIZE_GUID = bytes.fromhex("2442a52f1bcd7648b2115dbed83bf4b8")
PAGE83_GUID = bytes.fromhex("ab12cabee6b2234593efc309e000c746")
LSECTOR_GUID = bytes.fromhex("1dbf41816fa90947ba47f233a8faab5f")
PSECTOR_GUID = bytes.fromhex("c748a3cd5d4471449cc9e9885251c556")
PARENT_GUID = bytes.fromhex("2d5fd3a80bb34d45abf7d3d84834ab0c")


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


_T = _table()


def crc32c(data, crc=0xFFFFFFFF):
    """Raw CRC-32C register update (start 0xffffffff, invert at the end)."""
    t = _T
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def checksum(buf, off=4):
    """CRC-32C of buf with the 4 bytes at off counted as zero."""
    b = bytes(buf[:off]) + b"\0\0\0\0" + bytes(buf[off + 4:])
    return crc32c(b) ^ 0xFFFFFFFF


class Image:
    """A VHDX file opened for patching; call fix_*() after changes."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "r+b")

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def read(self, off, n):
        self.f.seek(off)
        d = self.f.read(n)
        return d + bytes(n - len(d))

    def write(self, off, data):
        self.f.seek(off)
        self.f.write(data)

    # headers: (field, offset, struct format)
    HFIELDS = {"signature": (0, "<I"), "checksum": (4, "<I"),
               "sequence": (8, "<Q"), "file_write_guid": (16, "16s"),
               "data_write_guid": (32, "16s"), "log_guid": (48, "16s"),
               "log_version": (64, "<H"), "version": (66, "<H"),
               "log_length": (68, "<I"), "log_offset": (72, "<Q")}

    def header(self, i):
        raw = self.read(HEADER_OFFSETS[i], 80)
        return {k: struct.unpack_from(fmt, raw, off)[0]
                for k, (off, fmt) in self.HFIELDS.items()}

    def set_header(self, i, fix=True, **fields):
        for k, v in fields.items():
            off, fmt = self.HFIELDS[k]
            self.write(HEADER_OFFSETS[i] + off, struct.pack(fmt, v))
        if fix:
            self.fix_header(i)

    def fix_header(self, i):
        buf = self.read(HEADER_OFFSETS[i], 4096)
        self.write(HEADER_OFFSETS[i] + 4, struct.pack("<I", checksum(buf)))

    def current_header(self):
        h0, h1 = self.header(0), self.header(1)
        return 1 if h1["sequence"] > h0["sequence"] else 0

    # region table
    def regions(self, t=0):
        raw = self.read(REGION_OFFSETS[t], 64 << 10)
        n = struct.unpack_from("<I", raw, 8)[0]
        out = []
        for i in range(min(n, 2047)):
            g, off, ln, bits = struct.unpack_from("<16sQII", raw, 16 + 32 * i)
            out.append({"guid": g, "offset": off, "length": ln, "bits": bits})
        return out

    def set_regions(self, entries, count=None, t=0, fix=True):
        base = REGION_OFFSETS[t]
        self.write(base + 8, struct.pack("<I", len(entries) if count is None
                                         else count))
        for i, e in enumerate(entries):
            self.write(base + 16 + 32 * i, struct.pack(
                "<16sQII", e["guid"], e["offset"], e["length"], e["bits"]))
        if fix:
            self.fix_region(t)

    def fix_region(self, t=0):
        buf = self.read(REGION_OFFSETS[t], 64 << 10)
        self.write(REGION_OFFSETS[t] + 4, struct.pack("<I", checksum(buf)))

    def region(self, guid):
        for e in self.regions():
            if e["guid"] == guid:
                return e
        raise KeyError(guid)

    # metadata
    def metadata_entries(self):
        base = self.region(METADATA_GUID)["offset"]
        raw = self.read(base, 64 << 10)
        n = struct.unpack_from("<H", raw, 10)[0]
        out = []
        for i in range(n):
            g, off, ln, bits = struct.unpack_from("<16sIII", raw, 32 + 32 * i)
            out.append({"guid": g, "offset": off, "length": ln, "bits": bits,
                        "at": base + 32 + 32 * i})
        return base, out

    def metadata_item_offset(self, guid):
        base, ents = self.metadata_entries()
        for e in ents:
            if e["guid"] == guid:
                return base + e["offset"]
        raise KeyError(guid)

    def set_metadata(self, guid, fmt, value):
        self.write(self.metadata_item_offset(guid), struct.pack(fmt, value))

    # BAT
    def bat_offset(self):
        return self.region(BAT_GUID)["offset"]

    def bat(self, i):
        return struct.unpack("<Q", self.read(self.bat_offset() + 8 * i, 8))[0]

    def set_bat(self, i, value):
        self.write(self.bat_offset() + 8 * i, struct.pack("<Q", value))


def log_entry(log_guid, seq, writes=(), zeroes=(), tail=0,
              flushed_file_offset=0, last_file_offset=0, entry_length=None):
    """One log entry (bytes, a multiple of 4 KiB): data descriptors for
    writes [(file_offset, 4096 bytes)], zero descriptors for zeroes
    [(file_offset, length)]."""
    descs = []
    for off, length in zeroes:
        descs.append(struct.pack("<IIQQQ", 0x6F72657A, 0, length, off, seq))
    for off, data in writes:
        assert len(data) == 4096
        descs.append(struct.pack("<I4s8sQQ", 0x63736564, data[4092:],
                                 data[:8], off, seq))
    n = len(descs)
    desc_sectors = (n + 2 + 127) // 128
    length = (desc_sectors + len(writes)) * 4096
    if entry_length is None:
        entry_length = length
    hdr = struct.pack("<IIIIQII16sQQ", 0x65676F6C, 0, entry_length, tail, seq,
                      n, 0, log_guid, flushed_file_offset, last_file_offset)
    body = bytearray(hdr + b"".join(descs))
    body += bytes(desc_sectors * 4096 - len(body))
    for off, data in writes:
        body += struct.pack("<II", 0x61746164, seq >> 32) + data[8:4092] + \
            struct.pack("<I", seq & 0xFFFFFFFF)
    body[4:8] = struct.pack("<I", checksum(body))
    return bytes(body)


def make_dirty(path, entries, guid=bytes(range(1, 17)), at=0):
    """Put log entries (from log_entry with this guid) into the log of the
    image at byte `at` of the log and point the current header at them."""
    with Image(path) as img:
        c = img.current_header()
        h = img.header(c)
        img.write(h["log_offset"] + at, b"".join(entries))
        img.set_header(c, log_guid=guid)


def normalised(path):
    """The bytes of a VHDX file with what QEMU draws at random zeroed: the
    headers' checksum, sequence number and file/data write GUIDs, the page
    83 GUID, and the checksum and log GUID of every log entry."""
    data = bytearray(open(path, "rb").read())
    with Image(path) as img:
        h = img.header(img.current_header())
        try:
            p = img.metadata_item_offset(PAGE83_GUID)
            data[p:p + 16] = bytes(16)
        except (KeyError, struct.error):
            pass
    for off in HEADER_OFFSETS:
        data[off + 4:off + 48] = bytes(44)
    lo, ll = h["log_offset"], h["log_length"]
    for s in range(lo, min(lo + ll, len(data)), 4096):
        if data[s:s + 4] == b"loge":
            data[s + 4:s + 8] = bytes(4)
            data[s + 32:s + 48] = bytes(16)
    return bytes(data)


def assert_same_image(a, b, skip_log=False):
    """Two VHDX files equal up to what QEMU draws at random (skip_log:
    and for the contents of the log region)."""
    na, nb = normalised(a), normalised(b)
    if skip_log:
        with Image(a) as img:
            h = img.header(img.current_header())
        lo, ll = h["log_offset"], h["log_length"]
        na = na[:lo] + na[lo + ll:]
        nb = nb[:lo] + nb[lo + ll:]
    if na != nb:
        diff = [i for i in range(min(len(na), len(nb))) if na[i] != nb[i]]
        raise AssertionError(f"{a} and {b} differ: sizes {len(na)} and "
                             f"{len(nb)}, {len(diff)} bytes, first at "
                             f"{diff[:8]}")
