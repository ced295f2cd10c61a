"""The iscsi storage (lib/proto/iscsi/) against tgt on 127.0.0.1 with a
file-backed LUN, each command run through qimg and the reference
qemu-img against the same target: same stdout, stderr and exit status."""
import subprocess

from conftest import QIMG, REF, qemu_io, run
from netservers import free_port, servers  # noqa: F401 (fixture)
from test_nbd import make_inputs, same_all

IQN = "iqn.2026-12.org.qimg:test"


def test_iscsi_read_and_errors(pair, servers):
    pair.setup_once(make_inputs)
    lun = pair.ref_dir / "lun.raw"
    subprocess.run(["cp", pair.ref_dir / "r.raw", lun], check=True)
    port = servers.tgt(lun, IQN)
    u = f"iscsi://127.0.0.1:{port}/{IQN}/1"
    js = (f'json:{{"driver":"raw","file":{{"driver":"iscsi","transport":'
          f'"tcp","portal":"127.0.0.1:{port}","target":"{IQN}","lun":"1"}}}}')
    same_all(pair, [
        ("info", u),
        ("info", "--output=json", u),
        ("info", js),
        ("info", "--image-opts",
         f"driver=raw,file.driver=iscsi,file.transport=tcp,"
         f"file.portal=127.0.0.1:{port},file.target={IQN},file.lun=1,"
         "file.header-digest=none"),
        ("map", u),
        ("map", "--output=json", u),
        ("compare", u, "r.raw"),
        ("convert", "-O", "qcow2", u, "out.qcow2"),
        ("compare", "out.qcow2", "r.raw"),
        ("dd", "-f", "raw", "-O", "raw", f"if={u}", "of=dd.raw", "bs=4k",
         "skip=128", "count=40"),
        ("measure", "-O", "qcow2", u),
        # errors
        ("info", f"iscsi://127.0.0.1:{port}/iqn.2026-12.org.qimg:nope/1"),
        ("info", f"iscsi://127.0.0.1:{port}/{IQN}/7"),
        ("info", f"iscsi://127.0.0.1:{free_port()}/{IQN}/1"),
        ("info", "iscsi://bad"),
        ("info", "iscsi://127.0.0.1/"),
        ("info", 'json:{"driver":"iscsi","portal":"127.0.0.1"}'),
        ("info", f'json:{{"driver":"iscsi","transport":"udp","portal":'
                 f'"127.0.0.1:{port}","target":"{IQN}"}}'),
        ("info", f'json:{{"driver":"iscsi","transport":"tcp","portal":'
                 f'"127.0.0.1:{port}","target":"{IQN}","lun":"1",'
                 f'"header-digest":"md5"}}'),
        ("info", f'json:{{"driver":"iscsi","transport":"tcp","portal":'
                 f'"127.0.0.1:{port}","target":"{IQN}","lun":"1",'
                 f'"user":"u"}}'),
        ("info", f'json:{{"driver":"iscsi","transport":"tcp","portal":'
                 f'"127.0.0.1:{port}","target":"{IQN}","lun":"1",'
                 f'"user":"u","password":"p","password-secret":"s"}}'),
        ("info", f'json:{{"driver":"iscsi","transport":"tcp","portal":'
                 f'"127.0.0.1:{port}","target":"{IQN}","lun":"x"}}'),
        ("info", f'json:{{"driver":"iscsi","transport":"tcp","portal":'
                 f'"127.0.0.1:{port}","target":"{IQN}","bogus":"1"}}'),
        ("resize", "-f", "raw", u, "8M"),
        ("resize", "-f", "raw", "--shrink", u, "2M"),
    ])


def test_iscsi_write(pair, servers):
    """qcow2 created on a LUN, converted into, checked; raw data written
    unaligned through qcow2 metadata updates; the LUN files compared."""
    pair.setup_once(make_inputs)
    results = {}
    for tool, d in ((REF, pair.ref_dir), (QIMG, pair.qimg_dir)):
        lun = d / "lun.img"
        subprocess.run(["truncate", "-s", "16M", lun], check=True)
        port = servers.tgt(lun, IQN)
        u = f"iscsi://127.0.0.1:{port}/{IQN}/1"
        out = []
        for args in (("create", "-f", "qcow2", u, "8M"),
                     ("convert", "-n", "-O", "qcow2", d / "q.qcow2", u),
                     ("check", u),
                     ("compare", u, d / "q.qcow2"),
                     ("info", u)):
            r = run(tool, args, d, timeout=60)
            out.append((r.rc, r.out.replace(str(port), "PORT"),
                        r.err.replace(str(port), "PORT")))
        results[tool] = out
    assert results[QIMG] == results[REF]
    assert all(rc == 0 for rc, _, _ in results[REF]), results[REF]
    # What qimg wrote through iSCSI, checked by the reference directly.
    r = run(REF, ["check", "-f", "qcow2", pair.path_qimg("lun.img")],
            pair.qimg_dir)
    assert r.rc == 0, r
    r = run(REF, ["compare", "-f", "qcow2", "-F", "qcow2",
                  pair.path_qimg("lun.img"), pair.path_ref("q.qcow2")],
            pair.qimg_dir)
    assert r.rc == 0, r


