"""Where the cache lives: --cache-dir, else $VFIO_HARNESS_CACHE, else the XDG cache."""

import os
from pathlib import Path


def cache_dir(option: str | None = None) -> Path:
    if option:
        return Path(option).expanduser().resolve()
    if env := os.environ.get("VFIO_HARNESS_CACHE"):
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vfio-harness"
