"""What the harness is doing, on stderr, with elapsed times.

Long steps (kernel build, debootstrap) can take many minutes on two cores: a
person watching must see which step runs and that it is still alive.
"""

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

_START = time.monotonic()
_LOCK = threading.Lock()  # the rootfs and kernel builds report from two threads


def say(message: str) -> None:
    with _LOCK:
        sys.stderr.write(f"[{time.monotonic() - _START:7.1f}s] {message}\n")
        sys.stderr.flush()


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    say(f"{message} ...")
    began = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"{message}: failed after {time.monotonic() - began:.1f} s")
        raise
    say(f"{message}: done in {time.monotonic() - began:.1f} s")
