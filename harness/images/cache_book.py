"""The image cache's bookkeeping: what it holds, of which kind, how large, when last used.

A CI runner that checks every posted series leaves, per series, an object tree
(a copy of its base variant's, about 0.5 GB), a source overlay and a kernel
artifact; every bisect step leaves a kernel; nothing else ever removes them.
This module sees the cache as entries grouped into what can go together (a
series: its source, objects and kernels) and chooses what to evict, least
recently used first, within a budget; `store.ImageStore` builds, this one only
reads and removes.

Never evicted: the images the recipes point at now (the default matrix boots
them), the pinned sources and the variants' own object trees (every series
build starts from them), and whatever a running process holds (the artifact
locks: an exclusive lock taken without waiting, or it is in use).
"""

import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.base.progress import say
from harness.base.sizes import human
from harness.images.cache_lock import LOCKS, ArtifactLocks, used_stamp

#: What a cache holds, by kind: (kind, where, name pattern). The first match names a path.
KINDS = (
    ("series source", "src", re.compile(r".+\+(?:bisect-)?series-[0-9a-f]+$")),
    ("source", "src", re.compile(r".+")),
    ("series objects", "build", re.compile(r"kernel-.+\+(?:bisect-)?series-[0-9a-f]+$")),
    ("tree objects", "build", re.compile(r"kernel-.+\+tree-[0-9a-f]+$")),
    ("object tree", "build", re.compile(r"kernel-[^+]+$")),
    ("rootfs base", "build", re.compile(r"rootfs-base-.+")),
    ("series kernel", "artifacts", re.compile(r"kernel-.+\+series-[0-9a-f]+-[0-9a-f]+$")),
    ("tree kernel", "artifacts", re.compile(r"kernel-.+\+tree-[0-9a-f]+$")),
    ("artifact", "artifacts", re.compile(r".+")),
    ("downloads", "downloads", re.compile(r".+")),
    ("apt", "apt", re.compile(r".+")),
    ("test tree", "test-trees", re.compile(r".+")),
    ("tools", "tools", re.compile(r".+")),
)
#: The cache's places that hold entries, in KINDS' order.
PLACES = tuple(dict.fromkeys(where for _, where, _ in KINDS))
#: Where evicted entries wait for their deletion (in the background).
TRASH = ".trash"
#: The group a series' paths share: "series-<sha12>", with or without "bisect-"; a user's
#: kernel tree's (--kernel-tree): "tree-<sha12>".
SERIES = re.compile(r"\+(?:bisect-)?((?:series|tree)-[0-9a-f]+)")


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str
    size: int          # bytes on disk that removing it frees (hard links counted once)
    last_used: float   # seconds since the epoch
    keep: str = ""     # why it is never evicted ("" if it may be)

    @property
    def group(self) -> str:
        """What it goes with: its series, or itself."""
        m = SERIES.search(self.path.name)
        return m.group(1) if m else str(self.path)


@dataclass
class Book:
    cache: Path
    entries: list[Entry] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(e.size for e in self.entries)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.kind] = out.get(e.kind, 0) + e.size
        return out

    def groups(self) -> list[list[Entry]]:
        """The evictable entries, grouped, least recently used group first."""
        grouped: dict[str, list[Entry]] = {}
        for e in self.entries:
            grouped.setdefault(e.group, []).append(e)
        candidates = [g for g in grouped.values() if not any(e.keep for e in g)]
        return sorted(candidates, key=lambda g: max(e.last_used for e in g))


def kind_of(cache: Path, path: Path) -> str | None:
    place = path.relative_to(cache).parts[0]
    for kind, where, pattern in KINDS:
        if place == where and pattern.match(path.name):
            return kind
    return None


def paths(cache: Path) -> list[Path]:
    """The cache's entries: each directory (or file) under its places. The build
    directory has a subdirectory per foreign platform (build/aarch64/...)."""
    out: list[Path] = []
    for place in PLACES:
        top = cache / place
        if not top.is_dir():
            continue
        for p in sorted(top.iterdir()):
            if p.name == LOCKS or p.name.endswith((".log", ".partial")):
                continue
            if place == "build" and p.is_dir() and not p.name.startswith(("kernel-", "rootfs-")):
                out += [q for q in sorted(p.iterdir()) if not q.name.endswith(".log")]
            else:
                out.append(p)
    return out


def sizes(found: list[Path]) -> dict[Path, int]:
    """Bytes on disk per path, counted the way removing them frees them: `du` in one
    call counts an inode shared by hard links once, with the first path that has it (the
    pristine sources come first: a series' linked source overlay is its own files)."""
    if not found:
        return {}
    order = sorted(found, key=lambda p: (bool(SERIES.search(p.name)), str(p)))
    done = subprocess.run(["du", "-s", "--block-size=1", "--", *map(str, order)],
                          capture_output=True, text=True, timeout=600)
    out = {}
    for line in done.stdout.splitlines():
        size, _, name = line.partition("\t")
        out[Path(name)] = int(size)
    return out


def last_used(locks: ArtifactLocks, path: Path) -> float:
    """When it was last used: its stamp's time (touched whenever a process boots from or
    builds it), else its own."""
    times = [path.stat().st_mtime]
    stamp = used_stamp(locks.directory / f"{path.name}.lock")
    if stamp.exists():
        times.append(stamp.stat().st_mtime)
    return max(times)


