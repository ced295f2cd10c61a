"""External data file names of any length: QEMU 7.2 takes any name that
fits in the header cluster (qimg once refused 1024 bytes or more, and
truncated longer names at create).  Names read from an image end at their
first NUL.  Every case is compared with the reference."""
import struct
import subprocess

from conftest import REF

BE32 = lambda v: struct.pack(">I", v)
EXT_DATA_FILE = 0x44415441


def deep_dir(d, total):
    """A relative directory path of about `total` characters (components
    of 200, the file system's limit being 255), created under d."""
    parts = ["d" * 200] * (total // 201)
    path = "/".join(parts)
    (d / path).mkdir(parents=True)
    return path


def test_create_and_open_long_name(pair):
    """A 1800-byte data file name: created, listed and checked as QEMU."""
    names = []
    pair.setup(lambda d: names.append(deep_dir(d, 1800) + "/data.raw"))
    name = names[0]
    pair.same("create", "-f", "qcow2", "-o", f"data_file={name}", "a.qcow2",
              "1M")
    for args in (["info", "a.qcow2"], ["info", "--output=json", "a.qcow2"],
                 ["check", "a.qcow2"], ["map", "a.qcow2"]):
        pair.same(*args)
    # The reference reads the name qimg recorded in full.
    r = subprocess.run([str(REF), "info", "a.qcow2"], cwd=pair.qimg_dir,
                       capture_output=True, text=True)
    assert r.returncode == 0 and f"data file: {name}\n" in r.stdout, r


def test_create_name_past_small_cluster(pair):
    """512-byte clusters: a 600-byte name does not fit the header."""
    names = []
    pair.setup(lambda d: names.append(deep_dir(d, 600) + "/data.raw"))
    pair.same("create", "-f", "qcow2", "-o",
              f"cluster_size=512,data_file={names[0]}", "s.qcow2", "1M")
    # Neither the image nor the data file is left behind.
    for d in pair.dirs():
        assert not (d / "s.qcow2").exists() and not (d / names[0]).exists()


def test_amend_long_names(pair):
    """amend records names of any length that fit the cluster; one past
    it is refused with the header unchanged."""
    def make(d):
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-o",
                        "data_file=x.raw", "b.qcow2", "1M"], cwd=d, check=True)
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-o",
                        "data_file=x.raw,cluster_size=512", "c.qcow2", "1M"],
                       cwd=d, check=True)
    pair.setup(make)
    for img, n in (("b.qcow2", 3000), ("b.qcow2", 70000), ("c.qcow2", 300),
                   ("c.qcow2", 600)):
        pair.same("amend", "-o", "data_file=" + "y" * n, img)
        pair.same("info", "--output=json", img)
    pair.same("amend", "-o", "data_file=x.raw", "b.qcow2")
    pair.same("info", "b.qcow2")


def test_extension_lengths(pair):
    """The extension patched in place of the end marker: a name padded
    with NULs (it ends at the first), and a long one naming no file."""
    cases = {"nul.qcow2": b"x.raw" + b"\0" * 2995,
             "long.qcow2": b"z" * 3000,
             "empty.qcow2": b"",
             "nul-first.qcow2": b"\0x.raw"}

    def make(d):
        (d / "x.raw").write_bytes(b"\0" * 65536)
        for name, data in cases.items():
            img = d / name
            subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-o",
                            "data_file=x.raw", str(img), "64k"], cwd=d,
                           check=True)
            raw = bytearray(img.read_bytes())
            off = raw.find(BE32(EXT_DATA_FILE))
            assert off > 0
            ext = BE32(EXT_DATA_FILE) + BE32(len(data)) + data
            ext += b"\0" * (-len(ext) % 8) + b"\0" * 8
            raw[off:off + len(ext)] = ext
            img.write_bytes(bytes(raw))
    pair.setup(make)
    for name in cases:
        pair.same("info", name)
        pair.same("map", "--output=json", name)


def test_create_backing_past_small_cluster(pair):
    """A backing name that does not fit a 512-byte header cluster: QEMU's
    message, and no file left behind."""
    pair.same("create", "-f", "qcow2", "-o", "cluster_size=512", "-u", "-b",
              "b" * 600, "-F", "raw", "x.qcow2", "1M")
    assert sorted(p.name for p in pair.qimg_dir.iterdir()) == \
        sorted(p.name for p in pair.ref_dir.iterdir())
