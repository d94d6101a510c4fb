"""Compiler caching (Debian's ccache) for the kernel builds, shared by every build.

A variant, a series or a bisect step compiles, through make, only the files whose
inputs changed in its own object tree; ccache keeps what any tree compiled, so a
file that comes back (a bisect step that drops a patch, a recipe change undone, a
variant rebuilt after a fragment changed) is not compiled again.

Debian's masquerade directory (/usr/lib/ccache first on PATH) rather than
CC="ccache gcc": the compiler's name stays what it was in every object's recorded
command line, so a tree built before ccache was installed (or on a host without
it) is not recompiled for that alone, and the objects are the same either way.
"""

import os
import shutil
import subprocess
from pathlib import Path

MASQUERADE = Path("/usr/lib/ccache")
#: Compressed objects of the kernels a CI run builds (two architectures, the debug
#: variant, series and bisect steps) fit well within this.
MAX_SIZE = "3G"


def directory(cache: Path) -> Path:
    return cache / "ccache"


def available(compiler: str = "gcc") -> bool:
    return shutil.which("ccache") is not None and (MASQUERADE / compiler).exists()


def environment(cache: Path, compiler: str = "gcc") -> dict[str, str]:
    """What a build's make is run with ({} without ccache: it compiles as before).
    CCACHE_BASEDIR makes paths inside the cache relative, so that two object trees
    at the same depth (build/kernel-dmabuf, build/kernel-dmabuf+series-...) share.
    CCACHE_DEPEND: a miss costs one compile, not a preprocessor run and then a compile
    (a kernel file's preprocessing is a large part of its compile); the compiler's own
    dependency list (kbuild's -Wp,-MMD) says which headers a hit must match."""
    if not available(compiler):
        return {}
    return {"PATH": f"{MASQUERADE}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "CCACHE_DIR": str(directory(cache)), "CCACHE_MAXSIZE": MAX_SIZE,
            "CCACHE_BASEDIR": str(cache), "CCACHE_DEPEND": "1"}


def summary(cache: Path) -> str:
    """One line for doctor: where, how full, how often it hit."""
    if shutil.which("ccache") is None:
        return "ccache not installed: every kernel build compiles every file it needs"
    env = {**os.environ, **environment(cache)}
    try:
        out = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ccache present, its statistics unreadable ({e})"
    stats = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    hits = int(stats.get("direct_cache_hit", 0)) + int(stats.get("preprocessed_cache_hit", 0))
    misses = int(stats.get("cache_miss", 0))
    size_kib = int(stats.get("cache_size_kibibyte", 0))
    return (f"ccache in {directory(cache)}: {size_kib / 1024 / 1024:.2f} GiB of {MAX_SIZE}, "
            f"{hits} hits, {misses} misses")
