"""Internal snapshots made by the reference, read by qimg: info listing
(human and JSON), snapshot -l, measure -l, check; and qimg writing into an
image with snapshots (copy-on-write of shared clusters) stays clean for the
reference and leaves the snapshot's content untouched."""
import subprocess

import pytest

from conftest import BUILD, QEMU_IO, REF, run

QIMG_IO = BUILD / "tests" / "qimg-io"


def make_snapshots(d, geom=()):
    img = d / "sn.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", *geom, str(img), "4M"],
                   check=True)
    subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 128k", "-c",
                    "write -P 3 3M 64k", str(img)], check=True, capture_output=True)
    subprocess.run([str(REF), "snapshot", "-c", "s1", str(img)], check=True)
    subprocess.run([str(QEMU_IO), "-c", "write -P 2 0 64k", str(img)], check=True,
                   capture_output=True)
    subprocess.run([str(REF), "snapshot", "-c", "a_much_longer_snapshot_name",
                    str(img)], check=True)


@pytest.mark.parametrize("args", [
    ["info", "sn.qcow2"],
    ["info", "--output=json", "sn.qcow2"],
    ["info", "-U", "sn.qcow2"],
    ["snapshot", "-l", "sn.qcow2"],
    ["snapshot", "-l", "-q", "sn.qcow2"],
    ["snapshot", "sn.qcow2"],
    ["snapshot", "-l", "-a", "s1", "sn.qcow2"],
    ["check", "sn.qcow2"],
    ["check", "--output=json", "sn.qcow2"],
    ["map", "--output=json", "sn.qcow2"],
    ["measure", "-l", "s1", "sn.qcow2"],
    ["measure", "-l", "1", "-O", "qcow2", "sn.qcow2"],
    ["measure", "-l", "snapshot.id=2", "sn.qcow2"],
    ["measure", "-l", "snapshot.name=s1", "-O", "qcow2", "sn.qcow2"],
    ["measure", "-l", "snapshot.name=s1,snapshot.id=2", "sn.qcow2"],
    ["measure", "-l", "nope", "sn.qcow2"],
])
@pytest.mark.parametrize("geom", [[], ["-o", "cluster_size=4k"],
                                  ["-o", "compat=0.10"]],
                         ids=["default", "4k", "v2"])
def test_reference_snapshots(pair, args, geom):
    pair.setup_once(lambda d: make_snapshots(d, geom))
    pair.same(*args)


def test_qimg_writes_over_snapshot(workdir):
    make_snapshots(workdir)
    img = workdir / "sn.qcow2"
    r = run(QIMG_IO, ["-f", "qcow2", img, "write -P 9 0 256k",
                      "write -P 8 3M 4k", "discard 3M 64k"], workdir)
    assert r.rc == 0, r
    chk = run(REF, ["check", img], workdir)
    assert chk.rc == 0 and "No errors" in chk.out, chk
    # The snapshot still holds what it held when it was taken.
    subprocess.run([str(REF), "convert", "-l", "s1", "-O", "raw", str(img),
                    str(workdir / "s1.raw")], check=True)
    r = subprocess.run([str(QEMU_IO), "-f", "raw", "-c", "read -P 1 0 128k",
                        "-c", "read -P 3 3M 64k", str(workdir / "s1.raw")],
                       capture_output=True, text=True)
    assert "Pattern verification failed" not in r.stdout, r.stdout
    r = subprocess.run([str(QEMU_IO), "-c", "read -P 9 0 256k", str(img)],
                       capture_output=True, text=True)
    assert "Pattern verification failed" not in r.stdout, r.stdout


def strip_dates(s):
    import re
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", s)


@pytest.mark.parametrize("geom", [[], ["-o", "cluster_size=4k"],
                                  ["-o", "compat=0.10"],
                                  ["-o", "refcount_bits=8"]],
                         ids=["default", "4k", "v2", "rc8"])
def test_snapshot_create_apply_delete(pair, geom):
    """The same snapshot operations through both tools give images the
    reference finds clean and identical in content and mapping."""
    def make(d):
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", *geom,
                        str(d / "t.qcow2"), "4M"], check=True)
        subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 128k", "-c",
                        "write -c -P 7 1M 64k", str(d / "t.qcow2")], check=True,
                       capture_output=True)
    pair.setup(make)
    steps = [["snapshot", "-c", "s1", "t.qcow2"],
             ("io", "write -P 2 0 64k"),
             ["snapshot", "-c", "s2", "t.qcow2"],
             ["snapshot", "-c", "s1", "t.qcow2"],          # duplicate name
             ("io", "write -P 3 32k 64k"),
             ["snapshot", "-a", "s1", "t.qcow2"],          # first match: id 1
             ["snapshot", "-a", "2", "t.qcow2"],
             ["snapshot", "-d", "s1", "t.qcow2"],
             ["snapshot", "-d", "3", "t.qcow2"],
             ["snapshot", "-a", "nope", "t.qcow2"],
             ["snapshot", "-d", "nope", "t.qcow2"],
             ["snapshot", "-c", "x", "-U", "t.qcow2"]]
    for step in steps:
        if isinstance(step, tuple):
            for d in pair.dirs():
                subprocess.run([str(QEMU_IO), "-c", step[1], str(d / "t.qcow2")],
                               check=True, capture_output=True)
            continue
        pair.same(*step)
        r, q = pair.both("snapshot", "-l", "t.qcow2")
        assert strip_dates(q.out) == strip_dates(r.out)
        chk = run(REF, ["check", "t.qcow2"], pair.qimg_dir)
        assert chk.rc == 0, (step, chk)
        cmp = run(REF, ["compare", pair.path_ref("t.qcow2"),
                        pair.path_qimg("t.qcow2")], pair.ref_dir)
        assert cmp.rc == 0, (step, cmp)
        for a in (["map", "--output=json", "t.qcow2"], ["check", "t.qcow2"]):
            rr = run(REF, a, pair.ref_dir)
            qq = run(REF, a, pair.qimg_dir)
            assert (qq.rc, qq.out) == (rr.rc, rr.out), (step, a, rr, qq)


