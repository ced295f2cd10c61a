"""Header fields that make a qcow2 open fail, alone and in pairs: the
reference decides which check comes first, so each pair pins QEMU's order
of checks (backing offset, refcount table, snapshot table, L1 table, the
L1 and refcount reads, encryption, backing name, snapshot read, size).
Offsets near 2^63 probe the end of the addressable range (reads ending
past INT64_MAX aligned down to 1 GiB fail with EIO before any I/O)."""
import struct
import subprocess

import pytest

from conftest import REF, batches

BE32 = lambda v: struct.pack(">I", v)
BE64 = lambda v: struct.pack(">Q", v)
MAXLEN = 0x7fffffffc0000000          # QEMU's BDRV_MAX_LENGTH
NEAR63 = (1 << 63) - 0x10000

L1_BAD = (40, BE64(0x30001))
RT_BAD = (48, BE64(0x10008))
SNAP_BIG = (60, BE32(70000))
LONG_BACKING = [(8, BE64(0x1000)), (16, BE32(5000))]

CASES = {
    # one field
    "l1-off-unaligned": [L1_BAD],
    "l1-off-2^63": [(40, BE64(1 << 63))],
    "l1-off-near-2^63": [(40, BE64(NEAR63))],
    "l1-off-2^62": [(40, BE64(1 << 62))],
    "l1-off-maxlen-64k": [(40, BE64(MAXLEN - 0x10000))],
    "l1-off-maxlen": [(40, BE64(MAXLEN))],
    "l1-size0-off-unaligned": [(24, BE64(0)), (36, BE32(0)), L1_BAD],
    "rt-off-unaligned": [RT_BAD],
    "rt-off-2^63": [(48, BE64(1 << 63))],
    "rt-off-near-2^63": [(48, BE64(NEAR63))],
    "rt-off-maxlen-64k": [(48, BE64(MAXLEN - 0x10000))],
    "rt-off-maxlen": [(48, BE64(MAXLEN))],
    "rt-clusters-0": [(56, BE32(0))],
    "snap-off-unaligned": [(60, BE32(1)), (64, BE64(0x10008))],
    "snap-off-2^63": [(60, BE32(1)), (64, BE64(1 << 63))],
    "snap-off-near-2^63": [(60, BE32(1)), (64, BE64(NEAR63))],
    "snap-off-maxlen": [(60, BE32(1)), (64, BE64(MAXLEN))],
    "snap0-off-unaligned": [(60, BE32(0)), (64, BE64(0x10008))],
    "snap1638-near-2^63": [(60, BE32(1638)), (64, BE64(NEAR63))],
    "snap1639-near-2^63": [(60, BE32(1639)), (64, BE64(NEAR63))],
    "size-2^64-512": [(24, BE64(0xfffffffffffffe00))],
    "size-2^63": [(24, BE64(1 << 63))],
    "size-2^60": [(24, BE64(1 << 60)), (36, BE32(4 << 20))],
    "size-maxlen": [(24, BE64(MAXLEN))],
    "cluster-bits-2^32-1": [(20, BE32(0xffffffff))],
    "cluster-bits-2^31": [(20, BE32(0x80000000))],
    "crypt-3": [(32, BE32(3))],
    "extl2-4k-clusters": [(72, BE64(16)), (20, BE32(12))],
    # pairs: which check comes first
    "l1-bad+rt-bad": [L1_BAD, RT_BAD],
    "rt0+rt-bad": [(56, BE32(0)), RT_BAD],
    "rt-big+rt-bad": [(56, BE32(0xffff)), RT_BAD],
    "size-2^62+rt-bad": [(24, BE64(1 << 62)), RT_BAD],
    "size-2^62+l1-huge": [(24, BE64(1 << 62)), (36, BE32(0x7fffffff))],
    "size-2^62+snap-bad": [(24, BE64(1 << 62)), (60, BE32(1)),
                           (64, BE64(0x10008))],
    "snap-big+rt-bad": [SNAP_BIG, RT_BAD],
    "snap-big+l1-bad": [SNAP_BIG, L1_BAD],
    "size-2^64-512+l1-bad": [(24, BE64(0xfffffffffffffe00)), L1_BAD],
    "size-2^64-512+snap-big": [(24, BE64(0xfffffffffffffe00)), SNAP_BIG],
    "crypt3+l1-bad": [(32, BE32(3)), L1_BAD],
    "crypt3+cluster-bits": [(32, BE32(3)), (20, BE32(99))],
    "crypt3+l1-eio": [(32, BE32(3)), (40, BE64(MAXLEN))],
    "crypt3+snap-eio": [(32, BE32(3)), (60, BE32(1)), (64, BE64(MAXLEN))],
    "rt-eio+l1-eio": [(48, BE64(MAXLEN)), (40, BE64(MAXLEN))],
    "backing-off-huge+rt-bad": [(8, BE64(1 << 62)), (16, BE32(10)), RT_BAD],
    "backing-long+l1-bad": LONG_BACKING + [L1_BAD],
    "backing-long+snap-big": LONG_BACKING + [SNAP_BIG],
    "backing-long+crypt3": LONG_BACKING + [(32, BE32(3))],
    "backing-long+l1-eio": LONG_BACKING + [(40, BE64(MAXLEN))],
    "backing-long+rt-eio": LONG_BACKING + [(48, BE64(MAXLEN))],
    "backing-long+snap-eio": LONG_BACKING + [(60, BE32(1)),
                                             (64, BE64(MAXLEN))],
    "backing-long+size-2^64-512": LONG_BACKING +
                                  [(24, BE64(0xfffffffffffffe00))],
    "extl2-4k+rt-bad": [(72, BE64(16)), (20, BE32(12)), RT_BAD],
}


def make(d, name):
    img = d / f"{name}.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", str(img), "4M"],
                   check=True)
    with open(img, "r+b") as f:
        for off, data in CASES[name]:
            f.seek(off)
            f.write(data)


@pytest.mark.parametrize("batch", batches(sorted(CASES)))
def test_open_checks_in_qemu_order(pair, batch):
    pair.setup(lambda d: [make(d, name) for name in batch])
    for name in batch:
        pair.same("info", f"{name}.qcow2", timeout=20)
