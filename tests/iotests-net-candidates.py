#!/usr/bin/python3
"""iotests-net-candidates.py - the candidate runs of tests/iotests-net.sh.

Usage: tests/iotests-net-candidates.py [--all] [--protocols P,..] [--list FILE] IOTESTS_DIR

Reads QEMU's qemu-iotests directory (the 7.2 source's tests/qemu-iotests)
and prints one "TEST PROTOCOL FORMAT" line per candidate run of
`check -nbd` / `-ssh` / `-nfs`, protocols nbd, ssh and nfs (--protocols:
others), formats raw and qcow2.

The rule, applied to every test file (the numbered ones and tests/NAME):
- protocol: the test admits the protocol.  A bash test admits it when it
  has no `_supported_proto` line or one naming `generic` or the protocol,
  and no `_unsupported_proto` naming it.  A Python test admits it when
  the `supported_protocols=` list it passes to iotests.main / script_main
  (or any call) is absent, empty, names `generic` or the protocol, and
  its `unsupported_protocols=` does not name it.
- format: the same with `_supported_fmt` / `_unsupported_fmt` (bash) and
  `supported_fmts=` / `unsupported_fmts=` (Python), `generic` admitting
  every format.  Checks made only inside a function or a condition (an
  indented line in bash) are ignored: the survey settles those runs.
- VM-free: the test does not start a VM or the storage daemon, which are
  not installed here (the iotests runner puts a stub in their place).  A
  bash test needs one when it sources common.qemu or names $QEMU,
  $QEMU_PROG, _launch_qemu, $QSD, $QSD_PROG or _launch_qsd; a Python test
  when it names VM(, QemuStorageDaemon, qemu_prog or qsd_prog.

With --all the runs left out as needing a VM or the storage daemon are
printed too, with a fourth column "vm" or "qsd".

With --list FILE (tests/iotests-net.txt) each candidate is accounted for
against that list: a fourth column "listed" when it is one of the list's
runs, "noted" when a note of the list's head names it, else
"UNACCOUNTED"; the exit status is 1 when any is unaccounted.  A note is a
head line "#- PROTOCOL FORMAT TEST ...: reason" (continued on the
following "#  " lines), naming runs that qemu-img 7.2 does not pass here.
"""
import ast
import os
import re
import sys

PROTOCOLS = ("nbd", "ssh", "nfs")
FORMATS = ("raw", "qcow2")

BASH_VM = re.compile(r"common\.qemu|\$\{?QEMU\b(?!_)|\$\{?QEMU_PROG\b|_launch_qemu\b")
BASH_QSD = re.compile(r"\$\{?QSD\b(?!_)|\$\{?QSD_PROG\b|_launch_qsd\b")
PY_VM = re.compile(r"\bVM\(|\bqemu_prog\b")
PY_QSD = re.compile(r"QemuStorageDaemon|\bqsd_prog\b")


def test_files(iotests):
    """(name as check takes it, path) of every test, in check's order."""
    names = []
    for entry in sorted(os.listdir(iotests)):
        if re.fullmatch(r"[0-9]{3}", entry):
            names.append((entry, os.path.join(iotests, entry)))
    sub = os.path.join(iotests, "tests")
    for entry in sorted(os.listdir(sub)):
        path = os.path.join(sub, entry)
        if os.path.isfile(path) and "." not in entry:
            names.append((entry, path))
    return names


def admits(value, allowed, refused):
    """A check that passes for VALUE: allowed lists (each must admit it,
    an empty one or one naming generic admits everything) and a refused
    set."""
    for lst in allowed:
        if lst and "generic" not in lst and value not in lst:
            return False
    return value not in refused


def bash_limits(text):
    """Top-level _supported_*/_unsupported_* words of a bash test."""
    lim = {"fmt": [], "proto": [], "no_fmt": set(), "no_proto": set()}
    for line in text.splitlines():
        m = re.match(r"_(un)?supported_(fmt|proto)\b(.*)", line)
        if not m:
            continue
        words = m.group(3).split("#", 1)[0].split()
        if m.group(1):
            lim["no_" + m.group(2)].update(words)
        else:
            lim[m.group(2)].append(words)
    return lim


def python_limits(text, path):
    """supported_/unsupported_ fmts and protocols keyword arguments."""
    lim = {"fmt": [], "proto": [], "no_fmt": set(), "no_proto": set()}
    keys = {"supported_fmts": "fmt", "supported_protocols": "proto",
            "unsupported_fmts": "no_fmt", "unsupported_protocols": "no_proto"}
    for node in ast.walk(ast.parse(text, path)):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg in keys:
                words = list(ast.literal_eval(kw.value))
                if keys[kw.arg].startswith("no_"):
                    lim[keys[kw.arg]].update(words)
                else:
                    lim[keys[kw.arg]].append(words)
    return lim


def classify(path):
    """(limits, None | 'vm' | 'qsd') of one test file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if "python" in text.split("\n", 1)[0]:
        lim = python_limits(text, path)
        need = "qsd" if PY_QSD.search(text) else "vm" if PY_VM.search(text) else None
    else:
        lim = bash_limits(text)
        need = "qsd" if BASH_QSD.search(text) else "vm" if BASH_VM.search(text) else None
    return lim, need


def accounted(list_path):
    """(listed runs, noted runs) of an iotests-net.txt."""
    listed, noted = set(), set()
    note = None     # the names of a note read so far, until its colon
    with open(list_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#- "):
                note = line[3:]
            elif note is not None and line.startswith("#  "):
                note += line[3:]
            elif line.strip() and not line.startswith("#"):
                listed.add(tuple(line.split()[:3]))
            if note is not None and ":" in note:
                proto, fmt, *tests = note.split(":", 1)[0].split()
                noted.update((t, proto, fmt) for t in tests)
                note = None
    return listed, noted


def candidates(iotests, show_all, protocols=PROTOCOLS):
    """(test, protocol, format, None | 'vm' | 'qsd') of every candidate."""
    for proto in protocols:
        for name, path in test_files(iotests):
            lim, need = classify(path)
            if not admits(proto, lim["proto"], lim["no_proto"]):
                continue
            for fmt in FORMATS:
                if not admits(fmt, lim["fmt"], lim["no_fmt"]):
                    continue
                if need is None or show_all:
                    yield name, proto, fmt, need


def main(argv):
    show_all = "--all" in argv
    args = [a for a in argv if a != "--all"]
    list_path, protocols = None, PROTOCOLS
    if len(args) >= 3 and args[0] == "--protocols":
        protocols, args = args[1].split(","), args[2:]
    if len(args) == 3 and args[0] == "--list":
        list_path, args = args[1], args[2:]
    if len(args) != 1 or not os.path.isdir(os.path.join(args[0], "tests")):
        sys.exit(__doc__.split("\n\n")[1])
    listed, noted = accounted(list_path) if list_path else (set(), set())
    missing = 0
    for name, proto, fmt, need in candidates(args[0], show_all, protocols):
        row = [name, proto, fmt]
        if need:
            row.append(need)
        elif list_path:
            run = (name, proto, fmt)
            row.append("listed" if run in listed else "noted" if run in noted
                       else "UNACCOUNTED")
            missing += row[-1] == "UNACCOUNTED"
        print(" ".join(row))
    if list_path:
        print(f"({missing} candidate runs unaccounted for)", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
