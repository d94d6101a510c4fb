"""The dma-buf lifecycle, played on a running L2: a BAR taken away and given back.

Runs after the creation-time evidence, on the same L2 (no L2 start of its own).
Each step takes ivshmem's BAR 2 away the way a guest or QEMU does it (memory
decode off; a reset of L2, which clears the BARs), makes edu try to DMA into it
while it is away, gives it back (decode on; the BARs programmed again at the same
addresses) and runs the P2P transfer once more. Between those acts the L1
kernel's view of L2 (its dma-bufs, and whether the exporter revoked each) and
the position of L2's trace are taken, so the verdicts see exactly what each
act caused. Nothing here judges.

What the code says should happen (QEMU 11.1.3, Linux 7.2): clearing MEM makes
QEMU's PCI core drop the BAR from L2's address space, so the VFIO listener
unmaps it for DMA (vfio_listener_region_del, iommufd_backend_unmap_dma), and the
write reaches vfio-pci, which revokes the BAR's dma-buf (vfio_pci_dma_buf_move);
setting MEM again un-revokes it and QEMU maps the same dma-buf again
(iommufd_backend_map_file_dma, same fd). vfio_region_mmaps_set_enabled is not
part of this path: QEMU calls it for INTx emulation, not for memory decode.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from harness.base.deadline import Deadline, wait_for
from harness.base.qmp import QmpRefused
from harness.collect.l2_probes import (
    bar_access,
    blocked_dma,
    kernel_process,
    p2p,
    p2p_read,
    stage_pattern,
)
from harness.collect.stack import L1Stack
from harness.evidence.records import (
    BlockedDma,
    DeviceReset,
    LifecycleStep,
    Moment,
    TraceRecord,
    UnplugCycle,
    parse_trace,
)
from harness.l2.dma_engine import DmaEngine, EduEngine
from harness.l2.pci import BarInfo, PciConfig
from harness.l2.qemu import L2Device, L2Qemu

if TYPE_CHECKING:
    from harness.checks.registry import Check
    from harness.evidence.teardown import UnplugRevoked

UNPLUG_CYCLES = 5
UNPLUG_DEADLINE_S = 10.0
IVSHMEM_ID = "ivshmem"  # its QOM id in L2 (scenario.py gives it)
#: The PCIe root port ivshmem sits behind, to be hot-pluggable (q35's root bus is not).
ROOT_PORT = "rp0"
#: Where a step's blocked DMA writes: beside its P2P destination (Check.p2p_destination).
BLOCKED = 0x800
RESET_DEADLINE_S = 10.0


#: nvme's CC register: read/write, and cleared by the controller's reset (nvme_ctrl_reset).
#: 0x00460000 sets the queue entry sizes only (EN=0): nothing starts.
NVME_CC, NVME_CC_VALUE = 0x14, 0x00460000
#: nvme's CAP and VS: what edu reads by DMA from its BAR, never zero.
NVME_READ = 16


@dataclass
class Resettable:
    """A device the L1 kernel can reset alone (reset_method not empty), as programmed."""

    slot: int
    bar: BarInfo
    bar0: int
    bdf: str
    reset_method: str


@dataclass
class Programmed:
    """L2's devices as the harness, playing the guest's driver, programmed them."""

    pci: PciConfig
    edu_slot: int
    edu_bar: BarInfo
    edu_bar0: int
    ivshmem_slot: int
    ivshmem_bars: dict[int, tuple[BarInfo, int]]  # index -> (BAR, address in L2)
    ivshmem_bdf: str                              # in L1
    ivshmem: L2Device                             # as L2 was given it (to plug it again)
    reset_method: str = ""                        # L1's sysfs reset_method for ivshmem
    resettable: Resettable | None = None

    def reprogram_edu(self) -> None:
        self.pci.program(self.edu_slot, self.edu_bar, self.edu_bar0)
        self.pci.enable(self.edu_slot)

    def reprogram_ivshmem(self) -> None:
        """Bridges numbered and their windows open again, ivshmem's BARs at their addresses."""
        self.pci.number_bridges()
        for bar, address in self.ivshmem_bars.values():
            self.pci.program(self.ivshmem_slot, bar, address)
        self.pci.enable(self.ivshmem_slot)

    def reprogram_resettable(self) -> None:
        if self.resettable:
            r = self.resettable
            self.pci.program(r.slot, r.bar, r.bar0)
            self.pci.enable(r.slot, master=False)

    def reprogram(self) -> None:
        """What a guest does after a reset: every BAR at its address, decode and mastering on."""
        self.reprogram_edu()
        self.reprogram_ivshmem()
        self.reprogram_resettable()


