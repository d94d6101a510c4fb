"""L1s side by side: each (vIOMMU, kernel) boot in a child process of its own.

Why processes: each L1 is one TCG vCPU, so two L1s use both cores of a small
machine, and everything about one L1 (its L0 QEMU, SSH session, L2s) stays in
one process that unwinds as the serial run does. Each child runs in its own
process group, so a Ctrl-C reaches only this process, which then asks every
child once (SIGTERM, turned into KeyboardInterrupt there) to shut its QEMUs
down, waits for it, and kills it past a deadline (its L0 QEMU dies with it:
PR_SET_PDEATHSIG). A parent killed outright takes its children with it the same
way (they get SIGTERM and unwind). A child's results come back as they are produced.
"""

import ctypes
import multiprocessing
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from harness.base.errors import BadInput, HarnessError
from harness.base.progress import say

T = TypeVar("T")
R = TypeVar("R")

#: How long a child may take to shut its L2s and L1 down once asked.
SHUTDOWN_DEADLINE = 60.0
PR_SET_PDEATHSIG = 1


def _child(work: Callable[[Any], Iterator[Any]], task: Any, index: int,
           out: "multiprocessing.Queue[tuple[str, int, Any]]", parent: int) -> None:
    os.setpgid(0, 0)  # out of the terminal's process group: the parent relays a Ctrl-C
    # If the parent dies, even by SIGKILL, the kernel sends this child SIGTERM: it unwinds
    # and its L0 QEMU goes with it. A parent already gone before that: nobody to work for.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        # A SIGTERM that came before the handler was there is delivered now, inside the try.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        for item in work(task):
            out.put(("item", index, item))
    except KeyboardInterrupt:
        out.put(("interrupted", index, None))
        return
    except BadInput as e:
        out.put(("bad-input", index, e.message))
        return
    except HarnessError as e:
        out.put(("error", index, (e.message, e.stage, e.details)))
        return
    except Exception:  # a harness bug: the parent shows it as the run's error
        out.put(("error", index, (f"L1 worker crashed: {traceback.format_exc(limit=8)}",
                                  None, "")))
        return
    out.put(("done", index, None))


def run(tasks: list[T], jobs: int, work: Callable[[T], Iterator[R]],
        name: Callable[[T], str]) -> Iterator[R]:
    """What `work` yields for every task, `jobs` tasks at a time, in the order produced."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[tuple[str, int, Any]] = ctx.Queue()
    pending = list(enumerate(tasks))
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                index, task = pending.pop(0)
                child = ctx.Process(target=_child, args=(work, task, index, out, os.getpid()),
                                    name=name(task), daemon=False)
                # The child starts with SIGTERM blocked until its handler is in place.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                try:
                    child.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                running[index] = child
            try:
                kind, index, payload = out.get(timeout=1.0)
            except queue.Empty:
                dead = [c for c in running.values() if not c.is_alive()]
                if not dead:
                    continue
                try:  # its last words may still be in the pipe
                    kind, index, payload = out.get(timeout=5.0)
                except queue.Empty:
                    raise HarnessError(f"the L1 worker for {dead[0].name} died (exit code "
                                       f"{dead[0].exitcode})", stage="parallel L1s") from None
            if kind == "item":
                yield payload
                continue
            running.pop(index).join(timeout=SHUTDOWN_DEADLINE)
            if kind == "bad-input":
                raise BadInput(payload)
            if kind == "error":
                message, stage, details = payload
                raise HarnessError(message, stage=stage, details=details)
            if kind == "interrupted":
                raise KeyboardInterrupt
    finally:
        _stop(list(running.values()))


def _stop(children: list[multiprocessing.process.BaseProcess]) -> None:
    """Ask each child still running to shut down, wait, and kill what is left."""
    for child in children:
        if child.is_alive() and child.pid:
            say(f"stopping L1 {child.name}")
            os.kill(child.pid, signal.SIGTERM)
    end = time.monotonic() + SHUTDOWN_DEADLINE
    for child in children:
        child.join(timeout=max(0.0, end - time.monotonic()))
        if child.is_alive():
            say(f"L1 {child.name}: not stopped after {SHUTDOWN_DEADLINE:g} s, killed")
            child.kill()
            child.join(timeout=10)
