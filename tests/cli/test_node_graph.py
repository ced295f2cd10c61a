"""Differential tests of how images are named and opened (issue 13's
--image-opts / json: class): QEMU's JSON dialect and its error messages,
the order of open errors, protocol-level nodes (driver=file, -f file,
host_device), storages chosen by PROTO: prefixes (file:, null-co://,
unknown protocols, names with colons), nodes stacked through options
(raw over qcow2), json:{...} names of nodes with strong options, the
cache.* options, and the null-co, blkdebug and blkverify drivers.

Every case runs through both tools in twin directories; stdout, stderr
and exit status must match."""
import json

import pytest

from conftest import (batches, make_sparse, qemu_io, same_each, QEMU_IO, REF,
                      run)


def populate(d):
    make_sparse(d / "r.raw", 1 << 20, [(0, b"\xab" * 65536),
                                       (512 << 10, b"x" * 4096)])
    make_sparse(d / "odd.raw", (1 << 20) - 1, [((1 << 20) - 65536,
                                                b"y" * 65535)])
    run(REF, ["create", "-q", "-f", "qcow2", "x.qcow2", "1M"], d)
    qemu_io(d / "x.qcow2", "write -P 7 0 64k", fmt="qcow2")
    (d / "a:b").write_bytes((d / "x.qcow2").read_bytes())
    (d / "dir").mkdir()
    (d / "dir" / "c:d").write_bytes((d / "r.raw").read_bytes())


# ---- QEMU's JSON dialect ---------------------------------------------------

JSON_TEXTS = [
    "{", '{"a"', '{"a":', '{"a":1', '{"a":1,', '{"a" 1}', "{1:2}", "[1]",
    '"x"', '{"a":tru}', '{"a":"\\q"}', '{"a":1}}', "", "{} ", '{"a":}',
    '{"a":1 "b":2}', "{,}", '{"a":1,}', '{"a":[1,}', '{"a":[1 2]}',
    '{"a":[,1]}', '{"a":"x', "{'a':'x}", '{"a":"\\u00zz"}',
    '{"a":"\\u0000"}', '{"a":1e}', '{"a":01}', '{"a":.5}', '{"a":-}',
    '{"a":@}', '{"a":nul}', '{"a":truex}', '{"a":1}x', '{"a":"b"}{"c":1}',
    '{"a"::1}', "{:1}", '{"a":{}}', '{"a":"\\x"}', "{'a\\'b':1}",
    '{"a":1e999}', '{"a":99999999999999999999}', '{"a":"\\/"}',
    '{"a":"\\ud800"}', '{"a":"\\ud800\\u0041"}', '{"a":1,"a":2}',
    '{"a":-0e5}', '{"a":0.5e}', '[[[', "}", "]", '{"a":[]}',
    "{'a':\"b\"}", '{"a":"\t"}', ' {"a":1}', '{"a": -1.5E+3}',
]


@pytest.mark.parametrize("batch", batches(JSON_TEXTS, 20))
def test_json_dialect(pair, batch):
    pair.setup(populate)
    same_each(pair, "info", [["json:" + t] for t in batch])


# ---- open order and option errors -------------------------------------------

