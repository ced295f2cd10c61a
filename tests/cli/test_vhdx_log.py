"""The vhdx metadata log against qemu-img 7.2: dirty logs built from the
spec (tests/cli/vhdx_image.py) are refused read-only with 7.2's message
and replayed by a writable open (check -r all) to the same bytes; bad
entries are ignored or refused as 7.2 does; the entries qimg writes for
BAT updates are replayed by QEMU and the reverse; a qimg killed while
writing leaves an image QEMU opens and reads."""
import os
import random
import shutil
import signal
import struct
import subprocess
import time

import pytest

from conftest import BUILD, QEMU_IO, QIMG, REF, batches, run, valgrind_skip
from vhdx_image import (Image, MiB, assert_same_image, checksum, log_entry,
                        make_dirty)

QIMG_IO = BUILD / "tests" / "qimg-io"
GUID = bytes(range(1, 17))


def base_image(path, size="16M", opts="block_size=1M"):
    subprocess.run([str(REF), "create", "-q", "-f", "vhdx", "-o", opts, path,
                    size], check=True)
    subprocess.run([str(QEMU_IO), "-f", "vhdx", "-c", "write -P 0x11 0 3M",
                    path], check=True, capture_output=True)


def block_host(img, block):
    return img.bat(block) & ~0xFFFFF


def sector(byte):
    return bytes([byte]) * 4096


# Each case: fn(img) -> (entries, guid in the header, byte offset in log)
def one_write(img):
    return [log_entry(GUID, 5, writes=[(block_host(img, 0), sector(0xab))])]


def two_in_sequence(img):
    h = block_host(img, 1)
    return [log_entry(GUID, 5, writes=[(h, sector(0xa1))]),
            log_entry(GUID, 6, writes=[(h + 4096, sector(0xa2)),
                                       (h + 8192, sector(0xa3))])]


def two_sequences(img):
    """Entries 5 and then 9 (not its successor): two sequences, the one
    with the higher number is replayed."""
    h = block_host(img, 0)
    return [log_entry(GUID, 5, writes=[(h, sector(0xb1))]),
            log_entry(GUID, 9, writes=[(h, sector(0xb2))])]


def zero_desc(img):
    return [log_entry(GUID, 3, zeroes=[(block_host(img, 1), 256 << 10)],
                      writes=[(block_host(img, 2), sector(0xc1))])]


def bat_through_log(img):
    """The entry makes block 5 present where block 2's data is."""
    bat_sector = img.read(img.bat_offset(), 4096)
    new = bytearray(bat_sector)
    new[5 * 8:6 * 8] = struct.pack("<Q", img.bat(2))
    return [log_entry(GUID, 7, writes=[(img.bat_offset(), bytes(new))])]


def bad_crc(img):
    e = bytearray(one_write(img)[0])
    e[100] ^= 1
    return [bytes(e)]


def bad_desc_seq(img):
    e = bytearray(one_write(img)[0])
    e[64 + 24] ^= 1            # descriptor's sequence number
    e[4:8] = struct.pack("<I", checksum(e))
    return [bytes(e)]


def bad_data_seq(img):
    e = bytearray(one_write(img)[0])
    e[4096 + 4092] ^= 1        # data sector's low sequence word
    e[4:8] = struct.pack("<I", checksum(e))
    return [bytes(e)]


def zero_len_odd(img):
    return [log_entry(GUID, 3, zeroes=[(block_host(img, 1), 1000)])]


def flushed_past_eof(img):
    return [log_entry(GUID, 5, writes=[(block_host(img, 0), sector(1))],
                      flushed_file_offset=1 << 40)]


def grows_file(img):
    return [log_entry(GUID, 5, writes=[(block_host(img, 0), sector(2))],
                      last_file_offset=40 * MiB + 12345)]


def grows_file_aligned(img):
    return [log_entry(GUID, 5, writes=[(block_host(img, 0), sector(2))],
                      last_file_offset=40 * MiB)]


