"""Every process the run started is gone, and waited for, before its last line.

L0 QEMUs are started by L1 workers (parallel.py) and die with them; a worker
that is killed leaves its QEMU to be reaped by whoever adopts it. The harness
makes itself that adopter (PR_SET_CHILD_SUBREAPER), so that at the end it can
wait for every descendant itself: no QEMU outlives the run's last line, not
even as a zombie.
"""

import ctypes
import errno
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans(adopt: bool = True) -> None:
    """Orphaned descendants come to this process instead of init (or, `adopt` false,
    no longer do)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(adopt), 0, 0, 0)


def children() -> list[int]:
    """This process's live children, as the kernel lists them."""
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return found


def reap(timeout: float = 15.0) -> list[int]:
    """Wait for every child to end (up to `timeout`), SIGKILL what is left (and what it
    leaves to us), and reap it all. Returns the pids that had to be killed."""
    end = time.monotonic() + timeout
    killed: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if pid:
            continue
        if time.monotonic() > end:  # past it, whatever is (or comes to be) a child is killed
            for child in children():
                if child in killed:
                    continue
                try:
                    os.kill(child, signal.SIGKILL)
                    killed.append(child)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)


def unwind_on_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C (a CI job cancelled, a terminal closed), so
    every QEMU is shut down on the way out."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def reap_all() -> list[int]:
    """`reap`, with a further interrupt meanwhile unable to cut it short."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM,
                                                             signal.SIGHUP)}
    try:
        return reap()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
