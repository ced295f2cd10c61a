"""Untrusted mode (docs/SECURITY.md): a corpus of images that make
qemu-img open files they name (the CVE-2024-32498 class), each refused by
`qimg --untrusted` without the secret reaching the output, each shown to
leak without the option (so the case is a real escape), and each opened
again once the caller allows the file by name.  Also: what info still
reports, the limits, the options and the environment variable, and that
nothing changes without them.

qemu-img 7.2 has no such mode: these are functional tests, with the
reference used to build the images and to read back what qimg wrote.
"""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD, QIMG, REF, needs_format, run

QIMG_BIN = BUILD / "qimg"
SECRET = b"TOP-SECRET-CONTENT-0123456789"
REFUSED = "named by an untrusted image"


def ref(cwd, *args):
    r = run(REF, args, cwd)
    assert r.rc == 0, r
    return r


def qimg(cwd, *args, **kw):
    return run(QIMG_BIN, args, cwd, **kw)


def write_secret(d):
    (d / "secret").write_bytes(SECRET * 2048)


def qcow2(d, name, backing=None, bfmt="raw", size="1M"):
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-u", "-b", backing, "-F", bfmt]
    ref(d, *args, name, size)


def qcow2_data_file(d, name, data_name):
    """A qcow2 image whose header names data_name as its data file (made
    with a harmless file, then renamed by amend, which opens nothing).
    data_file_raw: every cluster is mapped, so the data file's bytes are
    the guest's (what leaks)."""
    ref(d, "create", "-q", "-f", "qcow2", "-o", "data_file=" + name + ".df" +
        ",data_file_raw=on", name, "1M")
    ref(d, "amend", "-o", "data_file=" + data_name.replace(",", ",,"), name)


def base(d, name="base.qcow2"):
    """A harmless backing image with a pattern."""
    qcow2(d, name)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(d / name)],
                   check=True, capture_output=True)
    return name


def leaked(d, r, out="out.raw"):
    """Did the secret reach the output or the converted file?"""
    so, se = (r.out, r.err) if hasattr(r, "out") else (r.stdout, r.stderr)
    text = (so + se).encode()
    data = (d / out).read_bytes() if (d / out).exists() else b""
    return SECRET in text or SECRET[:16] in data


# ---- the corpus ----------------------------------------------------------

