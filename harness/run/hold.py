"""run --keep-failed: an L1 whose cells did not all meet their expectation is kept up
after them, and the run says how to reach it.

A maintainer wants the machine the failure happened on, not a new boot of it: the
same L1, its dmesg and sysfs as the cells left them. The run holds it until Enter
is pressed on its terminal, or the hold's time is over (a hold is a wait like any
other: it has a deadline), or L1 goes away; then the run goes on as usual and
leaves no QEMU behind.
"""

import select
import shlex
import sys
import time

from harness.base.progress import say
from harness.checks.matrix import CellResult
from harness.collect import stack
from harness.images.store import RootfsImage


def hold(l1: stack.L1Stack, rootfs: RootfsImage, failed: list[CellResult],
         seconds: float) -> str:
    """Keep `l1` up for `failed`; returns why the hold ended."""
    ssh = stack.ssh_command(l1, rootfs, l1.run_dir / "known_hosts", [])
    say(f"L1 {l1.viommu.name}/{l1.kernel} kept up for {len(failed)} cell(s) that did not "
        f"meet their expectation: {', '.join(c.cell.id for c in failed)}")
    say(f"reach it: {shlex.join(ssh)}")
    for c in failed:
        if c.artifacts:
            say(f"{c.cell.id}: its L2's command line and logs in {c.artifacts}")
    say(f"press Enter here to let it go (it goes by itself in {seconds:.0f} s)")
    deadline = time.monotonic() + seconds
    watching = _readable(sys.stdin)
    why = f"the hold's {seconds:.0f} s are over"
    while (left := deadline - time.monotonic()) > 0:
        if not l1.machine.running:
            why = "L1 went away"
            break
        if watching:
            ready, _, _ = select.select([sys.stdin], [], [], min(left, 1.0))
            if ready:
                if sys.stdin.readline():
                    why = "Enter was pressed"
                    break
                watching = False  # end of input: only the deadline ends the hold now
        else:
            time.sleep(min(left, 1.0))
    say(f"L1 {l1.viommu.name}/{l1.kernel}: let go ({why})")
    return why


def _readable(stream) -> bool:
    try:
        return not stream.closed and stream.fileno() >= 0
    except (OSError, ValueError):
        return False
