"""Global command line behaviour compared with qemu-img 7.2: dispatch,
unknown commands and options, missing arguments, -T/--trace, -V/-h, and
the program name taken from argv[0]."""
import subprocess

import pytest

from conftest import BUILD, REF, run

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
        # qemu-img measure prints its whole --help text (ours is reworded)
        # after the getopt message: compare status and stderr only.
        r, q = pair.both(cmd, "--no-such-option", "x")
        assert (q.rc, q.err) == (r.rc, r.err)
        assert q.out.startswith("qemu-img version") and "measure" in q.out
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


def test_help_lists_every_command_syntax(pair):
    r, q = pair.both("--help")
    def syntax(text):
        return [l for l in text.splitlines() if l.startswith("  ") and
                not l.startswith("   ") and l.split()[0] in COMMANDS]
    ref_syntax, q_syntax = syntax(r.out), syntax(q.out)
    assert len(ref_syntax) == 15
    assert q_syntax == ref_syntax
    assert q.out.splitlines()[2] == r.out.splitlines()[2]  # usage line


def test_program_name_from_argv0(tmp_path):
    """Messages carry the basename of argv[0], whatever it is."""
    link = tmp_path / "my-tool"
    link.symlink_to(BUILD / "qimg")
    r = run(link, ["foo"], tmp_path)
    assert r.rc == 1
    assert r.err == ("my-tool: Command not found: foo\n"
                     "Try 'my-tool --help' for more information\n")