def escapes(d):
    """(name, image, stdin path or None, leaks without --untrusted) for
    every escape of the class; made in d."""
    write_secret(d)
    (d / "sub").mkdir()
    cases = []

    def add(name, image, stdin=None, leaks=True):
        cases.append((name, image, stdin, leaks))

    qcow2(d, "abs.qcow2", str(d / "secret"))
    add("backing file, absolute", "abs.qcow2")
    qcow2(d, "sub/rel.qcow2", "../secret")
    add("backing file, relative", "sub/rel.qcow2")
    js = json.dumps({"driver": "raw",
                     "file": {"driver": "file", "filename": "secret"}})
    qcow2(d, "json.qcow2", "json:" + js)
    add("json: backing file", "json.qcow2")
    qcow2(d, "jsondev.qcow2", "json:" + json.dumps(
        {"driver": "host_device", "filename": "/dev/zero"}))
    add("json: backing file naming a device", "jsondev.qcow2", leaks=False)
    qcow2(d, "dev.qcow2", "/dev/zero")
    add("device as backing file", "dev.qcow2", leaks=False)
    qcow2(d, "nbd.qcow2", "nbd://127.0.0.1:1/x")
    add("nbd:// backing file", "nbd.qcow2", leaks=False)
    qcow2(d, "fileproto.qcow2", "file:secret")
    add("file: protocol backing file", "fileproto.qcow2")
    qcow2(d, "blkdebug.qcow2", "secret", bfmt="blkdebug")
    add("backing format naming a protocol driver", "blkdebug.qcow2")
    qcow2(d, "nullco.qcow2", "null-co://", bfmt="null-co")
    add("null-co backing", "nullco.qcow2", leaks=False)
    qcow2_data_file(d, "df.qcow2", str(d / "secret"))
    add("data file, absolute", "df.qcow2")
    qcow2_data_file(d, "dfrel.qcow2", "secret")
    add("data file, relative to the working directory", "dfrel.qcow2")
    qcow2_data_file(d, "dfjson.qcow2", "json:" + js)
    add("json: data file", "dfjson.qcow2", leaks=False)
    os.symlink("secret", d / "link")
    qcow2(d, "symlink.qcow2", "link")
    add("backing file through a symlink", "symlink.qcow2")
    qcow2(d, "procfd.qcow2", "/proc/self/fd/0")
    add("backing file /proc/self/fd/0", "procfd.qcow2", stdin="secret")
    qcow2_data_file(d, "dfprocfd.qcow2", "/proc/self/fd/0")
    add("data file /proc/self/fd/0", "dfprocfd.qcow2", stdin="secret")
    qcow2(d, "proccwd.qcow2", "/proc/self/cwd/secret")
    add("backing file /proc/self/cwd/...", "proccwd.qcow2")
    qcow2(d, "shadow.qcow2", "json:" + json.dumps(
        {"driver": "raw", "file": {"driver": "file",
                                   "filename": "/etc/shadow"}}))
    add("json: backing file naming /etc/shadow", "shadow.qcow2", leaks=False)
    qcow2(d, "http.qcow2", "http://127.0.0.1:1/x", bfmt="raw")
    add("http:// backing file", "http.qcow2", leaks=False)
    qcow2(d, "nbdunix.qcow2", "nbd+unix:///x?socket=/tmp/none")
    add("nbd+unix:// backing file", "nbdunix.qcow2", leaks=False)
    # a harmless-looking backing image whose own data file is the secret
    qcow2_data_file(d, "dfsecret.qcow2", str(d / "secret"))
    qcow2(d, "dfinback.qcow2", "dfsecret.qcow2", "qcow2")
    add("data file inside a backing file", "dfinback.qcow2")
    os.mkfifo(d / "fifo")
    qcow2(d, "fifo.qcow2", str(d / "fifo"))
    add("FIFO as backing file (would hang)", "fifo.qcow2", leaks=False)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus, made once per worker: (directory, cases).  The tests
    only read its images (outputs go to out.raw)."""
    d = tmp_path_factory.mktemp("escapes")
    return d, escapes(d)


def test_escapes_refused(corpus):
    tmp_path, cases = corpus
    bad = []
    for name, image, stdin, leaks in cases:
        def go(*opts):
            (tmp_path / "out.raw").unlink(missing_ok=True)
            f = open(tmp_path / stdin, "rb") if stdin else None
            try:
                return subprocess.run(
                    [str(QIMG_BIN), "convert", *opts, "-O", "raw", image,
                     "out.raw"], cwd=tmp_path, stdin=f, capture_output=True,
                    text=True, timeout=20)
            finally:
                if f:
                    f.close()
        if leaks:
            # Without the option the case is a real escape.
            p = go()
            if not leaked(tmp_path, p):
                bad.append(f"{name}: does not leak without --untrusted: "
                           f"{p.returncode} {p.stderr}")
        p = go("--untrusted")
        if p.returncode != 1 or REFUSED not in p.stderr or \
                leaked(tmp_path, p):
            bad.append(f"{name}: not refused: {p.returncode} {p.stderr}")
    assert not bad, "\n".join(bad)


def test_refusal_messages(corpus):
    """What the message says for each kind of refusal."""
    tmp_path, corpus_cases = corpus
    cases = {c[0]: c for c in corpus_cases}
    want = {
        "backing file, absolute": f"backing file '{tmp_path}/secret' {REFUSED} "
                                  "is not allowed (--allow-backing)",
        "json: backing file": "is a json: description, which untrusted mode "
                              "refuses",
        "nbd:// backing file": "names protocol 'nbd', which untrusted mode "
                               "refuses",
        "backing format naming a protocol driver":
            "would be opened by the 'blkdebug' driver, which untrusted mode "
            "refuses",
        "data file, absolute": f"data file '{tmp_path}/secret' {REFUSED} is "
                               "not allowed (--allow-data-file)",
    }
    for name, text in want.items():
        r = qimg(tmp_path, "info", "--untrusted", "--backing-chain",
                 cases[name][1]) if "data" not in name else \
            qimg(tmp_path, "map", "--untrusted", cases[name][1])
        assert r.rc == 1 and text in r.err, (name, r)
        assert r.err.startswith("qimg: Could not open "), r


def test_hostile_names_quoted(tmp_path):
    """A name with terminal escapes is shown escaped in the message."""
    qcow2(tmp_path, "esc.qcow2", "x\x1b[2Jy")
    r = qimg(tmp_path, "map", "--untrusted", "esc.qcow2")
    assert r.rc == 1 and "'x\\x1b[2Jy'" in r.err and "\x1b" not in r.err, r


# ---- allowed files --------------------------------------------------------

def test_allowed_files_open(tmp_path):
    """Each allow option lets its file in, by any name that resolves to
    it; the result reads as the reference reads the image."""
    d = tmp_path
    base(d)
    base(d, "base2.qcow2")
    qcow2(d, "mid.qcow2", "base.qcow2", "qcow2")
    qcow2(d, "top.qcow2", "mid.qcow2", "qcow2")
    os.symlink("base2.qcow2", d / "blink")
    qcow2(d, "vialink.qcow2", "blink", "qcow2")
    (d / "data.raw").write_bytes(b"D" * 65536)
    qcow2_data_file(d, "df.qcow2", "data.raw")
    qcow2(d, "dfbase.qcow2", "df.qcow2", "qcow2")
    cases = [
        ("top.qcow2", ["--allow-backing", "mid.qcow2",
                       "--allow-backing=" + str(d / "base.qcow2")]),
        ("top.qcow2", ["--allow-file", "mid.qcow2",
                       "--allow-file", "base.qcow2"]),
        # the image names a symlink: the allowed file is its target
        ("vialink.qcow2", ["--allow-backing", "base2.qcow2"]),
        # the caller names the symlink: the image's name for the target
        # resolves to the same file
        ("vialink.qcow2", ["--allow-backing", "blink"]),
        ("df.qcow2", ["--allow-data-file", "data.raw"]),
        # a data file inside a backing file: both allowed
        ("dfbase.qcow2", ["--allow-backing", "df.qcow2",
                          "--allow-data-file", "data.raw"]),
    ]
    for image, opts in cases:
        (d / "out.raw").unlink(missing_ok=True)
        r = qimg(d, "convert", *opts, "-O", "raw", image, "out.raw")
        assert r.rc == 0, (image, opts, r)
        c = run(REF, ["compare", "-f", "qcow2", "-F", "raw", image, "out.raw"],
                d)
        assert c.rc == 0, (image, opts, c)
    # each half alone is not enough
    for image, opts in [("top.qcow2", ["--allow-backing", "mid.qcow2"]),
                        ("dfbase.qcow2", ["--allow-backing", "df.qcow2"]),
                        ("dfbase.qcow2", ["--allow-data-file", "data.raw"]),
                        # a file allowed in one role only
                        ("df.qcow2", ["--allow-backing", "data.raw"]),
                        ("top.qcow2", ["--allow-data-file", "mid.qcow2",
                                       "--allow-extent", "base.qcow2"])]:
        r = qimg(d, "convert", *opts, "-O", "raw", image, "out.raw")
        assert r.rc == 1 and REFUSED in r.err, (image, opts, r)


def test_data_file_in_allowed_backing(tmp_path):
    """Allowing a backing file does not allow the data file it names."""
    d = tmp_path
    write_secret(d)
    qcow2_data_file(d, "dfsecret.qcow2", str(d / "secret"))
    qcow2(d, "top.qcow2", "dfsecret.qcow2", "qcow2")
    r = qimg(d, "convert", "-O", "raw", "top.qcow2", "out.raw")
    assert r.rc == 0 and leaked(d, r), r
    (d / "out.raw").unlink()
    r = qimg(d, "convert", "--allow-backing", "dfsecret.qcow2", "-O", "raw",
             "top.qcow2", "out.raw")
    assert r.rc == 1 and f"data file '{d}/secret' {REFUSED}" in r.err and \
        not leaked(d, r), r


def test_symlink_chain_escape(tmp_path):
    """A chain through symlinks: the first link leads to an allowed
    image, whose own backing link leads to the secret: refused there."""
    d = tmp_path
    write_secret(d)
    os.symlink("secret", d / "l2")
    qcow2(d, "inner.qcow2", "l2")
    os.symlink("inner.qcow2", d / "l1")
    qcow2(d, "top.qcow2", "l1", "qcow2")
    r = qimg(d, "convert", "--allow-backing", "inner.qcow2", "-O", "raw",
             "top.qcow2", "out.raw")
    assert r.rc == 1 and "backing file 'l2'" in r.err and \
        not leaked(d, r), r
    # allowing the link's name does not allow what it points to later
    r = qimg(d, "convert", "--allow-backing", "l1", "-O", "raw",
             "top.qcow2", "out.raw")
    assert r.rc == 1 and "'l2'" in r.err, r


# ---- info reports what images ask for -------------------------------------

def test_info_reports_requests(corpus):
    """info --untrusted opens nothing an image names and shows what each
    image asks for, as qemu-img shows it."""
    d, cases = corpus
    bad = []
    for name, image, stdin, _ in cases:
        for out in ("human", "json"):
            r = run(REF, ["info", "--output=" + out, image], d)
            q = qimg(d, "info", "--untrusted", "--output=" + out, image)
            if r.out != q.out or q.rc != 0:
                bad.append(f"{name}: {out}\nREF {r!r}\nQIMG {q!r}")
    assert not bad, "\n".join(bad)
    r = qimg(d, "info", "--untrusted", "--output=json", "df.qcow2")
    spec = json.loads(r.out)["format-specific"]["data"]
    assert spec["data-file"] == str(d / "secret")


# ---- every command --------------------------------------------------------

COMMANDS = [
    ["info", "--backing-chain", "IMG"],
    ["map", "IMG"],
    ["check", "IMG"],
    ["compare", "IMG", "IMG"],
    ["convert", "-O", "raw", "IMG", "out.raw"],
    ["dd", "if=IMG", "of=out.raw", "-O", "raw"],
    ["measure", "-O", "qcow2", "IMG"],
    ["commit", "IMG"],
    ["rebase", "-b", "", "IMG"],
    ["amend", "-o", "lazy_refcounts=on", "IMG"],
    ["resize", "IMG", "2M"],
    ["snapshot", "-c", "s1", "IMG"],
    ["bitmap", "--add", "IMG", "b1"],
    ["bench", "-c", "4", "IMG"],
    ["create", "-f", "qcow2", "-b", "IMG", "-F", "qcow2", "new.qcow2"],
]


@pytest.mark.parametrize("kind", ["backing", "data"])
def test_every_command(tmp_path, kind):
    """Each command takes --untrusted; a command that would open the file
    the image names (it does without the option) is refused, one that
    would not gives the same result as without the option."""
    d = tmp_path
    write_secret(d)
    if kind == "backing":
        qcow2(d, "template.qcow2", str(d / "secret"))
    else:
        qcow2_data_file(d, "template.qcow2", str(d / "secret"))
    template = (d / "template.qcow2").read_bytes()
    bad = []
    for cmd in COMMANDS:
        def fresh():
            # commands without the option may change the image and the
            # file it names: both as made
            for f in ("out.raw", "new.qcow2"):
                (d / f).unlink(missing_ok=True)
            (d / "img.qcow2").write_bytes(template)
            write_secret(d)
        args = [a.replace("IMG", "img.qcow2") for a in cmd]
        fresh()
        plain = qimg(d, *args)
        fresh()
        untr = qimg(d, args[0], "--untrusted", *args[1:])
        if SECRET in (untr.out + untr.err).encode() or leaked(d, untr):
            bad.append(f"{cmd}: leaks {untr!r}")
        elif untr.rc != 0:
            if REFUSED not in untr.err:
                bad.append(f"{cmd}: fails otherwise: {untr!r}")
            if plain.rc != 0 and REFUSED not in untr.err:
                bad.append(f"{cmd}: {plain!r}")
        elif (untr.rc, untr.out, untr.err) != (plain.rc, plain.out, plain.err):
            bad.append(f"{cmd}: differs\nPLAIN {plain!r}\nUNTRUSTED {untr!r}")
        # in the global position too
        fresh()
        glob = qimg(d, "--untrusted", *args)
        if (glob.rc, glob.err) != (untr.rc, untr.err):
            bad.append(f"{cmd}: global option differs: {glob!r} {untr!r}")
    assert not bad, "\n\n".join(bad)


# ---- limits ---------------------------------------------------------------

def chain(d, n):
    """n qcow2 images i0 <- i1 <- ... (i{n-1} on top)."""
    qcow2(d, "i0.qcow2")
    for i in range(1, n):
        qcow2(d, f"i{i}.qcow2", f"i{i - 1}.qcow2", "qcow2")
    return [a for i in range(n - 1) for a in ("--allow-backing",
                                               f"i{i}.qcow2")]


def test_chain_depth(tmp_path):
    d = tmp_path
    allow = chain(d, 9)
    top8, top9 = "i7.qcow2", "i8.qcow2"
    for cmd in (["map"], ["info", "--backing-chain"]):
        r = qimg(d, *cmd, *allow, top8)
        assert r.rc == 0, r
        r = qimg(d, *cmd, *allow, top9)
        assert r.rc == 1 and "is deeper than 8 images" in r.err, r
        # without the mode, 64 (the normal bound)
        r = qimg(d, *cmd, top9)
        assert r.rc == 0, r


def proc_status(pid):
    """Max cpu time, max address space (soft limits) and VmSize (bytes)."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        parts = line.split()
        if line.startswith("Max cpu time"):
            out["cpu"] = parts[3]
        if line.startswith("Max address space"):
            out["as"] = parts[3]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            out["vm"] = int(line.split()[1]) * 1024
    return out