def survey(cache: Path, protected: Iterable[Path]) -> Book:
    """Every entry of `cache`; `protected`: the artifacts the recipes point at now."""
    keep_artifacts = set(protected)
    found = paths(cache)
    sized = sizes(found)
    locks = ArtifactLocks(cache / "artifacts")
    entries = []
    for p in found:
        kind = kind_of(cache, p) or "other"
        keep = ""
        if p in keep_artifacts:
            keep = "the recipe's image"
        elif kind in ("source", "object tree", "rootfs base"):
            keep = f"a {kind} every build starts from"
        elif kind in ("downloads", "apt", "tools"):
            keep = "packages the next build would fetch again"
        elif kind == "test tree":
            keep = "the tests' kernel git tree (tests/vm/test_kernel_tree.py)"
        entries.append(Entry(p, kind, sized.get(p, 0), last_used(locks, p), keep))
    return Book(cache, entries)


def evict(book: Book, max_size: int | None = None, older_than_days: float | None = None,
          dry_run: bool = False, now: float | None = None) -> list[Entry]:
    """Remove groups least recently used first: while the cache is over `max_size`, and
    every group unused for `older_than_days`. A group any process holds is kept (its
    artifacts' locks cannot be taken without waiting). Returns what was (or would be)
    removed."""
    now = time.time() if now is None else now
    locks = ArtifactLocks(book.cache / "artifacts")
    total = book.total
    removed: list[Entry] = []
    trash = trash_of(book.cache)
    for group in book.groups():
        used = max(e.last_used for e in group)
        old = older_than_days is not None and now - used > older_than_days * 86400
        over = max_size is not None and total > max_size
        if not (old or over):
            continue
        # a series' trees are held by name while it builds (ImageStore), its kernels by
        # every process that boots them
        names = {e.path.name: e.path for e in group}
        if group[0].group.startswith("series-"):
            names[group[0].group] = Path(group[0].group)
        held = [locks.try_exclusive(p) for p in names.values()]
        try:
            if any(h is None for h in held):
                continue
            if not dry_run:
                for e in group:
                    _remove(e.path, trash)
        finally:
            for h in held:
                if h is not None:
                    h.close()  # type: ignore[attr-defined]
        removed += group
        total -= sum(e.size for e in group)
    _empty(trash)
    return removed


def _remove(path: Path, trash: Path) -> None:
    """Out of its place at once (a rename: atomic, so no half-removed entry is ever
    taken for a built one) into this eviction's trash, which is deleted behind it."""
    trash.mkdir(parents=True, exist_ok=True)
    try:  # x86's and arm64's object trees of one series share a name: keep both apart
        path.rename(trash / f"{time.monotonic_ns()}-{path.name}")
    except FileNotFoundError:
        pass


def _empty(trash: Path) -> None:
    """Delete an eviction's trash in the background: removing a kernel object tree
    copy (6,700 files, 0.45 GB) takes 1 to 10 s on this machine's disk, and a prune of
    fifty series must not wait for fifty of them. A detached, niced `rm -rf`; what is
    left of an earlier trash that no `rm` deletes any more (a machine that stopped
    meanwhile) goes with it."""
    if not trash.is_dir():
        return
    busy = _being_emptied()
    left = [t for t in trash.parent.iterdir() if t != trash and str(t) not in busy]
    subprocess.Popen(["nice", "-n", "19", "rm", "-rf", "--", str(trash), *map(str, left)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def _being_emptied() -> set[str]:
    """The paths that a running `rm -rf` deletes."""
    out: set[str] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"rm" in argv[:4] and b"-rf" in argv:  # "nice -n 19 rm -rf ..."
            out.update(a.decode(errors="replace") for a in argv if a.startswith(b"/"))
    return out


def trash_of(cache: Path) -> Path:
    """A fresh trash for one eviction, named after this process."""
    return cache / TRASH / f"{os.getpid()}-{time.monotonic_ns()}"


def being_deleted(cache: Path) -> int:
    """Bytes evicted but not yet deleted (the trash)."""
    trash = cache / TRASH
    return sum(sizes([t for t in trash.iterdir()]).values()) if trash.is_dir() else 0


def prune(cache: Path, protected: Iterable[Path], max_size: int | None,
          older_than_days: float | None, dry_run: bool = False) -> list[Entry]:
    """`images prune`: evict, and say what went (or would go) and the size before and
    after."""
    book = survey(cache, protected)
    before = book.total
    gone = evict(book, max_size, older_than_days, dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in gone:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(f"{verb} {e.path} ({e.kind}, {human(e.size)}, last used {used})")
    after = before - sum(e.size for e in gone)
    print(f"cache {cache}: {human(before)} before, {human(after)} after"
          + (" (dry run: nothing removed)" if dry_run else
             " (out of the cache now; the disk space is freed in the background)"
             if gone else ""))
    if max_size is not None and after > max_size:
        print(f"still over {human(max_size)}: what is left is the recipes' images, the "
              f"sources and object trees every build starts from, and what running "
              f"processes hold")
    return gone


def keep_within(cache: Path, protected: Iterable[Path], budget: int) -> list[Entry]:
    """After a build: evict least recently used groups until the cache is within
    `budget` (what a build just made was used last: it goes last)."""
    book = survey(cache, protected)
    if book.total <= budget:
        return []
    gone = evict(book, budget)
    after = book.total - sum(e.size for e in gone)
    say(f"cache {cache} over its budget of {human(budget)} ({human(book.total)}): removed "
        f"{len(gone)} least recently used entr{'y' if len(gone) == 1 else 'ies'}, now "
        f"{human(after)}" + (" (still over: the rest is kept)" if after > budget else ""))
    return gone
