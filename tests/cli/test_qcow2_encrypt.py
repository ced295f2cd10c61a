"""qcow2 encryption against the reference: encrypt.format=luks and the
legacy aes (create options, their errors, layout checked by the
reference's check and header), open errors, info, map, cross reads and
writes both ways, measure, convert to and from encrypted images, key
slot amendment, encrypted backing chains with commit."""
import os
import struct
import subprocess

import pytest

from conftest import QEMU_IO, QIMG, REF, batches, run
from cryptotest import (OBJ, OBJS, qemu_io, qimg_io, read_raw, ref_retry,
                        run_retry, same_each_norm, same_norm, spec)

LUKS = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"
AES = "encrypt.format=aes,encrypt.key-secret=s0"

CREATE_ERRORS = [
    "encrypt.format=luks", "encrypt.format=aes", "encryption=on",
    "encrypt.format=foo,encrypt.key-secret=s0",
    "encrypt.key-secret=s0", "encrypt.cipher-alg=aes-128",
    "encryption=on,encrypt.format=luks,encrypt.key-secret=s0",
    "encryption=off,encrypt.format=luks,encrypt.key-secret=s0",
    "encryption=maybe", "encryption=yes,encrypt.key-secret=s0",
    "encrypt.format=aes,encrypt.key-secret=s0,encrypt.cipher-alg=aes-128",
    "encrypt.format=aes,encrypt.key-secret=s9",
    "encrypt.format=luks,encrypt.key-secret=s9",
    LUKS + ",encrypt.cipher-alg=foo", LUKS + ",encrypt.cipher-mode=foo",
    LUKS + ",encrypt.ivgen-alg=foo", LUKS + ",encrypt.hash-alg=foo",
    LUKS + ",encrypt.ivgen-hash-alg=foo", LUKS + ",encrypt.iter-time=abc",
    LUKS + ",encrypt.cipher-alg=cast5-128",
    LUKS + ",encrypt.cipher-alg=des",
    LUKS + ",encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha1",
    LUKS + ",encrypt.foo=bar",
    "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time="
    "18446744073709551615",
]


@pytest.mark.parametrize("batch", batches(CREATE_ERRORS, 12))
def test_create_errors(pair, batch):
    bad = []
    for o in batch:
        args = ("create", "-f", "qcow2", *OBJ, "-o", o, "x.qcow2", "1M")
        r, q = ref_retry(pair, *args), pair.qimg(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"-o {o}\nREF {r!r}\nQIMG {q!r}")
        if pair.path_ref("x.qcow2").exists() != \
                pair.path_qimg("x.qcow2").exists():
            bad.append(f"-o {o}: file left on one side only")
        for d in pair.dirs():
            if (d / "x.qcow2").exists():
                (d / "x.qcow2").unlink()
    assert not bad, "\n\n".join(bad)


def header(path):
    """(l1 offset, crypt method, crypto extension bytes) of a qcow2."""
    h = open(path, "rb").read(65536)
    i = h.find(bytes.fromhex("0537be77"), 72)
    return (struct.unpack(">Q", h[40:48])[0], struct.unpack(">I", h[32:36])[0],
            h[i + 8:i + 24] if i > 0 else b"")


CREATE = [
    LUKS, "encryption=on,encrypt.key-secret=s0,compat=0.10",
    LUKS + ",cluster_size=512", LUKS + ",cluster_size=2M",
    LUKS + ",preallocation=metadata,lazy_refcounts=on,refcount_bits=1",
    "encryption=off," + LUKS + ",encrypt.cipher-alg=aes-128,"
    "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha512",
]


def test_create_layout(pair):
    """Same layout as the reference's: header, L1 and LUKS header where
    the reference puts them; the reference's check passes on ours."""
    bad = []
    for o in CREATE:
        same_norm(pair, "create", "-f", "qcow2", *OBJ, "-o", o, "x.qcow2",
                  "4M")
        hr, hq = header(pair.path_ref("x.qcow2")), \
            header(pair.path_qimg("x.qcow2"))
        if hr != hq or os.path.getsize(pair.path_ref("x.qcow2")) != \
                os.path.getsize(pair.path_qimg("x.qcow2")):
            bad.append(f"-o {o}: header/size {hr} {hq}")
        for d in pair.dirs():
            r = run(REF, ["check", *OBJ, "--image-opts",
                          spec("qcow2", "x.qcow2")], d)
            if r.rc:
                bad.append(f"-o {o}: {d.name} check {r!r}")
        same_norm(pair, "info", "x.qcow2")
        for d in pair.dirs():
            (d / "x.qcow2").unlink()
    assert not bad, "\n".join(bad)


