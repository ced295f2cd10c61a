"""Image locking against real QEMU processes.

QEMU marks the permissions each user of an image holds, and those it
refuses to share, with OFD locks on bytes 100+ and 200+ of the file.
These tests keep images open in running QEMU processes (qemu-io, qemu-nbd,
and a qemu-img convert blocked on a FIFO) and check that every qimg
command reacts to them exactly as qemu-img does, with and without -U; and,
the other way round, that images held by a qimg process carry the same
locks and stop QEMU's tools the same way.

Holders run in their own session, are killed by fixture finalizers, and
every wait is bounded, so a failure cannot leave processes behind or hang.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import QEMU_IO, QIMG, REF, Pair, make_sparse, run

QEMU_NBD = Path("/usr/bin/qemu-nbd")
NODE_NAME = re.compile(r"#block\d+")
MiB = 1 << 20
TIMEOUT = 30          # seconds for any single command
LOCK_WAIT = 10        # seconds for a holder to take its locks


# ---- /proc/locks ------------------------------------------------------------

def locked_bytes(path):
    """{(type, byte)} of the OFD/POSIX locks any process holds on path."""
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields or len(fields) < 8 or fields[5] != ident:
                continue
            start = int(fields[6])
            end = start if fields[7] == "EOF" else int(fields[7])
            for b in range(start, min(end, start + 1024) + 1):
                found.add((fields[3], b))
    return frozenset(found)


def wait_stable_locks(path, proc, what):
    """Wait until the locks on path are there and stop changing."""
    deadline = time.monotonic() + LOCK_WAIT
    last, stable = None, 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"{what} exited early (rc={proc.returncode}): {err}")
        cur = locked_bytes(path)
        stable = stable + 1 if cur and cur == last else 0
        if stable >= 3:
            return cur
        last = cur
        time.sleep(0.05)
    pytest.fail(f"{what} did not lock {path} within {LOCK_WAIT}s")


# ---- holder processes -----------------------------------------------------

class Holders:
    """Processes keeping images open; all are killed by stop()."""

    def __init__(self):
        self.procs = []
        self.tmpdirs = []

    def start(self, argv, cwd, image, what):
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd,
                                stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        return wait_stable_locks(Path(cwd) / image, proc, what)

    def socket_path(self):
        """A short path for a unix socket (sun_path is 108 bytes)."""
        d = tempfile.mkdtemp(prefix="qimg-lk")
        self.tmpdirs.append(d)
        return os.path.join(d, "nbd.sock")

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stderr):
                if stream:
                    stream.close()
        self.procs.clear()
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tmpdirs.clear()


@pytest.fixture
def holders():
    h = Holders()
    yield h
    h.stop()


def holder_argv(kind, h, d):
    """The command that keeps d/a.img open, for each kind of holder."""
    if kind == "qemu-io":
        return [QEMU_IO, "-f", "raw", "a.img"]
    if kind == "qemu-io-ro":
        return [QEMU_IO, "-r", "-f", "raw", "a.img"]
    if kind == "qemu-nbd":
        return [QEMU_NBD, "-f", "raw", "-k", h.socket_path(), "a.img"]
    if kind == "qemu-nbd-ro":
        return [QEMU_NBD, "-r", "-f", "raw", "-k", h.socket_path(), "a.img"]
    if kind == "convert-source":
        # convert opens its sources in order and blocks opening the FIFO,
        # holding a.img the way a convert source is held.
        return [REF, "convert", "-O", "raw", "a.img", "fifo", "out.img"]
    raise ValueError(kind)


HOLDERS = ["qemu-io", "qemu-io-ro", "qemu-nbd", "qemu-nbd-ro",
           "convert-source"]


def reset_images(d):
    """Fresh contents; a.img keeps its inode so the holder's locks stay."""
    with open(d / "a.img", "r+b" if (d / "a.img").exists() else "wb") as f:
        f.truncate(0)
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(b"a" * 4096)
    make_sparse(d / "b.img", 4 * MiB, [(MiB, b"a" * 4096)])
    for name in ("out.img",):
        if (d / name).exists():
            (d / name).unlink()
    if not (d / "fifo").exists():
        os.mkfifo(d / "fifo")


