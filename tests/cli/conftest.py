"""Differential test harness: run the same arguments through qimg and the
reference qemu-img 7.2 and compare stdout, stderr and exit status.

Each tool runs in its own directory holding identical copies of the input
files, with the same relative file names, so output that names files is
identical.  qimg runs through a link named qemu-img, so messages carry the
same program name.
"""
import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("QIMG_BUILD", ROOT / "build"))
QIMG = BUILD / "qemu-img"          # link to qimg, so messages say qemu-img
REF = Path(os.environ.get("QEMU_IMG", "/usr/bin/qemu-img"))
QEMU_IO = Path("/usr/bin/qemu-io")


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self):
        return f"rc={self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


# QIMG_VALGRIND=1 (make check-valgrind) runs every program of the build
# tree that goes through run() under valgrind: an invalid access or a
# definite/indirect leak makes it exit 99 with the report on stderr, which
# fails the comparison.  Another value than 1 is the valgrind command line.
# Valgrind is 20-50x slower, so timeouts are scaled.
VALGRIND = os.environ.get("QIMG_VALGRIND", "") not in ("", "0")
VALGRIND_CMD = (shlex.split(os.environ["QIMG_VALGRIND"])
                if VALGRIND and os.environ["QIMG_VALGRIND"] != "1" else
                ["valgrind", "--error-exitcode=99", "--leak-check=full",
                 "--errors-for-leak-kinds=definite,indirect", "-q"])
VALGRIND_SLOWDOWN = 20


def valgrind_skip(reason):
    """Skip a test that cannot run under valgrind (timing, signals)."""
    if VALGRIND:
        pytest.skip(f"not under valgrind: {reason}")


# Test files not run under valgrind, with the reason.
VALGRIND_SKIP = {
    "test_crash.py": "kills qimg with SIGKILL after random delays: timing "
                     "based, and it starts qimg itself (not through run()), "
                     "so valgrind would only slow it down",
}


def pytest_collection_modifyitems(config, items):
    if not VALGRIND:
        return
    for item in items:
        reason = VALGRIND_SKIP.get(item.path.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"valgrind: {reason}"))


def tool_argv(tool):
    """The argv prefix that runs tool (under valgrind when asked and the
    tool is one of ours)."""
    path = Path(tool)
    if VALGRIND and path.is_absolute() and BUILD.resolve() in \
            path.resolve().parents:
        return VALGRIND_CMD + [str(path)]
    return [str(path)]


def run(tool, args, cwd, env=None, input=None, timeout=120):
    if VALGRIND and timeout is not None and tool_argv(tool)[0] != str(tool):
        timeout *= VALGRIND_SLOWDOWN
    proc = subprocess.run(tool_argv(tool) + [str(a) for a in args], cwd=cwd,
                          capture_output=True, text=True, env=env,
                          input=input, timeout=timeout)
    return Result(proc)


class Pair:
    """Two working directories, one per tool, kept identical by setup."""

    def __init__(self, base: Path):
        self.ref_dir = base / "ref"
        self.qimg_dir = base / "qimg"
        self.ref_dir.mkdir()
        self.qimg_dir.mkdir()

    def dirs(self):
        return (self.ref_dir, self.qimg_dir)

    def setup(self, func):
        """Call func(dir) in both directories (e.g. to create inputs)."""
        for d in self.dirs():
            func(d)

    def setup_once(self, func):
        """Call func(dir) in the reference directory and link the results
        into the other, for inputs that embed timestamps (snapshots).  Both
        tools then see the very same files: use it for read-only commands."""
        func(self.ref_dir)
        for item in self.ref_dir.iterdir():
            (self.qimg_dir / item.name).symlink_to(item)

    def sh(self, cmd):
        """Run a shell command in both directories (setup only)."""
        for d in self.dirs():
            subprocess.run(cmd, shell=True, cwd=d, check=True,
                           capture_output=True)

    def ref(self, *args, **kw):
        return run(REF, args, self.ref_dir, **kw)

    def qimg(self, *args, **kw):
        return run(QIMG, args, self.qimg_dir, **kw)

    def both(self, *args, **kw):
        return self.ref(*args, **kw), self.qimg(*args, **kw)

    def same(self, *args, **kw):
        """Run args through both tools and assert identical results."""
        r, q = self.both(*args, **kw)
        assert (q.rc, q.out, q.err) == (r.rc, r.out, r.err), \
            f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}"
        return r

    def path_ref(self, name):
        return self.ref_dir / name

    def path_qimg(self, name):
        return self.qimg_dir / name

    def same_content(self, name, fmt="raw"):
        """The images each tool wrote read the same (reference compare)."""
        r = run(REF, ["compare", "-f", fmt, "-F", fmt,
                      self.path_ref(name), self.path_qimg(name)], self.ref_dir)
        assert r.rc == 0, f"images differ: {r!r}"


