"""qimg checksum: the blkhash construction of the guest content.

qemu-img has no such command, so the checks are functional: libnbd's
published nbdcopy --blkhash test vectors, an independent Python
implementation of the published construction (below), agreement across
formats, sparseness and backing chains, holes not read (strace), the
qemu-img name hiding the command as 7.2 does, and the JSON progress.
"""
import hashlib
import json
import os
import random
import subprocess

import pytest

from conftest import BUILD, REF, run, make_sparse

QIMG_BIN = BUILD / "qimg"


def blkhash(data: bytes, alg="sha256", bs=64 * 1024):
    """The construction as libnbd documents nbdcopy --blkhash: the digest
    of the concatenated block digests (the last block may be short) and
    the length as a little-endian 64-bit number."""
    root = hashlib.new(alg)
    for off in range(0, len(data), bs):
        root.update(hashlib.new(alg, data[off:off + bs]).digest())
    root.update(len(data).to_bytes(8, "little"))
    return root.hexdigest()


def checksum(cwd, *args):
    r = run(QIMG_BIN, ["checksum", *args], cwd)
    assert r.rc == 0, r
    digest, name = r.out.rstrip("\n").split("  ", 1)
    assert name == str(args[-1])
    return digest


# libnbd's copy/copy-blkhash-known.sh, the cases whose size is a multiple
# of 512 (QEMU rounds raw files up to whole sectors, nbdkit does not).
PUBLISHED = [
    (b"", "sha256",
     "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"),
    (b"12345678" * 512 * 256, "md5", "84fc21ac2f49ac283ff399378d834d1a"),
    (b"12345678" * 512 * 256, "sha256",
     "cbb388edd25e567b85f504c7b345497f9fb4f6bbf4e39768809184b9f9e678f8"),
    (b"12345678" * 512 * 256, "sha512/512k",
     "379f7eb1628058c7abbc4c96941ac972074815ea9ef4aca95eefb2b4f9c29f64"
     "023fff8d966e9fddf08d07bdba548e75298917f10268fdf9ba636c2321a2214e"),
]


def test_published_vectors(tmp_path):
    for i, (data, alg, want) in enumerate(PUBLISHED):
        (tmp_path / f"v{i}.raw").write_bytes(data)
        assert checksum(tmp_path, "-f", "raw", "-a", alg, f"v{i}.raw") == want
        # and the Python model agrees with the published value
        name, _, size = alg.partition("/")
        bs = {"": 65536, "512k": 512 * 1024}[size]
        assert blkhash(data, name, bs) == want


def random_disk(seed, size, bs):
    """Content with holes, data blocks, allocated zero blocks and data
    straddling block boundaries."""
    rnd = random.Random(seed)
    data = bytearray(size)
    for _ in range(24):
        off = rnd.randrange(0, size, 512)
        n = min(rnd.choice([512, 4096, bs, 3 * bs + 512]), size - off)
        data[off:off + n] = rnd.randbytes(n)
    return bytes(data)


def ref_convert(cwd, src, dst, fmt, *opts):
    subprocess.run([str(REF), "convert", "-f", "raw", "-O", fmt, *opts,
                    src, dst], cwd=cwd, check=True, capture_output=True)


def test_formats_and_sparseness_agree(tmp_path):
    """One disk as raw (sparse and fully allocated), qcow2, compressed
    qcow2, vmdk and vdi: one digest, the Python model's, for several
    algorithms and block sizes."""
    size = 3 * 1024 * 1024 + 512 * 3
    data = random_disk(1, size, 65536)
    zero_run = bytes(size)
    make_sparse(tmp_path / "d.raw", size,
                [(o, data[o:o + 512]) for o in range(0, size, 512)
                 if data[o:o + 512] != zero_run[:512]])
    (tmp_path / "full.raw").write_bytes(data)
    ref_convert(tmp_path, "d.raw", "d.qcow2", "qcow2")
    ref_convert(tmp_path, "d.raw", "c.qcow2", "qcow2", "-c")
    ref_convert(tmp_path, "d.raw", "d.vmdk", "vmdk")
    ref_convert(tmp_path, "d.raw", "d.vdi", "vdi")
    for alg, bs in [("sha256", 65536), ("md5", 512), ("sha1", 4096),
                    ("blake2b512", 1 << 20), ("sha3-256", 65536)]:
        want = blkhash(data, alg, bs)
        spec = f"{alg}/{bs}"
        for img in ["d.raw", "full.raw", "d.qcow2", "c.qcow2", "d.vmdk",
                    "d.vdi"]:
            assert checksum(tmp_path, "-a", spec, img) == want, (img, spec)
    assert checksum(tmp_path, "d.qcow2") == blkhash(data)


