"""L2's trace lines and messages as typed records.

Verdicts judge by trace events first and messages second, so both are parsed
here, once, into records a verdict can count and compare. Message wordings of
QEMU 11.0 and 11.1 are both accepted. Lines that match nothing are kept as
`Other`, so nothing L2 said is lost from the evidence; but a line of a known
event that no longer matches its format is `Unparsed`, and a warning about
dma-buf in an unknown wording is `UnknownDmabufWarning`: the verdicts report
both as such, rather than counting them as absent.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field

# -- trace events -------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionSetup:
    device: str
    region: int
    name: str
    flags: int
    offset: int
    size: int


@dataclass(frozen=True)
class RegionMmap:
    name: str
    index: int
    start: int
    end: int  # inclusive

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class RegionDmabuf:
    device: str
    fd: int
    region: int
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class ListenerAddRam:
    start: int
    end: int  # inclusive
    vaddr: int


@dataclass(frozen=True)
class ListenerNoDmaMap:
    name: str
    iova: int
    size: int


@dataclass(frozen=True)
class IommufdMapFile:
    iova: int
    size: int
    fd: int
    ret: int


@dataclass(frozen=True)
class IommufdMap:
    iova: int
    size: int
    vaddr: int
    ret: int


@dataclass(frozen=True)
class ListenerDel:
    start: int
    end: int  # inclusive


@dataclass(frozen=True)
class IommufdUnmap:
    iova: int
    size: int
    ret: int


@dataclass(frozen=True)
class Other:
    event: str
    text: str


@dataclass(frozen=True)
class Unparsed:
    """A line of an event the verdicts read, in a format this harness does not know."""

    event: str
    text: str


TraceRecord = (RegionSetup | RegionMmap | RegionDmabuf | ListenerAddRam | ListenerNoDmaMap
               | IommufdMapFile | IommufdMap | ListenerDel | IommufdUnmap | Unparsed | Other)

_HEX = r"0x[0-9a-fA-F]+"
_TRACE = re.compile(r"^(?:\d+@[\d.]+:)?(?P<event>[a-z0-9_]+) ?(?P<rest>.*)$")
_PATTERNS = {
    "vfio_region_setup": (re.compile(
        rf'Device (?P<device>\S+), region (?P<region>\d+) "(?P<name>[^"]*)", '
        rf"flags: (?P<flags>{_HEX}), offset: (?P<offset>{_HEX}), size: (?P<size>{_HEX})"),
        RegionSetup),
    "vfio_region_mmap": (re.compile(
        rf"Region (?P<name>.*) mmaps\[(?P<index>\d+)\] \[(?P<start>{_HEX}) - (?P<end>{_HEX})\]"),
        RegionMmap),
    "vfio_region_dmabuf": (re.compile(
        rf'Device (?P<device>\S+), dmabuf fd (?P<fd>-?\d+) region (?P<region>\d+) '
        rf'"(?P<name>[^"]*)", offset: (?P<offset>{_HEX}), size: (?P<size>{_HEX})'),
        RegionDmabuf),
    "vfio_listener_region_add_ram": (re.compile(
        rf"region_add \[ram\] (?P<start>{_HEX}) - (?P<end>{_HEX}) \[(?P<vaddr>{_HEX})\]"),
        ListenerAddRam),
    "vfio_listener_region_add_no_dma_map": (re.compile(
        rf'Region "(?P<name>[^"]*)" (?P<iova>{_HEX}) size=(?P<size>{_HEX})'),
        ListenerNoDmaMap),
    "iommufd_backend_map_file_dma": (re.compile(
        rf"iova=(?P<iova>{_HEX}) size=(?P<size>{_HEX}) fd=(?P<fd>-?\d+) .*\((?P<ret>-?\d+)\)$"),
        IommufdMapFile),
    "vfio_listener_region_del": (re.compile(
        rf"region_del (?P<start>{_HEX}) - (?P<end>{_HEX})"),
        ListenerDel),
    "iommufd_backend_unmap_dma": (re.compile(
        rf"iova=(?P<iova>{_HEX}) size=(?P<size>{_HEX}) \((?P<ret>-?\d+)\)$"),
        IommufdUnmap),
    "iommufd_backend_map_dma": (re.compile(
        rf"iova=(?P<iova>{_HEX}) size=(?P<size>{_HEX}) addr=(?P<vaddr>{_HEX}) "
        rf".*\((?P<ret>-?\d+)\)$"),
        IommufdMap),
}


def _convert(value: str) -> int | str:
    if value.startswith("0x"):
        return int(value, 16)
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def parse_trace_line(line: str) -> TraceRecord | None:
    line = line.strip()
    m = _TRACE.match(line)
    if not m:
        return None
    event, rest = m.group("event"), m.group("rest").strip()
    if event in _PATTERNS:
        pattern, cls = _PATTERNS[event]
        fields = pattern.search(rest)
        if fields:
            return cls(**{k: (_convert(v) if k not in ("name", "device") else v)
                          for k, v in fields.groupdict().items()})
        return Unparsed(event, rest)
    return Other(event, rest)


def parse_trace(text: str) -> list[TraceRecord]:
    return [r for r in map(parse_trace_line, text.splitlines()) if r is not None]


# -- messages on stderr ----------------------------------------------------------------


@dataclass(frozen=True)
class DmabufNotSupported:
    """The kernel has no VFIO dma-buf (ENOTTY); QEMU says so once per process."""

    text: str


@dataclass(frozen=True)
class DmabufUnavailable:
    """One region's dma-buf failed for another reason (a sub-page BAR: EINVAL)."""

    region: str
    error: str
    text: str