@pytest.fixture
def pair(tmp_path):
    return Pair(tmp_path)


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def qemu_io(path, *cmds, fmt="raw"):
    """Write patterns with the reference qemu-io."""
    args = [str(QEMU_IO), "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    args.append(str(path))
    subprocess.run(args, check=True, capture_output=True)


def write_file(path, data: bytes, offset=0):
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(offset)
        f.write(data)


def make_sparse(path, size, extents=()):
    """A file of size bytes with data written at (offset, bytes) pairs."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in extents:
            f.seek(off)
            f.write(data)


def batches(cases, size=12):
    """Error cases run in batches: a fresh directory pair per batch keeps
    the test count (and pytest's per-test cost) down."""
    return [cases[i:i + size] for i in range(0, len(cases), size)]


def same_all(pair, cases):
    """Every case (a whole argument list) through both tools; all
    mismatches are reported together."""
    bad = []
    for args in cases:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
    assert not bad, "\n\n".join(bad)


def same_each(pair, cmd, batch, scratch=("out.img",)):
    """pair.same for each case, removing scratch outputs between cases;
    all mismatches are reported together."""
    bad = []
    for args in batch:
        r, q = pair.both(cmd, *args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            for name in scratch:
                if (d / name).is_file():
                    (d / name).unlink()
    assert not bad, "\n\n".join(bad)


@functools.lru_cache(maxsize=None)
def qimg_formats():
    """Formats this qimg build knows (the help's last format list)."""
    out = subprocess.run([str(QIMG), "--help"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("Supported formats:"):
            return tuple(line.split(":", 1)[1].split())
    return ()


def needs_format(fmt):
    """Skip marker for tests of a format this qimg build lacks."""
    return pytest.mark.skipif(fmt not in qimg_formats(),
                              reason=f"qimg has no {fmt} driver yet")


VERSION_LINE = re.compile(r"^\S+ version ")


def help_text(out):
    """Help output with what may differ taken out: the two version lines
    at the top (qimg's own version and copyright), and the format list,
    returned apart (qimg knows fewer formats than QEMU's build)."""
    lines = out.splitlines()
    if lines and VERSION_LINE.match(lines[0]):
        lines = lines[2:]
    formats = None
    for i, line in enumerate(lines):
        if line.startswith("Supported formats:"):
            formats = line.split(":", 1)[1].split()
            lines[i] = "Supported formats: ..."
    return lines, formats


def same_help_out(r, q):
    """qimg's help output is the reference's line for line, apart from the
    version lines; its format list is the reference's order (strcmp) over
    formats the reference knows too."""
    r_lines, r_formats = help_text(r.out)
    q_lines, q_formats = help_text(q.out)
    assert q_lines == r_lines, f"REF {r!r}\nQIMG {q!r}"
    assert (q_formats is None) == (r_formats is None)
    if q_formats is not None:
        assert q_formats == sorted(q_formats), q_formats
        assert set(q_formats) <= set(r_formats), \
            set(q_formats) - set(r_formats)
        assert q_formats, "no formats listed"


def same_help(pair, *args):
    """args print the help: status, stderr and the help text as 7.2's."""
    r, q = pair.both(*args)
    assert (q.rc, q.err) == (r.rc, r.err), f"REF {r!r}\nQIMG {q!r}"
    same_help_out(r, q)
    return r
