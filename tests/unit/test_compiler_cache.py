"""The kernel builds' compiler cache: the real ccache of this host, through Debian's
masquerade directory, shared by object trees at the same depth."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.images import compiler_cache

needs_ccache = pytest.mark.skipif(not compiler_cache.available(),
                                  reason="ccache (Debian's, with /usr/lib/ccache) not installed")


@needs_ccache
def test_two_trees_at_the_same_depth_share_what_was_compiled(tmp_path):
    """As two object trees of one source (a variant's and a series'): the second tree's
    compile of the same file is a hit (in depend mode, from kbuild's -Wp,-MMD list), and
    the object is the one gcc made."""
    cache = tmp_path / "cache"
    src = cache / "src" / "linux"
    src.mkdir(parents=True)
    (src / "f.h").write_text("#define THREE 3\n")
    (src / "f.c").write_text('#include "f.h"\nint f(int x) { return x * THREE; }\n')
    env = {**os.environ, **compiler_cache.environment(cache)}
    assert env["PATH"].split(":")[0] == str(compiler_cache.MASQUERADE)
    objects = []
    for tree in ("kernel-dmabuf", "kernel-dmabuf+series-aaaaaaaaaaaa"):
        obj = cache / "build" / tree
        obj.mkdir(parents=True)
        subprocess.run(["gcc", "-Wp,-MMD,.f.o.d", "-O2", "-c", "-o", "f.o", str(src / "f.c")],
                       cwd=obj, env=env, check=True)
        objects.append((obj / "f.o").read_bytes())
    assert objects[0] == objects[1]
    stats = compiler_cache.summary(cache)
    assert "1 hits, 1 misses" in stats, stats
    assert (cache / "ccache").is_dir()
    (src / "f.h").write_text("#define THREE 4\n")  # a header changed: no stale hit
    obj = cache / "build" / "kernel-dmabuf"
    subprocess.run(["gcc", "-Wp,-MMD,.f.o.d", "-O2", "-c", "-o", "f.o", str(src / "f.c")],
                   cwd=obj, env=env, check=True)
    assert (obj / "f.o").read_bytes() != objects[0]
    assert "1 hits, 2 misses" in compiler_cache.summary(cache)


def test_without_ccache_a_build_runs_as_before(tmp_path, monkeypatch):
    monkeypatch.setattr(compiler_cache, "MASQUERADE", tmp_path / "no-such-dir")
    assert compiler_cache.environment(tmp_path) == {}
    assert not compiler_cache.available()


def test_a_cross_compiler_without_a_masquerade_link_is_not_cached(tmp_path, monkeypatch):
    fake = tmp_path / "masq"
    fake.mkdir()
    (fake / "gcc").symlink_to(shutil.which("true") or "/bin/true")
    monkeypatch.setattr(compiler_cache, "MASQUERADE", fake)
    assert compiler_cache.environment(tmp_path, "aarch64-linux-gnu-gcc") == {}
    if shutil.which("ccache"):
        assert compiler_cache.environment(tmp_path, "gcc")["CCACHE_DIR"] == str(
            Path(tmp_path) / "ccache")
