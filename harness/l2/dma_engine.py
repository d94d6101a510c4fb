"""DMA engines the driver can program in L2, behind one small interface.

After the kernel's vfio selftests driver ops: a scenario asks an engine to
copy between bus addresses (IOVAs in L2's address space) and to wait; how the
device does it stays here. edu is the first engine; another device is a class.
"""

import time
from typing import Protocol

from harness.base.errors import HarnessError, StageTimeout
from harness.l2.qtest import Qtest


class DmaEngine(Protocol):
    name: str
    vendor_device: str

    def probe(self) -> None:
        """Check that the BAR really is this device; raise if not."""

    def read_into_device(self, iova: int, size: int) -> None:
        """Copy `size` bytes at bus address `iova` into the device's own buffer."""

    def write_from_device(self, iova: int, size: int) -> None:
        """Copy `size` bytes from the device's buffer to bus address `iova`."""


class EduEngine:
    """hw/misc/edu.c: a 4 KiB buffer at device address 0x40000, DMA on a timer."""

    name = "edu"
    vendor_device = "1234:11e8"
    ID, LIVENESS = 0x00, 0x04
    DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
    CMD_RUN, CMD_TO_PCI = 0x1, 0x2
    BUFFER, BUFFER_SIZE = 0x40000, 4096
    EXPECTED_ID = 0x010000ED
    #: edu runs a DMA on a timer 100 ms of L0's virtual clock after the command (its
    #: dma_rw's timer_mod): asked sooner, the run bit only says "still running", and each
    #: asking is a round trip through L1's TCG that the other L1s wait for.
    DMA_DELAY_S = 0.1
    POLL_S = 0.01

    def __init__(self, qtest: Qtest, bar0: int, timeout: float = 30.0):
        self.qtest = qtest
        self.bar0 = bar0
        self.timeout = timeout

    def identity(self) -> int:
        return self.qtest.readl(self.bar0 + self.ID)

    def liveness(self, value: int) -> int:
        """edu answers the bitwise inverse of what was written: proof that BAR access works."""
        self.qtest.writel(self.bar0 + self.LIVENESS, value)
        return self.qtest.readl(self.bar0 + self.LIVENESS)

    def probe(self) -> None:
        got = self.identity()
        if got != self.EXPECTED_ID:
            raise HarnessError(f"edu BAR0 id reads 0x{got:08x}, not 0x{self.EXPECTED_ID:08x}",
                               stage="L2 DMA")

    def _transfer(self, src: int, dst: int, size: int, to_pci: bool) -> None:
        if not 0 < size <= self.BUFFER_SIZE:
            raise HarnessError(f"edu moves 1..{self.BUFFER_SIZE} bytes, not {size}",
                               stage="L2 DMA")
        q, base = self.qtest, self.bar0
        q.batch([f"writeq 0x{base + register:x} 0x{value:x}" for register, value in (
            (self.DMA_SRC, src), (self.DMA_DST, dst), (self.DMA_COUNT, size),
            (self.DMA_CMD, self.CMD_RUN | (self.CMD_TO_PCI if to_pci else 0)))])
        end = time.monotonic() + self.timeout
        time.sleep(self.DMA_DELAY_S)
        # The transfer runs on L0's virtual-clock timer: poll until the run bit clears.
        while q.readq(base + self.DMA_CMD) & self.CMD_RUN:
            if time.monotonic() > end:
                raise StageTimeout(f"edu DMA still running after {self.timeout:g} s",
                                   stage="L2 DMA")
            time.sleep(self.POLL_S)

    def read_into_device(self, iova: int, size: int) -> None:
        self._transfer(iova, self.BUFFER, size, to_pci=False)

    def write_from_device(self, iova: int, size: int) -> None:
        self._transfer(self.BUFFER, iova, size, to_pci=True)