WRITES = [  # disjoint ranges
    ("write -P 0x11 0 100k", "read -P 0x11 0 100k"),
    ("write -P 0x22 200001 3000", "read -P 0x22 200001 3000"),
    ("write -P 0x33 1M 64k", "read -P 0x33 1M 64k"),
    ("write -z 1200k 4k", "read -P 0 1200k 4k"),
    ("write -P 0x44 3M 1000", "read -P 0x44 3M 1000"),
    ("discard 2M 64k", "read -P 0 2M 64k"),
]


@pytest.mark.parametrize("opts", [LUKS, AES + ",cluster_size=4k",
                                  LUKS + ",extended_l2=on,"
                                  "encrypt.cipher-alg=twofish-256,"
                                  "encrypt.cipher-mode=cbc,"
                                  "encrypt.ivgen-alg=plain64"])
def test_cross_io(workdir, opts):
    """qimg writes (partial sectors too) into the reference's images and
    its own; the reference reads the patterns and checks the image; and
    qimg reads what qemu-io wrote."""
    for maker in (REF, QIMG):
        img = workdir / "x.qcow2"
        assert run_retry(maker, ["create", "-q", "-f", "qcow2", *OBJ, "-o",
                                 opts, img, "4M"], workdir).rc == 0
        qimg_io("qcow2", img, *(w for w, _ in WRITES))
        qemu_io("qcow2", img, *(r for _, r in WRITES))
        r = run(REF, ["check", *OBJ, "--image-opts", spec("qcow2", img)],
                workdir)
        assert r.rc == 0, r
        qemu_io("qcow2", img, "write -P 0x55 512 1536", "write -P 0x66 4000k 96k")
        assert read_raw(QIMG, "qcow2", img, "q.raw", workdir) == \
            read_raw(REF, "qcow2", img, "r.raw", workdir)
        img.unlink()


@pytest.fixture(scope="module")
def ref_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("qcow2enc")
    for name, opts in [("l.qcow2", LUKS), ("a.qcow2", AES)]:
        assert run_retry(REF, ["create", "-q", "-f", "qcow2", *OBJ, "-o",
                               opts, d / name, "4M"], d).rc == 0
        qemu_io("qcow2", d / name, "write -P 0x61 0 1M",
                "write -P 0x62 2M 5000")
    return d


def put(pair, ref_images, *names):
    """Copies of the module's reference images, holes kept."""
    for name in names:
        for d in pair.dirs():
            subprocess.run(["cp", "--sparse=always", str(ref_images / name),
                            str(d / name)], check=True)


@pytest.mark.parametrize("name", ["l.qcow2", "a.qcow2"])
def test_reference_images(pair, ref_images, name):
    put(pair, ref_images, name)
    img = ["--image-opts", spec("qcow2", name)]
    for args in (["info", name], ["info", "--output=json", name],
                 ["info", *OBJ, *img], ["info", *OBJ, "--output=json", *img],
                 ["map", *OBJ, *img], ["map", "--output=json", *OBJ, *img],
                 ["check", name], ["check", *OBJ, *img],
                 ["check", "--output=json", *OBJ, *img],
                 ["convert", name, "-O", "raw", "x.raw"],
                 ["convert", *OBJ, *img, "-O", "raw", "x.raw"],
                 ["compare", *OBJ, *img, "driver=raw,file.filename=x.raw"],
                 ["convert", "--object", "secret,id=s0,data=bad", *img, "-O",
                  "raw", "y.raw"],
                 ["info", *OBJ, "--image-opts",
                  spec("qcow2", name, extra=",encrypt.format=luks")],
                 ["info", *OBJ, "--image-opts",
                  spec("qcow2", name, extra=",encrypt.format=aes")],
                 ["info", *OBJ, "--image-opts",
                  spec("qcow2", name, extra=",encrypt.format=foo")],
                 ["info", *OBJ, "--image-opts",
                  spec("qcow2", name, extra=",encrypt.cipher-alg=x")],
                 ["info", "json:{\"driver\": \"qcow2\", \"encrypt\": "
                  "{\"key-secret\": \"s0\"}, \"file\": {\"filename\": "
                  f"\"{name}\"}}}}", *OBJ]):
        pair.same(*args)
    pair.same_content("x.raw")


