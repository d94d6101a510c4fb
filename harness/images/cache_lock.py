"""Locks on the image cache's artifacts, so that processes never pull one from under another.

A process that boots L1 from an artifact holds a shared lock on it until it exits
(the rootfs is the backing file of every L1 disk, read for the whole run). A
process that publishes or removes an artifact takes the exclusive lock: it waits,
with a deadline naming the holders, for the users to finish. Two builders of the
same artifact meet on the same lock: the second finds it built and uses it.

Locks are flock(2) on files beside the artifacts (`artifacts/.locks/NAME.lock`),
released by the kernel when a holder dies, even by SIGKILL; `NAME.used` beside
it says when the artifact was last used. Each holder also
leaves its pid in `NAME.holders/`, so that a wait can say whom it waits for.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from harness.base.deadline import Deadline, wait_for

#: The directory of lock files, beside the artifacts.
LOCKS = ".locks"
#: How long a publisher waits for the runs that use an artifact (a matrix takes minutes).
EXCLUSIVE_DEADLINE = 1800.0


class ArtifactLocks:
    def __init__(self, artifacts: Path):
        self.directory = artifacts / LOCKS
        self._shared: dict[str, object] = {}  # held until the process exits

    def _files(self, artifact: Path) -> tuple[Path, Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / f"{artifact.name}.lock", self.directory / f"{artifact.name}.holders"

    def hold_shared(self, artifact: Path, seconds: float = EXCLUSIVE_DEADLINE) -> None:
        """Use `artifact` until this process exits: nobody may publish over it or remove it."""
        if artifact.name in self._shared:
            return
        lock, holders = self._files(artifact)
        handle = lock.open("a")
        _wait(handle, fcntl.LOCK_SH, Deadline(f"image cache: {artifact.name}", seconds),
              f"{artifact.name} is being built or removed by another process", holders)
        _register(holders)
        _touch(lock)
        self._shared[artifact.name] = handle

    @contextlib.contextmanager
    def exclusive(self, artifact: Path, seconds: float = EXCLUSIVE_DEADLINE) -> Iterator[None]:
        """Publish or remove `artifact` once no other process uses or builds it."""
        lock, holders = self._files(artifact)
        mine = self._shared.pop(artifact.name, None)
        if mine is not None:  # our own use never blocks ourselves
            mine.close()  # type: ignore[attr-defined]
            _unregister(holders)
        with lock.open("a") as handle:
            _wait(handle, fcntl.LOCK_EX, Deadline(f"image cache: {artifact.name}", seconds),
                  f"{artifact.name} is in use by other vfio-harness processes", holders)
            _touch(lock)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        if mine is not None:
            self.hold_shared(artifact)

    def try_exclusive(self, artifact: Path) -> object | None:
        """The exclusive lock now, or None if anyone uses the artifact (clean skips it)."""
        lock, _ = self._files(artifact)
        handle = lock.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle


def _wait(handle, kind: int, deadline: Deadline, what: str, holders: Path) -> None:
    def attempt() -> bool:
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    wait_for(attempt, deadline, what, interval=0.5,
             details=lambda: f"holders: {', '.join(_holders(holders)) or 'unknown'}")


def _touch(lock: Path) -> None:
    """The artifact's last use, in a stamp beside its lock (a lock file is also made by
    whoever only asks whether it is free): the cache's bookkeeping evicts the least
    recently used (cache_book)."""
    used_stamp(lock).touch()


def used_stamp(lock: Path) -> Path:
    return lock.with_suffix(".used")


def _register(holders: Path) -> None:
    holders.mkdir(exist_ok=True)
    (holders / str(os.getpid())).write_text("")


def _unregister(holders: Path) -> None:
    (holders / str(os.getpid())).unlink(missing_ok=True)


def _holders(holders: Path) -> list[str]:
    """The live pids that said they use the artifact (dead ones are swept)."""
    out = []
    for entry in sorted(holders.glob("*")) if holders.is_dir() else []:
        try:
            os.kill(int(entry.name), 0)
        except (ValueError, ProcessLookupError):
            entry.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass
        out.append(f"pid {entry.name}")
    return out
