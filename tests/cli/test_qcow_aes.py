"""AES-encrypted qcow (version 1) images against qemu-img 7.2: the
reference's images read by qimg (4 KiB and 512-byte clusters, compressed
clusters, a backing file), the same writes giving byte-identical images
(qemu-io on one side, qimg-io on the other), qimg's images read by the
reference, create and convert to encrypted images, info, and the open
errors (missing or unknown secret, unexpected options, a wrong password,
which legacy AES cannot detect: both tools read the same garbage)."""
import subprocess

from conftest import QIMG, REF, needs_format, run, same_each
from cryptotest import (OBJ, SECRET_BAD, qemu_io, qimg_io, read_raw,
                        same_each_norm, spec)
from fmtcommon import same_files

pytestmark = needs_format("qcow")

AES = "encrypt.format=aes,encrypt.key-secret=s0"

# Disjoint ranges: whole clusters, partial clusters, partial sectors.
WRITES = [
    ("write -P 0x11 0 100k", "read -P 0x11 0 100k"),
    ("write -P 0x22 200001 3000", "read -P 0x22 200001 3000"),
    ("write -P 0x33 1M 64k", "read -P 0x33 1M 64k"),
    ("write -z 1200k 4k", "read -P 0 1200k 4k"),
    ("write -P 0x44 3M 1000", "read -P 0x44 3M 1000"),
    ("write -P 0x55 3000k 512", "read -P 0x55 3000k 512"),
]


def ref_make(d, name, *args, size="4M"):
    r = run(REF, ["create", "-q", "-f", "qcow", *OBJ, *args, d / name, size],
            d)
    assert r.rc == 0, r


def both_read_same(d, name):
    """qimg's and the reference's raw conversions of an encrypted image."""
    assert read_raw(QIMG, "qcow", d / name, "q.raw", d) == \
        read_raw(REF, "qcow", d / name, "r.raw", d)


def test_reference_images(workdir):
    """Images written by the reference (plain and compressed clusters, a
    backing file with 512-byte clusters) read by qimg as by the reference;
    then qimg writes into them and the reference reads its patterns."""
    d = workdir
    ref_make(d, "a.qcow", "-o", AES)
    qemu_io("qcow", d / "a.qcow", *(w for w, _ in WRITES))
    both_read_same(d, "a.qcow")
    # Compressed clusters are stored in clear, others encrypted.
    ref_make(d, "c.qcow", "-o", AES)
    qemu_io("qcow", d / "c.qcow", "write -c -P 0x31 0 4k",
            "write -P 0x66 1024 512", "write -c -P 0x32 1M 4k")
    both_read_same(d, "c.qcow")
    # 512-byte clusters over an unencrypted backing file.
    ref_make(d, "base.qcow")
    subprocess.run(["qemu-io", "-f", "qcow", "-c", "write -P 0x77 0 4M",
                    d / "base.qcow"], check=True, capture_output=True)
    ref_make(d, "t.qcow", "-o", AES + ",backing_file=base.qcow,"
             "backing_fmt=qcow")
    qemu_io("qcow", d / "t.qcow", *(w for w, _ in WRITES[:3]))
    both_read_same(d, "t.qcow")
    for name in ("a.qcow", "t.qcow"):
        qimg_io("qcow", d / name, "write -P 0x99 2M 5000",
                "write -P 0x98 100k 511")
        qemu_io("qcow", d / name, "read -P 0x99 2M 5000",
                "read -P 0x98 100k 511", *(c for _, c in WRITES[:3]))
        both_read_same(d, name)


