"""meson install into a DESTDIR: the man page, the bash completion (its
registration and candidates for a few prefixes), the pkg-config file, the
header and the versioned shared library (a tiny program built against
them), and qimg --version naming the drivers compiled in."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD


@pytest.fixture(scope="module")
def dest(tmp_path_factory):
    d = tmp_path_factory.mktemp("destdir")
    subprocess.run(["meson", "install", "-C", str(BUILD), "--no-rebuild",
                    "--quiet", "--destdir", str(d)], check=True,
                   capture_output=True)
    files = {p.name: p for p in d.rglob("*") if p.is_file() or p.is_symlink()}
    return d, files


def test_man_page(dest):
    _, files = dest
    page = files["qimg.1"]
    assert page.parent.name == "man1"
    out = subprocess.run(["man", "-l", "-P", "cat", str(page)],
                         capture_output=True, text=True,
                         env={**os.environ, "MANWIDTH": "80"}).stdout
    assert "qimg - disk image utility" in out
    for word in ("checksum", "--progress=json", "blkhash"):
        assert word in out, word


def complete(dest, line):
    d, files = dest
    script = files["qimg"] if files["qimg"].parent.name == "completions" \
        else next(p for p in d.rglob("completions/qimg"))
    bindir = next(p.parent for p in d.rglob("bin/qimg"))
    # bash's own split: COMP_WORDBREAKS makes '=' and ':' words of their own
    words = re.findall(r"[=:]|[^\s=:]+", line) + ([""] if line[-1] == " "
                                                   else [])
    prog = (f"source {script}; COMP_LINE='{line}'; COMP_POINT={len(line)}; "
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); "
            f"COMP_CWORD={len(words) - 1}; _qimg; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"})
    assert r.returncode == 0, r
    return [x for x in r.stdout.splitlines() if x]


def test_bash_completion(dest):
    d, _ = dest
    script = next(d.rglob("bash-completion/completions/qimg"))
    r = subprocess.run(["bash", "-c", f"source {script}; complete -p qimg"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "complete -o default -F _qimg qimg"
    assert complete(dest, "qimg ch") == ["check", "checksum"]
    assert complete(dest, "qimg convert -O vm") == ["vmdk"]
    assert set(complete(dest, "qimg convert --ta")) == {
        "--target-image-opts", "--target-is-zero"}
    assert complete(dest, "qimg create -f qcow2 -o compat=1.1,clu") == \
        ["1.1,cluster_size="]    # bash split the word at "="
    assert complete(dest, "qimg checksum -a sha51") == \
        ["sha512", "sha512-224", "sha512-256"]
    assert "--progress=" in complete(dest, "qimg commit --pro")
    assert complete(dest, "qimg dd co") == ["count="]
    # after '=' bash has split the word: only the rest is replied
    assert complete(dest, "qimg info --output=j") == ["json"]
    formats = complete(dest, "qimg info -f ")
    assert "qcow2" in formats and "file" in formats


def sanitize_flags():
    """A library built with sanitizers (make check-asan) needs them in the
    program that links it too."""
    opts = json.loads((BUILD / "meson-info" /
                       "intro-buildoptions.json").read_text())
    value = next(o["value"] for o in opts if o["name"] == "b_sanitize")
    return [] if value == "none" else [f"-fsanitize={value}"]


def test_pkg_config_and_library(dest, tmp_path):
    d, files = dest
    pc = files["qimg.pc"]
    env = {**os.environ, "PKG_CONFIG_PATH": str(pc.parent)}
    prefix = next(x.split("=", 1)[1] for x in pc.read_text().splitlines()
                  if x.startswith("prefix="))
    flags = subprocess.run(["pkg-config", f"--define-variable=prefix={d}"
                            f"{prefix}", "--cflags", "--libs", "qimg"], capture_output=True,
                           text=True, env=env, check=True).stdout.split()
    assert any(f.startswith("-I") for f in flags) and "-lqimg" in flags
    header = next(d.rglob("include/qimg.h"))
    assert f"-I{header.parent}" in flags
    so = files["libqimg.so.0"]
    soname = subprocess.run(["readelf", "-d", str(so)], capture_output=True,
                            text=True).stdout
    assert "Library soname: [libqimg.so.0]" in soname
    (tmp_path / "t.c").write_text(r'''
#include <stdio.h>
#include <qimg.h>
int main(void)
{
    for (size_t i = 0; qimg_format_driver_at(i); i++)
        printf("%s\n", qimg_format_driver_at(i));
    return qimg_format_known("qcow2") ? 0 : 1;
}
''')
    subprocess.run(["cc", "t.c", "-o", "t", *flags, *sanitize_flags()],
                   cwd=tmp_path, check=True, capture_output=True)
    r = subprocess.run(["./t"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "LD_LIBRARY_PATH": str(so.parent)})
    assert r.returncode == 0 and "qcow2" in r.stdout.split()
    ldd = subprocess.run(["ldd", str(tmp_path / "t")], capture_output=True,
                         text=True, env={**os.environ,
                                         "LD_LIBRARY_PATH": str(so.parent)})
    assert f"libqimg.so.0 => {so}" in ldd.stdout


def test_version_names_drivers(dest):
    d, _ = dest
    qimg = next(d.rglob("bin/qimg"))
    out = subprocess.run([str(qimg), "--version"], capture_output=True,
                         text=True).stdout.splitlines()
    fmts = next(x for x in out if x.startswith("Formats: ")).split()[1:]
    stor = next(x for x in out if x.startswith("Storages: ")).split()[1:]
    assert "qcow2" in fmts and "raw" in fmts and "file" not in fmts
    assert "file" in stor and "null-co" in stor and "qcow2" not in stor
    # every driver named belongs to the help's "Supported formats:" list
    help_out = subprocess.run([str(qimg), "--help"], capture_output=True,
                              text=True).stdout
    line = next(x for x in help_out.splitlines()
                if x.startswith("Supported formats:"))
    supported = line.split()[2:]
    assert sorted(fmts + stor) == sorted(supported)
    # run as qemu-img, the text has no such lines
    link = Path(qimg.parent / "qemu-img")
    if not link.exists():
        link.symlink_to("qimg")
    out = subprocess.run([str(link), "--version"], capture_output=True,
                         text=True).stdout
    assert "Formats:" not in out and out.startswith("qemu-img version")