def too_long(img):
    return [log_entry(GUID, 5, writes=[(block_host(img, 0), sector(3))],
                      entry_length=2 * MiB)]


def other_guid(img):
    return [log_entry(bytes(16 * [7]), 5,
                      writes=[(block_host(img, 0), sector(4))])]


def unaligned_offset(img):
    return [log_entry(GUID, 5, writes=[(block_host(img, 0) + 512,
                                        sector(5))])]


def header_rewrite(img):
    """A log entry over the headers' own sector (replayed, then the
    headers rewritten from memory, as QEMU does)."""
    return [log_entry(GUID, 5, writes=[(64 << 10, sector(0x77))])]


CASES = {
    "one-write": (one_write, 0), "two-in-sequence": (two_in_sequence, 0),
    "two-sequences": (two_sequences, 0), "zero-desc": (zero_desc, 0),
    "bat-through-log": (bat_through_log, 0), "bad-crc": (bad_crc, 0),
    "bad-desc-seq": (bad_desc_seq, 0), "bad-data-seq": (bad_data_seq, 0),
    "zero-len-odd": (zero_len_odd, 0),
    "flushed-past-eof": (flushed_past_eof, 0),
    "grows-file": (grows_file, 0), "grows-file-aligned": (grows_file_aligned, 0),
    "too-long": (too_long, 0), "other-guid": (other_guid, 0),
    "unaligned-offset": (unaligned_offset, 0),
    "at-log-end": (one_write, MiB - 8192),
    "mid-log": (two_in_sequence, 300 << 10),
    "header-rewrite": (header_rewrite, 0),
}


def dirty(path, case):
    fn, at = CASES[case]
    with Image(path) as img:
        entries = fn(img)
    make_dirty(path, entries, GUID, at)


@pytest.mark.parametrize("batch", batches(sorted(CASES), 6))
def test_dirty_logs(pair, batch):
    bad = []
    for case in batch:
        name = case + ".vhdx"

        def mk(d):
            base_image(d / name)
            dirty(d / name, case)
        pair.setup(mk)
        for args in (["info", name], ["check", name], ["map", name],
                     ["convert", "-O", "raw", name, "o.raw"],
                     ["check", "-r", "all", name], ["info", name],
                     ["check", name]):
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"{case}: {args}\nREF {r!r}\nQIMG {q!r}")
        # The log region keeps the (stale) entries qemu-io wrote when the
        # base was made: compared elsewhere (test_vhdx.py).
        try:
            assert_same_image(pair.path_ref(name), pair.path_qimg(name),
                              skip_log=True)
        except AssertionError as e:
            bad.append(f"{case}: {e}")
        if r.rc == 0:       # both tools opened the image after the repair
            r = run(REF, ["compare", pair.path_ref(name),
                          pair.path_qimg(name)], pair.ref_dir)
            if r.rc != 0:
                bad.append(f"{case}: compare {r!r}")
    assert not bad, "\n\n".join(bad)


def test_log_looping_entry(tmp_path):
    """An entry exactly as long as the log with a bad checksum: QEMU 7.2's
    search comes back to where it started and never ends; qimg stops and
    finds no valid log."""
    valgrind_skip("timing")
    img = tmp_path / "loop.vhdx"
    base_image(img)
    with Image(img) as i:
        e = bytearray(log_entry(GUID, 5, entry_length=MiB,
                                writes=[(block_host(i, 0), sector(9))]))
        e[100] ^= 1
    make_dirty(img, [bytes(e)], GUID)
    start = time.monotonic()
    r = run(QIMG, ["check", "-r", "all", img], tmp_path, timeout=60)
    assert r.rc == 0, r
    assert time.monotonic() - start < 30


