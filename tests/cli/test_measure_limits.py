"""measure refuses sizes whose L1 table would pass QEMU's 32 MiB limit,
with qemu-img's message, at the exact boundary, for every cluster
geometry, from --size and from a source image."""
import subprocess

import pytest

GiB = 1 << 30

CASES = [
    (128 * GiB, "cluster_size=512"),
    (128 * GiB + 512, "cluster_size=512"),
    (10 << 40, "cluster_size=512,preallocation=full"),
    (20 << 40, "cluster_size=4k"),
    (64 << 40, "cluster_size=16k,extended_l2=on"),
    (64 << 40, "cluster_size=16k"),
    (70 << 40, "cluster_size=16k,extended_l2=on"),
    ((1 << 63) - 512, "cluster_size=2M"),
]


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("size,opts", CASES)
def test_measure_size_limit(pair, size, opts, output):
    pair.same("measure", f"--output={output}", "-O", "qcow2", "-o", opts,
              "--size", str(size))


@pytest.mark.parametrize("opts", ["cluster_size=512", "cluster_size=64k"])
def test_measure_large_source(pair, opts):
    pair.setup(lambda d: subprocess.run(["truncate", "-s", "200G",
                                         str(d / "big.raw")], check=True))
    pair.same("measure", "-O", "qcow2", "-o", opts, "-f", "raw", "big.raw")
