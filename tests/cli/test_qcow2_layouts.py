"""qcow2 layouts and repairs side by side with the reference: preallocated
images (every mode, cluster sizes, extended L2, external data files) map
and check alike; external data files map, resize and measure alike; check
and repair of images with the corrupt or dirty bit, hostile snapshot
counts, refcount blocks past the end; amend's refusals; extended L2
entries QEMU refuses or flags; commit's emptying; a 127-deep chain.
Each case compares stdout, stderr and exit code, and the images each
tool leaves are then inspected by the reference."""
import json
import struct

import pytest

from conftest import QEMU_IO, batches, run, REF, same_all

CLUSTERS = [512, 4096, 65536, 2 * 1024 * 1024]


def poke(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def peek(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def io(path, *cmds, fmt="qcow2", cwd=None):
    args = [str(QEMU_IO), "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    args.append(str(path))
    r = run(QEMU_IO, args[1:], cwd or path.parent)
    assert r.rc == 0, r


def prealloc_cases():
    for mode in ("metadata", "falloc", "full"):
        for cs in CLUSTERS:
            for extl2 in ("off", "on"):
                if extl2 == "on" and cs < 16384:
                    continue
                for data in (False, True):
                    yield mode, cs, extl2, data


PREALLOC = list(prealloc_cases())


@pytest.mark.parametrize("batch", batches(PREALLOC, 8),
                         ids=lambda b: f"{b[0][0]}-{b[0][1]}")
def test_prealloc_layouts(pair, batch):
    """create with preallocation: the same output, map (data/zero flags
    and offsets per extent), check (image end) and file size."""
    for i, (mode, cs, extl2, data) in enumerate(batch):
        name = f"p{i}.qcow2"
        opts = f"preallocation={mode},cluster_size={cs},extended_l2={extl2}"
        if data:
            opts += f",data_file=p{i}.data"
        same_all(pair, [("create", "-f", "qcow2", "-o", opts, name, "3M")])
        same_all(pair, [("map", "--output=json", name),
                        ("map", name),
                        ("check", "--output=json", name)])
        for ext in ("", ".data") if data else ("",):
            f = f"p{i}.qcow2" if not ext else f"p{i}.data"
            sizes = [(d / f).stat().st_size for d in pair.dirs()]
            assert sizes[0] == sizes[1], (opts, f, sizes)


def test_prealloc_resize(pair):
    """Growing with each preallocation mode lays out as the reference."""
    pair.sh("/usr/bin/qemu-img create -q -f qcow2 a.qcow2 1M")
    for mode in ("off", "metadata", "falloc", "full"):
        same_all(pair, [("resize", "--preallocation=" + mode, "a.qcow2", "+1M"),
                        ("map", "--output=json", "a.qcow2"),
                        ("check", "a.qcow2")])
    sizes = [(d / "a.qcow2").stat().st_size for d in pair.dirs()]
    assert sizes[0] == sizes[1]


def test_data_file(pair):
    """External data files, raw and not: map after writes, resize grow
    and shrink (the data file follows), measure."""
    for raw in ("off", "on"):
        name, data = f"d{raw}.qcow2", f"d{raw}.data"
        pair.sh(f"/usr/bin/qemu-img create -q -f qcow2 -o data_file={data},"
                f"data_file_raw={raw} {name} 4M")
        for d in pair.dirs():
            io(d / name, "write -P 0x11 0 64k", "write -z 1M 64k",
               "write -P 0x22 3M 8k")
        same_all(pair, [("map", "--output=json", name), ("map", name),
                         ("measure", "-O", "qcow2", name),
                         ("measure", "--output=json", "-O", "qcow2", name),
                         ("resize", name, "8M"),
                         ("map", "--output=json", name),
                         ("info", "--output=json", name),
                         ("resize", "--shrink", name, "2M"),
                         ("map", "--output=json", name),
                         ("check", name)])
        sizes = [(d / data).stat().st_size for d in pair.dirs()]
        assert sizes[0] == sizes[1], (raw, sizes)


INCOMPAT = 72


def test_check_dirty_and_corrupt(pair):
    """check, check -r leaks and check -r all on images with the dirty
    or corrupt bit (and both): output, exit code and the header bits
    left behind."""
    cases = []
    for bits in (1, 2, 3):
        for mode in (None, "leaks", "all"):
            cases.append((bits, mode))
    for i, (bits, mode) in enumerate(cases):
        name = f"c{i}.qcow2"
        for d in pair.dirs():
            r = run(REF, ["create", "-q", "-f", "qcow2", name, "1M"], d)
            assert r.rc == 0
            io(d / name, "write -P 1 0 64k")
            poke(d / name, INCOMPAT, struct.pack(">Q", bits))
        args = ("check",) + (("-r", mode) if mode else ()) + (name,)
        same_all(pair, [args])
        hdr = [peek(d / name, INCOMPAT, 8) for d in pair.dirs()]
        assert hdr[0] == hdr[1], (bits, mode, hdr)


def test_hostile_headers(pair):
    """A huge snapshot count; a refcount table entry past the end of the
    file; refcount width changes by amend."""
    for d in pair.dirs():
        assert run(REF, ["create", "-q", "-f", "qcow2", "s.qcow2", "1M"], d).rc == 0
        poke(d / "s.qcow2", 60, struct.pack(">I", 0xffffffff))
        assert run(REF, ["create", "-q", "-f", "qcow2", "e.qcow2", "1M"], d).rc == 0
        io(d / "e.qcow2", "write -P 1 0 64k")
        rt = struct.unpack(">Q", peek(d / "e.qcow2", 48, 8))[0]
        poke(d / "e.qcow2", rt + 8, struct.pack(">Q", 1 << 30))
    same_all(pair, [("check", "s.qcow2"), ("info", "s.qcow2"),
                    ("check", "e.qcow2"),
                    ("check", "--output=json", "e.qcow2"),
                    ("check", "-r", "all", "e.qcow2"),
                    ("check", "e.qcow2")])


def test_amend_refusals_and_widths(pair):
    """compat=0.10 refused on zstd images; refcount_bits changes."""
    pair.sh("/usr/bin/qemu-img create -q -f qcow2 -o compression_type=zstd "
            "z.qcow2 1M && /usr/bin/qemu-img create -q -f qcow2 w.qcow2 4M")
    for d in pair.dirs():
        io(d / "w.qcow2", "write -P 1 0 1M", "write -P 2 2M 64k")
    same_all(pair, [("amend", "-o", "compat=0.10", "z.qcow2"),
                    ("info", "z.qcow2")])
    # Width changes are slow in both tools (fsyncs per pass): one narrowing.
    for bits in (8,):
        same_all(pair, [("amend", "-o", f"refcount_bits={bits}", "w.qcow2"),
                        ("check", "w.qcow2"),
                        ("map", "--output=json", "w.qcow2")])
    same_all(pair, [("amend", "-o", "compat=0.10", "w.qcow2"),
                    ("check", "w.qcow2")])
    pair.same_content("w.qcow2", fmt="qcow2")


def l2_entry_offset(path, guest_cluster=0):
    l1 = struct.unpack(">Q", peek(path, 40, 8))[0]
    l2 = struct.unpack(">Q", peek(path, l1, 8))[0] & 0x00fffffffffffe00
    return l2 + 16 * guest_cluster


def test_extended_l2_refused_and_flagged(pair):
    """An entry with a subcluster both allocated and zero is refused;
    a compressed cluster with a subcluster bitmap is reported by check."""
    for d in pair.dirs():
        assert run(REF, ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on",
                         "z.qcow2", "1M"], d).rc == 0
        io(d / "z.qcow2", "write -P 1 0 64k")
        poke(d / "z.qcow2", l2_entry_offset(d / "z.qcow2") + 8,
             struct.pack(">Q", (1 << 32) | 1))
        assert run(REF, ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on",
                         "c.qcow2", "1M"], d).rc == 0
        io(d / "c.qcow2", "write -c -P 2 0 64k")
        poke(d / "c.qcow2", l2_entry_offset(d / "c.qcow2") + 8,
             struct.pack(">Q", 1))
    same_all(pair, [("map", "--output=json", "z.qcow2"),
                    ("convert", "-O", "raw", "z.qcow2", "z.raw"),
                    ("check", "z.qcow2"),
                    ("check", "c.qcow2"),
                    ("check", "--output=json", "c.qcow2")])


def test_commit_empties_as_qemu(pair):
    """commit (emptying the top, iotest 098's case) leaves both images
    laid out as the reference leaves them."""
    pair.sh("/usr/bin/qemu-img create -q -f qcow2 b.qcow2 4M && "
            "/usr/bin/qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2")
    for d in pair.dirs():
        io(d / "b.qcow2", "write -P 1 0 1M")
        io(d / "t.qcow2", "write -P 2 512k 1M", "write -z 3M 64k")
    same_all(pair, [("commit", "t.qcow2"), ("map", "--output=json", "t.qcow2"),
                    ("map", "--output=json", "b.qcow2"), ("check", "t.qcow2"),
                    ("check", "b.qcow2")])
    for name in ("t.qcow2", "b.qcow2"):
        sizes = [(d / name).stat().st_size for d in pair.dirs()]
        assert sizes[0] == sizes[1], (name, sizes)


def test_chain_127(pair):
    """A chain of 127 images opens for check, map and convert."""
    def build(d):
        assert run(REF, ["create", "-q", "-f", "qcow2", "c0.qcow2", "1M"], d).rc == 0
        for i in range(1, 127):
            r = run(REF, ["create", "-q", "-f", "qcow2", "-b", f"c{i-1}.qcow2",
                          "-F", "qcow2", f"c{i}.qcow2"], d)
            assert r.rc == 0
        io(d / "c126.qcow2", "write -P 3 64k 64k")
    pair.setup(build)
    same_all(pair, [("check", "c126.qcow2"), ("map", "--output=json", "c126.qcow2"),
                    ("convert", "-O", "qcow2", "c126.qcow2", "out.qcow2"),
                    ("compare", "c126.qcow2", "out.qcow2")])
    info = json.loads(pair.qimg("info", "--output=json", "--backing-chain",
                                "c126.qcow2").out)
    assert len(info) == 127


ZERO_KINDS = {"v3": "", "v2": ",compat=0.10", "ext": ",extended_l2=on",
              "df": ",data_file=DF", "extdf": ",extended_l2=on,data_file=DF"}


def test_zero_writes_as_qemu(pair):
    """Zero writes (convert -n, commit) split as 7.2 splits them: whole
    clusters freed and discarded in the file (or the data file), parts of
    a cluster zeroed by subclusters on extended L2 (the host cluster
    kept), and a part of a subcluster (or of a cluster) whose rest already
    reads as zero zeroing it whole.  Targets full of data and fresh ones;
    the same maps, checks and (within a few blocks) space taken."""
    def build(d):
        for name, cmds in (("s.raw", ["write -P 2 1M 1M"]),
                           ("p.raw", ["write -P 3 6k 1k", "write -P 3 100k 2k",
                                      "write -P 3 3M 5k"])):
            assert run(REF, ["create", "-q", "-f", "raw", name, "8M"], d).rc == 0
            io(d / name, *cmds, fmt="raw")
        for k, o in ZERO_KINDS.items():
            for name in (f"{k}.qcow2", f"f{k}.qcow2", f"b{k}.qcow2"):
                assert run(REF, ["create", "-q", "-f", "qcow2", "-o",
                                 "cluster_size=65536" + o.replace("DF", name + ".data"),
                                 name, "8M"], d).rc == 0
                if not name.startswith("f"):
                    io(d / name, "write -P 1 0 8M")
            if k == "v2":
                continue   # v2 has no zero flag: zeroes over a backing file are data
            assert run(REF, ["create", "-q", "-f", "qcow2", "-b", f"b{k}.qcow2",
                             "-F", "qcow2", f"t{k}.qcow2"], d).rc == 0
            io(d / f"t{k}.qcow2", "write -z 0 3M", "discard 4M 2M",
               "write -z 6M 4k", "write -z 6300k 1k", "write -z 7M 130k")
    pair.setup(build)
    cases = []
    for k in ZERO_KINDS:
        cases += [("convert", "-n", "-O", "qcow2", "s.raw", f"{k}.qcow2"),
                  ("map", "--output=json", f"{k}.qcow2"), ("check", f"{k}.qcow2"),
                  ("convert", "-n", "-O", "qcow2", "p.raw", f"f{k}.qcow2"),
                  ("map", "--output=json", f"f{k}.qcow2"),
                  ("compare", "p.raw", f"f{k}.qcow2")]
        if k != "v2":
            cases += [("commit", "-q", f"t{k}.qcow2"),
                      ("map", "--output=json", f"b{k}.qcow2"),
                      ("check", f"b{k}.qcow2")]
    same_all(pair, cases)
    slack = 64 * 1024
    ref_d, q_d = pair.dirs()
    for k in ZERO_KINDS:
        names = [f"{k}.qcow2"] + ([] if k == "v2" else [f"b{k}.qcow2"])
        if "df" in k:
            names = [n + ".data" for n in names]
        for name in names:
            used = [(d / name).stat().st_blocks * 512 for d in (ref_d, q_d)]
            assert used[1] <= used[0] + slack, (name, used)
