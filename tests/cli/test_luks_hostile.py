"""Damaged and hostile LUKS headers: every header check and algorithm
string refusal compared with the reference (info needs no key, so each
case is cheap), truncated files, payloads past the end, and the bound on
PBKDF2 work (an image claiming 2^32 iterations: the reference would spin
for hours, qimg refuses at once)."""
import os
import time

from conftest import QIMG, REF, run
from cryptotest import OBJ, patch, slot_field, spec

HEADER_CASES = [  # (offset, struct format or raw bytes, value)
    (6, ">H", 2),                     # LUKS2: refused
    (8, b"a" * 32, None),             # cipher name without NUL
    (40, b"b" * 32, None),            # mode without NUL
    (72, b"c" * 32, None),            # hash spec without NUL
    (104, ">I", 7),                   # payload inside the header
    (104, ">I", 0),
    (164, ">I", 0),                   # master key iterations
    (slot_field(3, "stripes"), ">I", 1),
    (slot_field(3, "stripes"), ">I", 0xffffffff),
    (slot_field(2, "active"), ">I", 5),
    (slot_field(0, "iters"), ">I", 0),
    (slot_field(0, "offset"), ">I", 3),
    (slot_field(7, "offset"), ">I", 0xfffffff0),
    (slot_field(5, "offset"), ">I", 8 + 504 + 8),   # overlaps slot 1
    (108, ">I", 40),                  # key bytes: aes with 20
    (108, ">I", 0xffffffff),
    (8, b"des\0", None),
    (8, b"blowfish\0", None),
    (40, b"ecb\0", None),
    (40, b"cbc-essiv\0", None),
    (40, b"cbc-essiv:sha1\0", None),
    (40, b"cbc-essiv:foo\0", None),
    (40, b"gcm-plain64\0", None),
    (40, b"xts-benbi\0", None),
    (40, b"xts-plain64:foo\0", None),
    (72, b"sha3-256\0", None),
    (72, b"SHA256\0", None),
]


def make(workdir, name="h.luks"):
    img = workdir / name
    r = run(QIMG, ["create", "-q", "-f", "luks", *OBJ, "-o",
                   "key-secret=s0,iter-time=10", img, "1M"], workdir)
    assert r.rc == 0, r
    return img


def test_header_checks(pair):
    base = make(pair.ref_dir, "base.luks").read_bytes()
    bad = []
    for off, fmt, val in HEADER_CASES:
        for d in pair.dirs():
            (d / "h.luks").write_bytes(base)
            patch(d / "h.luks", off, fmt, val)
        for args in (["info", "-f", "luks", "h.luks"],
                     ["convert", *OBJ, "--image-opts", spec("luks", "h.luks"),
                      "-O", "raw", "o.raw"]):
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"{off} {fmt} {val} {args[0]}\nREF {r!r}\n"
                           f"QIMG {q!r}")
    assert not bad, "\n\n".join(bad)


def test_short_files(pair):
    base = make(pair.ref_dir, "base.luks").read_bytes()
    for n in [0, 100, 592, 4096, 300000, 2068480 - 512]:
        for d in pair.dirs():
            (d / "s.luks").write_bytes(base[:n])
        pair.same("info", "-f", "luks", "s.luks")
        pair.same("convert", *OBJ, "--image-opts", spec("luks", "s.luks"),
                  "-O", "raw", "o.raw")


def test_payload_past_end(pair):
    for d in pair.dirs():
        img = make(d)
        patch(img, 104, ">I", 0x7fffffff)
        patch(img, slot_field(7, "offset"), ">I", 8 + 7 * 504)
    pair.same("info", "h.luks")


def test_iteration_bound(workdir):
    """2^32-1 iterations in a slot: refused before any PBKDF2 work, with
    a message saying why; info still shows the header."""
    img = make(workdir)
    patch(img, slot_field(0, "iters"), ">I", 0xffffffff)
    t = time.monotonic()
    r = run(QIMG, ["convert", *OBJ, "--image-opts", spec("luks", img),
                   "-O", "raw", workdir / "o.raw"], workdir)
    assert r.rc == 1
    assert "PBKDF2 iterations" in r.err and "limit" in r.err, r
    assert time.monotonic() - t < 10
    ri = run(REF, ["info", img], workdir)
    qi = run(QIMG, ["info", img], workdir)
    assert (qi.rc, qi.out) == (ri.rc, ri.out) and "4294967295" in qi.out
    # the master key digest counts too
    img2 = make(workdir, "m.luks")
    patch(img2, 164, ">I", 0xffffffff)
    r = run(QIMG, ["convert", *OBJ, "--image-opts", spec("luks", img2),
                   "-O", "raw", workdir / "o.raw"], workdir)
    assert r.rc == 1 and "limit" in r.err, r


def test_create_refuses_unbounded_iter_time(workdir):
    """An iter-time whose iterations qimg would refuse to open fails at
    creation (documented in docs/LIMITS.md), leaving no file."""
    r = run(QIMG, ["create", "-f", "luks", *OBJ, "-o",
                   "key-secret=s0,iter-time=1000000000", workdir / "x.luks",
                   "1M"], workdir)
    assert r.rc == 1 and not os.path.exists(workdir / "x.luks"), r
    assert "iter-time" in r.err or "PBKDF iterations" in r.err, r
