"""Where the cache lives: --cache-dir, else $VFIO_HARNESS_CACHE, else the XDG cache; and how
large it may grow: --cache-max, else $VFIO_HARNESS_CACHE_MAX, else 40 GiB."""

import os
from pathlib import Path

from harness.base.errors import BadInput
from harness.base.sizes import parse_size

#: The cache's budget when none is given.
DEFAULT_CACHE_MAX = 40 * 2**30


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


def cache_max(option: int | None = None) -> int:
    """The cache's budget in bytes (the option is parsed already; the environment here)."""
    if option is not None:
        return option
    env = os.environ.get("VFIO_HARNESS_CACHE_MAX")
    if not env:
        return DEFAULT_CACHE_MAX
    try:
        return parse_size(env)
    except ValueError as e:
        raise BadInput(f"VFIO_HARNESS_CACHE_MAX: {e}") from None