def limits_of(d, args, env=None):
    """The limits of a qimg run, seen while it waits to open a FIFO that
    the caller names (FIFO in args): the caller's names open as they are,
    so the open blocks until a writer comes."""
    fifo = d / "wait.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    p = subprocess.Popen([str(QIMG_BIN)] +
                         [str(fifo) if a == "FIFO" else a for a in args],
                         cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    try:
        for _ in range(100):
            # blocked in the FIFO's open (fifo_open / wait_for_partner)
            wchan = Path(f"/proc/{p.pid}/wchan").read_text()
            if "fifo" in wchan or "partner" in wchan:
                break
            time.sleep(0.05)
        lim = proc_status(p.pid)
    finally:
        # A writer that does not block when qimg never opened the FIFO.
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
    return lim


def test_process_limits(tmp_path):
    d = tmp_path
    write_secret(d)
    env = dict(os.environ, QIMG_UNTRUSTED="1")
    own = proc_status(os.getpid())
    plain = limits_of(d, ["info", "FIFO"])
    assert (plain["cpu"], plain["as"]) == (own["cpu"], own["as"]), plain
    for args, e in ((["info", "--untrusted", "FIFO"], None),
                    (["info", "FIFO"], env),
                    (["--untrusted", "map", "FIFO"], None),
                    (["check", "--allow-file", "secret", "FIFO"], None)):
        lim = limits_of(d, args, e)
        assert lim["cpu"] == "30", (args, lim)
        # 1 GiB beyond what the program held when the mode started
        assert lim["as"] != "unlimited", (args, lim)
        room = int(lim["as"]) - lim["vm"]
        assert (1 << 30) - (64 << 20) < room <= 1 << 30, (args, lim)
    lim = limits_of(d, ["convert", "--untrusted", "-O", "raw", "FIFO",
                        "x.raw"])
    assert lim["cpu"] == own["cpu"] and lim["as"] != "unlimited", lim


