"""The nfs storage (lib/proto/nfs/) against nfs-ganesha (VFS FSAL, NFSv3)
on 127.0.0.1, each command run through qimg and the reference qemu-img:
same stdout, stderr and exit status.  One test (one ganesha: its NFS
program is registered with the machine's one rpcbind)."""
import subprocess

from conftest import QIMG, REF, run
from netservers import copy_with_server_killed, servers  # noqa: F401
from test_nbd import make_inputs, same_all


def test_nfs(pair, servers):
    pair.setup_once(make_inputs)
    servers.ganesha(pair.ref_dir.parent)
    ref, qd = pair.ref_dir, pair.qimg_dir
    u = f"nfs://127.0.0.1{ref}"
    same_all(pair, [
        ("info", f"{u}/r.raw"),
        ("info", "--output=json", f"{u}/r.raw"),
        ("info", f"{u}/q.qcow2"),
        ("info", f"{u}/q.qcow2?uid=0&gid=0"),
        ("info", f"{u}/q.qcow2?uid=5"),
        ("info", f"{u}/q.qcow2?gid=7&readahead=4096&debug=0"),
        ("info", f'json:{{"driver":"raw","file":{{"driver":"nfs","server":'
                 f'{{"type":"inet","host":"127.0.0.1"}},"path":'
                 f'"{ref}/r.raw","user":0}}}}'),
        ("info", f"{u}/r.raw?tcp-syncnt=2&pagecache=8&readahead=2097152"),
        ("info", "--image-opts", f"driver=raw,file.driver=nfs,"
                 f"file.server.type=inet,file.server.host=127.0.0.1,"
                 f"file.path={ref}/r.raw,file.group=0,"
                 "file.tcp-syn-count=3,file.page-cache-size=4096"),
        ("info", "--image-opts", f"driver=nfs,server.host=127.0.0.1,"
                 f"server.type=inet,path={ref}/r.raw,readahead-size=x"),
        ("map", "--output=json", f"{u}/q.qcow2"),
        ("check", f"{u}/q.qcow2"),
        ("compare", f"{u}/q.qcow2", "q.qcow2"),
        ("convert", "-O", "raw", f"{u}/q.qcow2", "out.raw"),
        ("compare", "-F", "qcow2", "out.raw", "q.qcow2"),
        # errors
        ("info", f"{u}/missing.raw"),
        ("info", "nfs://127.0.0.1/not/exported.raw"),
        ("info", f"{u}/r.raw?foo=1"),
        ("info", f"{u}/r.raw?uid"),
        ("info", f"{u}/r.raw?uid=x"),
        ("info", "nfs:///x"),
        ("info", "nfs://127.0.0.1"),
        ("info", 'json:{"driver":"nfs","server":{"host":"127.0.0.1"},'
                 '"path":"/x"}'),
        ("info", 'json:{"driver":"nfs","server":{"type":"unix",'
                 '"host":"127.0.0.1"},"path":"/x"}'),
        ("info", 'json:{"driver":"nfs","path":"/x"}'),
        ("info", 'json:{"driver":"nfs","filename":"nfs://127.0.0.1/a/b",'
                 '"user":"1"}'),
        ("resize", "--preallocation=full", "-f", "raw", f"{u}/r.raw", "8M"),
    ])
    results = {}
    for tool, d in ((REF, ref), (QIMG, qd)):
        w = f"nfs://127.0.0.1{d}"
        out = []
        for args in (("create", "-f", "qcow2", f"{w}/new.qcow2", "8M"),
                     ("convert", "-n", "-O", "qcow2", d / "q.qcow2",
                      f"{w}/new.qcow2"),
                     ("check", f"{w}/new.qcow2"),
                     ("create", "-f", "raw", f"{w}/new.raw", "1M"),
                     ("convert", "-O", "raw", d / "r.raw", f"{w}/conv.raw"),
                     ("resize", "-f", "raw", f"{w}/conv.raw", "6M"),
                     ("info", f"{w}/conv.raw"),
                     ("resize", "--shrink", "-f", "raw", f"{w}/conv.raw",
                      "5M")):
            r = run(tool, args, d, timeout=60)
            out.append((r.rc, r.out.replace(str(d), "D"),
                        r.err.replace(str(d), "D")))
        results[tool] = out
        r = run(REF, ["compare", "-f", "qcow2", "-F", "qcow2",
                      d / "new.qcow2", d / "q.qcow2"], d)
        assert r.rc == 0, r
    assert results[QIMG] == results[REF]
    assert all(rc == 0 for rc, _, _ in results[REF]), results[REF]
    # ganesha killed while qimg copies from it: an error and exit 1, not
    # libnfs' endless reconnects (7.2 hangs here: not compared; LIMITS.md)
    big = qd / "big.raw"
    subprocess.run(["truncate", "-s", "4G", big], check=True)
    rc, err, secs = copy_with_server_killed(
        [QIMG, "convert", "-O", "raw", f"nfs://127.0.0.1{big}",
         qd / "big.out"], servers.procs[-1])
    assert rc == 1 and "error while reading at byte" in err, err
    assert secs < 60
