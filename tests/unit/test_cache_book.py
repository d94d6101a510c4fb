"""The cache within its budget: real files, real `du`, real locks held by another process, a
real small filesystem (tmpfs) for the build that does not fit."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.base import paths
from harness.base.errors import BadInput
from harness.base.sizes import human, parse_size
from harness.images import cache_book
from harness.images.recipe import Recipe
from harness.images.store import ImageStore, verify
from tests.unit.test_cache_lock import holder

MIB = 2**20
DAY = 86400.0


def _fill(path: Path, mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "data").write_bytes(os.urandom(mib * MIB))


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache as a CI runner leaves it: the recipe's kernel (protected), the pinned source
    and its variant's object tree, and three series (source overlay hard-linked to the
    pristine tree, object tree, kernel), used 3, 2 and 1 days ago."""
    c = tmp_path / "cache"
    _fill(c / "src" / "linux-source-7.2", 8)
    (c / "src" / "linux-source-7.2" / "Makefile").write_text("pinned\n")
    _fill(c / "build" / "kernel-dmabuf", 8)
    _fill(c / "artifacts" / "kernel-dmabuf-0123456789abcdef", 2)
    _fill(c / "build" / "kernel-dmabuf+tree-0123456789ab", 1)  # a user's --kernel-tree
    _fill(c / "test-trees" / "linux", 1)
    now = time.time()
    for age, sha in ((3, "aaaaaaaaaaaa"), (2, "bbbbbbbbbbbb"), (1, "cccccccccccc")):
        overlay = c / "src" / f"linux-source-7.2+series-{sha}"
        subprocess.run(["cp", "-al", str(c / "src" / "linux-source-7.2"), str(overlay)],
                       check=True)
        (overlay / "Makefile").unlink()
        (overlay / "Makefile").write_bytes(os.urandom(MIB))  # the series' own file
        _fill(c / "build" / f"kernel-dmabuf+series-{sha}", 4)
        _fill(c / "artifacts" / f"kernel-dmabuf+series-{sha}-{sha[:4]}0000", 1)
        for p in (overlay, c / "build" / f"kernel-dmabuf+series-{sha}",
                  c / "artifacts" / f"kernel-dmabuf+series-{sha}-{sha[:4]}0000"):
            os.utime(p, (now - age * DAY, now - age * DAY))
    return c


PROTECTED = {"kernel-dmabuf-0123456789abcdef"}


def _protected(c: Path) -> set[Path]:
    return {c / "artifacts" / n for n in PROTECTED}


def test_the_book_sees_each_kind_and_counts_hard_links_once(cache):
    book = cache_book.survey(cache, _protected(cache))
    kinds = {e.path.name: e.kind for e in book.entries}
    assert kinds["linux-source-7.2"] == "source"
    assert kinds["linux-source-7.2+series-aaaaaaaaaaaa"] == "series source"
    assert kinds["kernel-dmabuf"] == "object tree"
    assert kinds["kernel-dmabuf+series-aaaaaaaaaaaa"] == "series objects"
    assert kinds["kernel-dmabuf+series-aaaaaaaaaaaa-aaaa0000"] == "series kernel"
    assert kinds["kernel-dmabuf-0123456789abcdef"] == "artifact"
    assert kinds["kernel-dmabuf+tree-0123456789ab"] == "tree objects"
    assert kinds["linux"] == "test tree"
    size = {e.path.name: e.size for e in book.entries}
    # the overlay shares the pristine tree's 8 MiB by hard links: only its own file counts
    assert MIB <= size["linux-source-7.2+series-aaaaaaaaaaaa"] < 2 * MIB
    assert size["linux-source-7.2"] >= 8 * MIB
    groups = book.groups()
    assert [g[0].group for g in groups if g[0].group.startswith("series-")] == [
        "series-aaaaaaaaaaaa", "series-bbbbbbbbbbbb", "series-cccccccccccc"]  # LRU first
    assert all(len(g) == 3 for g in groups if g[0].group.startswith("series-"))
    assert "tree-0123456789ab" in [g[0].group for g in groups]  # evictable, rebuilt by make


def test_a_tiny_budget_evicts_the_least_recently_used_and_keeps_defaults_and_a_held_one(cache):
    user = holder(cache / "artifacts", "kernel-dmabuf+series-aaaaaaaaaaaa-aaaa0000", 60)
    try:
        gone = cache_book.keep_within(cache, _protected(cache), budget=1)
    finally:
        user.kill()
        user.wait()
    names = {e.path.name for e in gone}
    assert "kernel-dmabuf+series-aaaaaaaaaaaa-aaaa0000" not in names  # a run boots from it
    assert (cache / "build" / "kernel-dmabuf+series-aaaaaaaaaaaa").is_dir()  # its group too
    assert {"kernel-dmabuf+series-bbbbbbbbbbbb", "linux-source-7.2+series-cccccccccccc"} <= names
    for name in ("linux-source-7.2", "kernel-dmabuf", "kernel-dmabuf-0123456789abcdef",
                 "linux"):
        assert name not in names
    assert (cache / "artifacts" / "kernel-dmabuf-0123456789abcdef" / "data").is_file()
    assert (cache / "src" / "linux-source-7.2" / "Makefile").read_text() == "pinned\n"
    assert not list(cache.glob("*/*.partial"))  # nothing left half-removed
    _deleted(cache)


