"""Every size- and count-taking option of every command against qemu-img
7.2: the same set of spellings (a leading '+', blanks, fractions, hex with
a multiplier, limits around 2^63 and 2^64, junk) through create, measure,
resize, convert -S/-r, commit -r, map, bench, bitmap -g, dd and the -o
size options; and the qcow2 size limits (too large for the cluster size,
past QEMU's maximum length, rounding past INT64_MAX)."""
import re
import subprocess

import pytest

from conftest import REF, batches, needs_format, same_each

needs_qcow2 = needs_format("qcow2")

# Spellings of a size or count; every template below runs with each.
VALUES = ["+1M", "+1.5k", " +1k", "+0x200", "+0x10k", "++1", "+-1", "+",
          "+ 1", " 1k", "-1", "0", "1", "1E", "9223372036854775807",
          "9223372036854775808", "18446744073709551615",
          "18446744073709551616", "0x10k", "1.5", "abc", "", "512b", "4096.",
          "1e3"]

# {v} is the value; images: a.img (raw, 64 KiB), q.qcow2 (1 MiB) with
# q2.qcow2 over it.
TEMPLATES = [
    ["create", "-f", "raw", "n.img", "{v}"],
    ["create", "-f", "qcow2", "n.img", "{v}"],
    ["create", "-f", "raw", "-o", "size={v}", "n.img"],
    ["create", "-f", "qcow2", "-o", "cluster_size={v}", "n.img", "1M"],
    ["create", "-f", "raw", "-o", "extent_size_hint={v}", "n.img", "1M"],
    ["measure", "-O", "raw", "--size", "{v}"],
    ["measure", "-O", "qcow2", "--size", "{v}"],
    ["resize", "-f", "raw", "a.img", "{v}"],
    ["resize", "-f", "qcow2", "q.qcow2", "{v}"],
    ["convert", "-S", "{v}", "-O", "raw", "a.img", "n.img"],
    ["convert", "-r", "{v}", "-O", "raw", "a.img", "n.img"],
    ["convert", "-m", "{v}", "-O", "raw", "a.img", "n.img"],
    ["commit", "-r", "{v}", "q2.qcow2"],
    ["map", "--start-offset={v}", "a.img"],
    ["map", "--max-length={v}", "a.img"],
    ["bench", "-c", "1", "-s", "{v}", "a.img"],
    ["bench", "-c", "1", "-o", "{v}", "a.img"],
    ["bench", "-c", "2", "-S", "{v}", "a.img"],
    ["bench", "-c", "{v}", "-s", "512", "a.img"],
    ["bench", "-c", "1", "--flush-interval={v}", "-w", "a.img"],
    ["bench", "-c", "1", "--pattern={v}", "-w", "a.img"],
    ["bitmap", "--add", "-g", "{v}", "q.qcow2", "b0"],
    ["dd", "bs={v}", "if=a.img", "of=n.img"],
    ["dd", "count={v}", "if=a.img", "of=n.img"],
    ["dd", "skip={v}", "if=a.img", "of=n.img"],
]

def populate(d):
    (d / "a.img").write_bytes(b"\1" * 65536)
    for args in (["create", "-f", "qcow2", "q.qcow2", "1M"],
                 ["create", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2",
                  "q2.qcow2"]):
        subprocess.run([str(REF)] + args, cwd=d, check=True,
                       capture_output=True)


# The parsers behind the options are few (QEMU's cvtnum/strtosz, option
# lists, strtoul for counts): every spelling goes through one option of
# each, a few telling ones through all the others.
FULL = {("create", "-f", "raw", "n.img", "{v}"),
        ("create", "-f", "raw", "-o", "size={v}", "n.img"),
        ("bench", "-c", "{v}", "-s", "512", "a.img")}
FEW = ["+1k", " +1k", "-1", "18446744073709551616"]


def cases():
    out = []
    for t in TEMPLATES:
        for v in VALUES if tuple(t) in FULL else FEW:
            args = [a.replace("{v}", v) for a in t]
            out.append(args)
    return out


RUN_TIME = re.compile(r"Run completed in [0-9.]+ seconds\.")


def normalise(r):
    r.out = RUN_TIME.sub("Run completed in T seconds.", r.out)
    return r


@needs_qcow2
@pytest.mark.parametrize("batch", batches(cases(), 40))
def test_size_values(pair, batch):
    pair.setup(populate)
    bad = []
    for args in batch:
        r, q = (normalise(x) for x in pair.both(*args))
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            if (d / "n.img").exists():
                (d / "n.img").unlink()
        # resize and bitmap change their image: start again from the same
        if args[0] in ("resize", "bitmap", "commit"):
            for d in pair.dirs():
                for name in ("a.img", "q.qcow2", "q2.qcow2"):
                    (d / name).unlink()
            pair.setup(populate)
    assert not bad, "\n\n".join(bad)


# qcow2 size limits: too large for the L1 table (the hint names the cluster
# size, given or default), rounding up to a sector past INT64_MAX, and past
# QEMU's maximum length (INT64_MAX rounded down to 1 GiB).
QCOW2_LIMITS = [
    [cs, size]
    for cs in (None, "512", "2M")
    for size in ("4T", "2251799813685248", "2251799813685249", "1E", "8E",
                 "9223372035781033984", "9223372035781034496",
                 "9223372036854775296", "9223372036854775297",
                 "9223372036854775807")
]


def qcow2_limit_args(cs, size):
    args = ["-f", "qcow2"]
    if cs:
        args += ["-o", f"cluster_size={cs}"]
    return args + ["n.img", size]


@needs_qcow2
@pytest.mark.parametrize("batch", batches(QCOW2_LIMITS, 30))
def test_qcow2_size_limits(pair, batch):
    same_each(pair, "create", [qcow2_limit_args(*c) for c in batch],
              scratch=("n.img",))


@needs_qcow2
def test_qcow2_size_limits_measure_and_resize(pair):
    """The same limits through measure --size and resize of a qcow2."""
    pair.setup(populate)
    sizes = ["1P", "2251799813685249", "1E", "8E", "9223372035781034496",
             "9223372036854775807"]
    cases = [["-O", "qcow2", "--size", s] for s in sizes] + \
            [["-O", "qcow2", "-o", "cluster_size=2M", "--size", s]
             for s in sizes]
    same_each(pair, "measure", cases)
    same_each(pair, "resize", [["-f", "qcow2", "q.qcow2", s] for s in sizes])
