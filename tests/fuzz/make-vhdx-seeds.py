#!/usr/bin/env python3
"""Compact vhdx inputs for the fuzz-vhdx target (tests/fuzz/fuzz-vhdx.c):
images made by the reference qemu-img/qemu-io, their BAT and metadata
moved into the unused end of the header section, and cut into the
target's input layout (file bytes [0, 768 KiB), then the file from
1 MiB on; the target makes the file at least 4 MiB long).

  make-vhdx-seeds.py OUTDIR
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cli"))
from vhdx_image import (Image, MiB, log_entry, make_dirty)  # noqa: E402

HEAD, GAP_END = 768 << 10, MiB
BAT_AT, META_AT = 320 << 10, 384 << 10


def compact(path, data_blocks_at=None):
    """Move BAT (first 64 KiB) and metadata (128 KiB) below 768 KiB."""
    with Image(path) as img:
        r = img.regions()
        bat = img.read(r[0]["offset"], 64 << 10)
        md = img.read(r[1]["offset"], 128 << 10)
        img.write(BAT_AT, bat)
        img.write(META_AT, md)
        r[0]["offset"], r[0]["length"] = BAT_AT, 64 << 10
        r[1]["offset"], r[1]["length"] = META_AT, 128 << 10
        img.set_regions(r)


def cut(path, keep):
    data = open(path, "rb").read()
    return data[:HEAD] + data[GAP_END:GAP_END + keep]


def main(out):
    os.makedirs(out, exist_ok=True)
    qi = os.environ.get("QEMU_IMG", "qemu-img")
    qio = os.environ.get("QEMU_IO", "qemu-io")
    with tempfile.TemporaryDirectory() as d:
        def make(name, size, opts, cmds=(), keep=0, dirty=None, post=None):
            p = os.path.join(d, name)
            subprocess.run([qi, "create", "-q", "-f", "vhdx", "-o", opts, p,
                            size], check=True)
            for c in cmds:
                subprocess.run([qio, "-f", "vhdx", "-c", c, p], check=True,
                               capture_output=True)
            compact(p)
            if post:
                with Image(p) as img:
                    post(img)
            if dirty:
                with Image(p) as img:
                    entries = dirty(img)
                make_dirty(p, entries)
            open(os.path.join(out, name), "wb").write(cut(p, keep))

        make("empty", "8M", "block_size=1M", keep=0)
        def fixed_inside(img):
            for k in range(3):
                img.set_bat(k, (k + 1) * MiB | 6)
            for i in (0, 1):
                img.set_header(i, log_length=0)
        make("fixed", "3M", "block_size=1M,subformat=fixed,"
             "block_state_zero=off", keep=0, post=fixed_inside)
        # No log (length 0): block 1's first 8 KiB moved to 1 MiB.
        def data_at_1m(img):
            img.write(GAP_END, img.read(img.bat(1) & ~0xFFFFF, 8192))
            img.set_bat(1, MiB | 6)
            for i in (0, 1):
                img.set_header(i, log_length=0)
            return None
        make("data", "8M", "block_size=1M", ["write -P 0x11 1M 8k"],
             keep=8192, post=data_at_1m)
        guid = bytes(range(1, 17))

        def bat_entry(img):
            sec = bytearray(img.read(BAT_AT, 4096))
            sec[16:24] = (3 * MiB | 6).to_bytes(8, "little")
            return [log_entry(guid, 5, writes=[(BAT_AT, bytes(sec))]),
                    log_entry(guid, 6, zeroes=[(2 * MiB, 8192)])]
        make("dirty", "8M", "block_size=1M", keep=16 << 10, dirty=bat_entry)


if __name__ == "__main__":
    main(sys.argv[1])
