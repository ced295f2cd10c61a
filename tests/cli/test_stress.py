"""Thread safety: eight threads write and zero interleaved blocks that
share every cluster of an image (qimg-stress), on fresh images, images
whose clusters are shared with a snapshot or come from a backing file,
compressed images, subclusters, lazy refcounts and O_DIRECT, vpc and vdi
images of each subformat; then the
reference must find the image clean and read back exactly what each
thread wrote last."""
import subprocess

import pytest

from conftest import BUILD, QEMU_IO, REF

STRESS = BUILD / "tests" / "qimg-stress"
MiB = 1 << 20
SPAN = 3 * MiB


def sh(d, *argv):
    subprocess.run([str(a) for a in argv], cwd=d, check=True,
                   capture_output=True)


def prefilled(d, name, opts=()):
    sh(d, REF, "create", "-q", "-f", "qcow2", *opts, name, "8M")
    sh(d, QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 8M", name)


def setup_image(kind, d):
    """Create t.img of the given kind in d; return its format."""
    if kind == "raw":
        sh(d, "truncate", "-s", "8M", "t.img")
        return "raw"
    if kind.startswith("vmdk"):
        opts = {"vmdk": [], "vmdk-zg": ["-o", "zeroed_grain=on"],
                "vmdk-flat": ["-o", "subformat=monolithicFlat"]}
        if kind == "vmdk-backing":
            sh(d, REF, "create", "-q", "-f", "vmdk", "base.img", "8M")
            sh(d, QEMU_IO, "-f", "vmdk", "-c", "write -P 0x5a 0 8M",
               "base.img")
            sh(d, REF, "create", "-q", "-f", "vmdk", "-b", "base.img", "-F",
               "vmdk", "t.img")
        else:
            sh(d, REF, "create", "-q", "-f", "vmdk", *opts[kind], "t.img",
               "8M")
        return "vmdk"
    other = {"vpc": ("vpc", []), "vpc-fixed": ("vpc", ["-o", "subformat=fixed"]),
             "vdi": ("vdi", []), "vdi-static": ("vdi", ["-o", "static=on"])}
    if kind in other:
        fmt, o = other[kind]
        sh(d, REF, "create", "-q", "-f", fmt, *o, "t.img", "8M")
        return fmt
    opts = {"default": [], "4k": ["-o", "cluster_size=4k"],
            "subclusters": ["-o", "cluster_size=16k,extended_l2=on"],
            "lazy": ["-o", "lazy_refcounts=on"],
            "refcount1": ["-o", "refcount_bits=1,cluster_size=4k"],
            "v2": ["-o", "compat=0.10"]}
    if kind in opts:
        sh(d, REF, "create", "-q", "-f", "qcow2", *opts[kind], "t.img", "8M")
    elif kind in ("snapshot", "snapshot-direct"):
        prefilled(d, "t.img")
        sh(d, REF, "snapshot", "-c", "s", "t.img")
    elif kind in ("backing", "backing-v2"):
        prefilled(d, "base.img")
        v2 = ["-o", "compat=0.10"] if kind == "backing-v2" else []
        sh(d, REF, "create", "-q", "-f", "qcow2", *v2, "-b", "base.img",
           "-F", "qcow2", "t.img")
    elif kind == "compressed":
        prefilled(d, "src.img")
        sh(d, REF, "convert", "-c", "-O", "qcow2", "src.img", "t.img")
    elif kind in TABLE_KINDS:
        fmt, opts, backed = TABLE_KINDS[kind]
        if backed:
            prefilled(d, "base.img")
            opts = opts + ["-b", "base.img", "-F", "qcow2"]
        sh(d, REF, "create", "-q", "-f", fmt, *opts, "t.img", "8M")
        return fmt
    else:
        raise ValueError(kind)
    return "qcow2"


# The other writable formats: (format, create options, backing file).
TABLE_KINDS = {
    "qed": ("qed", [], False),
    "qed-4k": ("qed", ["-o", "cluster_size=4k"], False),
    "qed-backing": ("qed", ["-o", "cluster_size=4k"], True),
    "qcow": ("qcow", [], False),
    "qcow-backing": ("qcow", [], True),
    "parallels": ("parallels", ["-o", "cluster_size=64k"], False),
}


KINDS = ["default", "4k", "subclusters", "lazy", "refcount1", "v2",
         "snapshot", "snapshot-direct", "backing", "backing-v2", "compressed",
         "raw", "vmdk", "vmdk-zg", "vmdk-flat", "vmdk-backing", "vpc",
         "vpc-fixed", "vdi", "vdi-static", *TABLE_KINDS]


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_writers(tmp_path, kind):
    fmt = setup_image(kind, tmp_path)
    block = 1024 if kind == "subclusters" else 4096
    argv = [STRESS, "-f", fmt, "-T", "8", "-n", "150", "-b", str(block),
            "-s", str(len(kind))]
    if kind == "snapshot-direct":
        argv += ["-t", "none"]
    r = subprocess.run([str(a) for a in argv + ["t.img", str(SPAN)]],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    blocks = [line.split() for line in r.stdout.splitlines()]
    assert len(blocks) == SPAN // block
    if fmt in ("qcow2", "vmdk", "vdi", "qed", "parallels"):
        chk = subprocess.run([str(REF), "check", "t.img"], cwd=tmp_path,
                             capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout + chk.stderr
    cmds = []
    for off, ln, pat in blocks:
        cmds += ["-c", f"read -P {pat} {off} {ln}"]
    q = subprocess.run([str(QEMU_IO), "-r", "-f", fmt, *cmds, "t.img"],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert "verification failed" not in q.stdout, q.stdout[:2000]
    assert q.stdout.count(f"read {block}/{block}") == len(blocks), q.stderr