def test_same_writes_same_files(pair):
    """The same creates, converts and writes give byte-identical files;
    the reference reads what qimg wrote."""
    for d in pair.dirs():
        (d / "src.raw").write_bytes(b"\x5a" * 300000 + b"\x00" * 9000 +
                                    b"\x33" * 7001)
    for o in (AES, "encryption=on,encrypt.key-secret=s0"):
        pair.same("create", "-f", "qcow", *OBJ, "-o", o, "e.qcow", "4M")
        same_files(pair, "e.qcow")
    for args in (["-o", AES], ["-c", "-o", AES],
                 ["-o", AES + ",backing_file=e.qcow,backing_fmt=qcow"]):
        pair.same("convert", *OBJ, "-O", "qcow", *args, "src.raw", "o.qcow")
        same_files(pair, "o.qcow")
    qemu_io("qcow", pair.path_ref("e.qcow"), *(w for w, _ in WRITES))
    qimg_io("qcow", pair.path_qimg("e.qcow"), *(w for w, _ in WRITES))
    same_files(pair, "e.qcow")
    qemu_io("qcow", pair.path_qimg("e.qcow"), *(r for _, r in WRITES))
    # convert -c to an encrypted image is refused; compressed clusters
    # (stored in clear) partly overwritten as QEMU does it.
    pair.same("convert", "-c", *OBJ, "-O", "qcow", "-o", AES, "src.raw",
              "c.qcow")
    pair.same("create", "-q", "-f", "qcow", *OBJ, "-o", AES, "c.qcow", "1M")
    qemu_io("qcow", pair.path_ref("c.qcow"), "write -c -P 0x31 0 4k",
            "write -P 0x12 1000 1000")
    qimg_io("qcow", pair.path_qimg("c.qcow"), "writec -P 0x31 0 4k",
            "write -P 0x12 1000 1000")
    same_files(pair, "c.qcow")
    img = spec("qcow", "e.qcow")
    # Disk sizes may differ by a block the reference's file system keeps
    # past the end: normalised.
    same_each_norm(pair, "info", [["e.qcow"], ["--output=json", "e.qcow"],
                             [*OBJ, "--image-opts", img],
                             [*OBJ, "--output=json", "--image-opts", img],
                             [*OBJ, "json:{\"driver\": \"qcow\", "
                              "\"file.filename\": \"e.qcow\", "
                              "\"encrypt.key-secret\": \"s0\"}"]])
    same_each(pair, "map", [[*OBJ, "--image-opts", img],
                            [*OBJ, "--output=json", "--image-opts", img]],
              scratch=())
    pair.same("convert", *OBJ, "--image-opts", img, "-O", "raw", "out.raw")
    same_files(pair, "out.raw")
    pair.same("compare", *OBJ, "--image-opts", img, "out.raw")


def test_open_errors(pair):
    """Opens without the key or with bad options fail as 7.2's; a wrong
    password reads the same garbage in both tools."""
    pair.same("create", "-q", "-f", "qcow", *OBJ, "-o", AES, "e.qcow", "1M")
    pair.same("create", "-q", "-f", "qcow", "p.qcow", "1M")
    for d in pair.dirs():
        qemu_io("qcow", d / "e.qcow", "write -P 0x42 0 64k")
    base = "driver=qcow,file.filename="
    cases = [
        ["e.qcow"],
        ["--image-opts", base + "e.qcow"],
        ["--image-opts", base + "e.qcow,encrypt.key-secret=nope"],
        [*OBJ, "--image-opts", base + "e.qcow,encrypt.key-secret=nope"],
        [*OBJ, "--image-opts", base + "e.qcow,encrypt.key-secret=s0,"
         "encrypt.foo=1"],
        [*OBJ, "--image-opts", base + "e.qcow,encrypt.key-secret=s0,"
         "encrypt.cipher-alg=aes-128"],
        [*OBJ, "--image-opts", base + "e.qcow,encrypt.key-secret=s0,"
         "encrypt.format=luks"],
        [*OBJ, "--image-opts", base + "e.qcow,encrypt.key-secret=s0,"
         "encrypt.format=aes"],
        ["--image-opts", base + "e.qcow,encrypt.foo=1"],
        ["--image-opts", base + "p.qcow,encrypt.format=aes"],
        [*OBJ, "--image-opts", base + "p.qcow,encrypt.key-secret=s0"],
        ["--object", SECRET_BAD, "--image-opts",
         base + "e.qcow,encrypt.key-secret=s0"],
    ]
    same_each(pair, "convert", [c + ["-O", "raw", "out.raw"]
                                for c in cases])
    same_each_norm(pair, "info", cases[2:])
    # Wrong password: no key check in legacy AES, the same garbage.
    for tool, d in ((REF, pair.ref_dir), (QIMG, pair.qimg_dir)):
        r = run(tool, ["convert", "--object", SECRET_BAD, "--image-opts",
                       spec("qcow", "e.qcow"), "-O", "raw", "bad.raw"], d)
        assert r.rc == 0, r
    same_files(pair, "bad.raw")
    assert pair.path_qimg("bad.raw").read_bytes()[:512] != b"\x42" * 512
