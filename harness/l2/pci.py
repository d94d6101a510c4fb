"""PCI configuration space of L2, driven through qtest: the guest driver's part.

With `-accel qtest` nothing in L2 assigns BARs or enables decoding, so the
harness does what firmware and a driver would: configuration cycles (through
ports 0xcf8/0xcfc, or ECAM where the platform's L2 layout has one), bus numbers
and a memory window for each bridge on bus 0 (the hot-pluggable root port), BAR
sizing, address assignment, MEM and bus-master enable. A function is named by one
int, `bus << 5 | device`, so that callers need not care which bus it is on.
"""

from dataclasses import dataclass

from harness.base.errors import HarnessError
from harness.l2.qtest import Qtest
from harness.platforms import L2Layout

CONFIG_ADDRESS, CONFIG_DATA = 0xCF8, 0xCFC
VENDOR_ID, COMMAND, HEADER_TYPE, BAR0 = 0x00, 0x04, 0x0C, 0x10
BUS_NUMBERS, MEMORY_WINDOW, PREF_WINDOW, PREF_BASE_UPPER, PREF_LIMIT_UPPER = \
    0x18, 0x20, 0x24, 0x28, 0x2C
CMD_MEMORY, CMD_MASTER = 0x2, 0x4
CAP_POINTER, CAP_PCIE, SLOT_CONTROL = 0x34, 0x10, 0x18
#: Slot Control: Power Indicator Control (on 01b, off 11b), Power Controller Control (1: off).
SLTCTL_PIC, SLTCTL_PIC_ON, SLTCTL_PIC_OFF, SLTCTL_PCC = 0x300, 0x100, 0x300, 0x400
WINDOW_GRANULE = 1 << 20  # a bridge's memory window is in 1 MiB units


@dataclass(frozen=True)
class BarInfo:
    index: int
    size: int
    is_64bit: bool
    is_io: bool


@dataclass(frozen=True)
class PciFunction:
    slot: int
    vendor_device: str


def config_address(slot: int, reg: int, bus: int = 0, fn: int = 0) -> int:
    return (1 << 31) | (bus << 16) | (slot << 11) | (fn << 8) | (reg & 0xFC)


def ecam_offset(slot: int, reg: int, bus: int = 0, fn: int = 0) -> int:
    """PCI Express ECAM: 1 MiB per bus, 32 KiB per device, 4 KiB per function."""
    return (bus << 20) | (slot << 15) | (fn << 12) | (reg & 0xFFC)


def location(bus: int, device: int) -> int:
    return bus << 5 | device


def decode_bar_size(low: int, high: int = 0xFFFFFFFF) -> tuple[int, bool, bool]:
    """(size, 64-bit, io) from what a BAR reads back after all ones were written."""
    if low & 0x1:
        mask = low & 0xFFFFFFFC
        return ((~mask & 0xFFFF) + 1 if mask else 0), False, True
    is_64 = (low >> 1) & 0x3 == 0x2
    mask = (low & 0xFFFFFFF0) | ((high << 32) if is_64 else 0xFFFFFFFF00000000)
    if not low & 0xFFFFFFF0 and not (is_64 and high):
        return 0, is_64, False
    return ((~mask) & 0xFFFFFFFFFFFFFFFF) + 1, is_64, False