@pytest.mark.parametrize("args", [
    ["-a", "x", "a.img"], ["-d", "x", "a.img"], ["-c", "x", "a.img"],
    ["-c", "x", "nonexist"], ["-a"], ["-c", "x"],
])
def test_snapshot_errors(pair, args):
    pair.sh("truncate -s 1M a.img")
    pair.same("snapshot", *args)


def make_bitmaps(d):
    img = d / "bm.qcow2"
    subprocess.run([str(REF), "create", "-q", "-f", "qcow2", str(img), "4M"],
                   check=True)
    subprocess.run([str(REF), "bitmap", "--add", "-g", "64k", str(img), "b1"],
                   check=True)
    subprocess.run([str(REF), "bitmap", "--add", "-g", "512", str(img), "b2"],
                   check=True)
    subprocess.run([str(REF), "bitmap", "--disable", str(img), "b2"], check=True)


@pytest.mark.parametrize("args", [
    ["info", "bm.qcow2"], ["info", "--output=json", "bm.qcow2"],
    ["measure", "-O", "qcow2", "bm.qcow2"],
    ["measure", "-O", "qcow2", "-o", "cluster_size=4k", "bm.qcow2"],
    ["check", "bm.qcow2"],
])
def test_reference_bitmaps_listed(pair, args):
    """Persistent bitmaps made by the reference are listed by info (with
    flags and granularity) and sized by measure as the reference does."""
    pair.setup_once(make_bitmaps)
    pair.same(*args)


def make_data_file_image(d):
    subprocess.run(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    "data_file=d.raw,data_file_raw=on", "df.qcow2", "8M"],
                   cwd=d, check=True)


@pytest.mark.parametrize("args", [["-c", "x"], ["-a", "x"], ["-d", "x"], ["-l"]])
def test_snapshot_with_external_data_file(pair, args):
    """An image whose data lives in an external file has no snapshots:
    create and apply fail with qemu-img's messages."""
    pair.setup(make_data_file_image)
    pair.same("snapshot", *args, "df.qcow2")


# Events whose injected errors snapshot -d meets at 7.2's points (once=on:
# the first I/O after the event fails; off: every one after it).
DELETE_EVENTS = [("cluster_free", "off"), ("cluster_free", "on"),
                 ("refblock_load", "off"), ("refblock_update", "off"),
                 ("l1_update", "off"), ("reftable_load", "off"),
                 ("l2_load", "on"), ("cluster_alloc", "on"),
                 ("flush_to_os", "on"), ("flush_to_disk", "off")]


def test_snapshot_delete_io_errors(pair):
    """snapshot -d through blkdebug with an error injected on an event
    (iotest 217): the same messages, exit code, and an image the
    reference's check finds leaking (not corrupt) the same clusters."""
    bad = []
    for event, once in DELETE_EVENTS:
        for d in pair.dirs():
            for f in d.iterdir():
                f.unlink()
        pair.sh(f"{REF} create -q -f qcow2 t.qcow2 64M && {QEMU_IO} "
                "-c 'write 0 64k' -c 'write -c 1M 64k' t.qcow2 && "
                f"{REF} snapshot -c foo t.qcow2 && printf '[inject-error]\\n"
                f"event = \"{event}\"\\nerrno = \"5\"\\nonce = \"{once}\"\\n' "
                "> b.conf")
        r, q = pair.both("snapshot", "-d", "foo", "blkdebug:b.conf:t.qcow2")
        rc = run(REF, ["check", "t.qcow2"], pair.ref_dir)
        qc = run(REF, ["check", "t.qcow2"], pair.qimg_dir)
        if (q.rc, q.out, q.err, qc.out, qc.rc) != (r.rc, r.out, r.err, rc.out,
                                                    rc.rc):
            bad.append(f"{event} once={once}\nREF {r!r} {rc!r}\n"
                       f"QIMG {q!r} {qc!r}")
    assert not bad, "\n\n".join(bad)


def test_snapshots_through_raw_over_qcow2_node(pair):
    """raw over a qcow2 node passes snapshot operations to that node, as
    QEMU's snapshot fallback to a primary child does: the same outputs
    step by step, and images the reference finds clean and identical."""
    def make(d):
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2",
                        str(d / "t.qcow2"), "1M"], check=True)
        subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 64k",
                        str(d / "t.qcow2")], check=True, capture_output=True)
    pair.setup(make)
    node = ('json:{"driver": "raw", "file": {"driver": "qcow2", "file": '
            '{"driver": "file", "filename": "t.qcow2"}}}')
    steps = [["-c", "s1"], ["-c", "s1"], ["-c", "s2"], ["-l"], ["-a", "s1"],
             ["-a", "nope"], ["-d", "nope"], ["-d", "s2"], ["-d", "1"],
             ["-l"]]
    bad = []
    for step in steps:
        for args in (("snapshot", *step, node), ("info", node)):
            r, q = pair.both(*args)
            if (q.rc, strip_dates(q.out), q.err) != \
                    (r.rc, strip_dates(r.out), r.err):
                bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n".join(bad)
    assert run(REF, ["check", "t.qcow2"], pair.qimg_dir).rc == 0
    cmp = run(REF, ["compare", pair.path_ref("t.qcow2"),
                    pair.path_qimg("t.qcow2")], pair.ref_dir)
    assert cmp.rc == 0, cmp
