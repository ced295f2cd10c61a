"""dmg (read-only) against the reference, on images built by
tests/dmggen.py (no Debian tool writes dmg): every chunk type, XML
property lists and resource forks, several partitions, comments and
terminators; every read-only command, the refused writes, and hostile
tables.

The reference here is Debian's qemu-img, built without the dmg-bz2 and
dmg-lzfse modules: it names them on every dmg open (dropped from its
stderr, rofmt.ref_stderr) and cannot read bzip2 chunks, which qimg does
(libbz2): those images are checked against the generator's content."""
import base64
import struct
import sys
from pathlib import Path

import pytest

from conftest import batches, needs_format
from rofmt import same_cases

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dmggen  # noqa: E402
from dmggen import build_dmg, pattern  # noqa: E402

pytestmark = needs_format("dmg")

# name: (partitions, build_dmg keyword arguments)
IMAGES = {
    "all.dmg": ([[("zlib", pattern(64)), ("zero", 32), ("raw", pattern(8, 2)),
                  ("ignore", 8), ("comment",), ("zlib", pattern(130, 3)),
                  ("end",)]], {}),
    "rsrc.dmg": ([[("zlib", pattern(64))],
                  [("raw", pattern(8, 2)), ("zero", 100), ("end",)]],
                 {"xml": False}),
    "parts.dmg": ([[("raw", pattern(3, 4))], [("zlib", pattern(2048, 5))],
                   [("zero", 5000)], [("zlib", pattern(1, 6))]], {}),
    "odd.dmg": ([[("zlib", pattern(16, 7))]], {"tail_pad": 100, "pad": 7}),
    "extra.dmg": ([[("raw", pattern(4, 8))]],
                  {"xml_extra": ["bm90IGEgbWlzaA=="]}),
    "empty.dmg": ([[]], {}),
    "none.dmg": ([], {}),
    "short.dmg": ([[("zlib", pattern(64))]], {"sectors": 40}),
    "long.dmg": ([[("zlib", pattern(64))]], {"sectors": 100}),
    "nochunks.dmg": ([], {"sectors": 100}),
    "lzfse.dmg": ([[("zlib", pattern(8)), ("lzfse", 16, b"junk" * 10),
                    ("adc", 8, b"x" * 20), ("raw", pattern(8))]], {}),
}
BZ2 = {
    "bz2.dmg": ([[("bzip2", pattern(300, 9)), ("zero", 8),
                  ("bzip2", pattern(2048, 10))]], {}),
    "bz2rsrc.dmg": ([[("raw", pattern(4)), ("bzip2", pattern(64, 11))]],
                    {"xml": False}),
}


def build_all(d, images):
    contents = {}
    for name, (parts, kw) in images.items():
        contents[name] = build_dmg(str(d / name), parts, **kw)
        if contents[name] is not None:
            (d / (name + ".raw")).write_bytes(contents[name])
    return contents


@pytest.fixture
def images(pair):
    pair.setup(lambda d: build_all(d, IMAGES))
    return pair


def test_read_commands(images):
    cases = []
    for name in IMAGES:
        cases.append(["info", name])
        if name in CRASH:
            continue
        # compare reads every sector; convert where there is no content
        # to compare with (images that fail to read).
        if (images.ref_dir / (name + ".raw")).exists():
            cases.append(["compare", name, name + ".raw"])
        else:
            cases.append(["convert", "-O", "raw", name, "out.img"])
    for name in ("all.dmg", "rsrc.dmg"):
        cases += [["info", "--output=json", name], ["map", name],
                  ["check", name], ["check", "--output=json", name],
                  ["compare", "-s", name, name], ["snapshot", "-l", name],
                  ["measure", "-O", "qcow2", name],
                  ["info", "-f", "dmg", name],
                  ["compare", "-f", "dmg", "-F", "raw", name, name + ".raw"]]
    # dmg is probed by name only: another name is raw, -f dmg forces it.
    for d in images.dirs():
        (d / "all.img").write_bytes((d / "all.dmg").read_bytes())
    cases += [["info", "all.img"], ["info", "-f", "dmg", "all.img"],
              ["info", "-f", "dmg", "all.dmg.raw"],
              ["compare", "lzfse.dmg", "lzfse.dmg"],
              ["info", "--image-opts", "driver=dmg,file.filename=all.dmg"],
              ["info", "--image-opts",
               "driver=dmg,file.filename=all.dmg,foo=bar"],
              ["info", "--image-opts",
               "driver=dmg,file.filename=all.dmg.raw,foo=bar"]]
    same_cases(images, cases)


