"""Where the cache lives: --cache-dir, else $VFIO_HARNESS_CACHE, else the XDG cache."""

import os
from pathlib import Path

from harness.base.errors import BadInput


def cache_dir(option: str | None = None) -> Path:
    if option:
        where, path = "--cache-dir", Path(option).expanduser().resolve()
    elif env := os.environ.get("VFIO_HARNESS_CACHE"):
        where, path = "VFIO_HARNESS_CACHE", Path(env).expanduser().resolve()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        where, path = "the XDG cache", Path(xdg) / "vfio-harness"
    # A file there would otherwise read as an empty cache ("not built") and fail later,
    # somewhere in a build, with an error about a path below it.
    if path.exists() and not path.is_dir():
        raise BadInput(f"the image cache {path} ({where}) is not a directory")
    return path