def test_open_errors(pair):
    """Options that do not match the header, and a LUKS method without
    its header extension."""
    pair.sh("qemu-img create -q -f qcow2 p.qcow2 1M")
    pair.same("info", *OBJ, "--image-opts",
              spec("qcow2", "p.qcow2", extra=",encrypt.format=luks"))
    pair.same("info", *OBJ, "--image-opts", spec("qcow2", "p.qcow2"))
    pair.same("info", "--image-opts",
              spec("qcow2", "p.qcow2", extra=",encrypt.cipher-alg=x"))
    # LUKS without its header extension: QEMU 7.2 crashes (docs/LIMITS.md)
    with open(pair.path_qimg("p.qcow2"), "r+b") as f:
        f.seek(32)
        f.write(struct.pack(">I", 2))
    q = pair.qimg("info", "p.qcow2")
    assert q.rc == 1 and "Missing CRYPTO header for crypt method 2" in q.err
    for d in pair.dirs():
        with open(d / "p.qcow2", "r+b") as f:
            f.seek(32)
            f.write(struct.pack(">I", 3))
    pair.same("info", "p.qcow2")


def test_measure(pair, ref_images):
    put(pair, ref_images, "l.qcow2")
    same_each_norm(pair, "measure", [
        ["-O", "qcow2", "-o", "encrypt.format=luks", "--size", "1G"],
        ["-O", "qcow2", "-o", "encrypt.format=aes", "--size", "1G"],
        [*OBJ, "-O", "qcow2", "-o", LUKS, "--size", "1G"],
        [*OBJ, "-O", "qcow2", "-o", LUKS + ",cluster_size=512", "--size",
         "100M"],
        [*OBJ, "--output=json", "-O", "qcow2", "-o", LUKS +
         ",encrypt.cipher-alg=aes-128", "--size", "10G"],
        [*OBJ, "-O", "qcow2", "-o", LUKS, "--image-opts",
         spec("qcow2", "l.qcow2")],
    ])


def test_convert(pair, ref_images):
    """raw -> encrypted qcow2 (target options carry the key) -> raw, each
    tool reading the other's; -c with encryption refused."""
    put(pair, ref_images, "l.qcow2")
    for d in pair.dirs():
        with open(d / "src.raw", "wb") as f:
            f.truncate(6 << 20)
    pair.sh("qemu-io -f raw -c 'write -P 0x7 0 2M' -c 'write -P 9 5M 4k' "
            "src.raw")
    for o in (LUKS, AES, LUKS + ",preallocation=metadata"):
        same_norm(pair, "convert", *OBJ, "-O", "qcow2", "-o", o, "src.raw",
                  "t.qcow2")
        for tool, cwd, other in [(REF, pair.ref_dir, pair.qimg_dir),
                                 (QIMG, pair.qimg_dir, pair.ref_dir)]:
            got = read_raw(tool, "qcow2", other / "t.qcow2", "b.raw", cwd)
            assert got == (cwd / "src.raw").read_bytes(), (o, tool)
        for d in pair.dirs():
            (d / "t.qcow2").unlink()
    pair.same("convert", "-c", *OBJ, "-O", "qcow2", "-o", LUKS, "src.raw",
              "c.qcow2")
    pair.same("convert", *OBJ, "--image-opts", spec("qcow2", "l.qcow2"),
              "-O", "qcow2", "-o", LUKS.replace("s0", "s1"), "u.qcow2")
    same_norm(pair, "convert", *OBJS, "--image-opts", spec("qcow2", "l.qcow2"),
              "-O", "qcow2", "-o", LUKS.replace("key-secret=s0",
                                                "key-secret=s1"), "v.qcow2")
    pair.same("compare", *OBJS, "--image-opts", spec("qcow2", "l.qcow2"),
              spec("qcow2", "v.qcow2", "s1"))


