"""Everything one backend's run gathered on one L1, as the verdicts receive it.

The pieces are records of their own (records.py: trace, messages, what L1 saw;
teardown.py: how the L2 ended; stuck.py: a step that never returned); this is
the bundle a verdict is a pure function of, and the compact view of it an A/B
comparison diffs.
"""

import re
from dataclasses import dataclass, field

from harness.evidence.kernel_log import KernelWindow
from harness.evidence.records import (
    BarAccess,
    IommufdMap,
    IommufdMapFile,
    L2Run,
    LifecycleStep,
    ListenerAddRam,
    ListenerNoDmaMap,
    Other,
    OtherMessage,
    P2PTransfer,
    QemuFacts,
    RegionDmabuf,
    RegionMmap,
    RegionSetup,
    SideRun,
    TraceRecord,
    Unparsed,
    UnplugCycle,
)
from harness.evidence.stuck import Hang
from harness.evidence.teardown import Ending, LeftAfter
from harness.evidence.vfio_user import VfioUserEvidence


@dataclass(frozen=True)
class Evidence:
    """Everything the verdicts of one (vIOMMU, kernel, backend) are decided from."""

    backend: str
    devices: dict[str, str]               # name (edu, ivshmem) -> L1 BDF
    kernel_probe: dict[str, tuple[bool, str | None]]  # BDF -> (supported, error)
    main: L2Run
    bar_access: BarAccess | None = None
    p2p: P2PTransfer | None = None
    #: The memory BARs of each device as the L1 kernel has them (BDF -> BAR index -> size):
    #: what QEMU must set up, whatever its trace says.
    bars: dict[str, dict[int, int]] = field(default_factory=dict)
    qemu: QemuFacts | None = None
    #: Lifecycle steps run on the same L2 after the creation-time evidence, by check.
    lifecycle: dict[str, LifecycleStep] = field(default_factory=dict)
    unplug: UnplugCycle | None = None
    side: SideRun | None = None           # the second L2: x-no-mmap and multi-range
    #: How the main L2 ended, by the teardown check that ended it (teardown.py).
    teardown: dict[str, Ending] = field(default_factory=dict)
    #: Why the L1 can no longer be used after this backend's L2 ("": it can), and the
    #: checks whose steps did not run because of it (a fresh L1 runs them).
    held: str = ""
    not_run: tuple[str, ...] = ()
    #: Why the L1 kernel is no longer to be trusted ("": it is; kernel_log.untrusted), and
    #: the checks whose steps came after that and were not run: on a kernel that corrupted
    #: its memory they would pass or fail by what the damage did, on any L1 (the steps
    #: before them do it again), so they are not run again elsewhere either.
    untrusted: str = ""
    unjudged: tuple[str, ...] = ()
    #: A step that never returned (stuck.py): the checks it belonged to fail on it alone.
    hang: Hang | None = None
    #: The L1 kernel's log and taint after each step (kernel_log.py), in step order.
    kernel: tuple[KernelWindow, ...] = ()
    #: What L1 still held once each L2 that no teardown check judges had ended.
    left: tuple[LeftAfter, ...] = ()
    #: The vfio-user backend's L2 (collect/vfio_user.py): its devices on the harness's
    #: servers, what each witness saw. None on the kernel backends.
    vfio_user: VfioUserEvidence | None = None

    @property
    def kernel_dmabuf(self) -> bool | None:
        return kernel_has_dmabuf(self.kernel_probe)


def kernel_has_dmabuf(probes: dict[str, tuple[bool, str | None]]) -> bool | None:
    """The kernel's own answer: True if every device supports VFIO dma-buf, False if
    every one answered ENOTTY (the stub of a kernel built without it), None if the
    probe gave no usable answer (no device probed, mixed or other errors)."""
    answers = list(probes.values())
    if not answers:
        return None
    if all(ok for ok, _ in answers):
        return True
    if all(not ok and (err or "").startswith("ENOTTY") for ok, err in answers):
        return False
    return None


