"""Damaged and hostile bitmap extensions and directories: qimg must refuse
or accept each exactly as qemu-img 7.2 does (same messages), never crash,
and leave the same file behind when it writes.  Each case patches an image
with two bitmaps (b0, b1) made by the reference."""
import struct

import pytest

from conftest import REF, run
from test_bitmap import (bitmaps_extension, compare, directory_entry, io,
                         ref_sh)


def base_image(d):
    ref_sh(d, ["create", "-q", "-f", "qcow2", "h.qcow2", "4M"],
           ["bitmap", "--add", "h.qcow2", "b0"],
           ["bitmap", "--add", "h.qcow2", "b1"])
    io(True, d, d / "h.qcow2", "write -P 1 0 64k")


def ext(field, fmt, value):
    def patch(data):
        struct.pack_into(fmt, data, bitmaps_extension(data) + field, value)
    return patch


def entry(index, field, fmt, value):
    def patch(data):
        struct.pack_into(fmt, data, directory_entry(data, index) + field, value)
    return patch


def table(index, k, value):
    def patch(data):
        pos = directory_entry(data, index)
        toff = int.from_bytes(data[pos:pos + 8], "big")
        struct.pack_into(">Q", data, toff + 8 * k, value)
    return patch


def duplicate_name(data):
    pos = directory_entry(data, 1)
    data[pos + 24:pos + 26] = b"b0"


def extension_length(data):
    struct.pack_into(">I", data, bitmaps_extension(data) - 4, 16)


def clear_autoclear(data):
    data[95] &= 0xfe


def both(*patches):
    def patch(data):
        for p in patches:
            p(data)
    return patch


CASES = {
    "reserved": ext(4, ">I", 1),
    "nb_zero": ext(0, ">I", 0),
    "nb_too_many": ext(0, ">I", 70000),
    "nb_more": ext(0, ">I", 3),
    "nb_less": ext(0, ">I", 1),
    "dir_offset_unaligned": ext(16, ">Q", 0x50200),
    "dir_offset_past_eof": ext(16, ">Q", 0x1000000),
    "dir_size_huge": ext(8, ">Q", (64 << 20) + 8),
    "dir_size_max": ext(8, ">Q", 1024 * 65535),
    "dir_size_zero": ext(8, ">Q", 0),
    "dir_size_short": ext(8, ">Q", 40),
    "dir_size_long": ext(8, ">Q", 72),
    "extra_data": entry(0, 20, ">I", 8),
    "table_size_zero": entry(0, 8, ">I", 0),
    "table_size_two": entry(0, 8, ">I", 2),
    "table_size_huge": entry(0, 8, ">I", 0x8000001),
    "table_offset_zero": entry(0, 0, ">Q", 0),
    "table_offset_unaligned": entry(0, 0, ">Q", 0x40200),
    "table_offset_past_eof": entry(0, 0, ">Q", 0x7f0000),
    "granularity_8": entry(1, 17, "B", 8),
    "granularity_32": entry(1, 17, "B", 32),
    "granularity_10": entry(1, 17, "B", 10),
    "granularity_255": entry(1, 17, "B", 255),
    "flags_reserved": entry(0, 12, ">I", 8),
    "flags_extra_compat": entry(0, 12, ">I", 6),
    "type": entry(0, 16, "B", 2),
    "name_size_huge": entry(0, 18, ">H", 2000),
    "name_size_zero": entry(1, 18, ">H", 0),
    "in_use": entry(0, 12, ">I", 3),
    "in_use_bad_table": both(entry(0, 12, ">I", 3), table(0, 0, 2)),
    "in_use_table_size_zero": both(entry(0, 12, ">I", 3),
                                   entry(0, 8, ">I", 0)),
    "entry_reserved_bits": table(0, 0, 2),
    "entry_unaligned": table(0, 0, 0x50200),
    "entry_offset_and_ones": table(0, 0, 0x50001),
    "entry_all_ones": table(0, 0, 1),
    "entry_high_bits": table(0, 0, 1 << 60),
    "entry_past_eof": table(0, 0, 0x7f0000),
    "duplicate_name": duplicate_name,
    "extension_length": extension_length,
    "stale": clear_autoclear,
    # 300 MiB: more than b1's one table cluster covers at 512 B granules.
    "size_past_table": both(entry(1, 17, "B", 9),
                            lambda d: struct.pack_into(">Q", d, 24, 300 << 20)),
    "size_past_table_in_use": both(
        entry(1, 17, "B", 9), entry(1, 12, ">I", 3),
        lambda d: struct.pack_into(">Q", d, 24, 300 << 20)),
    "size_grown": lambda d: struct.pack_into(">Q", d, 24, 300 << 20),
}

COMMANDS = [
    ["info", "h.qcow2"], ["check", "h.qcow2"],
    ["convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2",
     "h.qcow2", "c.qcow2"],
    ["bitmap", "--merge", "b0", "-b", "h.qcow2", "o.qcow2", "o"],
    ["bitmap", "--clear", "h.qcow2", "b1"],
    ["bitmap", "--remove", "h.qcow2", "b0"],
    ["check", "h.qcow2"],
]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_bitmaps(pair, name):
    def make(d):
        base_image(d)
        ref_sh(d, ["create", "-q", "-f", "qcow2", "o.qcow2", "4M"],
               ["bitmap", "--add", "o.qcow2", "o"])
        data = bytearray((d / "h.qcow2").read_bytes())
        CASES[name](data)
        (d / "h.qcow2").write_bytes(bytes(data))
    pair.setup(make)
    bad = [compare(pair, *c, files=("h.qcow2", "c.qcow2", "o.qcow2"))
           for c in COMMANDS]
    bad = [b for b in bad if b]
    assert not bad, "\n".join(bad)


def test_stale_v2(pair):
    """A downgrade to compat=0.10 leaves the extension in a header without
    an autoclear field: QEMU's v2 warning, then the bitmaps are dropped."""
    def make(d):
        base_image(d)
        ref_sh(d, ["amend", "-o", "compat=0.10", "h.qcow2"])
    pair.setup(make)
    for c in (["info", "h.qcow2"], ["check", "h.qcow2"],
              ["bitmap", "--add", "h.qcow2", "n"]):
        bad = compare(pair, *c)
        assert not bad, bad
    chk = run(REF, ["check", "-r", "leaks", "h.qcow2"], pair.qimg_dir)
    assert chk.rc == 0, chk


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_bitmaps_repair(pair, name):
    """check -r all of each damaged image: the same report and the same
    file (bitmaps stored back where QEMU stores them)."""
    def make(d):
        base_image(d)
        data = bytearray((d / "h.qcow2").read_bytes())
        CASES[name](data)
        (d / "h.qcow2").write_bytes(bytes(data))
    pair.setup(make)
    bad = [compare(pair, *c, files=("h.qcow2",))
           for c in (["check", "-r", "all", "h.qcow2"], ["check", "h.qcow2"])]
    bad = [b for b in bad if b]
    assert not bad, "\n".join(bad)
