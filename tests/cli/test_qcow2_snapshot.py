"""Internal snapshots made by the reference, read by qimg: info listing
(human and JSON), snapshot -l, measure -l, check; and qimg writing into an
image with snapshots (copy-on-write of shared clusters) stays clean for the
reference and leaves the snapshot's content untouched."""
import subprocess

import pytest

from conftest import BUILD, QEMU_IO, REF, run

QIMG_IO = BUILD / "tests" / "qimg-io"


def make_snapshots(d, geom=()):
    img = d / "sn.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", *geom, str(img), "4M"],
                   check=True)
    subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 128k", "-c",
                    "write -P 3 3M 64k", str(img)], check=True, capture_output=True)
    subprocess.run([str(REF), "snapshot", "-c", "s1", str(img)], check=True)
    subprocess.run([str(QEMU_IO), "-c", "write -P 2 0 64k", str(img)], check=True,
                   capture_output=True)
    subprocess.run([str(REF), "snapshot", "-c", "a_much_longer_snapshot_name",
                    str(img)], check=True)


@pytest.mark.parametrize("args", [
    ["info", "sn.qcow2"],
    ["info", "--output=json", "sn.qcow2"],
    ["info", "-U", "sn.qcow2"],
    ["snapshot", "-l", "sn.qcow2"],
    ["snapshot", "-l", "-q", "sn.qcow2"],
    ["snapshot", "sn.qcow2"],
    ["snapshot", "-l", "-a", "s1", "sn.qcow2"],
    ["check", "sn.qcow2"],
    ["check", "--output=json", "sn.qcow2"],
    ["map", "--output=json", "sn.qcow2"],
    ["measure", "-l", "s1", "sn.qcow2"],
    ["measure", "-l", "1", "-O", "qcow2", "sn.qcow2"],
    ["measure", "-l", "snapshot.id=2", "sn.qcow2"],
    ["measure", "-l", "snapshot.name=s1", "-O", "qcow2", "sn.qcow2"],
    ["measure", "-l", "snapshot.name=s1,snapshot.id=2", "sn.qcow2"],
    ["measure", "-l", "nope", "sn.qcow2"],
])
@pytest.mark.parametrize("geom", [[], ["-o", "cluster_size=4k"],
                                  ["-o", "compat=0.10"]],
                         ids=["default", "4k", "v2"])
def test_reference_snapshots(pair, args, geom):
    pair.setup_once(lambda d: make_snapshots(d, geom))
    pair.same(*args)


def test_qimg_writes_over_snapshot(workdir):
    make_snapshots(workdir)
    img = workdir / "sn.qcow2"
    r = run(QIMG_IO, ["-f", "qcow2", img, "write -P 9 0 256k",
                      "write -P 8 3M 4k", "discard 3M 64k"], workdir)
    assert r.rc == 0, r
    chk = run(REF, ["check", img], workdir)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    # The snapshot still holds what it held when it was taken.
    subprocess.run([str(REF), "convert", "-l", "s1", "-O", "raw", str(img),
                    str(workdir / "s1.raw")], check=True)
    r = subprocess.run([str(QEMU_IO), "-f", "raw", "-c", "read -P 1 0 128k",
                        "-c", "read -P 3 3M 64k", str(workdir / "s1.raw")],
                       capture_output=True, text=True)
    assert "Pattern verification failed" not in r.stdout, r.stdout
    r = subprocess.run([str(QEMU_IO), "-c", "read -P 9 0 256k", str(img)],
                       capture_output=True, text=True)
    assert "Pattern verification failed" not in r.stdout, r.stdout
