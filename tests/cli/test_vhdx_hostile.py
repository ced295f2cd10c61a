"""Damaged and hostile vhdx images: every open check of QEMU 7.2 (headers,
region table, metadata, BAT), compared with the reference command by
command; and the bounds qimg adds where 7.2 allocates gigabytes or reads
out of bounds (docs/LIMITS.md), checked on qimg alone for memory and
time."""
import os
import shutil
import struct
import subprocess
import time

import pytest

from conftest import QIMG, REF, batches, valgrind_skip
from vhdx_image import (BAT_GUID, FILE_PARAM_GUID, LSECTOR_GUID,
                        METADATA_GUID, PARENT_GUID, PSECTOR_GUID, VSIZE_GUID,
                        Image, MiB)

GiB = 1 << 30


def hdr_bad_crc(i, which):
    i.set_header(which, fix=False, sequence=99)


def overlap(i):
    r = i.regions()
    r[1]["offset"] = r[0]["offset"]
    i.set_regions(r)


def overlap_log(i):
    r = i.regions()
    r[0]["offset"] = MiB
    i.set_regions(r)


def extra_region(required, length=MiB, offset=100 * MiB, guid=b"z" * 16):
    def f(i):
        r = i.regions()
        r.append({"guid": guid, "offset": offset, "length": length,
                  "bits": 1 if required else 0})
        i.set_regions(r)
    return f


def drop_region(guid):
    def f(i):
        i.set_regions([e for e in i.regions() if e["guid"] != guid])
    return f


def region_count(n):
    def f(i):
        i.set_regions(i.regions(), count=n)
    return f


def bat_region_length(n):
    def f(i):
        r = i.regions()
        r[0]["length"] = n
        i.set_regions(r)
    return f


def big_bat_region(length):
    """The metadata moved into the free end of the header section and the
    BAT region grown to length bytes."""
    def f(i):
        r = i.regions()
        md = i.read(r[1]["offset"], 128 << 10)
        i.write(512 << 10, md)
        i.write(r[1]["offset"], bytes(128 << 10))
        r[1]["offset"], r[1]["length"] = 512 << 10, 128 << 10
        r[0]["length"] = length
        i.set_regions(r)
    return f


def meta(guid, fmt, value):
    return lambda i: i.set_metadata(guid, fmt, value)


def meta_entry(index, **fields):
    """Patch metadata table entry `index` (guid/offset/length/bits)."""
    def f(i):
        base, ents = i.metadata_entries()
        e = dict(ents[index], **fields)
        i.write(e["at"], struct.pack("<16sIII", e["guid"], e["offset"],
                                     e["length"], e["bits"]))
    return f


def meta_count(n):
    def f(i):
        base, _ = i.metadata_entries()
        i.write(base + 10, struct.pack("<H", n))
    return f


def meta_add(guid, bits, offset=70000, length=8):
    def f(i):
        base, ents = i.metadata_entries()
        i.write(base + 32 + 32 * len(ents),
                struct.pack("<16sIII", guid, offset, length, bits))
        i.write(base + 10, struct.pack("<H", len(ents) + 1))
    return f


def has_parent(i):
    i.write(i.metadata_item_offset(FILE_PARAM_GUID) + 4, struct.pack("<I", 2))


def bat(index, value):
    return lambda i: i.set_bat(index, value)


def both(*fs):
    def f(i):
        for g in fs:
            g(i)
    return f


def truncate_to(n):
    return lambda i: i.f.truncate(n)