# ---- options and environment ----------------------------------------------

def test_options(tmp_path):
    d = tmp_path
    base(d)
    cases = [
        (["info", "--untrusted=yes", "base.qcow2"], 1,
         "qimg: option '--untrusted' doesn't allow an argument\n"
         "Try 'qimg --help' for more information\n"),
        (["info", "base.qcow2", "--allow-backing"], 1,
         "qimg: option '--allow-backing' requires an argument\n"
         "Try 'qimg --help' for more information\n"),
        (["info", "--allow-extent", "missing", "base.qcow2"], 1,
         "qimg: --allow-extent: Could not access 'missing': No such file or "
         "directory\n"),
        (["info", "--allow-file=/dev/null", "base.qcow2"], 1,
         "qimg: --allow-file: '/dev/null' is neither a regular file nor a "
         "block device\n"),
        # abbreviations are not ours: they stay unknown, as in qemu-img
        (["info", "--untrust", "base.qcow2"], 1,
         "qimg: unrecognized option '--untrust'\n"
         "Try 'qimg --help' for more information\n"),
    ]
    for args, rc, err in cases:
        r = qimg(d, *args)
        assert (r.rc, r.err) == (rc, err), (args, r)
    # measure, whose getopt reports bad options itself, takes them too
    r = qimg(d, "measure", "--untrusted", "--allow-backing", "base.qcow2",
             "-O", "qcow2", "base.qcow2")
    assert r.rc == 0 and "required size" in r.out, r


