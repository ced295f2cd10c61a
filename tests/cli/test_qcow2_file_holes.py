"""qcow2 data clusters over holes in the image file.  qemu-img asks the
file for holes under data clusters only when the image looks preallocated
with metadata (clusters in use reach 10/9 of what the file really
allocates), so map, compare, measure and convert must tell data from zero
exactly where it does.  Holes are punched into the host area of data
clusters, a little (still data), just enough to cross that limit, or a
lot; a file extended with a hole at its end must not change the answer."""
import json
import os
import subprocess

import pytest

from conftest import QEMU_IO, REF, run

K = 1024
M = 1024 * K
CLUSTER = 64 * K

# (data written, [(cluster index, offset in it, length punched)], extend)
CASES = {
    "few-holes": (M, [(2, 16 * K, 4 * K)], 0),
    "at-limit": (M, [(2, 16 * K, 8 * K)], 0),
    "over-limit": (M, [(2, 16 * K, 8 * K), (5, 60 * K, 4 * K)], 0),
    "many-holes": (M, [(c, 4 * K, 56 * K) for c in range(1, 12)], 0),
    "big-image": (4 * M, [(2, 16 * K, 8 * K)], 0),
    "extended": (M, [(2, 16 * K, 4 * K)], 100),
}


def make_image(d, case):
    data, punches, extend = CASES[case]
    img = d / "h.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", str(img), "8M"],
                   check=True)
    subprocess.run([str(QEMU_IO), "-f", "qcow2", "-c", f"write -P 7 0 {data}",
                    str(img)], check=True, capture_output=True)
    m = json.loads(run(REF, ["map", "--output=json", img], d).out)
    host = next(e["offset"] for e in m if e["data"])
    for cl, off, length in punches:
        subprocess.run(["fallocate", "-p", "-o", str(host + cl * CLUSTER + off),
                        "-l", str(length), str(img)], check=True)
    if extend:
        os.truncate(img, os.stat(img).st_size + extend * CLUSTER)
    return img


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("args", [
    ["map", "--output=json", "h.qcow2"],
    ["map", "h.qcow2"],
    ["map", "--output=json", "--start-offset=150K", "--max-length=100K",
     "h.qcow2"],
    ["compare", "h.qcow2", "h.qcow2"],
    ["measure", "-O", "qcow2", "h.qcow2"],
])
def test_holes_under_data(pair, case, args):
    # One set of files for both tools: the file layout is the point.
    pair.setup_once(lambda d: make_image(d, case))
    pair.same(*args)


@pytest.mark.parametrize("case", ["few-holes", "many-holes"])
def test_convert_holes_under_data(pair, case):
    pair.setup_once(lambda d: make_image(d, case))
    pair.same("convert", "-O", "qcow2", "h.qcow2", "out.qcow2")
    pair.same_content("out.qcow2", "qcow2")
    r = run(REF, ["map", "--output=json", "out.qcow2"], pair.ref_dir)
    q = run(REF, ["map", "--output=json", "out.qcow2"], pair.qimg_dir)
    assert q.out == r.out
