"""The rbd storage (lib/proto/rbd) against a real single-node Ceph
cluster (tests/servers/ceph-single.sh: one mon, one memstore OSD) and the
reference qemu-img's rbd driver (qemu-block-extra): same outputs, same
exit codes, and each tool reading what the other wrote.  Starting Ceph
takes ~7 s and the daemons want the cores, so these tests run only under
`make check-rbd` (QIMG_RBD=1), not in tests/run-all.sh's default set."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REF, QIMG, run, same_all

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "servers" / "ceph-single.sh"

pytestmark = pytest.mark.skipif(
    os.environ.get("QIMG_RBD") != "1",
    reason="Ceph tests run with make check-rbd (QIMG_RBD=1)")


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    """A running cluster: the path of its ceph.conf (also CEPH_CONF)."""
    d = tmp_path_factory.mktemp("ceph")
    if not os.path.exists("/usr/bin/ceph-mon"):
        pytest.skip("ceph-mon is not installed (scripts/deps.sh rbd)")
    port = str(20000 + os.getpid() % 20000)
    p = subprocess.run([str(SCRIPT), "start", str(d), port],
                       capture_output=True, text=True, timeout=180)
    if p.returncode:
        subprocess.run([str(SCRIPT), "stop", str(d)])
        pytest.skip(f"Ceph did not start: {p.stderr[-800:]}")
    conf = str(d / "ceph.conf")
    old = os.environ.get("CEPH_CONF")
    os.environ["CEPH_CONF"] = conf
    yield {"conf": conf, "dir": d, "port": port}
    subprocess.run([str(SCRIPT), "stop", str(d)])
    if old is None:
        os.environ.pop("CEPH_CONF", None)
    else:
        os.environ["CEPH_CONF"] = old


def rbd(*args):
    subprocess.run(["rbd", *args], check=True, capture_output=True,
                   timeout=60)


def rbd_rm(name):
    subprocess.run(["rbd", "rm", name], capture_output=True, timeout=60)


def make_input(d):
    """8 MiB raw with data at 1-3 MiB and 5 MiB, holes elsewhere."""
    path = d / "in.raw"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(2 << 20))
        f.seek(5 << 20)
        f.write(b"\x5a" * 4096)
    return path


def test_info_map_and_errors(pair, ceph):
    rbd("create", "rbd/info1", "--size", "16M")
    rbd("create", "rbd/info2", "--size", "16M", "--object-size", "1M")
    rbd("create", "rbd/info3", "--size", "4M")
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 1M 64k",
                    "rbd:rbd/info3"], check=True, capture_output=True)
    rbd("snap", "create", "rbd/info3@s1")
    conf = ceph["conf"]
    cases = [
        ("info", "rbd:rbd/info1"),
        ("info", "--output=json", "rbd:rbd/info1"),
        ("info", "rbd:rbd/info2"),
        ("info", f"rbd:rbd/info1:conf={conf}"),
        ("info", "rbd:rbd/info1:id=admin:rbd_cache=false"),
        ("info", "rbd:rbd/info1:rbd_cache\\=x=false"),
        ("info", "rbd:rbd/nope"),
        ("info", "rbd:nopool/x"),
        ("info", "rbd:rbd"),
        ("info", "rbd:rbd/info1@nosnap"),
        # an existing snapshot (snapshot lists: test_snapshot_list_and_errors)
        ("map", "--output=json", "rbd:rbd/info3@s1"),
        ("map", "--output=json", f"rbd:rbd/info3@s1:conf={conf}:id=admin"),
        ("compare", "-f", "raw", "-F", "raw", "rbd:rbd/info3@s1",
         "rbd:rbd/info3"),
        ("resize", "-f", "raw", "rbd:rbd/info3@s1", "32M"),
        ("convert", "-n", "-O", "raw", "null-co://", "rbd:rbd/info3@s1"),
        ("info", "rbd:rbd/info1:foo"),
        ("info", "rbd:rbd/info1:conf=/nonexistent.conf"),
        ("info", "rbd:rbd/nons/info1"),
        ("map", "--output=json", "rbd:rbd/info1"),
        ("map", "rbd:rbd/info1"),
        ("info", "json:{\"driver\": \"raw\", \"file\": {\"driver\": \"rbd\", "
                 "\"pool\": \"rbd\", \"image\": \"info1\"}}"),
        ("info", "json:{\"driver\": \"rbd\", \"image\": \"info1\"}"),
    ]
    same_all(pair, cases)


def test_create_convert_and_cross_reads(pair, ceph, tmp_path):
    src = make_input(tmp_path)
    for who in ("ref", "qimg"):
        for name in ("raw", "conv", "q2"):
            rbd_rm(f"rbd/{name}_{who}")
    # create
    r = run(REF, ["create", "-f", "raw", "rbd:rbd/raw_ref", "4M"], tmp_path)
    q = run(QIMG, ["create", "-f", "raw", "rbd:rbd/raw_qimg", "4M"], tmp_path)
    assert (q.rc, q.out.replace("qimg", "ref"), q.err) == \
        (r.rc, r.out, r.err), (r, q)
    for who in ("ref", "qimg"):
        r, q = pair.both("info", f"rbd:rbd/raw_{who}")
        assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)
    # convert into rbd (sparse: block status must show the holes)
    for tool, who in ((REF, "ref"), (QIMG, "qimg")):
        res = run(tool, ["convert", "-O", "raw", src, f"rbd:rbd/conv_{who}"],
                  tmp_path)
        assert res.rc == 0, res
    maps = [run(t, ["map", "--output=json", f"rbd:rbd/conv_{w}"], tmp_path)
            for t in (REF, QIMG) for w in ("ref", "qimg")]
    assert len({(m.rc, m.out) for m in maps}) == 1, maps
    for t in (REF, QIMG):
        for w in ("ref", "qimg"):
            res = run(t, ["compare", src, f"rbd:rbd/conv_{w}"], tmp_path)
            assert res.rc == 0, res
    # convert out of rbd, both ways
    for tool, who in ((REF, "ref"), (QIMG, "qimg")):
        out = tmp_path / f"back_{who}.raw"
        res = run(tool, ["convert", "-O", "raw", "rbd:rbd/conv_qimg", out],
                  tmp_path)
        assert res.rc == 0, res
        assert out.read_bytes() == src.read_bytes()
    # qcow2 stored on rbd
    for tool, who in ((REF, "ref"), (QIMG, "qimg")):
        res = run(tool, ["convert", "-O", "qcow2", src, f"rbd:rbd/q2_{who}"],
                  tmp_path)
        assert res.rc == 0, res
    for t in (REF, QIMG):
        for w in ("ref", "qimg"):
            res = run(t, ["check", f"rbd:rbd/q2_{w}"], tmp_path)
            assert res.rc == 0, res
            res = run(t, ["compare", src, f"rbd:rbd/q2_{w}"], tmp_path)
            assert res.rc == 0, res
    r, q = pair.both("info", "rbd:rbd/q2_qimg")
    assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err)
    # resize, write and discard over rbd
    for tool, who in ((REF, "ref"), (QIMG, "qimg")):
        res = run(tool, ["resize", "-f", "raw", f"rbd:rbd/raw_{who}", "6M"],
                  tmp_path)
        assert res.rc == 0, res
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 3 0 64k",
                        f"rbd:rbd/raw_{who}"], check=True,
                       capture_output=True)
    r, q = (run(t, ["compare", "rbd:rbd/raw_ref", "rbd:rbd/raw_qimg"],
                tmp_path) for t in (REF, QIMG))
    assert (q.rc, q.out) == (r.rc, r.out) == (0, "Images are identical.\n")


def rbd_fresh(name, size="4M"):
    """An empty image name (its snapshots and an older one removed)."""
    subprocess.run(["rbd", "snap", "purge", name], capture_output=True,
                   timeout=60)
    rbd_rm(name)
    rbd("create", name, "--size", size)


def qemu_io(name, cmd, *, write=True):
    args = ["qemu-io", "-f", "raw", "-c", cmd, f"rbd:{name}"]
    if not write:
        args[1:1] = ["-r"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


# rbd keeps a snapshot name of any length; QEMU shows it as the ID cut at
# 127 bytes and as the name cut at 255.
LONG200 = "L" * 200
LONG130 = "P" * 130


def test_snapshot_list_and_errors(pair, ceph):
    """rbd snapshots in info (human and JSON) and snapshot -l, by every
    way of naming the image, and the errors that change nothing."""
    rbd_fresh("rbd/snap0")
    rbd_fresh("rbd/snap1")
    qemu_io("rbd/snap1", "write -P 9 0 64k")
    rbd("snap", "create", "rbd/snap1@a")
    rbd("resize", "rbd/snap1", "--size", "8M")
    rbd("snap", "create", "rbd/snap1@b")
    rbd("snap", "create", f"rbd/snap1@{LONG200}")
    rbd("snap", "create", f"rbd/snap1@{LONG130}")
    cases = [("snapshot", "-l", "rbd:rbd/snap0")]
    for name in ("rbd:rbd/snap0", "rbd:rbd/snap1", "rbd:rbd/snap1@a",
                 "json:{\"driver\": \"rbd\", \"pool\": \"rbd\", "
                 "\"image\": \"snap1\"}",
                 "json:{\"driver\": \"raw\", \"offset\": 512, \"file\": "
                 "{\"driver\": \"rbd\", \"pool\": \"rbd\", "
                 "\"image\": \"snap1\"}}"):
        cases.append(("snapshot", "-l", name))
        if not name.startswith("json:{\"driver\": \"rbd\""):
            # (a protocol node's info differs otherwise: LIMITS.md)
            cases += [("info", name), ("info", "--output=json", name)]
    cases += [
        ("snapshot", "-l", "-U", "rbd:rbd/snap1:id=admin"),
        ("snapshot", "-l", "--image-opts",
         "driver=rbd,pool=rbd,image=snap1"),
        ("snapshot", "-l", "--image-opts",
         "driver=raw,file.driver=rbd,file.pool=rbd,file.image=snap1"),
        ("info", "--backing-chain", "rbd:rbd/snap1"),
        # missing names, bad names, a duplicate, read-only snapshot opens
        ("snapshot", "-d", "nope", "rbd:rbd/snap1"),
        ("snapshot", "-d", "nope", "rbd:rbd/snap0"),
        ("snapshot", "-a", "nope", "rbd:rbd/snap1"),
        ("snapshot", "-a", "nope", "rbd:rbd/snap0"),
        ("snapshot", "-c", "a", "rbd:rbd/snap1"),
        ("snapshot", "-c", "", "rbd:rbd/snap1"),
        ("snapshot", "-c", "N" * 128, "rbd:rbd/snap1"),
        ("snapshot", "-c", "x", "rbd:rbd/snap1@a"),
        ("snapshot", "-d", "a", "rbd:rbd/snap1@a"),
        ("snapshot", "-a", "a", "rbd:rbd/snap1@a"),
        # the ID of a long name is not its name
        ("snapshot", "-d", LONG130, "rbd:rbd/snap1"),
        ("snapshot", "-d", LONG130[:127], "rbd:rbd/snap1"),
        ("snapshot", "-d", "nope", "--image-opts",
         "driver=rbd,pool=rbd,image=snap1"),
        ("snapshot", "-a", "nope", "--image-opts",
         "driver=rbd,pool=rbd,image=snap1"),
        ("snapshot", "-c", "b", "--image-opts",
         "driver=rbd,pool=rbd,image=snap1"),
        ("snapshot", "-l", "rbd:rbd/snap1"),
    ]
    same_all(pair, cases)


def rbd_snap_names(name):
    p = subprocess.run(["rbd", "snap", "ls", "--format", "json", name],
                       capture_output=True, text=True, check=True,
                       timeout=60)
    return [(s["name"], s["size"]) for s in json.loads(p.stdout)]


def test_snapshot_create_apply_delete(ceph, tmp_path):
    """Each tool creates, rolls back to and deletes snapshots of its own
    image: same outputs step by step, the same snapshots in rbd's own
    listing, and the data and size of the snapshot after -a."""
    steps = [
        ("write -P 1 0 64k",), ("snapshot", "-c", "a"),
        ("write -P 2 0 64k",), ("resize 8M",), ("snapshot", "-c", "b"),
        ("snapshot", "-c", "M" * 127), ("snapshot", "-l"),
        ("snapshot", "-a", "a"), ("info",), ("read -P 1 0 64k",),
        ("snapshot", "-d", "b"), ("snapshot", "-d", "b"),
        ("snapshot", "-d", "M" * 127), ("snapshot", "-l"),
        ("opts", "-c", "c"), ("opts", "-a", "c"), ("opts", "-d", "c"),
        ("info", "--output=json"),
    ]
    outs = {}
    for tool, who in ((REF, "ref"), (QIMG, "qimg")):
        name = f"rbd/snapw_{who}"
        rbd_fresh(name)
        log = []
        for step in steps:
            if len(step) == 1 and step[0].startswith(("write", "read")):
                p = qemu_io(name, step[0], write=step[0].startswith("w"))
                log.append((p.returncode, "failed" in p.stdout))
                continue
            if step[0] == "resize 8M":
                rbd("resize", name, "--size", "8M")
                log.append("resized")
                continue
            if step[0] == "opts":
                args = ["snapshot", *step[1:], "--image-opts",
                        f"driver=rbd,pool=rbd,image=snapw_{who}"]
            else:
                args = [*step, f"rbd:{name}"]
            res = run(tool, args, tmp_path)
            log.append((res.rc, res.out.replace(who, "WHO"),
                        res.err.replace(who, "WHO")))
        log.append(rbd_snap_names(name))
        outs[who] = log
    for i, (r, q) in enumerate(zip(outs["ref"], outs["qimg"])):
        assert q == r, f"step {i}: {steps[i] if i < len(steps) else 'ls'}" \
                       f"\nREF {r!r}\nQIMG {q!r}"
    assert outs["ref"][-1] == [("a", 4 << 20)], outs["ref"][-1]


def test_unreachable_mon_fails_in_time(pair, tmp_path):
    """No cluster at the mon address: a clear error, non-zero, bounded
    by client_mount_timeout."""
    conf = tmp_path / "dead.conf"
    conf.write_text("[global]\nmon_host = v1:127.0.0.1:1\n"
                    "auth_client_required = none\n"
                    "client_mount_timeout = 3\n")
    name = f"rbd:rbd/x:conf={conf}"
    t0 = time.monotonic()
    r, q = pair.both("info", name, timeout=60)
    assert q.rc == r.rc == 1
    assert q.err.replace("qimg", "qemu-img") == r.err, (r, q)
    assert time.monotonic() - t0 < 60


def test_cluster_stopped_mid_copy(tmp_path):
    """The OSD killed during a convert into rbd: both tools end with an
    error and a non-zero exit once rados_osd_op_timeout passes."""
    d = tmp_path / "ceph"
    port = str(40000 + os.getpid() % 20000)
    p = subprocess.run([str(SCRIPT), "start", str(d), port],
                       capture_output=True, text=True, timeout=180)
    try:
        if p.returncode:
            pytest.skip(f"Ceph did not start: {p.stderr[-800:]}")
        conf = d / "short.conf"
        conf.write_text((d / "ceph.conf").read_text().replace(
            "[global]\n", "[global]\nrados_osd_op_timeout = 3\n"
            "rados_mon_op_timeout = 3\n", 1))
        src = tmp_path / "big.raw"
        src.write_bytes(os.urandom(256 << 20))
        env = dict(os.environ, CEPH_CONF=str(conf))
        proc = subprocess.Popen([str(QIMG), "convert", "-O", "raw", str(src),
                                 "rbd:rbd/mid"], env=env, text=True,
                                stderr=subprocess.PIPE)
        # mid copy: once the target exists and data flows (the source is
        # read only after the create), not after a fixed delay, which a
        # loaded machine can spend still creating the image
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            io = Path(f"/proc/{proc.pid}/io").read_text()
            if int(io.split("rchar: ")[1].split()[0]) > 32 << 20:
                break
            time.sleep(0.05)
        os.kill(int((d / "osd.pid").read_text()), 9)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, err
        assert "error while writing" in err and "timed out" in err, err
        assert time.monotonic() - t0 < 90
    finally:
        subprocess.run([str(SCRIPT), "stop", str(d)])
