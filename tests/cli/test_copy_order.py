"""Order-free commits of the copy engine (lib/copy/copy.c, any_order): into
a raw image on a random-access storage, workers write each chunk as soon as
it is read, yet the errors reported are those of in-order writes.  An
nbdkit eval export fails writes at chosen offsets after chosen delays, so
that a later chunk fails before an earlier one: qemu-img 7.2 (in order)
reports only the first failing chunk in guest order, and so must qimg."""
import os
import subprocess

from conftest import QIMG, REF
from netservers import servers  # noqa: F401 (fixture)

MiB = 1 << 20

# pwrite of the eval plugin: $3 count, $4 offset.  Each case maps an
# offset (a 2 MiB chunk of the copy) to "delay:errno" ("ok" = succeed).
PWRITE = """cat >/dev/null
case " $CASES " in *" $4=ok:"*) d=${CASES#*$4=ok:}; sleep ${d%% *}; exit 0;; esac
case " $CASES " in *" $4="*) r=${CASES#*$4=}; r=${r%% *}
    sleep ${r%%:*}; echo "${r#*:} injected" >&2; exit 1;; esac
exit 0
"""

CASES = [
    # chunk 0 slow but fine, chunk 1 fails late, chunks 2-3 at once:
    # in order, chunk 1's failure is the one
    "0=ok:0.5 2097152=0.3:EIO 4194304=0:ENOSPC 6291456=0:ENOSPC",
    # the first chunk fails last: only it is reported
    "0=0.4:EIO 2097152=0:ENOSPC 4194304=0:EPERM",
    # only the last chunk fails, after the others
    "6291456=0:EIO",
    # every chunk fails at once: one message
    "0=0:EIO 2097152=0:EIO 4194304=0:EIO 6291456=0:EIO",
]


def test_write_errors_as_in_order(pair, servers, tmp_path):
    script = tmp_path / "pwrite.sh"
    script.write_text(PWRITE)
    for d in pair.dirs():
        with open(d / "src.raw", "wb") as f:
            f.write(os.urandom(8 * MiB))
    bad = []
    for case in CASES:
        os.environ["CASES"] = case
        try:
            port = servers.nbdkit(
                "eval", f"get_size=echo {8 * MiB}",
                "pread=dd if=/dev/zero count=$3 iflag=count_bytes "
                "status=none", f'pwrite=sh {script} "$@"',
                "thread_model=echo parallel", "can_write=exit 0")
        finally:
            del os.environ["CASES"]
        for args in (["convert", "-n", "-f", "raw", "-O", "raw", "src.raw",
                      f"nbd://127.0.0.1:{port}/"],
                     ["convert", "-n", "-m", "2", "-f", "raw", "-O", "raw",
                      "src.raw", f"nbd://127.0.0.1:{port}/"]):
            r, q = pair.both(*args, timeout=60)
            if (q.rc, q.out, q.err) != (r.rc, r.out, r.err):
                bad.append(f"case={case} args={args}\nREFERENCE {r!r}\n"
                           f"QIMG {q!r}")
    assert not bad, "\n\n".join(bad)