def test_convert(images):
    for name, fmt in (("all.dmg", "raw"), ("parts.dmg", "qcow2"),
                      ("rsrc.dmg", "raw")):
        same_cases(images, [["convert", "-O", fmt, name, "out." + fmt]],
                   scratch=())
        images.same_content("out." + fmt, fmt)
        r = images.ref("compare", "out." + fmt, name + ".raw")
        assert r.rc == 0, r
    same_cases(images, [["dd", "if=parts.dmg", "of=dd.raw", "bs=1k",
                         "skip=1", "count=700"]], scratch=())
    images.same_content("dd.raw")


def test_bzip2(pair, tmp_path):
    """bzip2 chunks: qimg decodes them (the reference, without its module,
    fails with EIO); the content is the generator's."""
    contents = {}
    pair.setup(lambda d: contents.update(build_all(d, BZ2)))
    for name in BZ2:
        same_cases(pair, [["info", name], ["map", "--output=json", name]],
                   bz2=True)
        q = pair.qimg("convert", "-O", "raw", name, "out.raw")
        assert q.rc == 0 and q.err == "", q
        assert (pair.qimg_dir / "out.raw").read_bytes() == contents[name]
        q = pair.qimg("compare", name, name + ".raw")
        assert (q.rc, q.out) == (0, "Images are identical.\n"), q
    # The reference reads the other chunks of such an image the same way.
    r = pair.ref("convert", "-O", "raw", "bz2rsrc.dmg", "ref.raw")
    assert r.rc == 1 and "Input/output error" in r.err


def test_refused(images):
    same_cases(images, [
        ["resize", "all.dmg", "20M"], ["resize", "-f", "dmg", "all.img", "1M"],
        ["commit", "all.dmg"], ["snapshot", "-c", "s", "all.dmg"],
        ["amend", "-o", "size=1M", "all.dmg"],
        ["amend", "-f", "dmg", "-o", "help", "all.dmg"],
        ["rebase", "-u", "-b", "x", "all.dmg"],
        ["bitmap", "--add", "all.dmg", "b"],
        ["create", "-f", "dmg", "x", "1M"], ["create", "-f", "dmg", "-o", "help"],
        ["convert", "-O", "dmg", "all.dmg.raw", "o.dmg"],
        ["convert", "-n", "-O", "raw", "all.dmg.raw", "all.dmg"],
        ["measure", "-O", "dmg", "--size", "1M"],
        ["bench", "-w", "all.dmg"]])


def patched(parts, patch, **kw):
    """A generator for a dmg whose trailer patch(bytearray) edits."""
    return lambda path: build_dmg(path, parts, koly_patch=patch, **kw)


def koly_field(off, value, size=8):
    fmt = ">Q" if size == 8 else ">I"
    return lambda k: struct.pack_into(fmt, k, off, value)


def xml_file(text):
    """A dmg whose XML plist is text as given."""
    def make(path):
        body = text.encode() if isinstance(text, str) else text
        k = dmggen.koly(0, 0, 0, 0, 0, len(body), 64)
        with open(path, "wb") as f:
            f.write(body + bytes(k))
    return make


def mish_b64(entries, first=0):
    return base64.b64encode(dmggen._mish(first, 64, 0, entries)).decode()


def raw_file(data):
    return lambda path: Path(path).write_bytes(data)


