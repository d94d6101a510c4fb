"""Config cycles as each platform's L2 takes them: ports on q35, ECAM on arm64 virt."""

from harness.l2.pci import BarInfo, PciConfig, ecam_offset
from harness.platforms import AARCH64, X86_64


class Recorder:
    """Stands in for the qtest socket: records each access, answers reads from a table."""

    def __init__(self, answers: dict[int, int] | None = None):
        self.calls: list[tuple] = []
        self.answers = answers or {}
        self.port_address = 0

    def outl(self, port: int, value: int) -> None:
        self.calls.append(("outl", port, value))
        if port == 0xCF8:
            self.port_address = value

    def inl(self, port: int) -> int:
        self.calls.append(("inl", port))
        return self.answers.get(self.port_address, 0xFFFFFFFF)

    def readl(self, addr: int) -> int:
        self.calls.append(("readl", addr))
        return self.answers.get(addr, 0xFFFFFFFF)

    def writel(self, addr: int, value: int) -> None:
        self.calls.append(("writel", addr, value))

    def batch(self, commands):
        """As qtest answers a batch: each command in turn, the text after OK."""
        self.batches = getattr(self, "batches", 0) + 1
        out = []
        for command in commands:
            name, *args = command.split()
            value = getattr(self, name)(*(int(a, 16) for a in args))
            out.append("" if value is None else f"0x{value:x}")
        return out


class ConfigSpace(Recorder):
    """One device's BARs behind the ports, as QEMU sizes them: a write keeps the bits the
    BAR decodes, its flags stay (BAR 0: 4 KiB 32-bit memory, BARs 2-3: 1 MiB 64-bit)."""

    MASKS = {0x10: (0xFFFFF000, 0x0), 0x18: (0xFFF00000, 0x4), 0x1C: (0xFFFFFFFF, 0x0)}

    def __init__(self):
        super().__init__()
        self.regs = {reg: flags for reg, (_, flags) in self.MASKS.items()}

    def inl(self, port: int) -> int:
        self.calls.append(("inl", port))
        return self.regs.get(self.port_address & 0xFC, 0)

    def outl(self, port: int, value: int) -> None:
        super().outl(port, value)
        reg = self.port_address & 0xFC
        if port == 0xCFC and reg in self.MASKS:
            mask, flags = self.MASKS[reg]
            self.regs[reg] = (value & mask) | flags


def test_ecam_offsets_follow_pcie():
    assert ecam_offset(0, 0) == 0
    assert ecam_offset(3, 0x10) == 3 << 15 | 0x10
    assert ecam_offset(0, 0x4, bus=1) == 1 << 20 | 0x4
    assert ecam_offset(0, 0x13) == 0x10  # dword-aligned


def test_arm64_reads_config_space_through_ecam():
    base = AARCH64.l2.ecam
    assert base is not None
    q = Recorder({base + (2 << 15): 0x11E81234})
    pci = PciConfig(q, AARCH64.l2)  # type: ignore[arg-type]
    assert pci.read32(2, 0) == 0x11E81234
    pci.write32(2 | 1 << 5, 0x04, 0x6)   # bus 1, device 2
    assert q.calls == [("readl", base + (2 << 15)),
                       ("writel", base + (1 << 20 | 2 << 15 | 4), 0x6)]


def test_x86_uses_the_config_ports():
    q = Recorder({(1 << 31) | (3 << 11): 0x11101AF4})
    pci = PciConfig(q, X86_64.l2)  # type: ignore[arg-type]
    assert pci.read32(3, 0) == 0x11101AF4
    assert {c[0] for c in q.calls} == {"outl", "inl"}


def test_bars_go_in_the_platforms_window():
    for platform in (X86_64, AARCH64):
        pci = PciConfig(Recorder(), platform.l2)  # type: ignore[arg-type]
        address = pci.assign(1, BarInfo(0, 0x100000, False, False))
        start, end = platform.l2.mmio_window
        assert start <= address < end and address % 0x100000 == 0


def test_bars_are_sized_in_two_batches_and_left_as_they_were():
    """All six BAR registers sized at once (one round trip) and put back (another); the
    upper half of a 64-bit BAR is read from the register after it."""
    q = ConfigSpace()
    q.regs[0x10] = 0xC0000000
    pci = PciConfig(q, X86_64.l2)  # type: ignore[arg-type]
    assert pci.bars(3) == [BarInfo(0, 0x1000, False, False), BarInfo(2, 0x100000, True, False)]
    assert q.batches == 2
    assert q.regs[0x10] == 0xC0000000 and q.regs[0x18] == 0x4 and q.regs[0x1C] == 0


def test_a_bus_is_scanned_in_one_batch():
    q = Recorder({(1 << 31) | (3 << 11): 0x11101AF4})
    pci = PciConfig(q, X86_64.l2)  # type: ignore[arg-type]
    assert [(f.slot, f.vendor_device) for f in pci._scan(0)] == [(3, "1af4:1110")]
    assert q.batches == 1 and len(q.calls) == 64
