"""vmdk: create with every subformat and option (output, exit status and
the files written, byte for byte but for the random CID), info (human and
JSON, with the format-specific block), map and check of images of every
kind, and the commands vmdk refuses, all against the reference."""
import json

import pytest

from conftest import REF, batches, needs_format, run
from vmdkutil import same_files

pytestmark = needs_format("vmdk")

SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]

CREATE_CASES = (
    [[f"subformat={s}", size] for s in SUBFORMATS
     for size in ["5M", "1000", "512", "0"]] +
    [[f"subformat={s}", "3G"] for s in ["twoGbMaxExtentSparse",
                                         "twoGbMaxExtentFlat"]] +
    [["subformat=monolithicSparse", "4100M"],
     ["", "100G"], ["subformat=streamOptimized", "20G"],
     ["adapter_type=lsilogic", "1G"], ["adapter_type=buslogic", "1G"],
     ["adapter_type=legacyESX", "1G"], ["adapter_type=ide", "1G"],
     ["adapter_type=scsi", "1G"], ["adapter_type=IDE", "1G"],
     ["hwversion=11", "8M"], ["hwversion=undefined", "8M"],
     ["compat6=on", "8M"], ["compat6=off", "8M"], ["compat6=on,hwversion=7", "8M"],
     ["compat6=maybe", "8M"], ["toolsversion=12345", "8M"],
     ["toolsversion=abc,hwversion=21", "8M"],
     ["zeroed_grain=on", "8M"], ["zeroed_grain=off", "8M"],
     ["zeroed_grain=on,subformat=streamOptimized", "8M"],
     ["zeroed_grain=on,subformat=twoGbMaxExtentSparse", "8M"],
     ["zeroed_grain=on,subformat=monolithicFlat", "8M"],
     ["zeroed_grain=on,subformat=twoGbMaxExtentFlat", "8M"],
     ["zeroed_grain=x", "8M"],
     ["subformat=foo", "8M"], ["subformat=MONOLITHICFLAT", "8M"],
     ["size=2M", ""], ["size=2M", "3M"], ["nocow=on", "2M"],
     ["preallocation=full,subformat=monolithicFlat", "2M"],
     ["preallocation=falloc", "2M"], ["extent_size_hint=1M", "2M"],
     ["foo=bar", "2M"], ["backing_fmt=qcow2", "2M"],
     ["backing_fmt=vmdk", "2M"],
     ["adapter_type=lsilogic,hwversion=7,toolsversion=9,subformat="
      "twoGbMaxExtentSparse", "2100M"]])


def _create_case(pair, opts, size, name="t.vmdk"):
    args = ["create", "-f", "vmdk"] + (["-o", opts] if opts else []) + \
        [name] + ([size] if size else [])
    r, q = pair.both(*args)
    bad = []
    if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
        bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
    # byte-identical files describe the same image to any reader
    bad += [f"{args}: {b}" for b in same_files(*pair.dirs())]
    for d in pair.dirs():
        for p in d.iterdir():
            p.unlink()
    return bad


@pytest.mark.parametrize("batch", batches(CREATE_CASES, 16))
def test_create(pair, batch):
    bad = []
    for opts, size in batch:
        bad += _create_case(pair, opts, size)
    assert not bad, "\n\n".join(bad)