def test_iscsi_concurrent_writes(pair, servers):
    """Many commands in flight on one session: a 64 MiB convert -n into a
    LUN (8 copy workers; the zero runs as WRITE SAME), then unaligned
    overlapping writes 16 deep through bench (each a read-modify-write of
    its edge blocks), the same on a local file; the reference compares
    the LUN with the file, and with the source."""
    lun = pair.qimg_dir / "lun.img"
    loc = pair.qimg_dir / "loc.raw"
    src = pair.qimg_dir / "src.raw"
    for f in (lun, loc):
        subprocess.run(["truncate", "-s", "64M", f], check=True)
    with open(src, "wb") as f:
        for i in range(64):
            f.write(bytes([i + 1]) * (512 << 10) + bytes(512 << 10))
    port = servers.tgt(lun, IQN)
    u = f"iscsi://127.0.0.1:{port}/{IQN}/1"
    r = run(QIMG, ["convert", "-n", "-f", "raw", "-O", "raw", src, u],
            pair.qimg_dir, timeout=120)
    assert r.rc == 0, r
    r = run(REF, ["compare", "-f", "raw", "-F", "raw", src, u],
            pair.qimg_dir, timeout=120)
    assert r.rc == 0 and r.out == "Images are identical.\n", r
    run(QIMG, ["convert", "-n", "-f", "raw", "-O", "raw", src, loc],
        pair.qimg_dir)
    for img in (loc, u):
        for args in (("-c", "2000", "-s", "1000", "-S", "777", "-o", "3",
                      "--pattern=90"),
                     ("-c", "400", "-s", "4096", "-S", "3000", "-o",
                      "100000", "--pattern=51")):
            r = run(QIMG, ["bench", "-w", "-f", "raw", "-d", "16", *args,
                           img], pair.qimg_dir, timeout=120)
            assert r.rc == 0, r
    r = run(REF, ["compare", "-f", "raw", "-F", "raw", loc, u],
            pair.qimg_dir, timeout=120)
    assert r.rc == 0 and r.out == "Images are identical.\n", r


def test_iscsi_thin_provisioning(pair, servers):
    """A thin-provisioned LUN (tgt thin_provisioning=1): map and convert
    see its holes through GET LBA STATUS; a commit of zeroes into it
    unmaps them (WRITE SAME with UNMAP), and deleting a snapshot of a
    qcow2 stored on it discards the freed clusters (UNMAP), as the
    reference does: the LUN's map afterwards, read by the reference, is
    the same for both tools."""
    pair.setup_once(make_inputs)
    maps = {}
    for tool, d in ((REF, pair.ref_dir), (QIMG, pair.qimg_dir)):
        lun = d / "thin.raw"
        subprocess.run(["truncate", "-s", "16M", lun], check=True)
        qemu_io(lun, "write -P 0x44 4M 8M", "write -P 0x55 14M 4k")
        port = servers.tgt(lun, IQN, thin=True)
        u = f"iscsi://127.0.0.1:{port}/{IQN}/1"
        js = (f'json:{{"driver":"raw","file":{{"driver":"iscsi",'
              f'"transport":"tcp","portal":"127.0.0.1:{port}",'
              f'"target":"{IQN}","lun":"1"}}}}')
        out = []
        for args in (("map", "--output=json", u), ("map", u),
                     ("convert", "-O", "qcow2", u, "thin.qcow2"),
                     ("map", "--output=json", "thin.qcow2")):
            r = run(tool, args, d, timeout=60)
            out.append((r.rc, r.out.replace(str(port), "PORT"),
                        r.err.replace(str(port), "PORT")))
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", "-b", js,
                        "-F", "raw", d / "ov.qcow2"], check=True)
        qemu_io(d / "ov.qcow2", "write -z 5M 2M", "write -z -u 9M 1M",
                "write -P 0x66 10M 64k", fmt="qcow2")
        r = run(tool, ("commit", "ov.qcow2"), d, timeout=60)
        out.append((r.rc, r.out, r.err))
        r = run(REF, ("map", "--output=json", u), d, timeout=60)
        out.append((r.rc, r.out.replace(str(port), "PORT"), r.err))
        # a qcow2 on the LUN: snapshot -d frees (and discards) clusters
        subprocess.run(["fallocate", "-p", "-o", "0", "-l", "16M", lun],
                       check=True)
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", u, "8M"],
                       check=True)
        qemu_io(u, "write -P 1 0 2M", fmt="qcow2")
        subprocess.run([str(REF), "snapshot", "-c", "s1", u], check=True)
        qemu_io(u, "write -P 2 0 2M", fmt="qcow2")
        for args in (("snapshot", "-d", "s1", u), ("check", u)):
            r = run(tool, args, d, timeout=60)
            out.append((r.rc, r.out, r.err))
        r = run(REF, ("map", "--output=json", "-f", "raw", u), d, timeout=60)
        out.append((r.rc, r.out, r.err))
        maps[tool] = out
    assert maps[QIMG] == maps[REF]
    assert all(rc == 0 for rc, _, _ in maps[REF]), maps[REF]
    assert '"data": false' in maps[REF][5][1]       # the holes are there
    subprocess.run(["cmp", pair.path_ref("thin.raw"),
                    pair.path_qimg("thin.raw")], check=True)
