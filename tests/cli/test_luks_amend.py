"""Key slot amendment of luks images against the reference: every error
path of state=active|inactive, a sequence of adds and erases run by both
tools on copies of one image (info compared, counts normalised), then
each tool opens the other's result with every secret."""
import pytest

from conftest import QIMG, REF, run
from cryptotest import OBJ, copy_to_qimg, run_retry, same_norm, spec

SECRETS = ["--object", "secret,id=s0,data=hunter0",
           "--object", "secret,id=s1,data=hunter1",
           "--object", "secret,id=s2,data=hunter2",
           "--object", "secret,id=bad,data=nothing"]


@pytest.fixture
def image(pair):
    """A luks image (qimg's: quick) on both sides, same bytes."""
    r = run(QIMG, ["create", "-q", "-f", "luks", *OBJ, "-o",
                   "key-secret=s0,iter-time=10", "a.luks", "1M"],
            pair.ref_dir)
    assert r.rc == 0, r
    copy_to_qimg(pair, "a.luks")
    return pair


ERRORS = [
    "state=active", "new-secret=s1", "state=foo,new-secret=s1",
    "state=active,new-secret=s1,old-secret=s0",
    "state=active,new-secret=s1,keyslot=9",
    "state=active,new-secret=s1,keyslot=-1",
    "state=active,new-secret=s1,keyslot=0",
    "state=active,new-secret=s9,iter-time=10",
    "state=active,new-secret=s1,iter-time=abc",
    "state=active,new-secret=s1,iter-time=18446744073709551615",
    "state=active,new-secret=s1,keyslot=9223372036854775808",
    "state=inactive,keyslot=1", "state=inactive,keyslot=0",
    "state=inactive,keyslot=8", "state=inactive,keyslot=-1",
    "state=inactive", "state=inactive,new-secret=s1",
    "state=inactive,iter-time=10", "state=inactive,old-secret=bad",
    "state=inactive,old-secret=s9",
    "state=inactive,keyslot=0,old-secret=bad",
    "state=inactive,old-secret=s0",
    "keyslot=abc", "foo=bar", "size=2M", "cipher-alg=aes-128", "",
]


def test_amend_errors(image):
    pair = image
    img = ["--image-opts", spec("luks", "a.luks")]
    bad = []
    for o in ERRORS:
        r, q = pair.both("amend", *SECRETS, *img, "-o", o)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"-o {o}\nREF {r!r}\nQIMG {q!r}")
    # a plain file name has no key; a wrong key opens nothing
    for args in (["-o", "state=active,new-secret=s1", "a.luks"],
                 ["--image-opts", spec("luks", "a.luks", "bad"), "-o",
                  "state=active,new-secret=s1"],
                 ["-f", "luks", "-o", "help", "a.luks"]):
        r, q = pair.both("amend", *SECRETS, *args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n\n".join(bad)
    # nothing changed
    pair.same("info", "a.luks")


def opens(tool, cwd, path, secret):
    r = run(tool, ["convert", *SECRETS, "--image-opts",
                   spec("luks", path, secret), "-O", "raw", "o.raw"], cwd)
    return r.rc == 0


def test_amend_sequence(image):
    pair = image
    steps = [  # (key to open with, -o, --force)
        ("s0", "state=active,new-secret=s1,iter-time=10,keyslot=4", False),
        ("s1", "state=active,new-secret=s2,iter-time=10", False),
        ("s2", "state=inactive,keyslot=4", False),
        ("s0", "state=inactive,old-secret=s2", False),
        ("s0", "state=active,new-secret=s1,iter-time=10,keyslot=0", True),
        ("s1", "state=inactive,old-secret=s1", True),
    ]
    for key, o, force in steps:
        same_norm(pair, "amend", *SECRETS, *(["--force"] if force else []),
                  "--image-opts", spec("luks", "a.luks", key), "-o", o)
        same_norm(pair, "info", "a.luks")
    # after forcing the last slot away, nothing opens the image any more;
    # before that, each step's secrets were checked by the next step's open
    for tool, cwd, other in [(REF, pair.ref_dir, pair.qimg_dir),
                             (QIMG, pair.qimg_dir, pair.ref_dir)]:
        for key in ["s0", "s1", "s2"]:
            assert not opens(tool, cwd, other / "a.luks", key)


def test_amend_cross_open(image):
    """A slot qimg adds opens in the reference and the other way round."""
    pair = image
    for tool, cwd in [(QIMG, pair.qimg_dir), (REF, pair.ref_dir)]:
        r = run_retry(tool, ["amend", *SECRETS, "--image-opts",
                             spec("luks", "a.luks"), "-o",
                             "state=active,new-secret=s2,iter-time=10"], cwd)
        assert r.rc == 0, r
    for tool, cwd, other in [(REF, pair.ref_dir, pair.qimg_dir),
                             (QIMG, pair.qimg_dir, pair.ref_dir)]:
        for key in ["s0", "s2"]:
            assert opens(tool, cwd, other / "a.luks", key), (tool, key)
        assert not opens(tool, cwd, other / "a.luks", "s1")