AMEND = [
    "encrypt.new-secret=s1", "encrypt.state=foo", "encrypt.state=active",
    "encrypt.state=active,encrypt.new-secret=s1,encrypt.keyslot=9",
    "encrypt.keyslot=abc", "encrypt.state=inactive,encrypt.keyslot=0",
    "encrypt.format=aes", "encrypt.cipher-alg=aes-128",
    "encrypt.state=inactive,encrypt.old-secret=s1",
]


def test_amend(pair, ref_images):
    put(pair, ref_images, "l.qcow2", "a.qcow2")
    pair.sh("qemu-img create -q -f qcow2 p.qcow2 1M")
    img = ["--image-opts", spec("qcow2", "l.qcow2")]
    for o in AMEND:
        pair.same("amend", *OBJS, *img, "-o", o)
    pair.same("amend", *OBJS, "-o", "encrypt.state=active", "l.qcow2")
    pair.same("amend", *OBJS, "--image-opts", spec("qcow2", "a.qcow2"), "-o",
              "encrypt.state=active,encrypt.new-secret=s1")
    pair.same("amend", *OBJS, "p.qcow2", "-o", "encrypt.state=active")
    same_norm(pair, "amend", *OBJS, *img, "-o", "encrypt.state=active,"
              "encrypt.new-secret=s1,encrypt.iter-time=10,compat=1.1")
    same_norm(pair, "amend", *OBJS, "--image-opts",
              spec("qcow2", "l.qcow2", "s1"), "-o",
              "encrypt.state=inactive,encrypt.old-secret=s0")
    same_norm(pair, "info", "l.qcow2")
    for tool, cwd, other in [(REF, pair.ref_dir, pair.qimg_dir),
                             (QIMG, pair.qimg_dir, pair.ref_dir)]:
        r = run(tool, ["check", *OBJS, "--image-opts",
                       spec("qcow2", other / "l.qcow2", "s1")], cwd)
        assert r.rc == 0, r
        r = run(tool, ["check", *OBJS, "--image-opts",
                       spec("qcow2", other / "l.qcow2", "s0")], cwd)
        assert r.rc == 1, r


def test_encrypted_chain(pair):
    """An encrypted overlay over an encrypted base, each with its key
    (backing.encrypt.key-secret), as iotest 198: create, write, commit."""
    for d in pair.dirs():
        assert run(QIMG, ["create", "-q", "-f", "qcow2", *OBJ, "-o", LUKS,
                          d / "base.qcow2", "2M"], d).rc == 0
    same_norm(pair, "create", "-f", "qcow2", *OBJS, "-b", "base.qcow2", "-F",
              "qcow2", "-o", LUKS.replace("key-secret=s0", "key-secret=s1"),
              "top.qcow2")
    chain = spec("qcow2", "top.qcow2", "s1",
                 ",backing.driver=qcow2,backing.file.filename=base.qcow2,"
                 "backing.encrypt.key-secret=s0")
    for d in pair.dirs():
        qemu_io("qcow2", d / "base.qcow2", "write -P 0xa 0 2M")
        p = subprocess_io(d, chain, "write -P 0x9 0 1M")
        assert p.returncode == 0, p.stderr
    same_norm(pair, "info", *OBJS, "--image-opts", chain)
    same_norm(pair, "info", "--backing-chain", *OBJS, "--image-opts", chain)
    pair.same("commit", *OBJS, "--image-opts", chain)
    for tool, cwd in [(REF, pair.ref_dir), (QIMG, pair.qimg_dir)]:
        got = read_raw(tool, "qcow2", cwd / "base.qcow2", "b.raw", cwd)
        assert got == b"\x09" * (1 << 20) + b"\x0a" * (1 << 20), tool


def subprocess_io(d, spec_, cmd):
    return subprocess.run([str(QEMU_IO), *OBJS, "--image-opts", "-c", cmd,
                           spec_], cwd=d, capture_output=True, text=True)
