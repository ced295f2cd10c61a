"""qemu-img info differential tests on raw images: human and JSON output,
sizes not multiple of 512, empty files, --image-opts, json: filenames,
errors."""
import pytest

from conftest import make_sparse


def populate(d):
    make_sparse(d / "a.img", 64 << 20, [(0, b"\xab" * 65536),
                                       (1 << 20, b"x" * 4096)])
    make_sparse(d / "odd.img", 1000)
    (d / "three.img").write_bytes(b"abc")
    (d / "empty.img").write_bytes(b"")
    (d / "sub").mkdir()
    make_sparse(d / "sub" / "s.img", 1 << 20, [(4096, b"y" * 512)])


@pytest.mark.parametrize("args", [
    ["a.img"],
    ["-f", "raw", "a.img"],
    ["--output=json", "a.img"],
    ["--output", "json", "-f", "raw", "a.img"],
    ["--output=human", "a.img"],
    ["--output=xml", "a.img"],
    ["odd.img"],
    ["--output=json", "odd.img"],
    ["three.img"],
    ["--output=json", "three.img"],
    ["empty.img"],
    ["--output=json", "empty.img"],
    ["sub/s.img"],
    ["--output=json", "sub/s.img"],
    ["-U", "a.img"],
    ["--force-share", "a.img"],
    ["--backing-chain", "a.img"],
    ["--backing-chain", "--output=json", "a.img"],
    ["nonexist"],
    ["-f", "foo", "a.img"],
    ["sub"],
    [],
    ["a.img", "b.img"],
    ["--image-opts", "driver=raw,file.filename=a.img"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=a.img"],
    ["--image-opts", "a.img"],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"a.img"}}'],
    ['json:{"file":{"driver":"file","filename":"a.img"}}'],
    ['json:{"driver":"raw","file":"a.img"}'],
    ['json:{"driver":"raw","file":{"driver":"file","filename":"a.img"},"foo":1}'],
    ["--object", "secret,id=s,data=x", "a.img"],
    ["--object", "secret,id=s", "a.img"],
])
def test_info(pair, args):
    pair.setup(populate)
    pair.same("info", *args)