CASES = {
    "h0-bad-crc": lambda i: hdr_bad_crc(i, 0),
    "h1-bad-crc": lambda i: hdr_bad_crc(i, 1),
    "both-bad-crc": both(lambda i: hdr_bad_crc(i, 0),
                         lambda i: hdr_bad_crc(i, 1)),
    "eq-seq-same": lambda i: i.set_header(0, sequence=i.header(1)["sequence"]),
    "eq-seq-differ": lambda i: i.set_header(0, sequence=i.header(1)["sequence"],
                                            log_length=2 * MiB),
    "h-version2": lambda i: i.set_header(i.current_header(), version=2),
    "h-signature": lambda i: i.set_header(i.current_header(), signature=1),
    "file-signature": lambda i: i.write(0, b"vhdxfilf"),
    "log-version": lambda i: i.set_header(i.current_header(), log_version=1),
    "log-offset-unaligned": lambda i: i.set_header(i.current_header(),
                                                   log_offset=12345),
    "log-offset-zero": lambda i: i.set_header(i.current_header(), log_offset=0),
    "log-length-odd": both(lambda i: i.set_header(
        i.current_header(), log_length=MiB + 4096,
        log_guid=bytes(range(16)))),
    "log-huge-offset": lambda i: i.set_header(i.current_header(),
                                              log_offset=1 << 62,
                                              log_guid=bytes(range(16))),
    "region-overlap": overlap,
    "region-overlaps-log": overlap_log,
    "region-crc": lambda i: i.write(192 * 1024 + 100, b"x"),
    "region-signature": both(lambda i: i.write(192 * 1024, b"regx"),
                             lambda i: i.fix_region()),
    "region-count-2048": region_count(2048),
    "region-count-2047": region_count(2047),
    "region-required": extra_region(True),
    "region-optional": extra_region(False),
    "region-zero-length": extra_region(False, length=0, offset=200 * MiB),
    "region-wraps": extra_region(False, length=0xFFFFFFFF,
                                 offset=(1 << 64) - 4096),
    "region-dup-bat": extra_region(False, guid=BAT_GUID),
    "no-metadata": drop_region(METADATA_GUID),
    "no-bat": drop_region(BAT_GUID),
    "meta-signature": lambda i: i.write(i.region(METADATA_GUID)["offset"],
                                        b"metadatx"),
    "meta-count-2047": meta_count(2047),
    "meta-count-2048": meta_count(2048),
    "meta-count-0": meta_count(0),
    "meta-dup-item": meta_entry(1, guid=FILE_PARAM_GUID),
    "meta-required-unknown": meta_add(b"q" * 16, 4),
    "meta-optional-unknown": meta_add(b"q" * 16, 0),
    "meta-parent-locator": meta_add(PARENT_GUID, 4),
    "meta-has-parent": has_parent,
    "meta-parent-and-locator": both(has_parent, meta_add(PARENT_GUID, 4)),
    "block-size-0": meta(FILE_PARAM_GUID, "<I", 0),
    "block-size-3M": meta(FILE_PARAM_GUID, "<I", 3 * MiB),
    "block-size-512M": meta(FILE_PARAM_GUID, "<I", 512 * MiB),
    "block-size-1M": meta(FILE_PARAM_GUID, "<I", MiB),
    "block-size-256M": meta(FILE_PARAM_GUID, "<I", 256 * MiB),
    "block-size-max-u32": meta(FILE_PARAM_GUID, "<I", 0xFFFFFFFF),
    "lsector-4096": meta(LSECTOR_GUID, "<I", 4096),
    "lsector-0": meta(LSECTOR_GUID, "<I", 0),
    "psector-4096": meta(PSECTOR_GUID, "<I", 4096),
    "psector-7": meta(PSECTOR_GUID, "<I", 7),
    "vsize-0": meta(VSIZE_GUID, "<Q", 0),
    "vsize-odd": meta(VSIZE_GUID, "<Q", 64 * MiB + 100),
    "vsize-2^62": meta(VSIZE_GUID, "<Q", 1 << 62),
    "vsize-max": meta(VSIZE_GUID, "<Q", (1 << 64) - 1),
    "vsize-too-big-for-bat": meta(VSIZE_GUID, "<Q", 1 << 40),
    "item-past-eof": meta_entry(1, offset=0xFFFFFFF0),
    "bat-past-eof": bat(0, (100 << 20) | 6),
    "bat-end-past-eof": bat(7, (7 << 20) | 6),
    "bat-overflow": bat(0, 0xFFFFFFFFFFF00006),
    "bat-over-log": bat(1, (1 << 20) | 6),
    "bat-over-metadata": bat(0, (3 << 20) | 6),
    "bat-offset-zero": bat(0, 6),
    "bat-partial": bat(0, (100 << 20) | 7),
    "bat-state-4": bat(2, 4),
    "bat-state-undefined": bat(2, 1),
    "bat-state-unmapped": bat(3, 3),
    "bat-state-unmapped-v095": bat(3, 5),
    "bat-zero-with-offset": bat(4, (5 << 20) | 2),
    "bat-region-short": bat_region_length(8),
    "bat-region-zero": bat_region_length(0),
    "bat-region-4g": big_bat_region(0xFFF00000),
    "truncated-metadata": truncate_to(3 * MiB + 100),
    "truncated-header": truncate_to(100 << 10),
    "truncated-8": truncate_to(8),
    "empty": truncate_to(0),
}
COMMANDS = [["info"], ["check"], ["map", "--output=json"],
            ["convert", "-O", "raw", "-m", "1"], ["compare", "-f", "vhdx"],
            ["info", "-f", "vhdx"], ["check", "-r", "all"]]


