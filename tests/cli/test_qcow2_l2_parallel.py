"""Concurrent writes that each need a new L2 table (qcow2-cluster.c flushes
a new table without the image lock, other writers of the same L1 index
waiting): many requests in flight over small clusters, so that nearly
every request allocates a table, some cross tables, and more tables are
pending than the pending list holds.  The image must end as qemu-img's
does (same content and allocation, clean check without leaks)."""
import json
import subprocess

import pytest

from conftest import QEMU_IO

REF = "/usr/bin/qemu-img"


def make_images(opts, snapshot=False, backing=False):
    def setup(d):
        args = ["create", "-q", "-f", "qcow2", "-o", opts]
        if backing:
            subprocess.run([REF, "create", "-q", "-f", "qcow2", "base.qcow2",
                            "64M"], cwd=d, check=True)
            subprocess.run([str(QEMU_IO), "-c", "write -P 3 0 64M",
                            "base.qcow2"], cwd=d, check=True,
                           capture_output=True)
            args += ["-b", "base.qcow2", "-F", "qcow2"]
        subprocess.run([REF, *args, "t.qcow2", "64M"], cwd=d, check=True)
        if snapshot:
            # Some tables exist and are shared: those writes copy them.
            subprocess.run([str(QEMU_IO), "-c", "write -P 9 0 64M",
                            "t.qcow2"], cwd=d, check=True, capture_output=True)
            subprocess.run([REF, "snapshot", "-c", "s", "t.qcow2"], cwd=d,
                           check=True)
            subprocess.run([str(QEMU_IO), "-c", "discard 0 32M", "t.qcow2"],
                           cwd=d, check=True, capture_output=True)
    return setup


def guest_map(pair_dir):
    out = subprocess.run([REF, "map", "--output=json", "t.qcow2"],
                         cwd=pair_dir, check=True, capture_output=True,
                         text=True).stdout
    # Host offsets differ with the order requests finished in (and so do
    # the splits where hosts stop being contiguous): compare the guest
    # allocation only, adjacent extents of the same kind merged.
    merged = []
    for e in json.loads(out):
        kind = {k: v for k, v in e.items()
                if k not in ("offset", "start", "length")}
        if merged and merged[-1][0] == kind:
            merged[-1][1] += e["length"]
        else:
            merged.append([kind, e["length"]])
    return merged


CASES = [
    # (create options, bench arguments, snapshot, backing)
    ("cluster_size=4k", ["-s", "4k", "-S", "1M", "-d", "8"], False, False),
    ("cluster_size=4k", ["-s", "4k", "-S", "1M", "-d", "64"], False, False),
    ("cluster_size=512", ["-s", "64k", "-S", "96k", "-d", "16"], False, False),
    ("cluster_size=16k,extended_l2=on", ["-s", "2k", "-S", "3M", "-d", "8"],
     False, False),
    ("cluster_size=4k,lazy_refcounts=on", ["-s", "4k", "-S", "1M", "-d", "8"],
     False, False),
    ("cluster_size=4k,refcount_bits=1", ["-s", "8k", "-S", "2M", "-d", "8"],
     False, False),
    ("cluster_size=4k", ["-s", "4k", "-S", "512k", "-d", "8"], True, False),
    ("cluster_size=4k", ["-s", "4k", "-S", "1M", "-d", "8"], False, True),
]


@pytest.mark.parametrize("cache", ["writeback", "none"])
@pytest.mark.parametrize("opts,bench,snapshot,backing", CASES)
def test_parallel_l2_allocation(pair, cache, opts, bench, snapshot, backing):
    pair.setup(make_images(opts, snapshot, backing))
    args = ["bench", "-w", "-c", "200", "-t", cache, "--pattern=0x6b",
            *bench, "t.qcow2"]
    r, q = pair.ref(*args), pair.qimg(*args)
    assert (q.rc, q.err) == (r.rc, r.err)
    chk = subprocess.run([REF, "check", "t.qcow2"], cwd=pair.qimg_dir,
                         capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert "leaked" not in chk.stdout, chk.stdout
    pair.same_content("t.qcow2", fmt="qcow2")
    assert guest_map(pair.qimg_dir) == guest_map(pair.ref_dir)