@pytest.fixture(scope="module")
def implemented(tmp_path_factory):
    """Commands qimg implements (stubs say "not implemented yet")."""
    d = tmp_path_factory.mktemp("impl")
    cache = {}

    def check(cmd):
        if cmd not in cache:
            r = run(QIMG, [cmd, "--bogus-option-for-probe"], d, timeout=TIMEOUT)
            cache[cmd] = "is not implemented yet" not in r.err
        return cache[cmd]
    return check


# ---- qimg against images QEMU holds ---------------------------------------

COMMANDS = [
    ["info", "a.img"],
    ["info", "-U", "a.img"],
    ["info", "-f", "raw", "--output=json", "a.img"],
    ["compare", "a.img", "b.img"],
    ["compare", "-U", "a.img", "b.img"],
    ["compare", "-f", "raw", "-F", "raw", "-s", "b.img", "a.img"],
    ["resize", "-f", "raw", "a.img", "8M"],
    ["resize", "a.img", "8M"],
    ["resize", "-f", "raw", "--shrink", "a.img", "1M"],
    ["resize", "-f", "raw", "--preallocation=falloc", "a.img", "+1M"],
    ["create", "-f", "raw", "a.img", "4M"],
    ["create", "-q", "-f", "raw", "out.img", "4M"],
    ["map", "a.img"],
    ["map", "-U", "-f", "raw", "--output=json", "a.img"],
    ["check", "-f", "raw", "a.img"],
    ["check", "-U", "a.img"],
    ["measure", "-O", "raw", "a.img"],
    ["convert", "-O", "raw", "a.img", "out.img"],
    ["convert", "-U", "-O", "raw", "a.img", "out.img"],
    ["convert", "-O", "raw", "b.img", "a.img"],
    ["convert", "-n", "-f", "raw", "-O", "raw", "b.img", "a.img"],
    ["dd", "if=a.img", "of=out.img"],
    ["dd", "-U", "if=a.img", "of=out.img"],
    ["dd", "-O", "raw", "if=b.img", "of=a.img"],
    ["snapshot", "-l", "a.img"],
    ["snapshot", "-U", "-l", "a.img"],
    ["amend", "-f", "raw", "-o", "size=8M", "a.img"],
    ["commit", "-f", "raw", "a.img"],
    ["rebase", "-f", "raw", "-u", "-b", "", "a.img"],
    ["bitmap", "-f", "raw", "--add", "a.img", "bm"],
]


@pytest.fixture(scope="module", params=HOLDERS)
def held(request, tmp_path_factory):
    """A pair of directories whose a.img is held by a QEMU process each."""
    pair = Pair(tmp_path_factory.mktemp("held-" + request.param))
    h = Holders()
    request.addfinalizer(h.stop)
    pair.setup(reset_images)
    for d in pair.dirs():
        h.start(holder_argv(request.param, h, d), d, "a.img", request.param)
    return pair


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_command_on_held_image(held, implemented, args):
    if not implemented(args[0]):
        pytest.skip(f"qimg {args[0]} is not implemented yet")
    held.setup(reset_images)
    locks_before = locked_bytes(held.ref_dir / "a.img")
    r, q = held.both(*args, timeout=TIMEOUT)
    # QEMU names nodes "#block" + a counter + two random digits
    assert (q.rc, q.out, NODE_NAME.sub("#blockN", q.err)) == \
        (r.rc, r.out, NODE_NAME.sub("#blockN", r.err)), (r, q)
    for name in ("a.img", "out.img"):
        if (held.ref_dir / name).exists() or (held.qimg_dir / name).exists():
            assert (held.qimg_dir / name).exists() == (held.ref_dir / name).exists()
            assert (held.qimg_dir / name).stat().st_size == \
                (held.ref_dir / name).stat().st_size
            held.same_content(name)
    # the command left the holder's locks alone (and released its own)
    assert locked_bytes(held.ref_dir / "a.img") == locks_before
    assert locked_bytes(held.qimg_dir / "a.img") == locks_before