OPEN_CASES = [
    ['json:{"driver":1}'],
    ['json:{"driver":"nope","filename":"x"}'],
    ['json:{"driver":"qcow2","file":"x"}'],
    ['json:{"driver":"qcow2"}'],
    ['json:{"driver":"qcow2","filename":"x.qcow2"}'],
    ['json:{"filename":"x.qcow2"}'],
    ['json:{"filename":"x.qcow2","driver":"raw"}'],
    ['json:{"file":{"driver":"file","filename":"x.qcow2"}}'],
    ['json:{"driver":"qcow2","file":{"filename":"x.qcow2"}}'],
    ['json:{"driver":"qcow2","file.filename":"x.qcow2","foo":1}'],
    ['json:{"driver":"file","filename":"x.qcow2","foo":1}'],
    ['json:{"driver":"file","filename":"x.qcow2"}'],
    ['json:{"driver":"file","filename":"x.qcow2","locking":"maybe"}'],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"r.raw"},'
     '"size":"x"}'],
    ['json:{"driver":"raw","file.filename":"r.raw"}'],
    ['json:{"driver":"raw","file":{"driver":"nope","filename":"r.raw"}}'],
    ['json:{"driver":"raw","file":{"driver":"file"}}'],
    ['json:{"driver":"raw","file":{"driver":"file","filename":""}}'],
    ["-f", "raw", 'json:{"driver":"qcow2","file":{"driver":"file",'
                  '"filename":"x.qcow2"}}'],
    ["-f", "qcow2", 'json:{"driver":"raw","file":{"driver":"file",'
                    '"filename":"r.raw"}}'],
    ["--image-opts", "x.qcow2"],
    ["--image-opts", "file=x.qcow2"],
    ["--image-opts", "filename=x.qcow2"],
    ["--image-opts", "driver=qcow2"],
    ["--image-opts", "driver=file,filename=x.qcow2"],
    ["--image-opts", "driver=file,filename=x.qcow2,aio=threads"],
    ["--image-opts", "driver=raw,offset=4096,file.filename=r.raw"],
    ["--image-opts", "driver=raw,size=4096,file.filename=r.raw"],
    ["--image-opts", "driver=raw,offset=1,size=512,file.filename=r.raw"],
    ["--image-opts", "driver=qcow2,file.filename=x.qcow2,read-only=on"],
    ["--image-opts", "driver=qcow2,file.filename=x.qcow2,node-name=n0"],
    ["--image-opts", "driver=qcow2,file.driver=file,"
                     "file.filename=x.qcow2,file.locking=off"],
    ["-f", "file", "r.raw"],
    ["-f", "host_device", "r.raw"],
    ["-f", "host_cdrom", "r.raw"],
    ["--image-opts", "driver=host_device,filename=r.raw"],
]


@pytest.mark.parametrize("batch", batches(OPEN_CASES, 12))
def test_open_errors_and_names(pair, batch):
    pair.setup(populate)
    same_each(pair, "info", batch)
    same_each(pair, "info", [["--output=json"] + a for a in batch])


# ---- protocols and names with colons -------------------------------------------

PROTO_CASES = [
    ["file:x.qcow2"], ["a:b"], ["./a:b"], ["file:a:b"], ["foo:bar"],
    ["file:dir/c:d"], ["dir/c:d"], ["file:"], ["null-co://"],
    ["null-co://?size=4096"], ["null-aio://"], ["-f", "raw", "null-co://"],
    ["-f", "null-co", "null-co://"],
    ['json:{"driver":"null-co","size":4096}'],
    ['json:{"driver":"null-co","size":4096,"read-zeroes":true}'],
    ['json:{"driver":"null-co","latency-ns":1}'],
    ['json:{"driver":"null-co","latency-ns":-1}'],
    ['json:{"driver":"raw","file":{"driver":"null-co","size":4096}}'],
    ['json:{"driver":"raw","file":{"driver":"qcow2","file":'
     '{"filename":"x.qcow2"}}}'],
    ['json:{"driver":"raw","offset":512,"file":{"driver":"file",'
     '"filename":"r.raw","locking":"off"}}'],
    ['json:{"driver":"raw","size":512,"file":{"driver":"file",'
     '"filename":"r.raw"}}'],
]


@pytest.mark.parametrize("batch", batches(PROTO_CASES, 11))
def test_protocols(pair, batch):
    pair.setup(populate)
    same_each(pair, "info", batch)


MAP_CASES = [
    ["--image-opts", "driver=file,filename=x.qcow2"],
    ["--output=json", "null-co://"],
    ["--output=json", 'json:{"driver":"null-co","size":4096,'
                      '"read-zeroes":true}'],
    ["--output=json", "--image-opts",
     "driver=raw,file.driver=file,file.filename=odd.raw,cache.direct=on"],
    ["--output=json", "--image-opts",
     "driver=raw,file.driver=file,file.filename=odd.raw"],
    ["--output=json", "-f", "file", "odd.raw"],
    ["--output=json", "file:r.raw"],
    ["--output=json", 'json:{"driver":"raw","offset":4096,"file":'
                      '{"driver":"file","filename":"r.raw"}}'],
]


def test_map_names(pair):
    pair.setup(populate)
    same_each(pair, "map", MAP_CASES)


