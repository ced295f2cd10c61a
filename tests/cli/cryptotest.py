"""Helpers shared by the encryption tests (test_luks*.py,
test_qcow2_encrypt*.py): secrets, image specs, I/O through the reference
qemu-io and our qimg-io, normalising what differs by nature (random UUIDs,
PBKDF2 counts calibrated from each tool's speed), LUKS header patching."""
import re
import struct
import subprocess
import time

from conftest import BUILD, QEMU_IO, run

QIMG_IO = BUILD / "tests" / "qimg-io"

PW = "hunter0"
SECRET = f"secret,id=s0,data={PW}"
SECRET1 = "secret,id=s1,data=hunter1"
SECRET_BAD = "secret,id=s0,data=wrong"
OBJ = ["--object", SECRET]
OBJS = ["--object", SECRET, "--object", SECRET1]

# Iteration counts and UUIDs depend on the machine and on chance.
_NORM = [
    (re.compile(r"(iters\"?:? *)\d+"), r"\1N"),
    (re.compile(r"(PBKDF iterations )\d+"), r"\1N"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                r"[0-9a-f]{12}"), "UUID"),
    (re.compile(r"(disk size: ).*"), r"\1X"),
    (re.compile(r"(\"actual-size\": )\d+"), r"\1X"),
]


def norm(text):
    for rx, rep in _NORM:
        text = rx.sub(rep, text)
    return text


# qemu-img 7.2 measures PBKDF2 with a millisecond CPU clock and gives up
# when a short run reads 0 ms: a flake of the reference, retried (more
# often on a loaded machine, where make check's 4 workers share 2 CPUs:
# 4 tries were not always enough).
FLAKE = "Unable to get accurate CPU usage"
FLAKE_TRIES = 12


def _retry_flake(call):
    """call() until its result's stderr is free of FLAKE (or tries run
    out), pausing longer each time."""
    for i in range(FLAKE_TRIES):
        r = call()
        if FLAKE not in r.err:
            break
        time.sleep(0.1 * i)
    return r


def ref_retry(pair, *args, **kw):
    return _retry_flake(lambda: pair.ref(*args, **kw))


def run_retry(tool, args, cwd):
    """run(), retried while the reference hits FLAKE."""
    return _retry_flake(lambda: run(tool, args, cwd))


def same_norm(pair, *args, **kw):
    """pair.same, with counts and UUIDs normalised."""
    r, q = ref_retry(pair, *args, **kw), pair.qimg(*args, **kw)
    got = (q.rc, norm(q.out), norm(q.err))
    want = (r.rc, norm(r.out), norm(r.err))
    assert got == want, f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}"
    return r


def same_each_norm(pair, cmd, batch):
    """same_norm for each case; mismatches reported together."""
    bad = []
    for args in batch:
        try:
            same_norm(pair, cmd, *args)
        except AssertionError as e:
            bad.append(str(e))
    assert not bad, "\n\n".join(bad)


def spec(fmt, path, secret="s0", extra=""):
    """An --image-opts spec opening an encrypted image."""
    key = "key-secret" if fmt == "luks" else "encrypt.key-secret"
    s = f"driver={fmt},file.filename={path}"
    if secret:
        s += f",{key}={secret}"
    return s + extra


def qemu_io(fmt, path, *cmds, secret=SECRET, check=True):
    args = [str(QEMU_IO), "--object", secret, "--image-opts"]
    for c in cmds:
        args += ["-c", c]
    args.append(spec(fmt, path))
    p = subprocess.run(args, capture_output=True, text=True)
    if check:
        assert p.returncode == 0 and "fail" not in p.stdout.lower(), \
            p.stdout + p.stderr
    return p


def qimg_io(fmt, path, *cmds, secret=SECRET):
    key = "key-secret" if fmt == "luks" else "encrypt.key-secret"
    p = subprocess.run([str(QIMG_IO), "-f", fmt, "-s", secret, "-o",
                        f"{key}=s0", str(path), *cmds],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def read_raw(tool, fmt, path, out, cwd, secret=SECRET):
    """The guest content of an encrypted image, converted to raw by tool."""
    r = run(tool, ["convert", "--object", secret, "--image-opts",
                   spec(fmt, path), "-O", "raw", out], cwd)
    assert r.rc == 0, r
    with open(cwd / out, "rb") as f:
        return f.read()


def copy_to_qimg(pair, name):
    """The reference's image, copied to qimg's side (same bytes, same
    holes: disk sizes are compared)."""
    subprocess.run(["cp", "--sparse=always", str(pair.path_ref(name)),
                    str(pair.path_qimg(name))], check=True)


# ---- LUKS header fields (offsets of the LUKS1 on-disk format) -------------

LUKS_FIELDS = {
    "version": (6, ">H"), "payload": (104, ">I"), "key_bytes": (108, ">I"),
    "mk_iters": (164, ">I"),
}


def slot_field(i, name):
    return 208 + 48 * i + {"active": 0, "iters": 4, "offset": 40,
                           "stripes": 44}[name]


def patch(path, off, fmt_or_bytes, value=None, base=0):
    with open(path, "r+b") as f:
        f.seek(base + off)
        if value is None:
            f.write(fmt_or_bytes)
        else:
            f.write(struct.pack(fmt_or_bytes, value))
