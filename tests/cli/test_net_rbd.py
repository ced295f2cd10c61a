"""The rbd storage (lib/proto/rbd) against a real single-node Ceph
cluster (tests/servers/ceph-single.sh: one mon, one memstore OSD) and the
reference qemu-img's rbd driver (qemu-block-extra): same outputs, same
exit codes, and each tool reading what the other wrote.  Starting Ceph
takes ~7 s and the daemons want the cores, so these tests run only under
`make check-rbd` (QIMG_RBD=1), not in tests/run-all.sh's default set."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REF, QIMG, run, same_each

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
        # an existing snapshot (info would list the image's snapshots in
        # 7.2, which qimg does not: LIMITS.md "rbd: differences")
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
    bad = []
    for args in cases:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n".join(bad)


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
