"""The luks format against the reference: creation options and their
errors, every cipher/mode/IV generator/hash combination cross-read both
ways (qimg writes, qemu-io reads; qemu-io writes, qimg reads), info,
wrong and missing secrets, secrets from files and base64, convert,
resize, measure.  Iteration counts and UUIDs are normalised (each tool
calibrates PBKDF2 on its own).  Small iter-time values keep PBKDF2 fast;
the reference still spends ~1 s calibrating per key slot it writes, so
the reference creates few images."""
import os
import pathlib
import subprocess
import time

import pytest

from conftest import QIMG, REF, batches, run
from cryptotest import (OBJ, norm, qemu_io, qimg_io, read_raw, run_retry,
                        same_each_norm, same_norm, spec)

FAST = "key-secret=s0,iter-time=10"

CREATE_ERRORS = [
    [],                                         # no key-secret
    ["-o", "key-secret=s9"],
    ["-o", "key-secret=s0,cipher-alg=foo"],
    ["-o", "key-secret=s0,cipher-alg=des"],
    ["-o", "key-secret=s0,cipher-alg=3des"],
    ["-o", "key-secret=s0,cipher-alg=cast5-128"],   # xts unsupported
    ["-o", "key-secret=s0,cipher-mode=foo"],
    ["-o", "key-secret=s0,cipher-mode=gcm"],
    ["-o", "key-secret=s0,ivgen-alg=foo"],
    ["-o", "key-secret=s0,ivgen-alg=essiv,ivgen-hash-alg=sha1"],
    ["-o", "key-secret=s0,ivgen-alg=essiv,ivgen-hash-alg=sha384"],
    ["-o", "key-secret=s0,cipher-alg=serpent-192,cipher-mode=cbc,"
           "ivgen-alg=essiv,ivgen-hash-alg=sha384"],
    ["-o", "key-secret=s0,cipher-alg=twofish-128,cipher-mode=cbc,"
           "ivgen-alg=essiv,ivgen-hash-alg=sha1"],
    ["-o", "key-secret=s0,cipher-alg=cast5-128,cipher-mode=cbc,"
           "ivgen-alg=essiv"],
    ["-o", "key-secret=s0,hash-alg=foo"],
    ["-o", "key-secret=s0,ivgen-hash-alg=foo"],
    ["-o", "key-secret=s0,iter-time=abc"],
    ["-o", "key-secret=s0,iter-time=1.5"],
    ["-o", "key-secret=s0,iter-time=10,preallocation=foo"],
    ["-o", "key-secret=s0,foo=bar"],
    ["-o", "key-secret=s0,size=abc"],
    ["-o", ""],
    ["-o", "help,key-secret=s0"],
]


@pytest.mark.parametrize("batch", batches(CREATE_ERRORS, 12))
def test_create_errors(pair, batch):
    """Refused before any key derivation, with the reference's message;
    the file is not left behind."""
    bad = []
    for args in batch:
        r, q = pair.both("create", "-f", "luks", *OBJ, *args, "x.luks", "1M")
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        if os.path.exists(pair.path_ref("x.luks")) != \
                os.path.exists(pair.path_qimg("x.luks")):
            bad.append(f"{args}: file left on one side only")
        for d in pair.dirs():
            if (d / "x.luks").exists():
                (d / "x.luks").unlink()
    assert not bad, "\n".join(bad)


def test_create_iteration_errors(pair):
    """iter-time values that overflow QEMU's scaling (the count in the
    message is each tool's own)."""
    for it in ["-1", "18446744073709551615"]:
        same_norm(pair, "create", "-f", "luks", *OBJ, "-o",
                  f"key-secret=s0,iter-time={it}", "x.luks", "1M")
        assert not os.path.exists(pair.path_qimg("x.luks"))


def test_help(pair):
    pair.same("create", "-f", "luks", "-o", "help")
    pair.same("create", "-f", "luks", "-o", "help", "x.luks")
    pair.same("create", "-f", "luks", "-o", "?", "x.luks")
    pair.same("amend", "-f", "luks", "-o", "help", "x.luks")


# cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg, hash-alg.  No
# 24-byte keys outside XTS: their key material is not a whole number of
# sectors and QEMU 7.2 aborts on it (an assertion; docs/LIMITS.md).
COMBOS = [
    ("aes-256", "xts", "plain64", None, "sha256"),
    ("aes-128", "xts", "plain", None, "sha1"),
    ("aes-192", "xts", "essiv", "sha256", "sha512"),
    ("aes-128", "cbc", "essiv", None, "sha256"),      # essiv defaults sha256
    ("aes-256", "ctr", "plain64", "sha1", "md5"),     # hash ignored: plain64
    ("aes-128", "ecb", "plain64", None, "ripemd160"),
    ("serpent-256", "xts", "plain64", None, "sha384"),
    ("serpent-128", "cbc", "essiv", "md5", "sha224"),
    ("serpent-192", "xts", "plain", None, "sha256"),
    ("twofish-128", "cbc", "plain64", None, "sha256"),
    ("twofish-256", "xts", "essiv", "sha256", "sha1"),
    ("cast5-128", "cbc", "essiv", "md5", "sha256"),
    ("cast5-128", "ctr", "plain64", None, "sha512"),
    ("cast5-128", "ecb", "plain", None, "sha1"),
]


def combo_opts(c):
    alg, mode, ivgen, ivhash, hash_ = c
    o = f"{FAST},cipher-alg={alg},cipher-mode={mode},ivgen-alg={ivgen}," \
        f"hash-alg={hash_}"
    return o + (f",ivgen-hash-alg={ivhash}" if ivhash else "")


WRITES = [  # (qimg-io write, the pattern qemu-io checks)
    ("write -P 0x11 0 64k", "read -P 0x11 0 64k"),
    ("write -P 0x22 70000 3001", "read -P 0x22 70000 3001"),
    ("write -P 0x33 1M 512", "read -P 0x33 1M 512"),
    ("write -z 200k 100", "read -P 0 200k 100"),
]


def test_combos_qimg_writes(workdir):
    """Each combination: qimg creates and writes (partial sectors too),
    the reference reads the same bytes back and agrees on info."""
    bad = []
    for c in COMBOS:
        img = workdir / "c.luks"
        r = run(QIMG, ["create", "-q", "-f", "luks", *OBJ, "-o",
                       combo_opts(c), img, "2M"], workdir)
        assert r.rc == 0, (c, r)
        qimg_io("luks", img, *(w for w, _ in WRITES))
        p = qemu_io("luks", img, *(rd for _, rd in WRITES), check=False)
        if p.returncode or "fail" in p.stdout.lower():
            bad.append(f"{c}: reference read {p.stdout}{p.stderr}")
        ri = run(REF, ["info", img], workdir)
        qi = run(QIMG, ["info", img], workdir)
        if (ri.rc, ri.out) != (qi.rc, qi.out):
            bad.append(f"{c}: info REF {ri!r} QIMG {qi!r}")
        img.unlink()
    assert not bad, "\n".join(bad)


def test_combos_reference_writes(workdir):
    """The reference's qemu-io writes into each combination (qimg made
    the headers: the reference creating them would calibrate for ~2 s
    each), qimg reads what it wrote."""
    bad = []
    for c in COMBOS:
        img = workdir / "c.luks"
        assert run(QIMG, ["create", "-q", "-f", "luks", *OBJ, "-o",
                          combo_opts(c), img, "1M"], workdir).rc == 0
        qemu_io("luks", img, "write -P 0x5a 0 1M")
        want = read_raw(REF, "luks", img, "ref.raw", workdir)
        got = read_raw(QIMG, "luks", img, "qimg.raw", workdir)
        if got != want or want != b"\x5a" * (1 << 20):
            bad.append(f"{c}: qimg read differs")
        img.unlink()
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def ref_images(tmp_path_factory):
    """Images the reference made (its create is slow): default options and
    aes-128-cbc-essiv, with patterns written by qemu-io."""
    d = tmp_path_factory.mktemp("luksref")
    for name, opts in [("d.luks", FAST),
                       ("e.luks", FAST + ",cipher-alg=aes-128,"
                                  "cipher-mode=cbc,ivgen-alg=essiv")]:
        r = run_retry(REF, ["create", "-q", "-f", "luks", *OBJ, "-o", opts,
                            d / name, "4M"], d)
        assert r.rc == 0, r
        qemu_io("luks", d / name, "write -P 0x61 0 1M",
                "write -P 0x62 3000 5000")
    return d


