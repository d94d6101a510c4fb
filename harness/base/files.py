"""Small file helpers shared by every stage: logs read leniently, shared files written whole."""

import os
import tempfile
from pathlib import Path


def read(path: Path) -> str:
    """A log's text, or "" if it was never written (the stage that writes it failed first)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(read(path).splitlines()[-lines:])


def write_atomic(path: Path, text: str) -> None:
    """Write by rename, so that a reader (another test process, a later run) sees the old
    file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide results from CI viewers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
