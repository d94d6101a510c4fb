"""What killed runs leave on a long-lived machine: L0 QEMUs and /dev/shm files nobody owns.

Every L1 boot names its files in /dev/shm after the harness process that made it
(`vfio-harness-PID-NS.ivshmem`, and `.qmp` for a socket whose run directory is too
deep), and its L0 QEMU's command line carries the ivshmem file's path. So the
owner of a QEMU or a file is known without any registry: when that process is
gone (a SIGKILL gives it no chance to clean up), the QEMU still burning a core
and the file still holding its memory are strays. A run sweeps the files of dead
owners as it boots an L1; `doctor` shows both kinds and `doctor --clean` removes
them.
"""

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SHM = Path("/dev/shm")
#: A harness file in /dev/shm, named after the process that made it.
SHM_NAME = re.compile(r"^vfio-harness-(\d+)-\d+\.(?:ivshmem|qmp)$")
#: The same name inside an L0 QEMU's command line (its ivshmem memdev's mem-path).
IN_CMDLINE = re.compile(r"/vfio-harness-(\d+)-\d+\.ivshmem\b")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Stray:
    kind: str        # "L0 QEMU" or "/dev/shm file"
    pid: int | None  # the QEMU's pid
    path: Path | None
    owner: int       # the harness process that made it, gone
    age_s: float

    def describe(self) -> str:
        what = f"L0 QEMU pid {self.pid}" if self.pid else str(self.path)
        return (f"{what}, {_age(self.age_s)} old, left by harness process {self.owner}, "
                f"which is gone: remove with `vfio-harness doctor --clean` "
                f"(or `{self.command()}`)")

    def command(self) -> str:
        return f"kill -9 {self.pid}" if self.pid else f"rm -f {self.path}"

    def remove(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)  # not our child: init reaps it
            except ProcessLookupError:
                pass
        elif self.path:
            self.path.unlink(missing_ok=True)


def shm_files(shm: Path = SHM) -> list[Stray]:
    """/dev/shm files whose harness process is gone."""
    out = []
    now = time.time()
    for path in sorted(shm.glob("vfio-harness-*")):
        m = SHM_NAME.match(path.name)
        if not m or alive(int(m.group(1))):
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        out.append(Stray("/dev/shm file", None, path, int(m.group(1)), age))
    return out


def qemus(proc: Path = Path("/proc")) -> list[Stray]:
    """L0 QEMUs whose harness process is gone."""
    out = []
    boot = time.time() - float((proc / "uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if not argv or not Path(argv[0].decode(errors="replace")).name.startswith(
                "qemu-system-"):
            continue
        m = IN_CMDLINE.search(b" ".join(argv).decode(errors="replace"))
        if not m or alive(int(m.group(1))):
            continue
        started = boot + int(stat.rsplit(")", 1)[1].split()[19]) / ticks
        out.append(Stray("L0 QEMU", int(entry.name), None, int(m.group(1)),
                         time.time() - started))
    return sorted(out, key=lambda s: s.pid or 0)


def find(shm: Path = SHM) -> list[Stray]:
    """Every stray: the QEMUs first (a file a QEMU still maps frees its memory only when
    the QEMU is gone)."""
    return qemus() + shm_files(shm)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