def test_unchanged_without_the_mode(pair):
    """Without the option, or with QIMG_UNTRUSTED empty or 0, qimg does
    what qemu-img 7.2 does (the escapes included), and 7.2's option
    abbreviations keep their meaning."""
    def make(d):
        write_secret(d)
        qcow2(d, "abs.qcow2", str(d / "secret"))
        qcow2(d, "json.qcow2", "json:" + json.dumps(
            {"driver": "raw", "file": {"driver": "file",
                                       "filename": "secret"}}))
        qcow2(d, "v3.qcow2")
    pair.setup(make)
    for val in ("", "0"):
        env = dict(os.environ, QIMG_UNTRUSTED=val)
        for args in (["map", "json.qcow2"], ["info", "--backing-chain",
                                              "json.qcow2"]):
            r = run(REF, args, pair.ref_dir)
            q = run(QIMG, args, pair.qimg_dir, env=env)
            assert (q.rc, q.out.replace(str(pair.qimg_dir), "D"), q.err) == \
                (r.rc, r.out.replace(str(pair.ref_dir), "D"), r.err), (args, q)
    # bitmap's "--a" is --add in 7.2: still so
    pair.same("bitmap", "--a", "v3.qcow2", "b0")
    pair.same("info", "--u", "v3.qcow2")


