"""-o option lists against qemu-img 7.2: how values are printed back on
create's "Formatting" line (strings with commas doubled, sizes and numbers
as signed 64-bit values, booleans as written), QEMU's key syntax (a key
ends at the first ',' or '=': no escapes in keys), help anywhere in the
list ("help", "?", not "help=on" or "nohelp"), repeated and empty -o,
number and size rules (base 0, ranges, a hex value with a multiplier warned
about once per parse) through create, convert, amend and measure."""
import subprocess

import pytest

from conftest import REF, batches, needs_format, same_each

needs_qcow2 = needs_format("qcow2")


def populate(d):
    (d / "a.img").write_bytes(b"\1" * 65536)
    (d / "a,b").write_bytes(b"\2" * 65536)
    subprocess.run([str(REF), "create", "-f", "qcow2", "q.qcow2", "1M"],
                   cwd=d, check=True, capture_output=True)


# create -f FMT -o LIST n.img 1M, for each (FMT, LIST)
CREATE_LISTS = [
    # strings print back escaped
    ("qcow2", "compression_type=zl,,ib"), ("qcow2", "data_file=x,,y"),
    ("qcow2", "compression_type=zlib,,"),
    ("qcow2", "backing_file=a,,b,backing_fmt=raw"),
    ("qcow2", "backing_file=a.img,,"), ("raw", "preallocation=of,,f"),
    # sizes and numbers print as signed 64-bit values
    ("raw", "size=9223372036854775808"), ("raw", "size=18446744073709551104"),
    ("raw", "size=18446744073709551615"), ("raw", "size=18446744073709551616"),
    ("qcow2", "cluster_size=18446744073709551615"),
    ("qcow2", "cluster_size=9223372036854775808"),
    ("qcow2", "refcount_bits=0x10"), ("qcow2", "refcount_bits=010"),
    ("qcow2", "refcount_bits=+16"), ("qcow2", "refcount_bits=-16"),
    ("qcow2", "refcount_bits= 16"), ("qcow2", "refcount_bits=16k"),
    ("qcow2", "refcount_bits="), ("qcow2", "refcount_bits=1.0"),
    ("qcow2", "refcount_bits=0x"), ("qcow2", "refcount_bits=99999999999999999999"),
    ("qcow2", "lazy_refcounts=yes"), ("qcow2", "lazy_refcounts=y"),
    ("qcow2", "lazy_refcounts"), ("qcow2", "nolazy_refcounts"),
    # hex with a multiplier: warned at parse and again by the driver
    ("raw", "size=0x10k"), ("qcow2", "size=0x10k"),
    ("qcow2", "cluster_size=0x10k"), ("qcow2", "cluster_size=0x10k,foo=bar"),
    ("qcow2", "foo=bar,cluster_size=0x10k"),
    ("qcow2", "cluster_size=0x10k,size=1M,size=0x20k"),
    ("qcow2", "cluster_size=0x10k,cluster_size=0x20k"),
    ("qcow2", "cluster_size=0x10k,refcount_bits=3"),
    ("raw", "extent_size_hint=0x10k,size=0x20k"),
    ("raw", "size=0x20k,extent_size_hint=0x10k"),
    ("qcow2", "extent_size_hint=0x10k,size=0x20k"),
    ("raw", "extent_size_hint=4294967295"), ("raw", "extent_size_hint=4G"),
    # key syntax and help
    ("qcow2", "help"), ("qcow2", "?"), ("qcow2", "size=1M,help"),
    ("qcow2", "help,size=1M"), ("qcow2", "foo=bar,help"),
    ("qcow2", "help,foo=bar"), ("qcow2", "help,,x"), ("qcow2", "a,,help"),
    ("qcow2", "?,,x"), ("qcow2", "help,,"), ("qcow2", "x=help"),
    ("qcow2", "backing_file=help"), ("qcow2", "size=1M,,help"),
    ("qcow2", "x=1,,help"), ("qcow2", "a,,b"), ("qcow2", "a,,,b"),
    ("qcow2", "a,,b=c"), ("qcow2", "size,,=1M"), ("qcow2", "nohelp"),
    ("qcow2", "help=on"), ("qcow2", "help=x"), ("qcow2", "nohelp,help"),
    ("qcow2", "no"), ("qcow2", "no=1"), ("qcow2", "?=1"),
    ("qcow2", "lazy_refcounts,,x"), ("qcow2", "nolazy_refcounts,,x"),
    ("qcow2", "b,,lazy_refcounts"), ("qcow2", "=1M"), ("raw", "help"),
    ("raw", "nocow,,x"), ("qcow2", "size=1M,,"), ("qcow2", "size=1M,,,"),
    ("qcow2", "compat=1.1,compat=0.10"), ("qcow2", "compat="),
    ("qcow2", "backing_file="), ("qcow2", "lazy_refcounts="),
    ("qcow2", ""), ("qcow2", ","), ("qcow2", ",size=1M"),
]


@needs_qcow2
@pytest.mark.parametrize("batch", batches(CREATE_LISTS, 40))
def test_create_option_lists(pair, batch):
    pair.setup(populate)
    same_each(pair, "create",
              [["-f", fmt, "-o", lst, "n.img", "1M"] for fmt, lst in batch]
              + [["-f", fmt, "-o", lst, "n.img"] for fmt, lst in batch
                 if "size=" in lst],
              scratch=("n.img", "x,y", "x"))


