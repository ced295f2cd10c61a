"""An independent LUKS1 implementation: Debian's cryptsetup accepts the
headers and key slots qimg writes (luksDump, open --test-passphrase,
which derives the slot key and checks the master key digest), and qimg
reads images cryptsetup formats.  cryptsetup needs the kernel's cipher
for luksFormat, so only AES modes are formatted here."""
import shutil
import subprocess

import pytest

from conftest import QIMG, REF, run
from cryptotest import OBJ, PW, qemu_io, qimg_io, read_raw, spec

CRYPTSETUP = shutil.which("cryptsetup")
pytestmark = pytest.mark.skipif(not CRYPTSETUP, reason="no cryptsetup")


def passphrase_ok(img, pw):
    """cryptsetup's exit status unlocking img with pw (0: unlocked)."""
    p = subprocess.run([CRYPTSETUP, "open", "--test-passphrase",
                        "--key-file=-", str(img)], input=pw.encode(),
                       capture_output=True)
    return p.returncode


QIMG_MADE = [
    "",
    ",cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv",
    ",cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain,hash-alg=sha1",
    ",cipher-alg=aes-192,cipher-mode=cbc,hash-alg=sha512",
]


def test_cryptsetup_accepts_qimg_images(workdir):
    for extra in QIMG_MADE:
        img = workdir / "q.luks"
        r = run(QIMG, ["create", "-q", "-f", "luks", *OBJ, "-o",
                       "key-secret=s0,iter-time=10" + extra, img, "1M"],
                workdir)
        assert r.rc == 0, r
        dump = subprocess.run([CRYPTSETUP, "luksDump", str(img)],
                              capture_output=True, text=True)
        assert dump.returncode == 0 and "Version:       \t1" in dump.stdout, \
            dump
        assert passphrase_ok(img, PW) == 0, extra
        assert passphrase_ok(img, "wrong") != 0, extra
        # a slot qimg adds opens too
        r = run(QIMG, ["amend", *OBJ, "--object", "secret,id=s1,data=other",
                       "--image-opts", spec("luks", img), "-o",
                       "state=active,new-secret=s1,iter-time=10"], workdir)
        assert r.rc == 0, r
        assert passphrase_ok(img, "other") == 0, extra
        img.unlink()


CRYPTSETUP_MADE = [
    ["-c", "aes-xts-plain64"],
    ["-c", "aes-cbc-essiv:sha256", "-s", "256", "--hash", "sha1"],
    ["-c", "aes-xts-plain", "-s", "256", "--hash", "sha512"],
    ["-c", "aes-ctr-plain64", "-s", "128"],
]


def luks_format(img, args):
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    p = subprocess.run([CRYPTSETUP, "luksFormat", "-q", "--type", "luks1",
                        "--pbkdf-force-iterations", "1000", *args, "--key-file=-", str(img)],
                       input=PW.encode(), capture_output=True)
    return p.returncode == 0


def test_qimg_reads_cryptsetup_images(workdir):
    made = 0
    for args in CRYPTSETUP_MADE:
        img = workdir / "c.luks"
        if not luks_format(img, args):
            continue    # the kernel lacks the cipher
        made += 1
        qemu_io("luks", img, "write -P 0x3c 4096 64k")
        ri = run(REF, ["info", img], workdir)
        qi = run(QIMG, ["info", img], workdir)
        assert (qi.rc, qi.out, qi.err) == (ri.rc, ri.out, ri.err), args
        want = read_raw(REF, "luks", img, "ref.raw", workdir)
        assert read_raw(QIMG, "luks", img, "q.raw", workdir) == want, args
        img.unlink()
    assert made, "cryptsetup formatted nothing"


def test_24_byte_keys(workdir):
    """aes-192-cbc: the key material is not a whole number of sectors;
    QEMU 7.2 aborts on such images (an assertion), cryptsetup and qimg
    handle them."""
    img = workdir / "c.luks"
    if not luks_format(img, ["-c", "aes-cbc-plain64", "-s", "192"]):
        pytest.skip("kernel lacks aes-cbc")
    qimg_io("luks", img, "write -P 0x21 0 1M", "read -P 0x21 0 1M")
    assert passphrase_ok(img, PW) == 0
