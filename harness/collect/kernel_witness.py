"""The L1 kernel's log and taint, read after every step, so that what it says is the step's.

One witness per L1 session. Its first read (the boot) and whatever it reads
between the backends' L2s or at the end belong to no cell (`outside`); the
reads after each timed step of a backend are that backend's evidence
(`take`). A read costs one round trip to the guest helper, which keeps
/dev/kmsg open and returns only records it has not returned before. A step that
wants what the kernel said during one act of it (an IOMMU fault during a DMA)
asks the witness too (`now`, `since`): those records still go into the step's
window, and the act costs two helper round trips instead of two SSH commands
running dmesg over the whole log.
"""

import time

from harness.base.errors import HarnessError
from harness.evidence.kernel_log import KernelWindow, LogLine
from harness.l1.vfio import L1Vfio


class KernelWitness:
    def __init__(self, vfio: L1Vfio):
        self.vfio = vfio
        self.seq = -1
        self.tainted = 0
        self.windows: list[KernelWindow] = []
        self.outside: list[KernelWindow] = []
        self.unclaimed: list[LogLine] = []  # read during a step, for that step's window

    def now(self) -> int:
        """Where the kernel's log stands (the last record's sequence number), for `since`:
        one round trip; what it read stays for the step's window. Raises HarnessError if
        L1 cannot answer."""
        self._more()
        return self.seq

    def since(self, seq: int) -> tuple[str, ...]:
        """The kernel's own lines after record `seq`, as dmesg prints them (what userspace
        wrote into the log is left out: it never stands for the kernel's word). Raises
        HarnessError if L1 cannot answer."""
        self._more()
        return tuple(line.printed for line in self.unclaimed if line.seq > seq and line.kernel)

    def _more(self) -> None:
        lines, _ = self.vfio.kernel_log(self.seq)
        if lines:
            self.seq = lines[-1].seq
        self.unclaimed.extend(lines)

    def read(self, step: str) -> None:
        """What the kernel logged since the last read, as the window of `step`."""
        self.windows.append(self._ask(step))

    def between(self, when: str) -> None:
        """A read that belongs to no cell (the boot, between L2s, the end)."""
        self.outside.append(self._ask(when))

    def _ask(self, step: str) -> KernelWindow:
        """Never raises: an L1 that cannot answer gives a window that says why (missing
        evidence)."""
        began = time.monotonic()
        early, self.unclaimed = tuple(self.unclaimed), []
        try:
            lines, tainted = self.vfio.kernel_log(self.seq)
        except HarnessError as e:
            return KernelWindow(step, early, self.tainted, self.tainted, e.message,
                                time.monotonic() - began)
        if lines:
            self.seq = lines[-1].seq
        window = KernelWindow(step, early + lines, self.tainted, tainted,
                              read_s=time.monotonic() - began)
        self.tainted = tainted
        return window

    def take(self) -> tuple[KernelWindow, ...]:
        """The windows read since the last take, for one backend's evidence."""
        taken, self.windows = tuple(self.windows), []
        return taken