def test_create_through_drivers(pair):
    pair.setup(populate)
    cases = [
        ["-f", "file", "out.img", "1M"],
        ["-f", "null-co", "out.img", "1M"],
        ["-f", "blkdebug", "out.img", "1M"],
        ["-f", "host_device", "out.img", "1M"],
        ["-f", "raw", "file:out.img", "1M"],
        ["-f", "raw", "foo:out.img", "1M"],
        ["-f", "qcow2", "file:out.img", "1M"],
        ["-o", "help", "-f", "file"],
        ["-f", "file", "-o", "preallocation=full", "out.img", "64k"],
    ]
    same_each(pair, "create", cases)
    pair.same("create", "-q", "-f", "raw", "file:out.img", "64k")
    pair.same_content("out.img")


# ---- blkdebug and blkverify -----------------------------------------------------

def blkdebug_setup(d):
    populate(d)
    (d / "bd.conf").write_text('[inject-error]\nevent = "read_aio"\n'
                               'errno = "5"\n')
    (d / "bad.conf").write_text('[inject-error]\nevent = "no_such_event"\n')
    (d / "bad2.conf").write_text('event = "read_aio"\n')
    (d / "bw.conf").write_text('[inject-error]\nevent = "write_aio"\n'
                               'errno = "5"\n')


BLKDEBUG_CASES = [
    ["info", "blkdebug::x.qcow2"],
    ["info", "blkdebug:bd.conf:x.qcow2"],
    ["info", "blkdebug:x.qcow2"],
    ["info", "blkdebug:nope.conf:x.qcow2"],
    ["info", "blkdebug:bad.conf:x.qcow2"],
    ["info", "blkdebug:bad2.conf:x.qcow2"],
    ["info", 'json:{"driver":"qcow2","file":{"driver":"blkdebug",'
             '"inject-error":[{"event":"l2_load","errno":5}],'
             '"image":{"driver":"file","filename":"x.qcow2"}}}'],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,"
             "file.inject-error.0.event=l2_load,file.image.filename=x.qcow2"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug,"
             "file.align=3,file.image.filename=x.qcow2"],
    ["info", "--image-opts", "driver=qcow2,file.driver=blkdebug"],
    ["convert", "-O", "raw", "blkdebug:bd.conf:x.qcow2", "out.img"],
    ["convert", "-O", "raw", 'json:{"driver":"qcow2","file":{"driver":'
     '"blkdebug","inject-error":[{"event":"read_aio","errno":28,'
     '"once":true}],"image":{"driver":"file","filename":"x.qcow2"}}}',
     "out.img"],
    ["convert", "--salvage", "-O", "raw",
     'json:{"driver":"blkdebug","image":{"driver":"raw","file":{"driver":'
     '"file","filename":"r.raw"}},"inject-error":[{"event":"none",'
     '"iotype":"read","errno":5,"sector":1}]}', "out.img"],
    # the raw format raises read_aio and write_aio as QEMU's does
    ["compare", "-f", "raw", "blkdebug:bd.conf:r.raw", "r.raw"],
    # (-m 1: with several coroutines 7.2 reports each one that fails)
    ["convert", "-m", "1", "-f", "raw", "-O", "raw", "blkdebug:bd.conf:r.raw",
     "out.img"],
    ["convert", "-n", "-O", "raw", "x.qcow2", "blkdebug:bw.conf:r.raw"],
    ["dd", "if=x.qcow2", "of=blkdebug:bw.conf:r.raw", "-O", "raw"],
    ["info", "blkverify:r.raw:r.raw"],
    ["info", "blkverify:r.raw"],
    ["compare", "blkverify:r.raw:r.raw", "r.raw"],
    ["compare", "blkverify:r.raw:x.qcow2", "r.raw"],
]


@pytest.mark.parametrize("batch", batches(BLKDEBUG_CASES, 9))
def test_blkdebug_blkverify(pair, batch):
    pair.setup(blkdebug_setup)
    bad = []
    for args in batch:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            (d / "out.img").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)


