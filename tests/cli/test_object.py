"""--object against qemu-img 7.2: help and per-type help, the keyval
syntax, qom-type and id rules, every object type of 7.2's schema (those
qemu-img can create and those it cannot), member types, unexpected and
nested members, duplicate ids across objects and types, secrets (data,
file, format, GLib's file messages), and every command taking --object."""
import re

import pytest

from conftest import batches, same_each

# QEMU's automatic node names end in two random digits
NODE_NAME = re.compile(r"#block\d+")

# Definitions, each given alone to `info --object DEF a.img`.
DEFS = [
    # help
    "help", "?", "secret,help", "secret,?", "secret,id=s0,help",
    "secret,id=s0,data=x,help", "help,secret", "bogus,help", "iothread,help",
    "authz-listfile,help", "authz-list-file,help", "secret_keyring,help",
    "throttle-group,help", "tls-creds-x509,help", "main-loop,help",
    "secret,?,id=x", "secret,help=x", "secret,id=s0,data=x,help,x",
    # keyval syntax
    "", ",secret", "=secret", "se,,cret,id=x", "secret,id=s0,data=x,,y",
    "secret,id=s0,data=x,", "secret,id=s0,,data=x", "secret,id=s0,data=x,0a=1",
    "secret,id=s0,data=x,0=1", "secret,id=s0,data=x,a..b=1",
    "secret,id=s0,data=x,a.=1", "secret,id=s0,data=x,helpx",
    "secret,id=s0,data=x," + "a" * 130 + "=1",
    "secret,id=s0,data=x,a." + "a" * 130 + "=1",
    "secret,id=s0,data=x,a.0=1", "secret,id=s0,data=x,__com.x_y=1",
    "secret,id=s0,data.x=1", "secret,id=s0,data=1,data.x=1",
    "secret,id=s0,a.b=1,a=2", "secret,id=s0,data=x,data=y",
    # qom-type and id
    "id=s0,data=x", "qom-type=secret,id=s0,data=x", "bogus", "bogus,id=x",
    "qom-type=secret,qom-type=bogus,id=x,data=y", "secret,qom-type=iothread,id=x",
    "secret", "secret,bogus=1", "secret,id=0s", "secret,id=0s,bogus=1",
    "secret,id=s 0,data=x", "secret,id=,data=x", "iothread,id=0s",
    "secret,id=s0,data=x,id=s1", "secret,id=a-b.c_d,data=x",
    # secrets
    "secret,id=s0", "secret,id=s0,data=", "secret,id=s0,data=x,format=raw",
    "secret,id=s0,data=eA==,format=base64", "secret,id=s0,data=e A,format=base64",
    "secret,id=s0,data=eA==eA==,format=base64", "secret,id=s0,data=x,format=bogus",
    "secret,id=s0,data=x,format=", "secret,id=s0,data=x,format=raw,format=base64",
    "secret,id=s0,file=nonexist", "secret,id=s0,file=", "secret,id=s0,file=dir",
    "secret,id=s0,file=pw.txt", "secret,id=s0,file=pw.txt,data=x",
    "secret,id=s0,file=bad64,format=base64", "secret,id=s0,file=nul64,format=base64",
    "secret,id=s0,data=x,format=bogus,file=y", "secret,data=x,format=bogus",
    "secret,id=s0,data=x,bogus=1", "secret,id=s0,data=x,loaded=on",
    "secret,id=s0,data=x,loaded=off", "secret,id=s0,loaded=maybe",
    "secret,id=s0,loaded=on", "secret,id=s0,loaded=on,data=x,file=y",
    "secret,id=s0,data=x,loaded=on,bogus=1", "secret,id=s0,data=x,iv=abc",
    "secret,id=s0,data=x,keyid=",
    # types qemu-img creates
    "authz-list,id=a", "authz-list,id=a,policy=x", "authz-list,id=a,policy=allow",
    "authz-list,id=a,rules=x", "authz-simple,id=a", "authz-simple,id=a,identity=x",
    "authz-simple,id=a,identity=x,foo=1", "main-loop,id=m",
    "main-loop,id=m,aio-max-batch=x", "main-loop,id=m,aio-max-batch=0x10",
    "main-loop,id=m,aio-max-batch=-1", "main-loop,id=m,thread-pool-min=-1",
    "main-loop,id=m,thread-pool-max=-1",
    "main-loop,id=m,thread-pool-min=5,thread-pool-max=2",
    "main-loop,id=m,thread-pool-max=99999999999",
    "main-loop,id=m,aio-max-batch=99999999999999999999",
    "thread-context,id=tc", "thread-context,id=tc,cpu-affinity=0",
    "thread-context,id=tc,cpu-affinity.0=0", "throttle-group,id=t",
    "throttle-group,id=t,bogus=1", "throttle-group,id=t,x-iops-total=abc",
    "throttle-group,id=t,x-iops-total=1", "throttle-group,id=t,x-iops-total=-1",
    "throttle-group,id=t,limits=1", "throttle-group,id=t,limits.iops-total=1",
    "tls-creds-anon,id=t", "tls-creds-anon,id=t,endpoint=x",
    "tls-creds-anon,id=t,verify-peer=x", "tls-creds-anon,id=t,dir=/nonexist",
    "tls-creds-psk,id=t", "tls-creds-psk,id=t,dir=/nonexist",
    "tls-creds-psk,id=t,dir=.", "tls-creds-x509,id=t",
    "tls-creds-x509,id=t,dir=/nonexist", "tls-cipher-suites,id=t",
    "pr-manager-helper,id=p", "pr-manager-helper,id=p,path=/nonexist",
    "pr-manager-helper,id=p,path=pw.txt", "secret_keyring,id=k",
    "secret_keyring,id=k,serial=99999999999", "secret_keyring,id=k,serial=x",
    "authz-listfile,id=a", "authz-listfile,id=a,filename=/nonexist",
    "authz-list-file,id=a,filename=/nonexist",
    # types of the schema qemu-img cannot create
    "iothread,id=io0", "rng-random,id=r0", "memory-backend-ram,id=m",
    "memory-backend-ram,id=m,size=1M", "memory-backend-file,id=m,size=1M",
    "colo-compare,id=c", "colo-compare,id=c,primary_in=1", "sev-guest,id=s",
    "can-bus,id=c", "filter-dump,id=f,netdev=n", "x-remote-object,id=x",
]