# -- a compact, run-independent view of one backend's evidence, for A/B comparison ----------

def _subject(record: TraceRecord) -> str:
    """What a trace record is about, in words stable across runs (no fds, no addresses of
    L2's memory): a region's name, or the IOVA of a mapping and how it ended."""
    if isinstance(record, RegionSetup | RegionDmabuf):
        return record.name
    if isinstance(record, RegionMmap):
        return f"{record.name} mmaps[{record.index}]"
    if isinstance(record, IommufdMapFile | IommufdMap):
        return f"iova {record.iova:#x} size {record.size:#x} -> {record.ret}"
    if isinstance(record, ListenerAddRam):
        return f"{record.start:#x}-{record.end:#x}"
    if isinstance(record, ListenerNoDmaMap):
        return record.name
    return ""


#: Host addresses in QEMU's messages (its container pointer, L2's virtual addresses) differ
#: from run to run; bus addresses in this setup fit in 32 bits.
_HOST_POINTER = re.compile(r"0x[0-9a-fA-F]{10,}")

#: Trace events an A/B report compares, by the name QEMU gives them.
SUMMARY_EVENTS: dict[type, str] = {
    RegionSetup: "vfio_region_setup", RegionMmap: "vfio_region_mmap",
    RegionDmabuf: "vfio_region_dmabuf", IommufdMapFile: "iommufd_backend_map_file_dma",
    IommufdMap: "iommufd_backend_map_dma", ListenerAddRam: "vfio_listener_region_add_ram",
    ListenerNoDmaMap: "vfio_listener_region_add_no_dma_map"}


_DEVICE_OR_REGION = re.compile(r'"([^"]+)"|Device (\S+?),|Region (.+?) mmaps|\b(\d{4}:[0-9a-f]{2}:'
                               r'[0-9a-f]{2}\.\d)\b')


def other_subject(text: str) -> str:
    """The device or region an event line of unknown format is about, if it names one."""
    m = _DEVICE_OR_REGION.search(text)
    return next((g for g in m.groups() if g), "") if m else ""


def summarize(ev: Evidence, extra_events: tuple[str, ...] = ()) -> dict:
    """What one backend's L2 showed, as counts per (event, subject), warnings, the kernel's
    view and the P2P outcome: what an A/B diff names when a cell changes. `extra_events`
    (those a series adds) are counted too, by the device or region they name."""
    events: dict[str, dict[str, int]] = {}
    for r in ev.main.trace:
        if isinstance(r, Unparsed):
            key, subject = f"{r.event} (unparsed)", r.text[:80]
        elif type(r) in SUMMARY_EVENTS:
            key, subject = SUMMARY_EVENTS[type(r)], _subject(r)
        elif isinstance(r, Other) and r.event in extra_events:
            key, subject = r.event, other_subject(r.text)
        else:
            continue
        if isinstance(r, RegionSetup) and not r.size:
            continue  # the empty BARs every device has
        per = events.setdefault(key, {})
        per[subject] = per.get(subject, 0) + 1
    warnings = sorted({_HOST_POINTER.sub("0x...", m.text) for m in ev.main.messages
                       if not isinstance(m, OtherMessage)})
    process = ev.main.process
    return {
        "events": events,
        "warnings": warnings,
        "kernel_dmabufs": sorted(f"{size} bytes from {exp}" for _, size, exp in
                                 process.dmabuf_fds) if process else None,
        "kernel_vfio_maps": process.vfio_map_sizes() if process else None,
        "p2p": None if ev.p2p is None else {
            "arrived": ev.p2p.arrived, "source_reached_file": ev.p2p.source_in_file ==
            ev.p2p.pattern, "engine_error": ev.p2p.engine_error},
        "l2_alive_at_end": ev.main.alive_at_end,
    }