def test_reference_images(pair, ref_images):
    """qimg reads, describes and refuses what the reference made, as the
    reference does."""
    for name in ["d.luks", "e.luks"]:
        for d in pair.dirs():
            (d / name).write_bytes((ref_images / name).read_bytes())
        pair.same("info", name)
        pair.same("info", "--output=json", name)
        pair.same("info", *OBJ, "--image-opts", spec("luks", name))
        pair.same("info", *OBJ, "--output=json", "--image-opts",
                  spec("luks", name))
        pair.same("map", "--output=json", *OBJ, "--image-opts",
                  spec("luks", name))
        pair.same("check", name)
        pair.same("convert", name, "-O", "raw", "x.raw")   # no key
        pair.same("convert", *OBJ, "--image-opts", spec("luks", name),
                  "-O", "raw", "x.raw")
        pair.same_content("x.raw")
        pair.same("convert", "--object", "secret,id=s0,data=wrong",
                  "--image-opts", spec("luks", name), "-O", "raw", "y.raw")
        pair.same("convert", "--image-opts", spec("luks", name), "-O", "raw",
                  "y.raw")
        pair.same("convert", *OBJ, "--image-opts",
                  spec("luks", name, extra=",foo=bar"), "-O", "raw", "y.raw")
        pair.same("compare", *OBJ, "--image-opts", spec("luks", name),
                  "driver=raw,file.filename=x.raw")
        pair.same("info", "json:{\"driver\": \"luks\", \"key-secret\": "
                  f"\"s0\", \"file\": {{\"filename\": \"{name}\"}}}}", *OBJ)


def test_secret_sources(pair, ref_images):
    """The key from data=, file= and format=base64 alike; bad secrets."""
    for d in pair.dirs():
        (d / "d.luks").write_bytes((ref_images / "d.luks").read_bytes())
        (d / "pw").write_text("hunter0")
        (d / "pw64").write_text("aHVudGVyMA==")
        (d / "nul").write_bytes(b"hunter0\0x")
    img = ["--image-opts", spec("luks", "d.luks")]
    for obj in ["secret,id=s0,file=pw", "secret,id=s0,file=pw64,format=base64",
                "secret,id=s0,data=aHVudGVyMA==,format=base64",
                "secret,id=s0,file=nul", "secret,id=s0,data=\xff\xfe",
                "secret,id=s0,file=missing", "secret,id=s1,data=hunter0"]:
        pair.same("convert", "--object", obj, *img, "-O", "raw", "x.raw")


def test_messages_hide_secrets(pair, ref_images):
    """No message shows a secret's value."""
    for d in pair.dirs():
        (d / "d.luks").write_bytes((ref_images / "d.luks").read_bytes())
    q = pair.qimg("convert", "--object", "secret,id=s0,data=SeCrEt",
                  "--image-opts", spec("luks", "d.luks"), "-O", "raw", "x")
    assert q.rc == 1 and "SeCrEt" not in q.out + q.err