def test_backing_chain_and_many_windows(tmp_path):
    """The guest view through a backing chain; tiny blocks make several
    parallel windows (64 Ki blocks each)."""
    size = 2 * 1024 * 1024
    base = random_disk(2, size, 4096)
    (tmp_path / "base.raw").write_bytes(base)
    ref_convert(tmp_path, "base.raw", "base.qcow2", "qcow2")
    subprocess.run([str(REF), "create", "-f", "qcow2", "-b", "base.qcow2",
                    "-F", "qcow2", "top.qcow2"], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run(["/usr/bin/qemu-io", "-f", "qcow2", "-c",
                    "write -P 0x5a 1000k 300k", "-c", "write -z 0 64k",
                    "top.qcow2"], cwd=tmp_path, check=True,
                   capture_output=True)
    guest = bytearray(base)
    guest[1000 * 1024:1300 * 1024] = b"\x5a" * 300 * 1024
    guest[0:65536] = bytes(65536)
    guest = bytes(guest)
    assert checksum(tmp_path, "top.qcow2") == blkhash(guest)
    assert checksum(tmp_path, "-a", "md5/16", "top.qcow2") == \
        blkhash(guest, "md5", 16)
    assert checksum(tmp_path, "-a", "sha256/32", "top.qcow2") == \
        blkhash(guest, "sha256", 32)


def test_holes_are_not_read(tmp_path):
    """A 4 GiB sparse file with 64 KiB of data: the zero digest stands for
    the holes, so only about the data is read (strace sums the reads)."""
    size = 4 << 30
    chunk = random.Random(3).randbytes(65536)
    make_sparse(tmp_path / "s.raw", size, [(1 << 30, chunk)])
    out = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=pread64,read,preadv,preadv2",
         "-o", "trace.txt", str(QIMG_BIN), "checksum", "-f", "raw", "s.raw"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        # LeakSanitizer cannot run under ptrace (make check-asan)
        env={**os.environ, "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "")
             + ":detect_leaks=0"})
    data = bytearray(chunk)
    root = hashlib.sha256()
    zero_md = hashlib.sha256(bytes(65536)).digest()
    nblocks = size // 65536
    for b in range(nblocks):
        root.update(hashlib.sha256(data).digest()
                    if b == (1 << 30) // 65536 else zero_md)
    root.update(size.to_bytes(8, "little"))
    assert out.stdout.split()[0] == root.hexdigest()
    read = 0
    for line in (tmp_path / "trace.txt").read_text().splitlines():
        ret = line.rsplit("=", 1)[-1].split()[0]
        if ret.isdigit():
            read += int(ret)
    assert read < 4 << 20, f"{read} bytes read for 64 KiB of data"


def test_errors_and_names(tmp_path):
    (tmp_path / "a.raw").write_bytes(bytes(4096))
    for args, msg in [
            (["-a", "sha999", "a.raw"], "qimg: Unknown algorithm 'sha999'\n"),
            (["-a", "sha256/3", "a.raw"],
             "qimg: Invalid block size '3': it must be a power of two up to "
             "64 MiB\n"),
            (["-a", "sha256/128M", "a.raw"],
             "qimg: Invalid block size '128M': it must be a power of two up "
             "to 64 MiB\n"),
            (["--progress=x", "a.raw"],
             "qimg: Invalid progress option 'x': expected 'json' or an open "
             "file descriptor number\n")]:
        r = run(QIMG_BIN, ["checksum", *args], tmp_path)
        assert (r.rc, r.out, r.err) == (1, "", msg), (args, r)
    r = run(QIMG_BIN, ["checksum", "missing.raw"], tmp_path)
    assert r.rc == 1 and "Could not open 'missing.raw'" in r.err
    r = run(QIMG_BIN, ["checksum", "-a", "help"], tmp_path)
    assert r.rc == 0 and "  sha256\n" in r.out and "  blake2b512\n" in r.out
    r = run(QIMG_BIN, ["checksum"], tmp_path)
    assert r.rc == 1 and "Expecting one image file name" in r.err


def test_hidden_as_qemu_img(pair):
    """Run as qemu-img, checksum is an unknown command, as in 7.2."""
    pair.same("checksum", "a.raw")
    pair.same("checksum")


def test_progress_json(tmp_path):
    """--progress=json on stderr and --progress=FD: one JSON object per
    line, done growing to total, the human -p bar unchanged."""
    size = 4 << 20      # 16-byte blocks: 4 windows of 64 Ki blocks
    (tmp_path / "p.raw").write_bytes(random.Random(4).randbytes(size))
    r = run(QIMG_BIN, ["checksum", "--progress=json", "-a", "md5/16",
                       "p.raw"], tmp_path)
    assert r.rc == 0, r
    lines = [json.loads(x) for x in r.err.splitlines()]
    assert len(lines) >= 3
    assert [x["done"] for x in lines] == sorted(x["done"] for x in lines)
    assert lines[0]["done"] == 0 and lines[-1]["done"] == size
    assert all(x["total"] == size and x["rate"] >= 0 for x in lines)
    assert lines[-1]["percent"] == 100.0
    rfd, wfd = os.pipe()
    proc = subprocess.run([str(QIMG_BIN), "checksum", f"--progress={wfd}",
                           "-p", "p.raw"], cwd=tmp_path, pass_fds=(wfd,),
                          capture_output=True)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        fd_lines = [json.loads(x) for x in f.read().splitlines()]
    assert proc.returncode == 0, proc
    assert fd_lines[0]["done"] == 0 and fd_lines[-1]["done"] == size
    assert proc.stderr == b""
    # the -p bar as qemu-img draws it, then the digest
    assert proc.stdout.startswith(b"    (0.00/100%)\r")
    assert b"    (100.00/100%)\r\n" in proc.stdout