def test_holders_cover_both_messages(tmp_path, holders):
    """The holders above really make qemu-img refuse: both lock messages
    ("write" and shared "write") come up, so the tests exercise them."""
    d = tmp_path
    reset_images(d)
    holders.start(holder_argv("qemu-io", holders, d), d, "a.img", "qemu-io")
    r = run(REF, ["convert", "-O", "raw", "a.img", "out.img"], d, timeout=TIMEOUT)
    assert 'Failed to get shared "write" lock' in r.err
    holders.stop()
    holders.start(holder_argv("convert-source", holders, d), d, "a.img",
                  "convert-source")
    r = run(REF, ["resize", "-f", "raw", "a.img", "8M"], d, timeout=TIMEOUT)
    assert 'Failed to get "write" lock' in r.err


# ---- QEMU against images qimg holds ---------------------------------------

# qimg and qemu-img commands that open a.img and then block opening the FIFO.
QIMG_HOLDS = [
    ["compare", "a.img", "fifo"],
    ["compare", "-U", "a.img", "fifo"],
    ["convert", "-O", "raw", "a.img", "fifo", "out.img"],
    ["convert", "-U", "-O", "raw", "a.img", "fifo", "out.img"],
]

# What QEMU's tools then try on a.img (stdin closed: qemu-io just opens).
PROBES = [
    [QEMU_IO, "-f", "raw", "a.img"],
    [QEMU_IO, "-r", "-f", "raw", "a.img"],
    [REF, "resize", "-f", "raw", "a.img", "+1M"],
    [REF, "convert", "-O", "raw", "a.img", "probe-out.img"],
    [REF, "create", "-q", "-f", "raw", "a.img", "4M"],
    [REF, "compare", "a.img", "b.img"],
]


@pytest.mark.parametrize("args", QIMG_HOLDS, ids=lambda a: " ".join(a))
def test_qemu_on_image_qimg_holds(pair, holders, implemented, args):
    if not implemented(args[0]):
        pytest.skip(f"qimg {args[0]} is not implemented yet")
    pair.setup(reset_images)
    ref_locks = holders.start([REF] + args, pair.ref_dir, "a.img", "qemu-img")
    qimg_locks = holders.start([QIMG] + args, pair.qimg_dir, "a.img", "qimg")
    assert qimg_locks == ref_locks
    for probe in PROBES:
        r = run(probe[0], probe[1:], pair.ref_dir, timeout=TIMEOUT)
        q = run(probe[0], probe[1:], pair.qimg_dir, timeout=TIMEOUT)
        assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err), \
            f"probe={probe}\nwhile qemu-img held: {r!r}\nwhile qimg held: {q!r}"
        pair.setup(reset_images)
    assert locked_bytes(pair.qimg_dir / "a.img") == qimg_locks


# ---- the lock bytes of every command, seen through strace --------------------

LOCK_CALL = re.compile(r"fcntl\(\d+, (F_OFD_SETLK|F_OFD_GETLK), \{l_type=(\w+), "
                       r"l_whence=SEEK_SET, l_start=(\d+), l_len=1")


def lock_calls(tool, args, cwd):
    """The set of (operation, type, byte) locks a command takes or tests."""
    trace = Path(cwd) / "strace.out"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=fcntl", "-o", str(trace),
                    str(tool)] + args, cwd=cwd, capture_output=True,
                   timeout=TIMEOUT)
    calls = set()
    for line in trace.read_text().splitlines():
        m = LOCK_CALL.search(line)
        if m:
            op, typ, start = m.groups()
            # Which bytes get unlocked is not observable (closing the file
            # drops them all); GETLK answers depend on other holders.
            if op == "F_OFD_SETLK" and typ == "F_UNLCK":
                continue
            calls.add((op, typ if op == "F_OFD_SETLK" else "probe", int(start)))
    trace.unlink()
    return calls


