"""Global command line behaviour compared with qemu-img 7.2: dispatch,
unknown commands and options, missing arguments, -T/--trace, -V/-h, and
the program name taken from argv[0]."""
import subprocess

import pytest

from conftest import BUILD, REF, run, same_help

COMMANDS = ["amend", "bench", "bitmap", "check", "commit", "compare",
            "convert", "create", "dd", "info", "map", "measure", "snapshot",
            "rebase", "resize"]


@pytest.mark.parametrize("args", [
    [],
    ["foo"],
    ["-x"],
    ["--bogus"],
    ["-T"],
    ["-T", "foo"],
    ["--trace", "enable=x"],
    ["-T", "events=/dev/null"],
])
def test_global_errors(pair, args):
    pair.same(*args)


@pytest.mark.parametrize("cmd", ["info", "create", "check", "map", "measure",
                                 "compare", "convert", "resize", "dd"])
def test_unknown_option_per_command(pair, cmd):
    if cmd == "measure":
        # qemu-img measure prints its whole --help text after getopt's
        # message
        same_help(pair, cmd, "--no-such-option", "x")
        return
    pair.same(cmd, "--no-such-option", "x")


@pytest.mark.parametrize("cmd,opt", [("info", "-f"), ("create", "-f"),
                                     ("create", "-o"), ("create", "-b")])
def test_missing_option_argument(pair, cmd, opt):
    pair.same(cmd, opt)


def test_version_and_help_exit_zero(pair):
    for args in (["-V"], ["--version"], ["-h"], ["--help"], ["info", "-h"],
                 ["create", "--help"]):
        r, q = pair.both(*args)
        assert r.rc == q.rc == 0
        assert q.err == r.err == ""


# Every way to reach the help text: global -h/--help, each command's -h
# and --help (anywhere getopt sees it), and measure's getopt errors.
HELP_CASES = (
    [["-h"], ["--help"], ["-T", "foo", "-h"], ["--help", "info"],
     ["-h", "nonexistent-command"]] +
    [[c, "-h"] for c in COMMANDS if c != "resize"] +
    [[c, "--help"] for c in COMMANDS if c not in ("resize", "dd")] +
    [["resize", "-h", "4M"], ["resize", "--help", "x", "4M"],
     ["info", "-f", "raw", "-h"], ["info", "a.img", "-h"],
     ["create", "-q", "-f", "qcow2", "-h", "x", "1M"],
     ["convert", "-O", "raw", "-h", "a", "b"],
     ["check", "--output=json", "-h"], ["map", "-h", "--bogus"],
     ["measure", "-x"], ["measure", "--bogus", "--size", "1M"],
     ["measure", "--size"], ["measure", "-O"], ["measure", "-h"],
     ["dd", "-h", "if=a", "of=b"], ["bench", "-c", "1", "-h"],
     ["bitmap", "--add", "-h"], ["snapshot", "-l", "-h"],
     ["rebase", "-u", "-h"], ["commit", "-d", "-h"], ["amend", "-h"],
     ["compare", "-s", "-h"]])


def test_help_everywhere(pair):
    """The help is 7.2's line for line, apart from the version lines."""
    bad = []
    for args in HELP_CASES:
        try:
            same_help(pair, *args)
        except AssertionError as e:
            bad.append(f"args={args}: {e}")
    assert not bad, "\n\n".join(bad)


def test_help_formats_from_driver_table(pair):
    """The format list is every format qimg opens, in strcmp() order."""
    r, q = pair.both("--help")
    line = [l for l in q.out.splitlines()
            if l.startswith("Supported formats:")]
    assert len(line) == 1
    names = line[0].split(":", 1)[1].split()
    assert names == sorted(names)
    assert {"qcow2", "raw"} <= set(names)
    for name in names:
        q2 = pair.qimg("create", "-f", name, "-o", "help")
        assert "Unknown file format" not in q2.err, name


def test_program_name_from_argv0(tmp_path):
    """Messages carry the basename of argv[0], whatever it is."""
    link = tmp_path / "my-tool"
    link.symlink_to(BUILD / "qimg")
    r = run(link, ["foo"], tmp_path)
    assert r.rc == 1
    assert r.err == ("my-tool: Command not found: foo\n"
                     "Try 'my-tool --help' for more information\n")


def test_snapshot_without_action(pair):
    """snapshot with no -l/-a/-c/-d opens the image for writing and does
    nothing: a guessed raw image warns, -U is refused."""
    pair.setup(lambda d: (d / "a.img").write_bytes(b"\0" * 4096))
    for args in (["a.img"], ["-U", "a.img"], ["-q", "a.img"],
                 ["-U", "-l", "a.img"]):
        pair.same("snapshot", *args)