def test_blkdebug_write_error_in_commit(pair):
    """An injected ENOSPC on the base's first data write fails the commit
    with QEMU's message, and the images stay consistent."""
    def setup(d):
        run(REF, ["create", "-q", "-f", "qcow2", "base.qcow2", "1M"], d)
        qemu_io(d / "base.qcow2", "write -P 1 0 1M", fmt="qcow2")
        backing = ('json:{"driver":"qcow2","file":{"driver":"blkdebug",'
                   '"inject-error":[{"event":"write_aio","errno":28,'
                   '"once":true}],"image":{"driver":"file",'
                   '"filename":"base.qcow2"}}}')
        run(REF, ["create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2",
                  "top.qcow2", "1M"], d)
        # json: backing names are taken relative to the working directory
        assert run(QEMU_IO, ["-f", "qcow2", "-c", "write -P 2 0 64k",
                             "top.qcow2"], d).rc == 0
    pair.setup(setup)
    pair.same("commit", "top.qcow2")
    pair.same("check", "base.qcow2")
    pair.same_content("base.qcow2", fmt="qcow2")


# ---- quorum and the directory of a node -------------------------------------

def quorum_setup(d):
    make_sparse(d / "r.raw", 1 << 20, [(0, b"\xab" * 65536)])
    make_sparse(d / "r2.raw", 1 << 20, [(0, b"\xab" * 65536)])
    make_sparse(d / "bad.raw", 1 << 20, [(0, b"\xcd" * 65536)])
    make_sparse(d / "short.raw", 1 << 19, [])
    run(REF, ["create", "-q", "-f", "qcow2", "base.qcow2", "1M"], d)
    run(REF, ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
              "qcow2", "x.qcow2"], d)
    (d / "x2.qcow2").write_bytes((d / "x.qcow2").read_bytes())


def quorum(children, extra=""):
    kids = ",".join('{"driver":"file","filename":"%s"}' % c for c in children)
    return '{"driver":"quorum","children":[%s]%s}' % (kids, extra)


QUORUM_CASES = [
    ["info", "json:" + quorum(["r.raw", "r2.raw"], ',"vote-threshold":2')],
    ["info", 'json:{"driver":"qcow2","file":%s}'
     % quorum(["x.qcow2", "x2.qcow2"], ',"vote-threshold":1')],
    ["info", "--output=json", 'json:{"driver":"qcow2","file":%s}'
     % quorum(["x.qcow2", "x2.qcow2"], ',"vote-threshold":1')],
    ["info", "json:" + quorum(["r.raw"])],
    ["info", "json:" + quorum(["r.raw"], ',"vote-threshold":0')],
    ["info", "json:" + quorum(["r.raw"], ',"vote-threshold":2')],
    ["info", 'json:{"driver":"quorum","vote-threshold":1}'],
    ["info", "json:" + quorum(["r.raw", "r2.raw"],
                              ',"vote-threshold":1,"read-pattern":"x"')],
    ["info", "json:" + quorum(["r.raw", "r2.raw"],
                              ',"vote-threshold":1,"blkverify":true')],
    ["info", "json:" + quorum(["r.raw", "nope.raw"], ',"vote-threshold":1')],
    ["info", "json:" + quorum(["r.raw", "short.raw"], ',"vote-threshold":1')],
    ["compare", "json:" + quorum(["r.raw", "r2.raw"], ',"vote-threshold":2'),
     "r.raw"],
    # Two of three agree: the odd copy is outvoted.
    ["compare", "json:" + quorum(["r.raw", "bad.raw", "r2.raw"],
                                 ',"vote-threshold":2'), "r.raw"],
    ["compare", "json:" + quorum(["r.raw", "bad.raw"],
                                 ',"vote-threshold":2'), "r.raw"],
    ["compare", "json:" + quorum(["bad.raw", "r.raw"],
                                 ',"vote-threshold":1,"read-pattern":"fifo"'),
     "bad.raw"],
    ["convert", "-O", "raw", "json:" + quorum(["r.raw", "r2.raw"],
                                              ',"vote-threshold":2'),
     "out.img"],
]


@pytest.mark.parametrize("batch", batches(QUORUM_CASES, 8))
def test_quorum_and_dirname(pair, batch):
    """The quorum driver (voted and fifo reads, option errors), and backing
    names of an image over it: no directory, so "cannot determine actual
    path" (QEMU's bdrv_dirname)."""
    pair.setup(quorum_setup)
    bad = []
    for args in batch:
        r, q = pair.both(*args)
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            (d / "out.img").unlink(missing_ok=True)
    assert not bad, "\n\n".join(bad)
