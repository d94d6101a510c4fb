"""No process of the run outlives its last line, not even as a zombie: the harness adopts
its orphans and waits for them."""

import os
import subprocess
import sys
import textwrap


def test_an_orphaned_grandchild_is_adopted_and_reaped():
    """A child that starts a grandchild and exits without waiting for it (as an L1 worker
    killed with its L0 QEMU does): the grandchild comes to the harness, which reaps it."""
    script = textwrap.dedent("""
        import os, subprocess, sys, time
        from harness.base import reaper
        reaper.adopt_orphans()
        middle = subprocess.Popen([sys.executable, "-c",
            "import subprocess; p = subprocess.Popen(['sleep', '0.5']); print(p.pid)"],
            stdout=subprocess.PIPE, text=True)
        orphan = int(middle.stdout.readline())
        middle.wait()
        assert int(open(f"/proc/{orphan}/stat").read().split()[3]) == os.getpid()
        assert reaper.reap(timeout=10) == []
        assert not os.path.exists(f"/proc/{orphan}")  # gone, not a zombie
        stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30"])
        began = time.monotonic()
        assert reaper.reap(timeout=0.5)[0] == stubborn.pid  # and then its orphaned sleep
        assert time.monotonic() - began < 5 and not os.path.exists(f"/proc/{stubborn.pid}")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.stdout.strip() == "ok", out.stderr
