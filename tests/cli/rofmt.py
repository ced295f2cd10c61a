"""Helpers shared by the tests of the read-only formats (dmg, bochs,
cloop)."""
import re

# Debian's qemu-img names modules it lacks on every dmg open (a packaging
# message, not QEMU's), and lacks the bzip2 module that qimg has.
_DEBIAN_MODULE = re.compile(r"^qemu: module block-block-dmg-\S+ not found, "
                            r"do you want to install qemu-block-extra "
                            r"package\?\n", re.M)
_BZ2_MISSING = ("qemu-img: warning: dmg-bzip2 module is missing, accessing "
                "bzip2 compressed blocks will result in I/O errors\n")


def ref_stderr(err, bz2=False):
    """The reference's stderr without Debian's module messages (and,
    with bz2, its warning that it cannot read bzip2 chunks)."""
    err = _DEBIAN_MODULE.sub("", err)
    return err.replace(_BZ2_MISSING, "") if bz2 else err


def same_cases(pair, cases, scratch=("out.img",), bz2=False):
    """Each argument list through both tools: rc, stdout and stderr equal
    (reference stderr normalised by ref_stderr); scratch outputs removed
    between cases; all mismatches reported together."""
    bad = []
    for args in cases:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, ref_stderr(r.err, bz2)):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            for name in scratch:
                if (d / name).is_file():
                    (d / name).unlink()
    assert not bad, "\n\n".join(bad)