def moment_of(stack: L1Stack, l2: L2Qemu, bdfs: tuple[str, ...], label: str) -> Moment:
    """The L1 kernel's view of L2 now (its dma-bufs, VFIO fds, where its trace and stderr
    stood) and of each of `bdfs`' command registers (the first's is the moment's own),
    labelled."""
    assert l2.pid is not None
    view = stack.vfio.process(l2.pid, l2.paths.trace, bdfs, l2.paths.stderr)
    return Moment(label, kernel_process(view),
                  view.trace_lines if view.trace_lines is not None else -1,
                  view.commands.get(bdfs[0]) if bdfs else None,
                  view.stderr_lines if view.stderr_lines is not None else -1,
                  {b: view.commands.get(b) for b in bdfs})


def view_at(stack: L1Stack, l2: L2Qemu, dev: Programmed, label: str) -> Moment:
    """The moment of a lifecycle step: ivshmem's command register, and nvme's."""
    others = (dev.resettable.bdf,) if dev.resettable else ()
    return moment_of(stack, l2, (dev.ivshmem_bdf, *others), label)


@dataclass(frozen=True)
class Away:
    """What a step's act left: the BAR taken away (`disabled`), edu's DMA tried into it
    meanwhile, the BAR given back (`enabled`); `device_reset`, read after the P2P that
    follows, is a reset device's evidence, and `reset_method` the one it recorded."""

    disabled: Moment
    blocked: BlockedDma
    enabled: Moment
    device_reset: Callable[[], DeviceReset | None] = lambda: None
    reset_method: str | None = None


#: A step: (stack, l2, devices, edu, seed, key, BAR 2's IOVA, destination, moment) -> Away
Act = Callable[..., Away]


def toggle_decode(stack: L1Stack, l2: L2Qemu, dev: Programmed, edu: DmaEngine, seed: int,
                  key: str, iova: int, dst: int, moment: Callable[[str], Moment]) -> Away:
    """Memory decode off on ivshmem, as a guest driver does it, and on again."""
    staged = stage_pattern(l2, edu, seed, key)
    dev.pci.set_memory(dev.ivshmem_slot, False)
    disabled = moment("memory decode off")
    blocked = blocked_dma(stack, edu, staged, iova + dst + BLOCKED, dst + BLOCKED)
    dev.pci.set_memory(dev.ivshmem_slot, True)
    return Away(disabled, blocked, moment("memory decode on"))