@dataclass(frozen=True)
class IoasMapFailed:
    error: str
    text: str


@dataclass(frozen=True)
class ContainerDmaMapFailed:
    iova: int
    size: int
    ret: int
    text: str


@dataclass(frozen=True)
class P2PNotSupported:
    device: str
    text: str


@dataclass(frozen=True)
class TraceEventUnknown:
    """`-trace NAME` for an event this QEMU does not have (a series adds it, say)."""

    event: str
    text: str


@dataclass(frozen=True)
class UnknownDmabufWarning:
    """A message about dma-buf or the mmap fallback in a wording none of the patterns know:
    a known warning reworded, or a new one. Never silently 'no warning'."""

    text: str


@dataclass(frozen=True)
class OtherMessage:
    text: str


Message = (DmabufNotSupported | DmabufUnavailable | IoasMapFailed | ContainerDmaMapFailed
           | P2PNotSupported | TraceEventUnknown | UnknownDmabufWarning | OtherMessage)

# 11.1 says "P2P DMA will not work"; 11.0 said "PCI BAR IOMMU mappings may fail".
_CONSEQUENCE = r"(?:P2P DMA will not work|PCI BAR IOMMU mappings may fail)"
_PREFIX = re.compile(r"^(?:\S*qemu-system-\S+: )?(?:-device \S+: )?(?:warning: )?")
_MESSAGES: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], Message]]] = [
    (re.compile(rf"VFIO dma-buf not supported in kernel, using mmap fallback, {_CONSEQUENCE}"),
     lambda m, t: DmabufNotSupported(t)),
    (re.compile(rf"^(?P<region>.+?): dma-buf unavailable, using mmap fallback, {_CONSEQUENCE}"
                r"(?:: (?P<error>.*))?$"),
     lambda m, t: DmabufUnavailable(m.group("region"), m.group("error") or "", t)),
    (re.compile(r"IOMMU_IOAS_MAP failed: (?P<error>[^,]+)"),
     lambda m, t: IoasMapFailed(m.group("error"), t)),
    (re.compile(rf"vfio_container_dma_map\({_HEX}, (?P<iova>{_HEX}), (?P<size>{_HEX}), "
                rf"{_HEX}\) = (?P<ret>-?\d+)"),
     lambda m, t: ContainerDmaMapFailed(int(m.group("iova"), 16), int(m.group("size"), 16),
                                        int(m.group("ret")), t)),
    (re.compile(r"^(?P<device>\S+): PCI peer-to-peer transactions on BARs are not supported"),
     lambda m, t: P2PNotSupported(m.group("device"), t)),
    (re.compile(r"trace event '(?P<event>[^']+)' does not exist"),
     lambda m, t: TraceEventUnknown(m.group("event"), t)),
]


#: What makes a line a dma-buf warning whatever its wording.
_DMABUF_FAMILY = re.compile(r"dma-?buf|mmap fallback", re.IGNORECASE)


def parse_message(line: str) -> Message | None:
    text = line.strip()
    if not text:
        return None
    body = _PREFIX.sub("", text, count=1)
    for pattern, make in _MESSAGES:
        m = pattern.search(body)
        if m:
            return make(m, text)
    if _DMABUF_FAMILY.search(body):
        return UnknownDmabufWarning(text)
    return OtherMessage(text)


def parse_messages(text: str) -> list[Message]:
    return [m for m in map(parse_message, text.splitlines()) if m is not None]


def of_type(records: list, cls: type) -> list:
    return [r for r in records if isinstance(r, cls)]


# -- what one L2 session on one backend observed -------------------------------------------


@dataclass(frozen=True)
class BarAccess:
    """BAR registers read and written through L2's mmaps (qtest -> vfio-pci -> device)."""

    edu_id: int
    liveness_written: int
    liveness_read: int
    ivshmem_bar0_written: int | None = None
    ivshmem_bar0_read: int | None = None