@needs_qcow2
def test_formatting_line_escapes(pair):
    """Values from -b/-F and the size argument print back as 7.2 does."""
    pair.setup(populate)
    same_each(pair, "create", [
        ["-f", "qcow2", "-b", "a,b", "-F", "raw", "n.img"],
        ["-f", "qcow2", "-u", "-b", "a,,b", "-F", "raw", "n.img", "1M"],
        ["-f", "qcow2", "-u", "-b", "a,b", "-F", "r,aw", "n.img", "1M"],
        ["-f", "qcow2", "-u", "-b", "a=b", "-F", "raw", "n.img", "1M"],
        ["-f", "qcow2", "-u", "-b", "a'b", "-F", "raw", "n.img", "1M"],
        ["-f", "qcow2", "-b", "a.img", "-F", "raw", "-o",
         "size=18446744073709551615", "n.img"],
        ["-f", "raw", "x,y", "1M"], ["-f", "raw", "x,,y", "1M"],
        ["-f", "qcow2", "-o", "cluster_size=4k", "-o", "help", "n.img", "1M"],
        ["-f", "qcow2", "-o", "compat=1.1", "-o", "", "n.img", "1M"],
        ["-f", "qcow2", "-o", "size=1M", "-o", "size=2M", "n.img"],
    ], scratch=("n.img", "x,y", "x,,y"))


def run_cases(pair, cases):
    """Run each case in both tools; n.img is removed after each, and an
    amend's q.qcow2 made again."""
    bad = []
    for args in cases:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            if (d / "n.img").exists():
                (d / "n.img").unlink()
        if args[0] == "amend":
            for d in pair.dirs():
                (d / "q.qcow2").unlink()
            pair.setup(lambda d: subprocess.run(
                [str(REF), "create", "-f", "qcow2", "q.qcow2", "1M"], cwd=d,
                check=True, capture_output=True))
    assert not bad, "\n\n".join(bad)


@needs_qcow2
def test_option_lists_other_commands(pair):
    """The same list syntax through convert, amend and measure."""
    pair.setup(populate)
    lists = ["help", "?", "help,,x", "nohelp", "?,,x", "a,,help",
             "size=1M,help", "", ",", "cluster_size=0x10k", "refcount_bits=010"]
    cases = []
    for lst in lists:
        cases.append(["convert", "-O", "qcow2", "-o", lst, "a.img", "n.img"])
        cases.append(["amend", "-f", "qcow2", "-o", lst, "q.qcow2"])
        cases.append(["measure", "-O", "qcow2", "-o", lst, "--size", "1M"])
    cases += [["convert", "-O", "qcow2", "-o", "cluster_size=4k", "-o", "help",
               "a.img", "n.img"],
              ["amend", "-f", "qcow2", "-o", "size=0x200k", "q.qcow2"],
              ["amend", "-f", "qcow2", "-o", "lazy_refcounts=on", "-o",
               "compat=0.10", "q.qcow2"],
              ["measure", "-O", "qcow2", "-o", "cluster_size=4k", "-o",
               "cluster_size=8k", "--size", "1M"]]
    # measure reads the options it sizes; creation's combination rules
    # (and backing_fmt's driver names) are not checked there
    for lst in ("extended_l2=on,compat=0.10", "refcount_bits=8,compat=0.10",
                "data_file_raw=on,data_file=x,backing_file=y",
                "backing_file=x,preallocation=full", "data_file_raw=on",
                "backing_fmt=bogus", "lazy_refcounts=on,compat=0.10",
                "data_file=x,compat=0.10"):
        cases.append(["measure", "-O", "qcow2", "-o", lst, "--size", "1M"])
        cases.append(["create", "-f", "qcow2", "-u", "-o", lst, "n.img", "1M"])
    cases += [["create", "-f", "qcow2", "-u", "-b", "x", "-F", f, "n.img",
               "1M"] for f in ("bogus", "vvfat", "io_uring", "host_device")]
    cases += [["create", "-f", "qcow2", "-u", "-o", "backing_fmt=bogus,"
               "compat=x", "n.img", "1M"]]
    run_cases(pair, cases)


def test_storages_as_formats(pair):
    """-f/-O naming a storage (file, host_device, host_cdrom, null-co):
    its own creation options merged with those of the storage the file
    name selects (a device's simple options for /dev/null), the refusals
    of storages that cannot create, measure and amend."""
    pair.setup(populate)
    cases = []
    for fmt in ("file", "host_device", "host_cdrom", "null-co"):
        cases += [["create", "-f", fmt, "n.img", "-o", "help"],
                  ["create", "-f", fmt, "/dev/null", "-o", "help"],
                  ["create", "-f", fmt, "n.img", "-o", "nocow=on", "1M"],
                  ["convert", "-O", fmt, "-o", "help", "a.img", "n.img"],
                  ["measure", "-O", fmt, "--size", "1M"],
                  ["measure", "-O", fmt, "-o", "help", "--size", "1M"],
                  ["amend", "-f", fmt, "-o", "help", "a.img"],
                  ["amend", "-f", fmt, "-o", "size=1", "a.img"]]
    cases += [["create", "-f", "raw", "/dev/null", "-o", "help"],
              ["create", "-f", "raw", "/dev/null", "-o", "nocow=on", "1M"],
              ["create", "-f", "raw", "/dev/null", "-o", "preallocation=x",
               "1M"],
              ["create", "-f", "host_device", "/dev/null", "-o",
               "preallocation=x", "1M"],
              ["create", "-f", "host_device", "/dev/null", "-o",
               "preallocation=falloc", "1M"],
              ["create", "-f", "host_device", "/dev/null", "1M"],
              ["create", "-f", "file", "/dev/null", "1M"],
              ["create", "-f", "raw", "/dev/null", "1M"]]
    run_cases(pair, cases)