def test_environment(tmp_path):
    """QIMG_UNTRUSTED=1 turns the mode on under either program name."""
    d = tmp_path
    write_secret(d)
    qcow2(d, "abs.qcow2", str(d / "secret"))
    for val in ("1", "yes"):
        env = dict(os.environ, QIMG_UNTRUSTED=val)
        for prog in (QIMG, QIMG_BIN):
            r = run(prog, ["convert", "-O", "raw", "abs.qcow2", "out.raw"], d,
                    env=env)
            assert r.rc == 1 and REFUSED in r.err and not leaked(d, r), r


# ---- vmdk extents ----------------------------------------------------------

def vmdk_descriptor(d, name, extents, size_sectors=128):
    lines = ["# Disk DescriptorFile", "version=1", "CID=fffffffe",
             "parentCID=ffffffff", 'createType="monolithicFlat"', "",
             "# Extent description"]
    lines += [f'RW {size_sectors} FLAT "{e}" 0' for e in extents]
    lines += ["", "# The Disk Data Base", "#DDB", "",
              'ddb.virtualHWVersion = "4"', 'ddb.geometry.cylinders = "1"',
              'ddb.geometry.heads = "16"', 'ddb.geometry.sectors = "63"',
              'ddb.adapterType = "ide"', ""]
    (d / name).write_text("\n".join(lines))