def reset_l2(stack: L1Stack, l2: L2Qemu, dev: Programmed, edu: DmaEngine, seed: int,
             key: str, iova: int, dst: int, moment: Callable[[str], Moment],
             revoked_first: bool = False) -> Away:
    """system_reset of L2, which clears every BAR (and resets nvme by FLR), then the BARs
    programmed again at their addresses. `revoked_first`: every device's memory decode
    turned off before the reset, as a guest's shutdown leaves them before a reboot, so
    that the FLR meets dma-bufs already revoked (the BAR is away from that moment)."""
    r = dev.resettable
    if r:  # a value its reset clears: proof that the device itself was reset
        l2.qtest.writel(r.bar0 + NVME_CC, NVME_CC_VALUE)
        cc_before = l2.qtest.readl(r.bar0 + NVME_CC)
        registers = l2.qtest.read(r.bar0, NVME_READ)
    if revoked_first:
        for slot in (dev.edu_slot, dev.ivshmem_slot, *([r.slot] if r else [])):
            dev.pci.set_memory(slot, False)
        disabled = moment("memory decode off on every device")
    l2.qmp.cmd("system_reset")
    # edu is on the root bus: its BAR reads back 0 once the reset has cleared it (ivshmem,
    # behind a root port that lost its bus numbers, is not even reachable then).
    wait_for(lambda: dev.pci.address(dev.edu_slot, dev.edu_bar) == 0,
             Deadline("L2 reset", RESET_DEADLINE_S), "edu BAR 0 still assigned after "
             "system_reset")
    if not revoked_first:
        disabled = moment("after system_reset")
    # edu comes back first, so that it can try to reach BAR 2 while BAR 2 is still away.
    dev.reprogram_edu()
    staged = stage_pattern(l2, edu, seed, key)
    blocked = blocked_dma(stack, edu, staged, iova + dst + BLOCKED, dst + BLOCKED)
    if r:
        # what L2 read there before: the bytes a DMA let through would bring back
        away = p2p_read(stack, l2, edu, r.bar0, NVME_READ, registers)
    dev.reprogram_ivshmem()  # edu is back already
    dev.reprogram_resettable()
    enabled = moment("BARs programmed again")

    def device_reset() -> DeviceReset | None:
        if not r:
            return None
        read = p2p_read(stack, l2, edu, r.bar0, NVME_READ)
        return DeviceReset(r.bdf, r.reset_method, r.bar.index, r.bar0, NVME_CC,
                           NVME_CC_VALUE, cc_before, l2.qtest.readl(r.bar0 + NVME_CC), away,
                           read)

    return Away(disabled, blocked, enabled, device_reset, dev.reset_method)


def reset_while_revoked(stack: L1Stack, l2: L2Qemu, dev: Programmed, edu: DmaEngine,
                        seed: int, key: str, iova: int, dst: int,
                        moment: Callable[[str], Moment]) -> Away:
    """Every device's memory decode off, then system_reset (nvme reset by FLR with its
    dma-buf already revoked), then the BARs programmed again."""
    return reset_l2(stack, l2, dev, edu, seed, key, iova, dst, moment, revoked_first=True)


def run(check: "Check", stack: L1Stack, l2: L2Qemu, dev: Programmed, edu: EduEngine,
        seed: int, key: str, backend: str) -> LifecycleStep:
    """One lifecycle step (the check's act, between moments, then P2P once the BAR is
    back); its trace slices are filled in by `with_traces` once L2 stopped."""
    bar2, iova = dev.ivshmem_bars[2]
    dst = check.p2p_destination(backend)
    key = f"{key}/{check.name}"

    def moment(label: str) -> Moment:
        return view_at(stack, l2, dev, label)

    before = moment("before")
    away = check.step()(stack, l2, dev, edu, seed, key, iova, dst, moment)
    after = p2p(stack, l2, edu, iova, seed, key, dst)
    access = bar_access(l2, edu, dev.ivshmem_bars[0][1])
    return LifecycleStep(check=check.name, device=dev.ivshmem_bdf, bar=2, iova=iova,
                         size=bar2.size, before=before, disabled=away.disabled,
                         enabled=away.enabled, trace_disabling=(), trace_enabling=(),
                         blocked=away.blocked, after=after, bar_access=access,
                         alive=l2.running(), reset_method=away.reset_method,
                         device_reset=away.device_reset())


def _present(l2: L2Qemu, qom_id: str) -> bool:
    try:
        l2.qmp.cmd("qom-get", path=f"/machine/peripheral/{qom_id}", property="type")
        return True
    except QmpRefused:
        return False


def unplug_ivshmem(stack: L1Stack, l2: L2Qemu, dev: Programmed, held: int) -> None:
    """device_del, completed by what a guest would do (nothing in L2 answers the hotplug
    controller): a reset with ACPI hotplug, as in QEMU's own device-plug test; the slot
    powered off with native hotplug, as pciehp does. Until QOM and then the L1 kernel
    show it gone (L2 held `held` VFIO device fds with it)."""
    assert l2.pid is not None
    l2.qmp.cmd("device_del", id=IVSHMEM_ID)
    if l2.spec.platform.l2.native_hotplug:
        dev.pci.slot_power(dev.ivshmem_slot >> 5, on=False)
        how = "its slot powered off"
    else:
        l2.qmp.cmd("system_reset")
        how = "system_reset"
    wait_for(lambda: not _present(l2, IVSHMEM_ID), Deadline("L2 unplug", UNPLUG_DEADLINE_S),
             f"ivshmem still in L2 after device_del and {how}", interval=0.02)
    closed, _ = stack.vfio.wait_closed(l2.pid, held, UNPLUG_DEADLINE_S)
    if not closed:
        raise Deadline("L2 unplug", UNPLUG_DEADLINE_S).timeout(
            "the L1 kernel still shows ivshmem's VFIO device open in L2 (its fd, "
            "or a task in its release)")