@dataclass(frozen=True)
class P2PTransfer:
    """edu copied `size` bytes from ivshmem BAR 2 + src_offset to BAR 2 + dst_offset."""

    seed: int
    size: int
    bar2_iova: int
    src_offset: int
    dst_offset: int
    pattern: bytes
    source_in_file: bytes   # what L0 read at src_offset after L2 wrote the pattern
    before: bytes           # the destination in the file before the DMA (zeroed by L0)
    after: bytes            # the destination in the file after the DMA
    l1_dmesg: tuple[str, ...]  # what L1's kernel logged during the DMA (IOMMU faults)
    engine_error: str | None = None  # why the DMA engine was not started, if it was not

    @property
    def arrived(self) -> bool:
        return self.after == self.pattern


@dataclass(frozen=True)
class KernelProcess:
    """What the L1 kernel says the L2 process holds (from /proc/PID/fd, fdinfo and maps)."""

    dmabuf_fds: tuple[tuple[int, int, str | None], ...]  # (fd, size, exporter)
    vfio_maps: tuple[str, ...]  # the /proc/PID/maps lines of VFIO device mappings
    #: (fd, inode) of each dma-buf: the same fd number for a new dma-buf has another inode.
    dmabuf_inodes: tuple[tuple[int, int], ...] = ()
    #: (fd, live | revoked | several-ranges | why not known): the kernel's answer to a
    #: private IOMMU_IOAS_MAP_FILE of a copy of the fd.
    dmabuf_states: tuple[tuple[int, str], ...] = ()
    fd_count: int = -1
    vfio_device_fds: tuple[int, ...] = ()

    @property
    def exporters(self) -> tuple[str, ...]:
        """Who exported the dma-bufs it holds, as the kernel names them: whose dma-bufs to
        look for in the kernel once the process is gone."""
        return tuple(sorted({e for _, _, e in self.dmabuf_fds if e}))

    def vfio_map_sizes(self) -> list[int]:
        """Sizes of the process's mappings of VFIO device fds: its BAR mmaps, as the kernel
        sees them (not as QEMU reports them)."""
        sizes = []
        for line in self.vfio_maps:
            span = line.split(maxsplit=1)[0] if line.strip() else ""
            start, _, end = span.partition("-")
            try:
                sizes.append(int(end, 16) - int(start, 16))
            except ValueError:
                continue
        return sorted(sizes)


@dataclass(frozen=True)
class Moment:
    """One point of a lifecycle step: the L1 kernel's view of L2, and how many trace lines
    L2 had written by then (the trace between two moments is what happened between them)."""

    label: str
    kernel: KernelProcess
    trace_line: int
    command: int | None  # the device's PCI command register as the L1 kernel reads it
    stderr_line: int = -1  # how many lines of stderr L2 had written by then
    #: The command register of each device asked about (BDF -> value; the first's is
    #: `command`), as the L1 kernel reads them.
    commands: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockedDma:
    """edu's DMA to BAR 2 while the BAR was disabled (its dma-buf revoked, if it has one):
    the bytes must not reach the ivshmem file."""

    iova: int
    dst_offset: int
    pattern: bytes
    before: bytes
    after: bytes
    l1_dmesg: tuple[str, ...]
    engine_error: str | None = None

    @property
    def arrived(self) -> bool:
        return self.after == self.pattern


@dataclass(frozen=True)
class DeviceReset:
    """A device the L1 kernel can reset alone (nvme: FLR), reset through VFIO_DEVICE_RESET
    by L2's system_reset: a register the reset clears, written through L2 before; edu's DMA
    read from its BAR while the BAR is away (must not get through) and once it is back."""

    device: str                   # L1 BDF
    reset_method: str             # the L1 kernel's sysfs reset_method
    bar: int
    iova: int
    register: int                 # offset in the BAR (nvme: CC)
    written: int
    before: int                   # the register read back through L2 before the reset
    after: int                    # and once the BAR is back
    blocked: "P2PRead"
    read: "P2PRead"


@dataclass(frozen=True)
class LifecycleStep:
    """One pass through a path that takes a BAR away from L2 and gives it back (memory
    decode off and on; a reset of L2 and the BARs programmed again), on ivshmem's BAR 2."""

    check: str                          # decode-toggle | reset
    device: str                         # L1 BDF of the device whose BAR goes and comes back
    bar: int
    iova: int                           # where the BAR is in L2, before and after
    size: int
    before: Moment
    disabled: Moment
    enabled: Moment
    trace_disabling: tuple[TraceRecord, ...]  # trace lines between `before` and `disabled`
    trace_enabling: tuple[TraceRecord, ...]   # between `disabled` and `enabled`
    blocked: BlockedDma | None
    after: P2PTransfer | None           # P2P once the BAR is back
    bar_access: BarAccess | None        # edu and ivshmem registers once the BAR is back
    alive: bool                         # L2 still running at the end of the step
    reset_method: str | None = None     # the L1 kernel's reset_method for the device
    trace_earlier: tuple[TraceRecord, ...] = ()  # the trace before `before` (what was mapped)
    device_reset: DeviceReset | None = None  # reset: a device that has a reset method


