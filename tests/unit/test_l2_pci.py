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