def test_create_help_and_paths(pair):
    pair.same("create", "-f", "vmdk", "-o", "help")
    pair.same("create", "-f", "vmdk", "-o", "help", "x.vmdk")
    pair.same("create", "-f", "vmdk", "-o", "?", "x.vmdk")
    pair.sh("mkdir -p sub.d")
    bad = []
    for name in ["sub.d/a.b.vmdk", "noext", "sub.d/.hidden", "dot.", "x.y.z"]:
        for sub in ["twoGbMaxExtentSparse", "monolithicFlat"]:
            args = ["create", "-q", "-f", "vmdk", "-o", f"subformat={sub}",
                    name, "2M"]
            r, q = pair.both(*args)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
    for sub in ["sub.d"]:
        bad += same_files(pair.ref_dir / sub, pair.qimg_dir / sub)
    bad += same_files(*pair.dirs())
    # a directory that does not exist
    r, q = pair.both("create", "-f", "vmdk", "-o", "subformat=monolithicFlat",
                     "nodir/x.vmdk", "1M")
    if (q.rc, q.err) != (r.rc, r.err):
        bad.append(f"nodir\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n\n".join(bad)


def _bases(d):
    run(REF, ["create", "-q", "-f", "vmdk", "base.vmdk", "4M"], d)
    run(REF, ["create", "-q", "-f", "qcow2", "base.qcow2", "4M"], d)
    run(REF, ["create", "-q", "-f", "raw", "base.raw", "4M"], d)


BACKING_CASES = [
    ["-b", "base.vmdk", "-F", "vmdk", "t.vmdk"],
    ["-b", "base.vmdk", "-F", "vmdk", "t.vmdk", "8M"],
    ["-b", "base.vmdk", "t.vmdk"],
    ["-b", "base.qcow2", "-F", "qcow2", "t.vmdk"],
    ["-b", "base.qcow2", "-F", "vmdk", "t.vmdk"],
    ["-u", "-b", "base.qcow2", "-F", "vmdk", "t.vmdk", "1M"],
    ["-u", "-b", "base.raw", "-F", "vmdk", "t.vmdk", "1M"],
    ["-u", "-b", "nonexist.vmdk", "-F", "vmdk", "t.vmdk", "1M"],
    ["-b", "base.vmdk", "-F", "vmdk", "-o", "subformat=monolithicFlat",
     "t.vmdk"],
    ["-b", "base.vmdk", "-F", "vmdk", "-o", "subformat=twoGbMaxExtentFlat",
     "t.vmdk"],
    ["-b", "base.vmdk", "-F", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
     "t.vmdk"],
    ["-b", "base.vmdk", "-F", "vmdk", "-o", "subformat=streamOptimized",
     "t.vmdk"],
    ["-b", "base.vmdk", "-F", "vmdk", "-o", "zeroed_grain=on", "t.vmdk"],
    ["-o", "backing_file=base.vmdk,backing_fmt=vmdk", "t.vmdk"],
    ["-o", "backing_file=base.vmdk", "t.vmdk"],
    ["-b", "t.vmdk", "-F", "vmdk", "t.vmdk", "1M"],
]


def test_create_backing(pair):
    pair.setup_once(_bases)
    bad = []
    for args in BACKING_CASES:
        r, q = pair.both("create", "-f", "vmdk", *args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        bad += [f"{args}: {b}" for b in same_files(*pair.dirs())]
        if r.rc == 0:
            for tool in (pair.ref, pair.qimg):
                i = tool("info", "t.vmdk")
                if i.rc or "backing file: base.vmdk" not in i.out:
                    bad.append(f"{args}: info {i!r}")
        for d in pair.dirs():
            for p in d.glob("t*"):
                p.unlink()
    assert not bad, "\n\n".join(bad)


# ---- info, map, check on images the reference made ---------------------------

def _zoo(d):
    """Images of every kind, made (and written) by the reference."""
    io = lambda f, *c: run("/usr/bin/qemu-io", ["-f", "vmdk"] +
                           [a for x in c for a in ("-c", x)] + [f], d)
    for s in SUBFORMATS:
        size = "2100M" if s.startswith("twoGb") else "3M"
        run(REF, ["create", "-q", "-f", "vmdk", "-o", f"subformat={s}",
                  f"{s}.vmdk", size], d)
        if s != "streamOptimized":
            io(f"{s}.vmdk", "write -P 1 0 100k", "write -z 1M 64k",
               *(["write -P 2 2047M 2M"] if s.startswith("twoGb") else []))
    run(REF, ["create", "-q", "-f", "qcow2", "src.qcow2", "3M"], d)
    run("/usr/bin/qemu-io", ["-f", "qcow2", "-c", "write -P 7 64k 1M",
                             "src.qcow2"], d)
    run(REF, ["convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
              "src.qcow2", "ref-stream.vmdk"], d)
    run(REF, ["create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on",
              "zg.vmdk", "3M"], d)
    io("zg.vmdk", "write -P 3 0 64k", "write -z 64k 128k", "write -z 0 64k")
    run(REF, ["create", "-q", "-f", "vmdk", "-b", "zg.vmdk", "-F", "vmdk",
              "over.vmdk", "3M"], d)
    io("over.vmdk", "write -P 4 4k 4k")
    run(REF, ["create", "-q", "-f", "vmdk", "-b", "over.vmdk", "-F", "vmdk",
              "top.vmdk"], d)


INFO_ARGS = [["info"], ["info", "--output=json"], ["map"],
             ["map", "--output=json"], ["check"]]
ONE_IMAGE_ARGS = [["info", "--backing-chain"],
                  ["info", "--backing-chain", "--output=json"],
                  ["check", "--output=json"], ["check", "-r", "leaks"],
                  ["check", "-r", "all"], ["info", "-f", "raw"],
                  ["map", "--output=json", "-f", "vmdk"]]


def test_info_map_check(pair):
    pair.setup_once(_zoo)
    names = [f"{s}.vmdk" for s in SUBFORMATS] + [
        "ref-stream.vmdk", "zg.vmdk", "over.vmdk"]
    cases = [(a, n) for n in names for a in INFO_ARGS] + \
        [(a, "top.vmdk") for a in ONE_IMAGE_ARGS]
    bad = []
    for a, n in cases:
        r, q = pair.both(*a, n)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{a} {n}\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n\n".join(bad)
    # the format-specific block carries what QEMU's does
    q = pair.qimg("info", "--output=json", "twoGbMaxExtentSparse.vmdk")
    spec = json.loads(q.out)["format-specific"]
    assert spec["type"] == "vmdk"
    assert spec["data"]["create-type"] == "twoGbMaxExtentSparse"
    assert [e["filename"] for e in spec["data"]["extents"]] == [
        "twoGbMaxExtentSparse-s001.vmdk", "twoGbMaxExtentSparse-s002.vmdk"]


# ---- refusals -------------------------------------------------------------------

REFUSALS = [
    ["resize", "t.vmdk", "8M"], ["resize", "t.vmdk", "--shrink", "1M"],
    ["amend", "-o", "size=8M", "t.vmdk"], ["amend", "-o", "help", "t.vmdk"],
    ["amend", "-f", "vmdk", "-o", "zeroed_grain=on", "t.vmdk"],
    ["snapshot", "-c", "s", "t.vmdk"], ["snapshot", "-l", "t.vmdk"],
    ["snapshot", "-a", "s", "t.vmdk"], ["snapshot", "-d", "s", "t.vmdk"],
    ["measure", "-O", "vmdk", "t.vmdk"], ["measure", "-O", "vmdk", "--size", "1G"],
    ["measure", "-f", "vmdk", "-O", "qcow2", "t.vmdk"],
    ["measure", "-f", "vmdk", "-O", "raw", "t.vmdk"],
    ["rebase", "-u", "-b", "b.vmdk", "-F", "vmdk", "t.vmdk"],
    ["rebase", "-b", "b.vmdk", "-F", "vmdk", "t.vmdk"],
    ["rebase", "-u", "-b", "", "t.vmdk"],
    ["commit", "t.vmdk"],
    ["convert", "-c", "-O", "vmdk", "-o", "subformat=monolithicFlat", "t.vmdk",
     "o.vmdk"],
    ["convert", "-O", "vmdk", "-o", "preallocation=metadata", "t.vmdk",
     "o.vmdk"],
]


def _refusal_images(d):
    run(REF, ["create", "-q", "-f", "vmdk", "t.vmdk", "4M"], d)
    run(REF, ["create", "-q", "-f", "vmdk", "b.vmdk", "4M"], d)


def test_refusals(pair):
    pair.setup(_refusal_images)
    bad = []
    for args in REFUSALS:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            for p in d.glob("o*"):
                p.unlink()
    # bitmaps: the node name in the message has random digits in QEMU too
    r, q = pair.both("bitmap", "--add", "t.vmdk", "b0")
    norm = lambda s: __import__("re").sub(r"#block\d+", "#blockN", s)
    assert (q.rc, norm(q.err)) == (r.rc, norm(r.err)), f"{r!r}\n{q!r}"
    assert not bad, "\n\n".join(bad)