@dataclass(frozen=True)
class UnplugCycle:
    """ivshmem unplugged from L2 (device_del, completed by a reset as QEMU's own
    device-plug test does it) and plugged again (device_add), then `cycles - 1` more
    such cycles with nothing else done, to see whether L2's fds stay flat."""

    device: str                          # L1 BDF
    bar: int
    iova: int                            # BAR 2 in L2, before and after
    size: int
    before: Moment
    unplugged: Moment                    # once QOM and the L1 kernel show the device gone
    replugged: Moment                    # plugged again and its BARs programmed
    final: Moment                        # after the further cycles
    trace_unplugging: tuple[TraceRecord, ...]
    trace_replugging: tuple[TraceRecord, ...]
    after: P2PTransfer | None            # P2P once the device is back
    cycles: int
    alive: bool
    trace_earlier: tuple[TraceRecord, ...] = ()
    #: Plugged again, before the driver gave it memory decode: its new dma-buf must be
    #: revoked here and live at `replugged` (the attribution witness across a replug).
    plugged: Moment | None = None


@dataclass(frozen=True)
class DecodeStep:
    """The L1 kernel's view of L2 at one moment while the devices were given memory decode
    one at a time: which dma-bufs it calls live or revoked then, and whose command register
    it reads with MEM on. VFIO's exporter keeps a device's dma-bufs revoked while that
    device does not decode, so a dma-buf that goes live exactly when one device starts
    decoding is that device's, whatever QEMU says it is."""

    kernel: KernelProcess
    commands: dict[str, int | None]  # BDF -> PCI command register, as the L1 kernel reads it

    def decoding(self, bdf: str) -> bool | None:
        command = self.commands.get(bdf)
        return None if command is None else bool(command & 0x2)


@dataclass(frozen=True)
class L2Run:
    """Evidence of one L2 process: its trace, its messages and what L1 saw of it."""

    trace: tuple[TraceRecord, ...]
    messages: tuple[Message, ...]
    process: KernelProcess | None
    mtree_mmaps: tuple[str, ...]  # memory regions named "... mmaps[N]" in `info mtree`
    alive_at_end: bool
    #: Before any device decoded memory, then after each one started: the attribution
    #: witness (the last step's view is `process`).
    decode_steps: tuple[DecodeStep, ...] = ()


@dataclass(frozen=True)
class P2PRead:
    """edu read `expected`'s length by DMA from a BAR at `iova` and copied it to L2's RAM
    (`got`); `expected` is what L2 read at the same place through the BAR's mmap. The RAM
    destination is cleared first and edu's buffer holds other bytes, so nothing but the
    DMA can make them equal."""

    iova: int
    expected: bytes
    got: bytes
    l1_dmesg: tuple[str, ...]
    engine_error: str | None = None

    @property
    def arrived(self) -> bool:
        return self.got == self.expected and any(self.expected)


@dataclass(frozen=True)
class SideRun:
    """A backend's second L2 (side_l2.py): edu with x-no-mmap=on, and a device whose MSI-X
    BAR QEMU mmaps around the table (the msix-split fixture hides MSIX_MAPPABLE from this
    L2), which edu reads by DMA."""

    devices: dict[str, str]             # edu / nvme -> L1 BDF
    bars: dict[str, dict[int, int]]     # BDF -> memory BAR index -> size (the L1 kernel's)
    device: str                         # the BDF of the device with the split BAR
    bar: int
    iova: int                           # where that BAR is in L2
    run: L2Run
    withheld: tuple[str, ...]           # what the fixture says it withheld (stderr)
    read: P2PRead | None                # edu's DMA read from the split BAR's first piece


#: The origin of the QEMU under test when it is the rootfs's own (QemuUnderTest.origin;
#: otherwise the local path it was uploaded from): what runs, results and A/Bs compare.
PACKAGED = "packaged in the rootfs"


@dataclass(frozen=True)
class QemuFacts:
    """What the QEMU under test said of itself before any L2 ran (qemu_under_test.probe)."""

    version: str
    has_dmabuf_event: bool      # `-trace help` lists vfio_region_dmabuf
    has_iommufd_object: bool    # `-object help` lists iommufd
