"""Libraries loaded on first use (lib/lazy): short commands load none of
zlib, zstd, libdeflate, bzip2, libgcrypt, nettle; the first request that
needs one loads it, and the result is the reference's."""
import os
import re
import subprocess

import pytest

from conftest import BUILD, REF

QIMG = BUILD / "qimg"
LAZY = ("libz.so", "libzstd.so", "libdeflate.so", "libbz2.so",
        "libgcrypt.so", "libgpg-error.so", "libnettle.so")


def loaded(args, cwd):
    """The shared libraries the dynamic loader opened for qimg ARGS."""
    r = subprocess.run([str(QIMG)] + args, cwd=cwd, capture_output=True,
                       text=True, env={**os.environ, "LD_DEBUG": "files"})
    libs = set(re.findall(r"file=(\S+) \[0\];\s+(?:needed|dynamically)",
                          r.stderr))
    return r.returncode, libs


def lazy_in(libs):
    return sorted(x for x in libs if x.startswith(LAZY))


@pytest.fixture
def images(tmp_path):
    if "not a dynamic executable" in subprocess.run(
            ["ldd", str(QIMG)], capture_output=True, text=True).stdout + \
            subprocess.run(["ldd", str(QIMG)], capture_output=True,
                           text=True).stderr:
        pytest.skip("static build: the libraries are linked")
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "a.qcow2", "64M"],
                   cwd=tmp_path, check=True)
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-b", "a.qcow2",
                    "-F", "qcow2", "b.qcow2"], cwd=tmp_path, check=True)
    subprocess.run([str(REF), "snapshot", "-c", "s1", "a.qcow2"],
                   cwd=tmp_path, check=True)
    (tmp_path / "r.raw").write_bytes(os.urandom(1 << 16) * 8 + bytes(1 << 20))
    return tmp_path


def test_short_commands_load_none(images):
    for args in (["--version"], ["info", "a.qcow2"],
                 ["info", "--backing-chain", "b.qcow2"],
                 ["check", "a.qcow2"], ["map", "b.qcow2"],
                 ["measure", "-O", "qcow2", "a.qcow2"],
                 ["snapshot", "-l", "a.qcow2"],
                 ["bitmap", "--add", "a.qcow2", "bm0"]):
        rc, libs = loaded(args, images)
        assert rc == 0, args
        assert lazy_in(libs) == [], (args, libs)


def test_first_use_loads(images):
    for kind, lib in (("zstd", "libzstd.so"), ("zlib", "libdeflate.so")):
        out = f"c-{kind}.qcow2"
        rc, libs = loaded(["convert", "-c", "-O", "qcow2", "-o",
                           f"compression_type={kind}", "r.raw", out], images)
        assert rc == 0
        assert any(x.startswith(lib) for x in libs), (kind, libs)
        r = subprocess.run([str(REF), "compare", "r.raw", out], cwd=images,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    rc, libs = loaded(["checksum", "r.raw"], images)
    assert rc == 0 and any(x.startswith("libgcrypt.so") for x in libs)


def test_unloadable_library_ends_as_the_loader_would(images, tmp_path):
    """A library that cannot be loaded at its first use ends the command
    with the loader's message under the name qimg was invoked by, and
    status 127 (what a missing library at start-up gives)."""
    bad = tmp_path / "badlib"
    bad.mkdir()
    (bad / "libzstd.so.1").write_bytes(b"")     # "file too short"
    (tmp_path / "in.raw").write_bytes(os.urandom(1 << 20))
    (bad / "qemu-img").symlink_to(QIMG)
    env = {**os.environ, "LD_LIBRARY_PATH": str(bad)}
    for prog, name in ((QIMG, "qimg"), (bad / "qemu-img", "qemu-img")):
        r = subprocess.run([str(prog), "convert", "-c", "-O", "qcow2", "-o",
                            "compression_type=zstd", "in.raw", "out.qcow2"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env=env)
        assert r.returncode == 127, r
        assert r.stderr.startswith(
            f"{name}: error while loading shared libraries: "), r.stderr
        assert "libzstd.so.1" in r.stderr, r.stderr
