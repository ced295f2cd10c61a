"""The ssh storage (lib/proto/ssh/) against a throwaway sshd on a loopback
port (generated host and client keys, the client key held by an ssh-agent
of the test's own), each command run through qimg and the reference
qemu-img: same stdout, stderr and exit status."""
import base64
import hashlib
import os

from conftest import QIMG, REF, run
from netservers import free_port, servers  # noqa: F401 (fixture)
from test_nbd import make_inputs, same_all


def fingerprints(hostkey):
    blob = base64.b64decode(hostkey[1])
    md5 = hashlib.md5(blob).hexdigest()
    return (":".join(md5[i:i + 2] for i in range(0, 32, 2)),
            hashlib.sha256(blob).hexdigest())


def test_ssh(pair, servers):
    pair.setup_once(make_inputs)
    port, env, hostkey = servers.sshd()
    md5, sha256 = fingerprints(hostkey)
    h = f"127.0.0.1:{port}"
    ref, qd = pair.ref_dir, pair.qimg_dir
    no = "?host_key_check=no"
    u = f"ssh://root@{h}{ref}"
    js = (f'json:{{"driver":"qcow2","file":{{"driver":"ssh","server":'
          f'{{"host":"127.0.0.1","port":"{port}"}},"path":"{ref}/q.qcow2",'
          f'"host-key-check":{{"mode":"hash","type":"sha256",'
          f'"hash":"{sha256}"}}}}}}')
    # a size that ends inside a read request and a read window of the
    # ssh storage (16 KiB requests, 32 in flight): reads past the end
    odd = os.urandom(1000001)
    for d in (ref, qd):
        (d / "odd.raw").write_bytes(odd)
    same_all(pair, [
        ("convert", "-O", "raw", f"{u}/odd.raw{no}", "odd-out.raw"),
        ("compare", "-f", "raw", "-F", "raw", "odd-out.raw", "odd.raw"),
        ("dd", "-O", "raw", f"if={u}/odd.raw{no}", "of=odd-dd.raw",
         "bs=300000"),
        ("compare", "-f", "raw", "-F", "raw", "odd-dd.raw", "odd.raw"),
        ("info", f"{u}/r.raw{no}"),
        ("info", "--output=json", f"{u}/r.raw{no}"),
        ("info", f"{u}/q.qcow2?host_key_check=md5:{md5}"),
        ("info", f"{u}/q.qcow2?host_key_check=sha256:{sha256}"),
        ("info", js),
        ("info", "--output=json", js),
        ("info", "--image-opts",
         f"driver=raw,file.driver=ssh,file.host=127.0.0.1,file.port={port},"
         f"file.path={ref}/r.raw,file.host_key_check=no"),
        ("info", f'json:{{"driver":"raw","file":{{"driver":"ssh",'
                 f'"server":{{"host":"127.0.0.1","port":"{port}"}},'
                 f'"user":"root","path":"{ref}/r.raw",'
                 f'"host-key-check":{{"mode":"none"}}}}}}'),
        ("info", f'json:{{"driver":"ssh","server":{{"host":"127.0.0.1",'
                 f'"port":"{port}"}},"user":"nosuchuser","path":"{ref}/r.raw",'
                 f'"host-key-check":{{"mode":"known_hosts"}}}}'),
        ("info", f"ssh://root:{free_port()}pw@{h}{ref}/r.raw{no}"),
        ("map", "--output=json", f"{u}/q.qcow2{no}"),
        ("check", f"{u}/q.qcow2{no}"),
        ("compare", f"{u}/q.qcow2{no}", "q.qcow2"),
        ("convert", "-O", "raw", f"{u}/q.qcow2{no}", "out.raw"),
        ("compare", "-F", "qcow2", "out.raw", "q.qcow2"),
        # errors
        ("info", f"{u}/missing.raw{no}"),
        ("info", f"ssh://nosuchuser@{h}{ref}/r.raw{no}"),
        ("info", f"{u}/r.raw?host_key_check=sha1:00"),
        ("info", f"{u}/r.raw?host_key_check=md5:00:11"),
        ("info", f"{u}/r.raw?host_key_check=bogus"),
        ("info", f"{u}/r.raw?bogus=1"),
        ("info", f"ssh://127.0.0.1:{free_port()}/x{no}"),
        ("info", f"ssh://{h}"),
        ("info", 'json:{"driver":"ssh","server":{"host":"127.0.0.1"}}'),
        ("info", 'json:{"driver":"ssh","server":{"port":"22"}}'),
        ("info", 'json:{"driver":"ssh","path":"/x"}'),
        ("info", f'json:{{"driver":"ssh","server":{{"host":"127.0.0.1",'
                 f'"port":"{port}"}}}}'),
        ("info", f'json:{{"driver":"ssh","server":{{"host":"127.0.0.1",'
                 f'"port":"{port}"}},"path":"/x","host-key-check":'
                 f'{{"type":"md5"}}}}'),
        ("info", f'json:{{"driver":"ssh","server":{{"host":"127.0.0.1",'
                 f'"port":"{port}"}},"path":"/x","host-key-check":'
                 f'{{"mode":"hash","type":"md5"}}}}'),
        ("info", f'json:{{"driver":"ssh","server":{{"host":"127.0.0.1",'
                 f'"port":"{port}"}},"path":"/x","host-key-check":'
                 f'{{"mode":"bogus"}}}}'),
        ("info", f'json:{{"driver":"ssh","server":{{"host":"127.0.0.1",'
                 f'"port":"{port}"}},"path":"{ref}/r.raw",'
                 f'"host-key-check":{{"mode":"hash","type":"sha512",'
                 f'"hash":"00"}}}}'),
        # host-key-check that is no object with a mode, and the legacy
        # host_key_check string given as no string (ignored by 7.2)
        *[("info", f'json:{{"driver":"raw","file":{{"driver":"ssh",'
                   f'"server":{{"host":"127.0.0.1","port":"{port}"}},'
                   f'"path":"{ref}/r.raw","{k}":{v}}}}}')
          for k in ("host-key-check", "host_key_check")
          for v in ("{}", "null", "[]", '"x"')],
    ], env=env)
    # Writes: each tool into its own directory on the same server.
    results = {}
    for tool, d in ((REF, ref), (QIMG, qd)):
        w = f"ssh://root@{h}{d}"
        out = []
        for args in (("create", "-f", "qcow2", f"{w}/new.qcow2{no}", "8M"),
                     ("convert", "-n", "-O", "qcow2", d / "q.qcow2",
                      f"{w}/new.qcow2{no}"),
                     ("check", f"{w}/new.qcow2{no}"),
                     ("create", "-f", "raw", f"{w}/new.raw{no}", "1M"),
                     ("convert", "-O", "raw", d / "r.raw",
                      f"{w}/conv.raw{no}"),
                     ("resize", "-f", "raw", f"{w}/conv.raw{no}", "6M"),
                     ("info", f"{w}/conv.raw{no}"),
                     ("resize", "--shrink", "-f", "raw",
                      f"{w}/conv.raw{no}", "5M")):
            r = run(tool, args, d, env=env, timeout=60)
            out.append((r.rc, r.out.replace(str(d), "D"),
                        r.err.replace(str(d), "D")))
        results[tool] = out
        r = run(REF, ["compare", "-f", "qcow2", "-F", "qcow2",
                      d / "new.qcow2", d / "q.qcow2"], d)
        assert r.rc == 0, r
        r = run(REF, ["compare", "-f", "raw", "-F", "raw",
                      d / "conv.raw", d / "r.raw"], d)
        assert r.rc == 0, r
    assert results[QIMG] == results[REF]
    assert all(rc == 0 for rc, _, _ in results[REF][:7]), results[REF]
    for name in ("new.raw", "conv.raw"):
        assert (ref / name).stat().st_size == (qd / name).stat().st_size