@pytest.fixture(scope="module")
def strace_works(tmp_path_factory):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    d = tmp_path_factory.mktemp("strace")
    r = subprocess.run(["strace", "-o", "/dev/null", "true"], cwd=d,
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("strace cannot trace here (ptrace not permitted)")


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_lock_bytes_match(pair, strace_works, implemented, args):
    if not implemented(args[0]):
        pytest.skip(f"qimg {args[0]} is not implemented yet")
    pair.setup(reset_images)
    ref = lock_calls(REF, list(args), pair.ref_dir)
    pair.setup(reset_images)
    got = lock_calls(QIMG, list(args), pair.qimg_dir)
    assert got == ref


# ---- qcow2: format nodes refuse to share write and resize -------------------
#
# QEMU's format drivers (all but raw) never let others write to or resize
# the file under them, even when they only read it; so a qcow2 image held
# writable by one process cannot be opened without -U by another, even for
# info or map, and a qcow2 image held read-only cannot be written.

QCOW2_HOLDERS = {
    "qemu-io": [QEMU_IO, "-f", "qcow2", "a.qcow2"],
    "qemu-io-ro": [QEMU_IO, "-r", "-f", "qcow2", "a.qcow2"],
    "qemu-io-ro-raw": [QEMU_IO, "-r", "-f", "raw", "a.qcow2"],
    "qemu-io-raw": [QEMU_IO, "-f", "raw", "a.qcow2"],
}

QCOW2_COMMANDS = [
    ["info", "a.qcow2"],
    ["info", "-U", "a.qcow2"],
    ["info", "-f", "raw", "a.qcow2"],
    ["map", "a.qcow2"],
    ["map", "-U", "a.qcow2"],
    ["check", "a.qcow2"],
    ["check", "-r", "all", "a.qcow2"],
    ["compare", "a.qcow2", "b.qcow2"],
    ["compare", "-U", "a.qcow2", "b.qcow2"],
    ["measure", "-O", "qcow2", "a.qcow2"],
    ["convert", "-O", "raw", "a.qcow2", "out.img"],
    ["convert", "-O", "qcow2", "b.qcow2", "a.qcow2"],
    ["snapshot", "-l", "a.qcow2"],
    ["snapshot", "-c", "s1", "a.qcow2"],
    ["resize", "a.qcow2", "8M"],
    ["amend", "-o", "lazy_refcounts=on", "a.qcow2"],
    ["rebase", "-u", "-b", "", "a.qcow2"],
    ["commit", "a.qcow2"],
    ["dd", "if=a.qcow2", "of=out.img"],
]


def reset_qcow2(d):
    for name in ("a.qcow2", "b.qcow2", "out.img"):
        if (d / name).exists():
            (d / name).unlink()
    for name in ("a.qcow2", "b.qcow2"):
        subprocess.run([str(REF), "create", "-q", "-f", "qcow2", name, "4M"],
                       cwd=d, check=True, timeout=TIMEOUT)
    subprocess.run([str(QEMU_IO), "-f", "qcow2", "-c", "write -P 7 1M 64k",
                    "a.qcow2"], cwd=d, check=True, capture_output=True,
                   timeout=TIMEOUT)


@pytest.mark.parametrize("holder", sorted(QCOW2_HOLDERS))
@pytest.mark.parametrize("args", QCOW2_COMMANDS, ids=lambda a: " ".join(a))
def test_qcow2_command_on_held_image(pair, holders, holder, args):
    pair.setup(reset_qcow2)
    for d in pair.dirs():
        holders.start(QCOW2_HOLDERS[holder], d, "a.qcow2", holder)
    pair.same(*args, timeout=TIMEOUT)
    if (pair.ref_dir / "out.img").exists():
        pair.same_content("out.img")


@pytest.mark.parametrize("args", QCOW2_COMMANDS, ids=lambda a: " ".join(a))
def test_qcow2_lock_bytes_match(pair, strace_works, args):
    pair.setup(reset_qcow2)
    ref = lock_calls(REF, list(args), pair.ref_dir)
    pair.setup(reset_qcow2)
    got = lock_calls(QIMG, list(args), pair.qimg_dir)
    assert got == ref