def _deleted(cache: Path) -> None:
    """The evicted entries left their places at once; their trash is deleted behind them,
    within a bound."""
    deadline = time.monotonic() + 60
    while cache_book.being_deleted(cache) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache_book.being_deleted(cache) == 0
    assert not [t for t in (cache / cache_book.TRASH).iterdir()]


def test_a_budget_the_cache_is_within_removes_nothing(cache):
    assert cache_book.keep_within(cache, _protected(cache), budget=10 * 2**30) == []
    assert len(list((cache / "build").iterdir())) == 5


def test_prune_by_age_and_dry_run_through_the_cli(cache, tmp_path):
    def prune(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", "--cache-dir", str(cache),
                               "images", "prune", *args], capture_output=True, text=True,
                              timeout=120)

    dry = prune("--older-than", "1.5", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would remove ") == 6  # series aaa and bbb: 3 entries each
    assert "(dry run: nothing removed)" in dry.stdout
    assert (cache / "build" / "kernel-dmabuf+series-aaaaaaaaaaaa").is_dir()
    real = prune("--older-than", "1.5")
    assert real.returncode == 0, real.stderr
    assert not (cache / "build" / "kernel-dmabuf+series-aaaaaaaaaaaa").exists()
    assert not (cache / "build" / "kernel-dmabuf+series-bbbbbbbbbbbb").exists()
    assert (cache / "build" / "kernel-dmabuf+series-cccccccccccc").is_dir()
    assert "the disk space is freed in the background" in real.stdout
    _deleted(cache)
    before, after = (parse_size(x) for x in re.findall(
        r"([\d.]+ [KMG]iB|\d+ B) (?:before|after)", real.stdout.splitlines()[-1]))
    assert after < before


def test_a_build_the_disk_cannot_hold_is_refused_before_it_writes_anything(tmp_path):
    """A cache on a 64 MiB filesystem of its own: one line naming the cache, the free
    space, what the build needs and the prune command; exit 2; nothing marked ready."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                                            str(small)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        p = subprocess.run([sys.executable, "-m", "harness", "--cache-dir", str(small),
                            "images", "build"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stdout + p.stderr
        (line,) = [x for x in p.stderr.splitlines() if x.strip()]
        assert "no room for the image build: 0.1 GiB free where the cache is" in line
        assert str(small) in line and "needs about 8 GiB" in line
        assert "vfio-harness images prune --max-size SIZE" in line
        store = ImageStore(Recipe.load(), small)
        assert all(verify(s.directory) is not None for s in store.states())
        assert not list(small.glob("artifacts/*/manifest.json"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_sizes_are_read_and_written_in_binary_units():
    assert parse_size("40G") == 40 * 2**30 and parse_size("512MiB") == 512 * MIB
    assert parse_size("1.5 GB") == int(1.5 * 2**30) and parse_size("1024") == 1024
    for bad in ("", "G", "-1G", "4 parsecs", "1e9"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert human(512) == "512 B" and human(3 * MIB) == "3.0 MiB"
    assert human(45 * 2**30) == "45.0 GiB"


def test_the_budget_comes_from_the_option_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv("VFIO_HARNESS_CACHE_MAX", raising=False)
    assert paths.cache_max() == 40 * 2**30
    monkeypatch.setenv("VFIO_HARNESS_CACHE_MAX", "20G")
    assert paths.cache_max() == 20 * 2**30 and paths.cache_max(5) == 5
    monkeypatch.setenv("VFIO_HARNESS_CACHE_MAX", "lots")
    with pytest.raises(BadInput, match="VFIO_HARNESS_CACHE_MAX: not a size: 'lots'"):
        paths.cache_max()


def test_a_series_with_trees_of_two_platforms_goes_whole(cache):
    """x86's and arm64's object trees of one series have the same name (build/ and
    build/aarch64/): both go, neither in the way of the other."""
    _fill(cache / "build" / "aarch64" / "kernel-dmabuf+series-aaaaaaaaaaaa", 1)
    old = time.time() - 9 * DAY
    os.utime(cache / "build" / "aarch64" / "kernel-dmabuf+series-aaaaaaaaaaaa", (old, old))
    gone = cache_book.evict(cache_book.survey(cache, _protected(cache)), older_than_days=2.5)
    assert not (cache / "build" / "aarch64" / "kernel-dmabuf+series-aaaaaaaaaaaa").exists()
    assert not (cache / "build" / "kernel-dmabuf+series-aaaaaaaaaaaa").exists()
    assert sum(e.path.name == "kernel-dmabuf+series-aaaaaaaaaaaa" for e in gone) == 2
    _deleted(cache)
