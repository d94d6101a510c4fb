"""One build step (make, debootstrap, mkfs) run into its log, with progress lines and a
deadline, its whole process group stopped when it fails or is interrupted."""

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.base import files
from harness.base.deadline import Deadline
from harness.base.errors import HarnessError
from harness.base.progress import say


def run(cmd: list[str], out, stage: str, progress: Callable[[], None] | None = None,
         interval: float = 30.0, deadline_s: float = 3600.0) -> None:
    """Run a build step into a log; report progress every `interval` seconds.

    The deadline is generous (a kernel compiles in about 7 minutes here): it is
    there so that a wedged step ends, naming itself, instead of hanging CI.
    """
    deadline = Deadline(stage, deadline_s)
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    # A session of its own, so that an interrupt stops make's compilers too, not only make.
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            try:
                proc.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                if deadline.expired:
                    raise deadline.timeout(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} ... "
                                           f"still running",
                                           details=files.tail(Path(out.name), 20)) from None
                if progress:
                    progress()
    except BaseException:
        kill_group(proc)
        raise
    if proc.returncode != 0:
        out.flush()
        tail = files.tail(Path(out.name), 40) if hasattr(out, "name") else ""
        raise HarnessError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} ... failed "
                           f"(exit {proc.returncode}); full log: {getattr(out, 'name', '?')}",
                           stage=stage, details=tail)


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue


def compile_progress(log: Path, name: str) -> None:
    text = log.read_text(errors="replace").splitlines()
    compiled = sum(1 for line in text if line.startswith("  CC "))
    last = next((line.strip() for line in reversed(text) if line.startswith("  ")), "")
    say(f"kernel {name}: {compiled} files compiled so far; last: {last}")


def last_line(log: Path, prefix: str) -> None:
    last = files.tail(log, 1)
    if last:
        say(f"{prefix}: {last.strip()}")