# Definitions given together: ids are one namespace for every type.
MULTI = [
    ["secret,id=s0,data=x", "secret,id=s0,data=y"],
    ["secret,id=s0,data=x", "secret,id=s0"],
    ["secret,id=s0,data=x", "secret,id=s0,file=/nonexist"],
    ["secret,id=s0,data=x", "throttle-group,id=s0"],
    ["authz-list,id=a", "secret,id=a,data=x"],
    ["main-loop,id=m", "main-loop,id=m2"],
    ["secret,id=s0,data=x,format=bogus", "secret,id=s0,data=x"],
    ["secret,id=s0,file=/nonexist", "secret,id=s0,data=x"],
    ["secret,id=s0,data=x", "help"],
    ["help", "bogus"],
    ["bogus", "help"],
    ["secret,id=k,data=x", "secret,id=s0,data=x,keyid=k0"],
]


def populate(d):
    (d / "a.img").write_bytes(b"\0" * 4096)
    (d / "pw.txt").write_bytes(b"secret")
    (d / "bad64").write_bytes(b"e A")
    (d / "nul64").write_bytes(b"eA\0=")
    (d / "dir").mkdir()


@pytest.mark.parametrize("batch", batches(DEFS, 50))
def test_object_definitions(pair, batch):
    pair.setup(populate)
    same_each(pair, "info", [["--object", d, "a.img"] for d in batch])


def test_objects_together(pair):
    pair.setup(populate)
    cases = []
    for defs in MULTI:
        args = []
        for d in defs:
            args += ["--object", d]
        cases.append(args + ["a.img"])
    same_each(pair, "info", cases)


# Every command: --object is taken where 7.2 takes it (an unknown option
# elsewhere), handled as getopt meets it (before other errors), and a
# valid one lets the command go on.
COMMANDS = {
    "amend": ["-o", "size=8k", "a.img"], "bench": ["-c", "1", "a.img"],
    "bitmap": ["--add", "a.img", "b"], "check": ["a.img"],
    "commit": ["a.img"], "compare": ["a.img", "a.img"],
    "convert": ["a.img", "out.img"], "create": ["out.img", "1M"],
    "dd": ["if=a.img", "of=out.img"], "info": ["a.img"], "map": ["a.img"],
    "measure": ["--size", "1M"], "snapshot": ["-l", "a.img"],
    "rebase": ["-u", "-b", "", "a.img"], "resize": ["a.img", "8k"],
}


def test_object_every_command(pair):
    pair.setup(populate)
    cases = []
    for cmd, rest in COMMANDS.items():
        for objs in (["help"], ["secret,help"], ["bogus"],
                     ["secret,id=s0,data=x"],
                     ["secret,id=s0,data=x", "secret,id=s0,data=y"]):
            args = [cmd]
            for o in objs:
                args += ["--object", o]
            cases.append(args + rest)
        cases.append([cmd, "-x", "--object", "bogus"] + rest)
        cases.append([cmd, "--object"])
    bad = []
    for args in cases:
        r, q = pair.both(*args)
        # measure prints its help after a getopt error: compared in
        # test_cli_basic.py with the version lines set aside
        if args[0] == "measure" and r.out.startswith("qemu-img version"):
            assert (q.rc, q.err) == (r.rc, r.err), args
            continue
        r.err, q.err = (NODE_NAME.sub("#blockN", x.err) for x in (r, q))
        if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
            bad.append(f"args={args}\nREFERENCE {r!r}\nQIMG {q!r}")
        for d in pair.dirs():
            if (d / "out.img").exists():
                (d / "out.img").unlink()
    assert not bad, "\n\n".join(bad)
