"""What a test left running, seen from the test's own process tree, not the machine's.

A test that interrupts a harness asks two things: is any QEMU of its run still
running, and did anything of its run end without being waited for? Asked of the
whole machine, both questions see the L1s of the tests beside it. Asked of the
test's own run they do not: a QEMU is the run's when its command line names the
run's directory, and a zombie is the run's when it came to the test's process,
which adopts the orphans of what it started (PR_SET_CHILD_SUBREAPER) for as long
as the test runs. Without that, an orphan goes to init, which reaps it unseen.
"""

import os
import subprocess
import time
from pathlib import Path

from harness.base import reaper


def qemu_processes_using(path: Path) -> list[str]:
    """The QEMUs whose command line names `path` (a run's results or artifacts)."""
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line]


def _stat(pid: str) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    end = text.rindex(")")
    fields = text[end + 2:].split()
    return text[text.index("(") + 1:end], fields[0], int(fields[1])


def descendants(pid: int) -> set[int]:
    """The live processes below `pid`, now (a process started later is not among them)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None:
            parent[int(entry)] = stat[2]
    found: set[int] = set()
    grew = True
    while grew:
        grew = False
        for child, ppid in parent.items():
            if child not in found and (ppid == pid or ppid in found):
                found.add(child)
                grew = True
    return found


class Orphans:
    """While in its `with`, this process adopts what its runs leave behind (orphans);
    `qemu_zombies` lists the QEMUs among its children that ended and were never waited
    for. On leaving, it stops adopting and waits for what came to it; what was still
    running at the deadline is left in `left`."""

    def __init__(self) -> None:
        self.before = set(reaper.children())
        self.left: list[str] = []

    def __enter__(self) -> "Orphans":
        reaper.adopt_orphans()
        return self

    def __exit__(self, *exc: object) -> None:
        reaper.adopt_orphans(False)
        self.left = self.reap()

    def qemu_zombies(self) -> list[str]:
        """QEMUs that exited and were never waited for: their command line is gone, so
        `qemu_processes_using` cannot see them."""
        return [f"{pid} {stat[0]}" for pid in reaper.children()
                if (stat := _stat(str(pid))) is not None and stat[1] == "Z"
                and stat[0].startswith("qemu-system")]

    def reap(self, timeout: float = 30.0) -> list[str]:
        """Wait for every process that came to the test (a test that SIGKILLs a harness
        on purpose leaves its workers and QEMUs to it), so that none outlives the test as
        a zombie. Returns what was still running at the deadline."""
        end = time.monotonic() + timeout
        while True:
            left = [pid for pid in reaper.children() if pid not in self.before]
            for pid in left:
                stat = _stat(str(pid))
                if stat is None or stat[1] == "Z":
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass
            left = [pid for pid in reaper.children() if pid not in self.before]
            if not left or time.monotonic() > end:
                return [f"{pid} {stat[0]}" for pid in left if (stat := _stat(str(pid)))]
            time.sleep(0.1)

