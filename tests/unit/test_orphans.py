"""The VM tests' zombie check can fail, and sees only the test's own run.

A harness that exits without waiting for its QEMU leaves a zombie. The VM tests
that interrupt a harness ask for it through the `orphans` fixture, which makes
the test's process the adopter of what its runs orphan; here a process named like
QEMU is left unwaited by its parent, on purpose."""

import os
import shutil
import subprocess
import sys
import textwrap
import time

from tests.vm.processes import Orphans, descendants


def _leave_a_qemu_zombie(tmp_path) -> tuple[subprocess.Popen, int]:
    """A parent that starts `qemu-system-x86_64` (sleep 2, by another name) and exits
    once it has ended, never waiting for it."""
    fake = tmp_path / "qemu-system-x86_64"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([{str(fake)!r}, "2"])
        print(child.pid, flush=True)
        while open(f"/proc/{{child.pid}}/stat").read().split()[2] != "Z":
            time.sleep(0.01)
        os._exit(0)  # the zombie is left to whoever adopts it
    """)], stdout=subprocess.PIPE, text=True)
    return parent, int(parent.stdout.readline())


def test_a_qemu_never_waited_for_is_the_tests_zombie_until_reaped(tmp_path):
    with Orphans() as adopted:
        parent, pid = _leave_a_qemu_zombie(tmp_path)
        assert pid in descendants(parent.pid)  # while it sleeps, below its parent
        parent.wait(timeout=30)
        end = time.monotonic() + 10
        while not adopted.qemu_zombies() and time.monotonic() < end:
            time.sleep(0.05)
        assert adopted.qemu_zombies() == [f"{pid} qemu-system-x86"]  # comm is 15 bytes
    assert adopted.left == [] and adopted.qemu_zombies() == []
    assert not os.path.exists(f"/proc/{pid}")


def test_what_was_a_child_before_the_test_is_not_the_tests_to_reap():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        adopted = Orphans()
        began = time.monotonic()
        assert adopted.reap(timeout=5) == [] and time.monotonic() - began < 1
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
