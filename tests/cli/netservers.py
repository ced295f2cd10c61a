"""Throwaway network servers on 127.0.0.1 for the storage tests
(test_nbd.py, test_http.py, test_ssh.py, test_iscsi.py,
test_nfs.py, test_net_reqs.py): each starts on a free port in a
temporary directory and is stopped (its own pid only) when the test ends,
even on failure.  A server that cannot start here makes the test skip with
the reason; a server that starts is used, never silently bypassed."""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

# tests/servers: configurations shared with the scripts there and
# tests/iotests-net.sh
SERVERS = Path(__file__).resolve().parent.parent / "servers"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(program):
    """Path of program, or skip the test: the server is not installed."""
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}")
         if os.path.exists(p)), None)
    if not path:
        pytest.skip(f"{program} is not installed (scripts/deps.sh test list)")
    return path


def wait_port(port, proc, log, timeout=10):
    """Wait until something listens on port; skip when the server died
    at start (the reason is its log)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            pytest.skip(f"server did not start: {Path(log).read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    pytest.skip(f"server did not listen on {port}: "
                f"{Path(log).read_text()[-500:]}")


def _listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def wait_path(path, proc, log, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            pytest.skip(f"server did not start: {Path(log).read_text()[-500:]}")
        time.sleep(0.05)
    stop(proc)
    pytest.skip(f"server did not create {path}")


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(2)       # tgtd ignores SIGTERM
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def copy_with_server_killed(argv, server, delay=1.0, timeout=90, env=None,
                            sig=signal.SIGKILL):
    """Run argv (a copy from server), send the server (a Popen of ours)
    sig after delay seconds, and return (exit status, stderr, seconds
    from the signal to the end).  A server stopped with SIGSTOP is
    continued at the end, so that the teardown can stop it."""
    proc = subprocess.Popen([str(a) for a in argv], stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        time.sleep(delay)
        server.send_signal(sig)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=timeout)
    finally:
        if sig == signal.SIGSTOP:
            server.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, time.monotonic() - t0


class Servers:
    """Servers started by one test, stopped by the fixture's teardown."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.procs = []
        self.n = 0

    def _start(self, argv, env=None):
        self.n += 1
        log = self.tmp / f"server{self.n}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([str(a) for a in argv], stdout=f,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def qemu_nbd(self, image, fmt="raw", export="", extra=()):
        """qemu-nbd serving image on a TCP port; returns the port."""
        port = free_port()
        argv = [need("qemu-nbd"), "-f", fmt, "-b", "127.0.0.1", "-p", port,
                "-t", "-e", "8", *extra]
        if export:
            argv += ["-x", export]
        proc, log = self._start(argv + [image])
        wait_port(port, proc, log)
        return port

    def qemu_nbd_unix(self, image, fmt="raw", export=""):
        sock = self.tmp / f"nbd{self.n + 1}.sock"
        argv = [need("qemu-nbd"), "-f", fmt, "-k", sock, "-t", "-e", "8"]
        if export:
            argv += ["-x", export]
        proc, log = self._start(argv + [image])
        wait_path(sock, proc, log)
        return sock

    def nbdkit(self, *plugin_args, filters=()):
        """nbdkit in the foreground on a free port; returns the port."""
        port = free_port()
        argv = [need("nbdkit"), "-f", "-i", "127.0.0.1", "-p", port]
        for flt in filters:
            argv += ["--filter", flt]
        proc, log = self._start(argv + list(plugin_args))
        wait_port(port, proc, log)
        return port

    def nginx(self, root, tls=False, password=None):
        """nginx serving root (Range support, as nginx has) over http or
        https with a self-signed certificate; returns the port.  With a
        password, /auth/ asks for basic authentication as user qimg;
        /slow/ sends 2 MiB/s (a server stopped mid-copy)."""
        nginx = need("nginx")
        port = free_port()
        d = self.tmp / f"nginx{self.n + 1}"
        d.mkdir()
        listen = f"127.0.0.1:{port}"
        tls_conf = ""
        if tls:
            need("openssl")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                            "-keyout", d / "key.pem", "-out", d / "cert.pem"],
                           check=True, capture_output=True)
            listen += " ssl"
            tls_conf = (f"ssl_certificate {d}/cert.pem; "
                        f"ssl_certificate_key {d}/key.pem;")
        auth_conf = ""
        if password:
            hashed = subprocess.run(
                [need("openssl"), "passwd", "-apr1", "-stdin"],
                input=password, check=True, capture_output=True,
                text=True).stdout.strip()
            (d / "htpasswd").write_text(f"qimg:{hashed}\n")
            auth_conf = (f'location /auth/ {{ auth_basic "qimg"; '
                         f"auth_basic_user_file {d}/htpasswd; }}")
        # /status/ answers 503 to every request (error injection);
        # /norange/ ignores Range (max_ranges 0), as some proxies do.
        # (Short answers: test_net_reqs.py's own small server.)
        conf = f"""
daemon off; master_process off; worker_processes 1;
pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen {listen}; {tls_conf}
    root {root};
    location /status/ {{ return 503; }}
    location /norange/ {{ max_ranges 0; }}
    location /slow/ {{ limit_rate 2m; }}
    {auth_conf}
  }}
}}
"""
        (d / "nginx.conf").write_text(conf)
        proc, log = self._start([nginx, "-c", d / "nginx.conf", "-p", d])
        wait_port(port, proc, log)
        return port

    def vsftpd(self, root):
        """vsftpd serving root to anonymous users (read-only, passive mode
        on 127.0.0.1, REST for ranges); returns the port."""
        vsftpd = need("vsftpd")
        port = free_port()
        d = self.tmp / f"ftp{self.n + 1}"
        d.mkdir()
        empty = d / "empty"            # its chroot jail before login
        empty.mkdir()
        (d / "vsftpd.conf").write_text(f"""listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
local_enable=NO
write_enable=NO
run_as_launching_user=YES
seccomp_sandbox=NO
pasv_enable=YES
pasv_address=127.0.0.1
xferlog_enable=NO
secure_chroot_dir={empty}
""")
        proc, log = self._start([vsftpd, d / "vsftpd.conf"])
        wait_port(port, proc, log)
        return port

    def sshd(self):
        """sshd on a free port with a generated host key, accepting a
        generated client key that an ssh-agent of our own holds.  Returns
        (port, env for the tools, host key line for known_hosts)."""
        sshd = need("sshd")
        need("ssh-agent")
        d = self.tmp / "ssh"
        d.mkdir()
        for k in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                            "-f", d / k], check=True)
        shutil.copy(d / "client.pub", d / "authorized_keys")
        os.makedirs("/run/sshd", exist_ok=True)   # privilege separation dir
        port = free_port()
        # one sshd configuration for these tests and tests/iotests-net.sh
        conf = (SERVERS / "sshd_config.in").read_text()
        (d / "sshd_config").write_text(
            conf.replace("@PORT@", str(port)).replace("@DIR@", str(d)))
        proc, log = self._start([sshd, "-D", "-e", "-f", d / "sshd_config"])
        wait_port(port, proc, log)
        sock = d / "agent.sock"
        agent, alog = self._start(["ssh-agent", "-D", "-a", sock])
        wait_path(sock, agent, alog)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", "-q", d / "client"], env=env, check=True,
                       capture_output=True)
        return port, env, (d / "host.pub").read_text().split()[:2]

    def tgt(self, backing, target="iqn.2026-12.org.qimg:test", thin=False,
            chap=None):
        """tgtd serving the file backing as LUN 1 of target on a free
        portal port, with its own control socket; returns the port.
        thin: the LUN thin-provisioned (LBPME: GET LBA STATUS, UNMAP and
        WRITE SAME with unmap, holes punched in backing).  chap: (user,
        password) the initiator must log in with (CHAP)."""
        tgtd, tgtadm = need("tgtd"), need("tgtadm")
        port = free_port()
        # /run/tgtd/socket.N (tgtd takes N < 32768): from the free port,
        # so that parallel tests do not share one
        ctl = 1000 + port % 30000
        proc, log = self._start([tgtd, "-f", "-C", ctl, "--iscsi",
                                 f"portal=127.0.0.1:{port}"])
        wait_port(port, proc, log)
        for args in (["--op", "new", "--mode", "target", "--tid", "1",
                      "-T", target],
                     ["--op", "new", "--mode", "logicalunit", "--tid", "1",
                      "--lun", "1", "-b", backing],
                     *([["--op", "update", "--mode", "logicalunit",
                         "--tid", "1", "--lun", "1", "--params",
                         "thin_provisioning=1"]] if thin else []),
                     ["--op", "bind", "--mode", "target", "--tid", "1",
                      "-I", "ALL"],
                     *([["--op", "new", "--mode", "account", "--user",
                         chap[0], "--password", chap[1]],
                        ["--op", "bind", "--mode", "account", "--tid", "1",
                         "--user", chap[0]]] if chap else [])):
            r = subprocess.run([tgtadm, "-C", str(ctl), "--lld", "iscsi",
                                *[str(a) for a in args]],
                               capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"tgtadm {args[1]} {args[3]}: {r.stderr}")
        return port

    def ganesha(self, export_dir):
        """nfs-ganesha (VFS) exporting export_dir over NFSv3 on free ports,
        registered with rpcbind on port 111 (QEMU's nfs driver and libnfs
        find the mount and NFS ports through the portmapper).  rpcbind is
        started (on every address: its -h option crashes in Debian 12's
        1.2.6) unless one already runs.  Returns nothing: the URL is
        nfs://127.0.0.1/<export_dir>/<file>."""
        ganesha = need("ganesha.nfsd")
        if not _listening(111):
            proc, log = self._start([need("rpcbind"), "-f", "-w"])
            wait_port(111, proc, log)
        nfs_port, mnt_port = free_port(), free_port()
        d = self.tmp / "ganesha"
        d.mkdir()
        (d / "ganesha.conf").write_text(f"""
NFS_CORE_PARAM {{ NFS_Port = {nfs_port}; MNT_Port = {mnt_port};
  Enable_NLM = false; Enable_RQUOTA = false; Protocols = 3;
  Bind_addr = 127.0.0.1; }}
NFSV4 {{ Graceless = true; }}
EXPORT {{ Export_Id = 1; Path = {export_dir}; Pseudo = {export_dir};
  Access_Type = RW; Squash = No_Root_Squash; Protocols = 3;
  FSAL {{ Name = VFS; }} }}
LOG {{ Default_Log_Level = EVENT; }}
""")
        proc, log = self._start([ganesha, "-F", "-f", d / "ganesha.conf",
                                 "-L", d / "ganesha.log", "-p",
                                 d / "ganesha.pid"])
        wait_port(nfs_port, proc, d / "ganesha.log", timeout=30)
        wait_port(mnt_port, proc, d / "ganesha.log", timeout=30)

    def close(self):
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()
