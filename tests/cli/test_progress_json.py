"""--progress=json and --progress=FD (a qimg addition) on the long
commands: one JSON object per line with bytes done, total, percent, rate
and elapsed time; the human -p output stays byte for byte qemu-img's."""
import json
import os
import random
import subprocess

from conftest import QIMG, REF, run

SIZE = 4 << 20


def json_lines(text):
    """The JSON progress lines of a stream, and the rest of it."""
    objs, rest = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith('{"done": '):
            objs.append(json.loads(line))
        else:
            rest.append(line)
    return objs, "".join(rest)


def check_stream(objs, total):
    assert len(objs) >= 2, objs
    done = [o["done"] for o in objs]
    assert done == sorted(done), done
    assert done[0] == 0 and done[-1] == total, done
    assert objs[-1]["percent"] == 100.0
    for o in objs:
        assert set(o) == {"done", "total", "percent", "rate", "elapsed"}
        assert o["total"] == total and o["rate"] >= 0 and o["elapsed"] >= 0
        assert 0 <= o["percent"] <= 100


def setup_images(d):
    data = random.Random(7).randbytes(SIZE)
    (d / "a.raw").write_bytes(data)
    for name in ("a.qcow2", "b.qcow2"):
        subprocess.run([str(REF), "convert", "-f", "raw", "-O", "qcow2",
                        "a.raw", name], cwd=d, check=True, capture_output=True)
    subprocess.run([str(REF), "create", "-f", "qcow2", "-b", "a.qcow2", "-F",
                    "qcow2", "top.qcow2"], cwd=d, check=True,
                   capture_output=True)
    subprocess.run(["/usr/bin/qemu-io", "-f", "qcow2", "-c",
                    "write -P 0x11 0 1M", "top.qcow2"], cwd=d, check=True,
                   capture_output=True)
    subprocess.run([str(REF), "create", "-f", "qcow2", "-b", "a.qcow2", "-F",
                    "qcow2", "re.qcow2"], cwd=d, check=True,
                   capture_output=True)


# (arguments, takes -p): each run twice, the reference with -p alone where
# it has -p, qimg with --progress=json added.  (commit's -p lines depend on
# QEMU's job timing: test_commit.py checks their shape.)
COMMANDS = [
    (["convert", "-O", "qcow2", "a.raw", "out.qcow2"], True),
    (["compare", "a.raw", "a.qcow2"], True),
    (["commit", "top.qcow2"], False),
    (["rebase", "-b", "b.qcow2", "-F", "qcow2", "re.qcow2"], True),
    (["amend", "-o", "compat=0.10", "b.qcow2"], True),
    (["check", "a.qcow2"], False),
    (["dd", "if=a.raw", "of=out.raw", "bs=64k"], False),
]


def test_json_progress_and_unchanged_bar(pair):
    """Each command: qimg's stdout and exit code are the reference's (with
    -p where the command has it), stderr is the reference's plus the JSON
    lines, and those describe the whole job."""
    pair.setup(setup_images)
    bad = []
    for args, has_p in COMMANDS:
        p = ["-p"] if has_p else []
        r = run(REF, [args[0], *p, *args[1:]], pair.ref_dir)
        q = run(QIMG, [args[0], *p, "--progress=json", *args[1:]],
                pair.qimg_dir)
        objs, rest = json_lines(q.err)
        if (q.rc, q.out, rest) != (r.rc, r.out, r.err):
            bad.append(f"{args}\nREF {r!r}\nQIMG {q!r}")
            continue
        check_stream(objs, SIZE)
    assert not bad, "\n\n".join(bad)


def test_progress_fd_and_closed_reader(tmp_path):
    """--progress=FD writes the lines to that descriptor; a reader that
    goes away does not stop the job."""
    setup_images(tmp_path)
    rfd, wfd = os.pipe()
    proc = subprocess.run([str(QIMG), "convert", f"--progress={wfd}", "-O",
                           "raw", "a.qcow2", "fd.raw"], cwd=tmp_path,
                          pass_fds=(wfd,), capture_output=True, text=True)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        objs, rest = json_lines(f.read())
    assert proc.returncode == 0 and proc.stderr == "" and rest == "", proc
    check_stream(objs, SIZE)
    # the reader of stderr closes at once: the copy still completes
    proc = subprocess.Popen([str(QIMG), "dd", "--progress=json", "if=a.raw",
                             "of=pipe.raw", "bs=4k"], cwd=tmp_path,
                            stderr=subprocess.PIPE)
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "pipe.raw").read_bytes() == \
        (tmp_path / "a.raw").read_bytes()


def test_progress_errors(tmp_path):
    (tmp_path / "x.raw").write_bytes(bytes(512))
    for args in (["convert", "--progress=x", "-O", "raw", "x.raw", "y.raw"],
                 ["check", "--progress=-1", "x.raw"],
                 ["compare", "--progress=99", "x.raw", "x.raw"],
                 ["dd", "--progress=", "if=x.raw", "of=y.raw"]):
        r = run(QIMG, args, tmp_path)
        value = args[1].split("=", 1)[1]
        assert r.rc in (1, 2) and r.out == "", (args, r)
        assert r.err == (f"qemu-img: Invalid progress option '{value}': "
                         "expected 'json' or an open file descriptor "
                         "number\n"), (args, r)
    # bare --progress is -p (newer qemu-img's long form) where -p exists
    r = run(QIMG, ["compare", "--progress", "x.raw", "x.raw"], tmp_path)
    assert r.rc == 0 and r.out.startswith("    (0.00/100%)\n")  # text mode