def replug(l2: L2Qemu, dev: Programmed, moment: Callable[[str], Moment] | None = None
            ) -> Moment | None:
    """device_add, then every BAR programmed and decoding on, ivshmem's last; `moment`,
    taken once the other devices decode again and ivshmem does not yet (the reset that
    completed the unplug turned every device's decoding off), is returned."""
    l2.qmp.cmd("device_add", **(dev.ivshmem.backend or l2.spec.backend).device_add(dev.ivshmem))
    if l2.spec.platform.l2.native_hotplug:
        dev.pci.slot_power(dev.ivshmem_slot >> 5, on=True)
    dev.reprogram_edu()
    dev.reprogram_resettable()
    between = moment("plugged, the others decoding") if moment else None
    dev.reprogram_ivshmem()
    return between


def unplug(stack: L1Stack, l2: L2Qemu, dev: Programmed, edu: DmaEngine, seed: int, key: str,
           dst: int, cycles: int = UNPLUG_CYCLES) -> UnplugCycle:
    """ivshmem unplugged and plugged again `cycles` times; the first cycle bracketed by
    moments and followed by a P2P transfer, the last followed by a moment."""
    bar2, iova = dev.ivshmem_bars[2]

    def moment(label: str) -> Moment:
        return view_at(stack, l2, dev, label)

    before = moment("before")
    held = len(before.kernel.vfio_device_fds)
    unplug_ivshmem(stack, l2, dev, held)
    unplugged = moment("unplugged")
    plugged = replug(l2, dev, moment)
    replugged = moment("plugged again")
    after = p2p(stack, l2, edu, iova, seed, f"{key}/dmabuf-unplug", dst)
    for _ in range(cycles - 1):
        unplug_ivshmem(stack, l2, dev, held)
        replug(l2, dev)
    final = moment(f"after {cycles} cycles")
    return UnplugCycle(device=dev.ivshmem_bdf, bar=2, iova=iova, size=bar2.size, before=before,
                       unplugged=unplugged, replugged=replugged, final=final,
                       trace_unplugging=(), trace_replugging=(), after=after, cycles=cycles,
                       plugged=plugged,
                       alive=l2.running())


def _between(lines: list[str], a: int, b: int) -> tuple[TraceRecord, ...]:
    """The trace lines L2 wrote between two moments' positions, parsed (none if either
    position is unknown)."""
    if a < 0 or b < 0:
        return ()
    return tuple(parse_trace("\n".join(lines[a:b])))


def with_traces(step: LifecycleStep, lines: list[str]) -> LifecycleStep:
    """The step with the trace lines L2 wrote between its moments."""
    before, disabled, enabled = (m.trace_line for m in (step.before, step.disabled,
                                                           step.enabled))
    return replace(step, trace_disabling=_between(lines, before, disabled),
                   trace_enabling=_between(lines, disabled, enabled),
                   trace_earlier=_between(lines, 0, before))


def unplug_with_traces(cycle: UnplugCycle, lines: list[str]) -> UnplugCycle:
    before, unplugged, replugged = (m.trace_line for m in (cycle.before, cycle.unplugged,
                                                            cycle.replugged))
    return replace(cycle, trace_unplugging=_between(lines, before, unplugged),
                   trace_replugging=_between(lines, unplugged, replugged),
                   trace_earlier=_between(lines, 0, before))


def revoked_unplug_with_traces(step: "UnplugRevoked", lines: list[str]) -> "UnplugRevoked":
    if step.unplugged is None or step.replugged is None:
        return step
    return replace(step, trace_replugging=_between(lines, step.unplugged.trace_line,
                                                   step.replugged.trace_line))