def build(pair, name, patch):
    def mk(d):
        p = d / name
        subprocess.run([str(REF), "create", "-q", "-f", "vhdx", "-o",
                        "block_size=1M", p, "8M"], check=True)
        subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P 0x5a 1M 2M",
                        p], check=True, capture_output=True)
        with Image(p) as img:
            patch(img)
    pair.setup(mk)


@pytest.mark.parametrize("batch", batches(sorted(CASES), 12))
def test_damaged_images(pair, batch):
    bad = []
    for name in batch:
        img = name + ".vhdx"
        build(pair, img, CASES[name])
        for cmd in COMMANDS:
            args = cmd + [img]
            if cmd[0] == "convert":
                args.append("out.raw")
            elif cmd[0] == "compare":
                args.append(img)
            if cmd == ["check", "-r", "all"]:
                for d in pair.dirs():   # a repair must not touch the copy
                    shutil.copy(d / img, d / "rw.vhdx")
                args = cmd + ["rw.vhdx"]
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"{name}: {args}\nREF {r!r}\nQIMG {q!r}")
            for d in pair.dirs():
                for f in ("out.raw", "rw.vhdx"):
                    if (d / f).exists():
                        (d / f).unlink()
    assert not bad, "\n\n".join(bad)


def rss_of(args, cwd):
    """(exit status, stderr, peak resident bytes, seconds) of args."""
    start = time.monotonic()
    p = subprocess.Popen([str(a) for a in args], cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode()
    p.stderr.close()
    return (os.waitstatus_to_exitcode(status), err, usage.ru_maxrss * 1024,
            time.monotonic() - start)


def test_bat_claims_gigabytes(tmp_path):
    """A BAT region of 2 GiB (QEMU allocates and reads all of it): qimg
    reads the entries the size needs.  A size needing more entries than
    VHDX_MAX_BAT_ENTRIES is refused before anything is allocated."""
    valgrind_skip("measures qimg's own resident memory and time")
    img = tmp_path / "big.vhdx"
    subprocess.run([str(REF), "create", "-q", "-f", "vhdx", "-o",
                    "block_size=1M", img, "8M"], check=True)
    with Image(img) as i:
        big_bat_region(0x7FF00000)(i)
    for cmd in (["info"], ["check"], ["convert", "-O", "raw"]):
        args = [QIMG] + cmd + [img] + (["o.raw"] if cmd[0] == "convert"
                                       else [])
        rc, err, rss, secs = rss_of(args, tmp_path)
        assert rc == 0, (cmd, err)
        # A forked child's peak RSS can include its parent's (pytest)
        # until exec: the bound is the one test_hostile_memory.py uses,
        # under the 2 GiB QEMU allocates here.
        assert rss < GiB and secs < 30, (cmd, rss, secs)
    with Image(img) as i:
        # 100 TiB at 1 MiB blocks: 100 Mi entries, over the limit.
        i.set_metadata(VSIZE_GUID, "<Q", 100 << 40)
    for cmd in (["info"], ["check"]):
        rc, err, rss, secs = rss_of([QIMG] + cmd + [img], tmp_path)
        assert rc == 1 and "BAT entries" in err, (cmd, err)
        assert rss < GiB, (cmd, rss)
    # 64 TiB at 1 MiB blocks is the largest the limit admits (512 MiB of
    # BAT, the whole region past the end of this small file: zeroes).
    with Image(img) as i:
        i.set_metadata(VSIZE_GUID, "<Q", 64 << 40)
    rc, err, rss, secs = rss_of([QIMG, "info", img], tmp_path)
    assert rc == 0, err
    assert rss < GiB and secs < 60, (rss, secs)
