"""Reading zstd-compressed clusters that qemu-img wrote: each thread reuses
one decompression context across clusters (qcow2-compress.c), so a single
worker (-m 1) must decompress many clusters of different contents and
sizes in a row.  And a damaged stream fails as in qemu-img."""
import random
import subprocess

import pytest

from conftest import REF


def make_image(d, cluster):
    rnd = random.Random(11)
    with open(d / "src.raw", "wb") as f:
        for i in range(40):
            kind = i % 4
            if kind == 0:
                f.write(bytes(rnd.randrange(256) for _ in range(65536)))
            elif kind == 1:
                f.write(bytes(rnd.choice(b"abc ") for _ in range(65536)))
            elif kind == 2:
                f.write(bytes(65536))
            else:
                f.write(bytes([i]) * 65536)
    subprocess.run([REF, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                    f"compression_type=zstd,cluster_size={cluster}",
                    "src.raw", "z.qcow2"], cwd=d, check=True)


@pytest.mark.parametrize("cluster", ["64k", "4k", "512"])
@pytest.mark.parametrize("workers", ["1", "8"])
def test_zstd_clusters_read_in_a_row(pair, cluster, workers):
    pair.setup(lambda d: make_image(d, cluster))
    pair.same("convert", "-m", workers, "-O", "raw", "z.qcow2", "out.raw")
    r = subprocess.run([REF, "compare", "-f", "raw", "-F", "raw", "src.raw",
                        "out.raw"], cwd=pair.qimg_dir, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def damage_first_compressed(d):
    """Overwrite the frame header of the first zstd stream (the clusters
    of random bytes are stored uncompressed: the first compressed one is
    the first zstd magic in the file)."""
    make_image(d, "64k")
    data = (d / "z.qcow2").read_bytes()
    at = data.index(b"\x28\xb5\x2f\xfd")
    with open(d / "z.qcow2", "r+b") as f:
        f.seek(at + 4)
        f.write(b"\xff" * 16)


def test_zstd_damaged_cluster_then_good_ones(pair):
    """A damaged stream fails the convert as in qemu-img; the clusters
    after it read as qemu-img reads them."""
    pair.setup(damage_first_compressed)
    r = pair.same("convert", "-m", "1", "-O", "raw", "z.qcow2", "out.raw")
    assert r.rc == 1
    for skip in ("1", "3", "5", "39"):
        pair.same("dd", "-O", "raw", "if=z.qcow2", "of=x.raw", "bs=64k",
                  "count=1", "skip=" + skip)
        pair.same_content("x.raw", fmt="raw")