def test_secret_hidden_from_cmdline(workdir):
    """A secret's data= is blanked in the process arguments once read: a
    create that spends its time in PBKDF2 calibration shows none of it in
    /proc/PID/cmdline (what ps shows)."""
    p = subprocess.Popen([str(QIMG), "create", "-q", "-f", "luks", "--object",
                          "secret,id=s0,data=SeCrEt", "-o",
                          "key-secret=s0,iter-time=3000", "x.luks", "1M"],
                         cwd=workdir, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    seen = []
    deadline = time.monotonic() + 20
    while (p.poll() is None and time.monotonic() < deadline and
           len(seen) < 6):
        try:
            seen.append((pathlib.Path("/proc") / str(p.pid) /
                         "cmdline").read_bytes())
        except OSError:
            break
        time.sleep(0.2)
    p.kill()
    p.wait()
    late = [c for c in seen[1:] if c]
    assert late, "process ended before its arguments could be read"
    assert all(b"SeCrEt" not in c and b"id=s0" in c for c in late), late


def test_convert(pair):
    """raw -> luks -> raw with both tools; each reads the other's."""
    for d in pair.dirs():
        with open(d / "src.raw", "wb") as f:
            f.truncate(8 << 20)
    pair.sh("qemu-io -f raw -c 'write -P 0x77 0 3M' -c 'write -P 1 5M 1k' "
            "src.raw")
    same_norm(pair, "convert", *OBJ, "-O", "luks", "-o", FAST, "src.raw",
              "t.luks")
    for tool, cwd, other in [(REF, pair.ref_dir, pair.qimg_dir),
                             (QIMG, pair.qimg_dir, pair.ref_dir)]:
        got = read_raw(tool, "luks", other / "t.luks", "back.raw", cwd)
        assert got == (cwd / "src.raw").read_bytes()
    pair.same("convert", *OBJ, "--image-opts", spec("luks", "t.luks"),
              "-O", "qcow2", "t.qcow2")
    pair.same("compare", "-f", "raw", "-F", "qcow2", "src.raw", "t.qcow2")
    # without a key for the new target: refused once it is made
    pair.same("convert", *OBJ, "-O", "luks", "src.raw", "u.luks")
    pair.same("convert", "-c", *OBJ, "-O", "luks", "-o", FAST, "src.raw",
              "v.luks")


def test_resize_and_size(pair, ref_images):
    for d in pair.dirs():
        (d / "d.luks").write_bytes((ref_images / "d.luks").read_bytes())
    img = ["--image-opts", spec("luks", "d.luks")]
    pair.same("resize", *OBJ, *img, "+1M")
    pair.same("info", "d.luks")
    pair.same("resize", *OBJ, *img, "--shrink", "2M")
    pair.same("info", "d.luks")
    pair.same("resize", *OBJ, "--preallocation=falloc", *img, "3M")
    pair.same("resize", *OBJ, "--preallocation=metadata", *img, "4M")
    pair.same("info", "d.luks")
    assert os.path.getsize(pair.path_ref("d.luks")) == \
        os.path.getsize(pair.path_qimg("d.luks"))
    # data below the old size survives
    got = read_raw(QIMG, "luks", "d.luks", "x.raw", pair.qimg_dir)
    assert got[:1 << 20] == b"\x61" * 3000 + b"\x62" * 5000 + \
        b"\x61" * ((1 << 20) - 8000)


def test_measure(pair, ref_images):
    for d in pair.dirs():
        (d / "d.luks").write_bytes((ref_images / "d.luks").read_bytes())
    same_each_norm(pair, "measure", [
        ["-O", "luks", "--size", "1G"],
        [*OBJ, "-O", "luks", "-o", FAST, "--size", "1G"],
        [*OBJ, "-O", "luks", "-o", FAST + ",cipher-alg=aes-128", "--size",
         "100M"],
        [*OBJ, "--output=json", "-O", "luks", "-o", FAST + ",cipher-alg=foo",
         "--size", "1G"],
        [*OBJ, "-O", "luks", "-o", FAST, "d.luks"],
    ])


def test_create_layout(pair):
    """Same layout as the reference's: file size, allocation, header."""
    for opts, size in [(FAST, "3M"), (FAST + ",cipher-alg=aes-192", "1G"),
                       (FAST + ",preallocation=full", "1M")]:
        same_norm(pair, "create", "-f", "luks", *OBJ, "-o", opts, "x.luks",
                  size)
        assert os.path.getsize(pair.path_ref("x.luks")) == \
            os.path.getsize(pair.path_qimg("x.luks"))
        assert os.stat(pair.path_ref("x.luks")).st_blocks == \
            os.stat(pair.path_qimg("x.luks")).st_blocks
        r, q = (run(t, ["info", "x.luks"], d) for t, d in
                [(REF, pair.ref_dir), (REF, pair.qimg_dir)])
        assert norm(r.out) == norm(q.out)