class PciConfig:
    def __init__(self, qtest: Qtest, layout: L2Layout):
        self.qtest = qtest
        self.layout = layout
        self._next = layout.mmio_window[0]
        self._bridges: dict[int, int] = {}              # secondary bus -> bridge
        self._windows: dict[int, tuple[int, int]] = {}  # secondary bus -> (start, end)

    def _reads(self, slot: int, reg: int) -> list[str]:
        """The qtest commands of one config read (its value is the last one's answer)."""
        if self.layout.ecam is not None:
            return [f"readl 0x{self.layout.ecam + ecam_offset(slot & 31, reg, slot >> 5):x}"]
        return [f"outl 0x{CONFIG_ADDRESS:x} 0x{config_address(slot & 31, reg, slot >> 5):x}",
                f"inl 0x{CONFIG_DATA:x}"]

    def _writes(self, slot: int, reg: int, value: int) -> list[str]:
        if self.layout.ecam is not None:
            return [f"writel 0x{self.layout.ecam + ecam_offset(slot & 31, reg, slot >> 5):x} "
                    f"0x{value:x}"]
        return [f"outl 0x{CONFIG_ADDRESS:x} 0x{config_address(slot & 31, reg, slot >> 5):x}",
                f"outl 0x{CONFIG_DATA:x} 0x{value:x}"]

    def _run(self, accesses: list[list[str]]) -> list[int | None]:
        """Config accesses sent as one qtest batch (one round trip); each read's value, in
        order (None for a write)."""
        answers = self.qtest.batch([c for access in accesses for c in access])
        out: list[int | None] = []
        at = 0
        for access in accesses:
            at += len(access)
            last = answers[at - 1]
            out.append(int(last, 16) if access[-1].startswith(("inl", "readl")) else None)
        return out

    def read32(self, slot: int, reg: int) -> int:
        value = self._run([self._reads(slot, reg)])[0]
        assert value is not None
        return value

    def write32(self, slot: int, reg: int, value: int) -> None:
        self._run([self._writes(slot, reg, value)])

    def _scan(self, bus: int) -> list[PciFunction]:
        """Every device number of `bus` asked in one batch."""
        ids = self._run([self._reads(location(bus, device), VENDOR_ID) for device in range(32)])
        return [PciFunction(location(bus, device), f"{i & 0xFFFF:04x}:{i >> 16:04x}")
                for device, i in enumerate(ids) if i is not None and i & 0xFFFF != 0xFFFF]

    def number_bridges(self) -> None:
        """Give each bridge on bus 0 a secondary bus of its own (what firmware does), and
        its memory window back if one was opened (after a reset cleared them)."""
        found = self._scan(0)
        headers = self._run([self._reads(f.slot, HEADER_TYPE) for f in found])
        bridges = [f.slot for f, h in zip(found, headers, strict=True)
                   if h is not None and (h >> 16) & 0x7F == 1]
        for n, bridge in enumerate(bridges, start=1):
            self.write32(bridge, BUS_NUMBERS, (n << 16) | (n << 8))
            self._bridges[n] = bridge
            if n in self._windows:
                self._open(n)

    def functions(self) -> list[PciFunction]:
        if not self._bridges:
            self.number_bridges()
        return [f for bus in (0, *self._bridges) for f in self._scan(bus)]

    def find(self, vendor_device: str) -> int:
        for f in self.functions():
            if f.vendor_device == vendor_device:
                return f.slot
        raise HarnessError(f"L2 has no PCI device {vendor_device} (vfio-pci did not realize?)",
                           stage="L2 PCI")

    def bars(self, slot: int) -> list[BarInfo]:
        """Every BAR register sized as firmware does (all ones written, read back, the
        original put back), the six in one batch; the upper half of a 64-bit BAR is the
        next register's answer."""
        accesses = []
        for index in range(6):
            reg = BAR0 + 4 * index
            accesses += [self._reads(slot, reg), self._writes(slot, reg, 0xFFFFFFFF),
                         self._reads(slot, reg)]
        values = self._run(accesses)
        originals = values[0::3]
        sized = values[2::3]
        self._run([self._writes(slot, BAR0 + 4 * i, v) for i, v in enumerate(originals)
                   if v is not None])
        out, index = [], 0
        while index < 6:
            low = sized[index]
            assert low is not None
            is_64 = not low & 1 and (low >> 1) & 0x3 == 0x2 and index < 5
            high = sized[index + 1] if is_64 else 0xFFFFFFFF
            assert high is not None
            size, is_64, is_io = decode_bar_size(low, high)
            if size:
                out.append(BarInfo(index, size, is_64, is_io))
            index += 2 if is_64 else 1
        return out

    def assign(self, slot: int, bar: BarInfo) -> int:
        """Give a memory BAR an address in L2's MMIO window, aligned to its size."""
        if bar.is_io:
            raise HarnessError(f"slot {slot} BAR {bar.index} is an I/O BAR", stage="L2 PCI")
        align = max(bar.size, 0x1000)
        address = (self._next + align - 1) & ~(align - 1)
        if address + bar.size > self.layout.mmio_window[1]:
            raise HarnessError("L2 MMIO window exhausted", stage="L2 PCI")
        self._next = address + bar.size
        self.program(slot, bar, address)
        return address

    def program(self, slot: int, bar: BarInfo, address: int) -> None:
        """Put a BAR at `address` (again, after a reset cleared it)."""
        reg = BAR0 + 4 * bar.index
        self.write32(slot, reg, address & 0xFFFFFFFF)
        if bar.is_64bit:
            self.write32(slot, reg + 4, address >> 32)

    def address(self, slot: int, bar: BarInfo) -> int:
        """Where a memory BAR is now (0: nowhere, as after a reset)."""
        reg = BAR0 + 4 * bar.index
        low = self.read32(slot, reg) & 0xFFFFFFF0
        return low | ((self.read32(slot, reg + 4) << 32) if bar.is_64bit else 0)

    def set_memory(self, slot: int, enabled: bool) -> int:
        """Memory decode on or off, as a driver toggles it; the command register before."""
        command = self.read32(slot, COMMAND) & 0xFFFF
        self.write32(slot, COMMAND, (command | CMD_MEMORY) if enabled else
                     (command & ~CMD_MEMORY))
        return command

    def place(self, slot: int) -> dict[int, tuple[BarInfo, int]]:
        """Size and assign every memory BAR of a function (index -> (BAR, address)); behind
        a bridge, in a window of its own that the bridge is opened for."""
        bus = slot >> 5
        if bus:
            self._next = -(-self._next // WINDOW_GRANULE) * WINDOW_GRANULE
        start = self._next
        placed = {b.index: (b, self.assign(slot, b)) for b in self.bars(slot) if not b.is_io}
        if bus:
            self._next = -(-self._next // WINDOW_GRANULE) * WINDOW_GRANULE
            self._windows[bus] = (start, self._next - 1)
            self._open(bus)
        return placed

    def _open(self, bus: int) -> None:
        """The bridge's memory window over what was placed behind it (the prefetchable
        window closed: QEMU routes by address, whatever a BAR's prefetchability)."""
        bridge = self._bridges[bus]
        start, end = self._windows[bus]
        limit, base = (end >> 16) & 0xFFF0, (start >> 16) & 0xFFF0
        self.write32(bridge, MEMORY_WINDOW, (limit << 16) | base)
        self.write32(bridge, PREF_WINDOW, 0x0000FFF0)
        self.write32(bridge, PREF_BASE_UPPER, 0)
        self.write32(bridge, PREF_LIMIT_UPPER, 0)
        self.enable(bridge)

    def capability(self, slot: int, cap_id: int) -> int | None:
        """Where a function's capability is in its config space (None: it has none)."""
        at, seen = self.read32(slot, CAP_POINTER) & 0xFC, set()
        while at and at not in seen:
            seen.add(at)
            header = self.read32(slot, at)
            if header & 0xFF == cap_id:
                return at
            at = (header >> 8) & 0xFC
        return None

    def slot_power(self, bus: int, on: bool) -> None:
        """Power the slot of the root port above `bus` on or off, as pciehp does: with the
        power indicator off and the power controller off, QEMU completes a pending
        unplug; a device plugged into a slot that is off is powered when it comes on."""
        bridge = self._bridges[bus]
        cap = self.capability(bridge, CAP_PCIE)
        if cap is None:
            raise HarnessError(f"the bridge above bus {bus} has no PCIe capability",
                               stage="L2 PCI")
        control = self.read32(bridge, cap + SLOT_CONTROL) & 0xFFFF & ~(SLTCTL_PIC | SLTCTL_PCC)
        control |= SLTCTL_PIC_ON if on else SLTCTL_PIC_OFF | SLTCTL_PCC
        self.write32(bridge, cap + SLOT_CONTROL, control)  # status bits (RW1C) written 0

    def enable(self, slot: int, memory: bool = True, master: bool = True) -> None:
        command = self.read32(slot, COMMAND) & 0xFFFF
        command |= (CMD_MEMORY if memory else 0) | (CMD_MASTER if master else 0)
        self.write32(slot, COMMAND, command)