ONE = [[("zlib", pattern(64))]]
E = dmggen.TYPES
HOSTILE = {
    "tiny.dmg": raw_file(b"x" * 100),
    "nokoly.dmg": raw_file(b"x" * 4096),
    "koly-first.dmg": raw_file(b"koly" + bytes(508)),
    "koly-odd.dmg": raw_file(bytes(700) + b"koly" + bytes(300)),
    "dataoff.dmg": patched(ONE, koly_field(0x18, 1 << 40)),
    "rsrc-off.dmg": patched(ONE, koly_field(0x28, 1 << 40), xml=False),
    "rsrc-len.dmg": patched(ONE, koly_field(0x30, 1 << 40), xml=False),
    "xml-off.dmg": patched(ONE, koly_field(0xd8, 1 << 40)),
    "xml-len.dmg": patched(ONE, koly_field(0xe0, 1 << 40)),
    "no-forks.dmg": patched(ONE, koly_field(0xe0, 0)),
    "sectors-neg.dmg": patched(ONE, koly_field(0x1ec, 1 << 63)),
    "sectors-2^54.dmg": patched(ONE, koly_field(0x1ec, (1 << 54) - 1)),
    "xml-unclosed.dmg": xml_file("<plist><data>" + mish_b64([]) + "<dat"),
    "xml-nul.dmg": xml_file(b"<data>" + mish_b64([(1, 0, 0, 1, 0, 512)])
                            .encode() + b"\0</data><data>"),
    "xml-garbage.dmg": xml_file("<data>!!@@##</data><data>AAAA</data>"),
    "xml-big.dmg": xml_file("<data></data>" + " " * (17 << 20)),
    "xml-empty-data.dmg": xml_file("<data></data>"),
    "sectorcount.dmg": xml_file("<data>" + mish_b64(
        [(E["zlib"], 0, 0, 200000, 0, 100)]) + "</data>"),
    "sectorcount-zero.dmg": xml_file("<data>" + mish_b64(
        [(E["zero"], 0, 0, 200000, 0, 0)]) + "</data>"),
    "length.dmg": xml_file("<data>" + mish_b64(
        [(E["raw"], 0, 0, 16, 0, 100 << 20)]) + "</data>"),
    "second-bad.dmg": xml_file("<data>" + mish_b64(
        [(E["comment"], 0, 0, 0, 0, 0), (E["zero"], 0, 0, 8, 0, 0),
         (E["raw"], 0, 8, 16, 0, 100 << 20)]) + "</data>"),
    "unknown.dmg": xml_file("<data>" + mish_b64(
        [(0x1234, 0, 0, 8, 0, 0), (0x5678, 0, 8, 8, 0, 0),
         (E["zero"], 0, 16, 8, 0, 0)]) + "</data>"),
    "bad-zlib.dmg": xml_file("<data>" + mish_b64(
        [(E["zlib"], 0, 0, 8, 0, 100)]) + "</data>"),
    "zero-len.dmg": xml_file("<data>" + mish_b64(
        [(E["zlib"], 0, 0, 8, 0, 0), (E["raw"], 0, 8, 8, 0, 0)]) +
        "</data>"),
    "raw-short.dmg": xml_file("<data>" + mish_b64(
        [(E["raw"], 0, 0, 8, 0, 10)]) + "</data>"),
    "gap.dmg": xml_file("<data>" + mish_b64(
        [(E["zero"], 0, 0, 8, 0, 0), (E["zero"], 0, 16, 48, 0, 0)]) +
        "</data>"),
}
# Where the reference trusts the image and we refuse (docs/LIMITS.md),
# and where it crashes (no chunks but sectors; a gap before the end).
OURS = {
    "overlap.dmg": (xml_file("<data>" + mish_b64(
        [(E["zero"], 0, 0, 16, 0, 0), (E["zero"], 0, 8, 16, 0, 0)]) +
        "</data>"), "dmg chunks overlap at sector 8"),
    "wrap.dmg": (xml_file("<data>" + mish_b64(
        [(E["zero"], 0, (1 << 64) - 8, 16, 0, 0)]) + "</data>"),
        "overflows"),
    "sectors-2^60.dmg": (patched(ONE, koly_field(0x1ec, 1 << 60)),
                         "Could not refresh total sector count: File too "
                         "large"),
}
CRASH = {"nochunks.dmg", "xml-empty-data.dmg", "xml-garbage.dmg"}


@pytest.fixture
def hostile(pair):
    def setup(d):
        for name, make in HOSTILE.items():
            make(str(d / name))
        for name, (make, _) in OURS.items():
            make(str(d / name))
    pair.setup(setup)
    return pair


@pytest.mark.parametrize("batch", batches(sorted(HOSTILE), 9))
def test_hostile(hostile, batch):
    cases = []
    for name in batch:
        cases.append(["info", name])
        if name not in CRASH:
            cases.append(["convert", "-O", "raw", name, "out.img"])
    same_cases(hostile, cases)


def test_hostile_ours(hostile, pair):
    for name, (_, msg) in OURS.items():
        q = hostile.qimg("info", name)
        assert q.rc == 1 and msg in q.err, q
    # No chunks for some sectors: the reference crashes reading them.
    pair.setup(lambda d: build_dmg(str(d / "nochunks.dmg"), [],
                                   sectors=100))
    for name in CRASH:
        r, q = hostile.both("convert", "-O", "raw", name, "o.raw")
        assert r.rc < 0 or r.rc > 128, r
        assert (q.rc, q.err) == (1, "qemu-img: error while reading at byte "
                                    "0: Input/output error\n"), q


# The chunk table bound (DMG_MAX_CHUNKS, 40 MiB images) is tested in
# memory by tests/unit/test-dmg.c.
