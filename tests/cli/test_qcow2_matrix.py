"""The qcow2 feature matrix: for each valid combination of compat, cluster
size, refcount width, extended L2, compression type and preallocation,
qimg creates and writes an image that the reference finds clean and equal
to the expected content, and qimg reads, maps and checks what the reference
writes exactly as the reference does."""
import itertools
import subprocess

import pytest

from conftest import BUILD, QEMU_IO, REF, run

QIMG = BUILD / "qemu-img"
QIMG_IO = BUILD / "tests" / "qimg-io"

OPS = ["write -P 0x11 0 100k", "write -P 0x22 1M 4k", "write -z 2M 1M",
       "write -P 0x33 3100000 5000", "write -P 0x44 7M 1M"]
COMPRESSED = "writec -P 0x55 5M {c}"


def combos():
    for compat, cluster, rbits, extl2, ctype, prealloc in itertools.product(
            ["0.10", "1.1"], [512, 65536], [1, 16, 64], ["off", "on"],
            ["zlib", "zstd"], ["off", "metadata"]):
        if compat == "0.10" and (rbits != 16 or extl2 == "on" or ctype == "zstd"):
            continue
        if extl2 == "on" and cluster < 16384:
            continue
        yield (f"compat={compat},cluster_size={cluster},refcount_bits={rbits},"
               f"extended_l2={extl2},compression_type={ctype},"
               f"preallocation={prealloc}", cluster)


COMBOS = list(combos())


@pytest.mark.parametrize("opts,cluster", COMBOS, ids=[c[0] for c in COMBOS])
def test_matrix(tmp_path, opts, cluster):
    img, mirror = tmp_path / "q.qcow2", tmp_path / "m.raw"
    r = run(QIMG, ["create", "-q", "-f", "qcow2", "-o", opts, img, "8M"], tmp_path)
    assert r.rc == 0, r
    run(REF, ["create", "-q", "-f", "raw", mirror, "8M"], tmp_path)
    # QEMU refuses compressed writes over allocated (preallocated) clusters.
    comp = COMPRESSED.format(c=cluster) if "metadata" not in opts else OPS[0]
    r = run(QIMG_IO, ["-f", "qcow2", img, *OPS, comp], tmp_path)
    assert r.rc == 0, r
    args = [str(QEMU_IO), "-f", "raw"]
    for c in OPS + [comp.replace("writec", "write")]:
        args += ["-c", c]
    subprocess.run(args + [str(mirror)], check=True, capture_output=True)
    chk = run(REF, ["check", img], tmp_path)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    cmp = run(REF, ["compare", "-f", "qcow2", "-F", "raw", img, mirror], tmp_path)
    assert cmp.rc == 0, cmp
    # The reference writes the same into its own image; qimg reads it back.
    ref_img = tmp_path / "r.qcow2"
    run(REF, ["create", "-q", "-f", "qcow2", "-o", opts, ref_img, "8M"], tmp_path)
    args = [str(QEMU_IO), "-f", "qcow2"]
    for c in OPS + [comp.replace("writec", "write -c")]:
        args += ["-c", c]
    subprocess.run(args + [str(ref_img)], check=True, capture_output=True)
    for a in (["map", "--output=json", ref_img], ["check", ref_img],
              ["compare", ref_img, img], ["info", ref_img]):
        q = run(QIMG, a, tmp_path)
        rr = run(REF, a, tmp_path)
        assert (q.rc, q.out, q.err) == (rr.rc, rr.out, rr.err), (a, rr, q)