@needs_format("vmdk")
def test_vmdk_extents(tmp_path):
    d = tmp_path
    write_secret(d)
    os.symlink("secret", d / "elink")
    (d / "flat.raw").write_bytes(b"F" * 65536)
    vmdk_descriptor(d, "abs.vmdk", [str(d / "secret")])
    vmdk_descriptor(d, "rel.vmdk", ["secret"])
    vmdk_descriptor(d, "link.vmdk", ["elink"])
    vmdk_descriptor(d, "procfd.vmdk", ["/proc/self/fd/0"])
    vmdk_descriptor(d, "good.vmdk", ["flat.raw"])
    for image in ("abs.vmdk", "rel.vmdk", "link.vmdk", "procfd.vmdk"):
        with open(d / "secret", "rb") as f:
            p = subprocess.run([str(QIMG_BIN), "convert", "-O", "raw", image,
                                "out.raw"], cwd=d, stdin=f, capture_output=True,
                               text=True)
        assert p.returncode == 0 and SECRET in (d / "out.raw").read_bytes()
        (d / "out.raw").unlink()
        with open(d / "secret", "rb") as f:
            p = subprocess.run([str(QIMG_BIN), "convert", "--untrusted", "-O",
                                "raw", image, "out.raw"], cwd=d, stdin=f,
                               capture_output=True, text=True)
        assert p.returncode == 1 and "extent '" in p.stderr and \
            "(--allow-extent)" in p.stderr, (image, p.stderr)
        assert not (d / "out.raw").exists()
    r = qimg(d, "convert", "--allow-extent", "flat.raw", "-O", "raw",
             "good.vmdk", "out.raw")
    assert r.rc == 0, r
    assert run(REF, ["compare", "good.vmdk", "out.raw"], d).rc == 0
    r = qimg(d, "convert", "--allow-backing", "flat.raw", "-O", "raw",
             "good.vmdk", "out.raw")
    assert r.rc == 1 and "(--allow-extent)" in r.err, r


@needs_format("vmdk")
def test_vmdk_extent_count(tmp_path):
    """An untrusted image may open at most 64 files (names of one file
    count once per name)."""
    d = tmp_path
    names = []
    for i in range(65):
        (d / f"e{i}.raw").write_bytes(b"E" * 512)
        names.append(f"e{i}.raw")
    vmdk_descriptor(d, "many.vmdk", names, size_sectors=1)
    vmdk_descriptor(d, "enough.vmdk", names[:64], size_sectors=1)
    allow = [a for n in names for a in ("--allow-extent", n)]
    r = qimg(d, "convert", *allow, "-O", "raw", "enough.vmdk", "out.raw")
    assert r.rc == 0, r
    r = qimg(d, "convert", *allow, "-O", "raw", "many.vmdk", "out.raw")
    assert r.rc == 1 and "may name at most 64 files" in r.err, r
    r = qimg(d, "convert", "-O", "raw", "many.vmdk", "out.raw")
    assert r.rc == 0, r