def test_log_write_past_limit(tmp_path):
    """A descriptor far past any sane file size is refused (QEMU 7.2
    writes it, growing a sparse file to 1 PiB)."""
    img = tmp_path / "far.vhdx"
    base_image(img)
    make_dirty(img, [log_entry(GUID, 5, writes=[(1 << 50, sector(1))])], GUID)
    r = run(QIMG, ["check", "-r", "all", img], tmp_path)
    assert r.rc == 1 and "VHDX log entry writes past" in r.err, r
    assert img.stat().st_size < 1 << 30


def last_log_entry(path):
    """(offset in the file, log GUID) of the entry with the highest
    sequence number left in the log."""
    with Image(path) as img:
        h = img.header(img.current_header())
        best = None
        for s in range(h["log_offset"], h["log_offset"] + h["log_length"],
                       4096):
            raw = img.read(s, 64)
            if raw[:4] == b"loge":
                seq = struct.unpack_from("<Q", raw, 16)[0]
                if best is None or seq > best[0]:
                    best = (seq, s, raw[32:48])
        return best


@pytest.mark.parametrize("writer", ["qimg", "qemu"])
def test_written_log_entries_replay(tmp_path, writer):
    """The entry of the last BAT update, made current again with its BAT
    entry wiped, is replayed by the other tool to the same image."""
    img = tmp_path / "w.vhdx"
    subprocess.run([str(REF), "create", "-q", "-f", "vhdx", "-o",
                    "block_size=1M", img, "16M"], check=True)
    cmds = ["write -P 0x31 0 64k", "write -P 0x32 5M 2M"]
    if writer == "qimg":
        r = run(QIMG_IO, ["-f", "vhdx", img] + cmds, tmp_path)
        assert r.rc == 0, r
    else:
        for c in cmds:
            subprocess.run([str(QEMU_IO), "-f", "vhdx", "-c", c, img],
                           check=True, capture_output=True)
    seq, at, guid = last_log_entry(img)
    with Image(img) as i:
        good = i.bat(6)
        i.set_bat(6, 0)
        c = i.current_header()
        i.set_header(c, log_guid=guid)
    replayer = REF if writer == "qimg" else QIMG
    r = run(replayer, ["check", "-r", "all", img], tmp_path)
    assert r.rc == 0 and "1 corruptions" in r.out, r
    with Image(img) as i:
        assert i.bat(6) == good
    r = run(QEMU_IO, ["-f", "vhdx", "-c", "read -P 0x32 5M 2M", "-c",
                      "read -P 0x31 0 64k", img], tmp_path)
    assert r.rc == 0 and "verification failed" not in r.out, r


def test_crash_mid_write(tmp_path):
    """qimg killed at random points of allocating writes: QEMU opens the
    image (replaying a log left behind), finds no corruption it cannot
    repair, and every block reads as old or new data."""
    valgrind_skip("kills qimg-io with SIGKILL after random delays")
    rng = random.Random(7)
    for round_ in range(4):
        img = tmp_path / f"c{round_}.vhdx"
        subprocess.run([str(REF), "create", "-q", "-f", "vhdx", "-o",
                        "block_size=1M", img, "64M"], check=True)
        cmds = [f"write -P {0x40 + k} {k}M 1M" for k in range(48)]
        p = subprocess.Popen([str(QIMG_IO), "-f", "vhdx", str(img)] + cmds,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.01, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = run(REF, ["check", "-r", "all", img], tmp_path)
        assert r.rc == 0, r
        r = run(REF, ["info", img], tmp_path)
        assert r.rc == 0, r
        raw = tmp_path / "c.raw"
        r = run(REF, ["convert", "-O", "raw", img, raw], tmp_path)
        assert r.rc == 0, r
        data = raw.read_bytes()
        for k in range(48):
            blk = data[k * MiB:(k + 1) * MiB]
            assert blk in (bytes([0x40 + k]) * MiB, bytes(MiB)), \
                f"round {round_}: block {k} is neither old nor new"
