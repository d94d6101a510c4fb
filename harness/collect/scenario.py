"""Collect the evidence of one backend on one booted L1: everything the verdicts read.

One L2 per backend serves every check of that backend: the realize-time
evidence (trace, the kernel's view of L2's fds and maps, the memory tree), BAR
access and the P2P transfer come from the same process, in that order, then
the lifecycle steps (lifecycle.py). A second L2 (side_l2.py) has the devices as
the main one must not: edu with x-no-mmap=on, nvme split by a fixture. Nothing
here judges: the verdicts see only the `Evidence` returned, and the list of
what should be there comes from the L1 kernel (`PassedThrough`), not from the
QEMU under test.
"""

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.base import files
from harness.base.errors import HarnessError
from harness.base.progress import say
from harness.checks import registry
from harness.collect import l2_probes, lifecycle, side_l2, vfio_user
from harness.collect.kernel_witness import KernelWitness
from harness.collect.stack import L1Stack
from harness.evidence import kernel_log
from harness.evidence.gathered import Evidence, kernel_has_dmabuf
from harness.evidence.records import (
    DecodeStep,
    KernelProcess,
    L2Run,
    LifecycleStep,
    QemuFacts,
    UnplugCycle,
    parse_messages,
    parse_trace,
)
from harness.evidence.stuck import Hang
from harness.evidence.teardown import Ending, LeftAfter, Teardown, UnplugRevoked
from harness.l1.vfio import Inventory, L1Device
from harness.l2.backends import BACKENDS
from harness.l2.dma_engine import EduEngine
from harness.l2.pci import PciConfig
from harness.l2.qemu import (
    L1_QMP_PORT,
    L1_QTEST_PORT,
    L2_QEMU,
    TRACE_EVENTS,
    Backend,
    L2Device,
    L2Qemu,
    L2Spec,
)
from harness.platforms import EduDevice, IvshmemDevice, NvmeDevice, Platform

#: QEMU's trace of a BAR entering L2's address space, with the address the driver gave it.
BAR_TRACE = "pci_update_mappings*"


@dataclass
class Timer:
    """Seconds per collection step, recorded in every cell's evidence; with a witness, the
    L1 kernel's log and taint read after each step, as that step's."""

    steps: dict[str, float] = field(default_factory=dict)
    witness: KernelWitness | None = None
    current: str = ""  # the step under way (the one a hang is in)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        self.current = name
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - began, 2)
            if self.witness is not None:
                self.witness.read(name)


@dataclass(frozen=True)
class PassedThrough:
    """The devices L1 hands to L2, as the L1 kernel sees them (not as QEMU reports them)."""

    devices: dict[str, str]                       # edu / ivshmem / nvme -> BDF
    probes: dict[str, tuple[bool, str | None]]    # BDF -> VFIO dma-buf probe answer
    bars: dict[str, dict[int, int]]               # BDF -> memory BAR index -> size
    inventory: Inventory
    #: name -> the device as L1 has it once bound to vfio-pci (its cdev): what a vfio-user
    #: server opens.
    bound: dict[str, L1Device] = field(default_factory=dict)

    @property
    def reset_methods(self) -> dict[str, str]:
        """BDF -> how the L1 kernel can reset the device alone ("": it cannot)."""
        return {d.bdf: d.reset_method for d in self.inventory.devices}


@contextlib.contextmanager
def passed_through(stack: L1Stack) -> Iterator[PassedThrough]:
    """edu, ivshmem and nvme bound to vfio-pci for the L2s, and handed back afterwards."""
    wanted = {"edu": EduDevice(), "ivshmem": IvshmemDevice(), "nvme": NvmeDevice()}
    inventory = stack.vfio.inventory([d.vendor_device for d in wanted.values()])
    found = {name: inventory.find(d.vendor_device) for name, d in wanted.items()}
    devices = {name: d.bdf for name, d in found.items()}
    bdfs = list(devices.values())
    bound = {d.bdf: d for d in stack.vfio.bind(bdfs)}
    try:
        probes = stack.vfio.probe_dmabuf(bdfs)
        yield PassedThrough(
            devices, {b: (p.supported, p.error) for b, p in probes.items()},
            {d.bdf: {b.index: b.size for b in d.bars if b.mem} for d in found.values()},
            inventory, {name: bound[bdf] for name, bdf in devices.items() if bdf in bound})
    finally:
        if stack.held:  # unbinding a device a stuck task holds would block as well
            say(f"L1 {stack.viommu.name}/{stack.kernel}: devices left bound ({stack.held})")
        else:
            try:
                stack.vfio.restore(bdfs)
            except HarnessError as e:  # housekeeping on a disposable L1: never the reason
                say(f"L1 {stack.viommu.name}/{stack.kernel}: devices not restored: "
                    f"{e.message}")


def main_spec(be: Backend, devices: dict[str, str], qemu: str,
              traces: tuple[str, ...], platform: Platform) -> L2Spec:
    """The main L2 of a backend, as every cell of it runs (and `shell` starts it)."""
    # ivshmem sits behind a PCIe root port, so that it can be unplugged and plugged again.
    # nvme is there for its reset method (FLR): the reset step resets it for real.
    return L2Spec(be, (L2Device(devices["edu"], "id=edu"),
                       L2Device(devices["ivshmem"],
                                f"id={lifecycle.IVSHMEM_ID},bus={lifecycle.ROOT_PORT}"),
                       L2Device(devices["nvme"], "id=nvme")), qemu=qemu,
                  traces=TRACE_EVENTS + tuple(t for t in traces if t not in TRACE_EVENTS),
                  root_ports=(lifecycle.ROOT_PORT,), platform=platform)


def _creation_run(lines: list[str], stderr: list[str], steps: list[LifecycleStep],
                  unplug: UnplugCycle | None, process: KernelProcess | None,
                  mtree: tuple[str, ...], alive: bool,
                  decode_steps: tuple[DecodeStep, ...],
                  teardown: tuple[Ending, ...] = ()) -> L2Run:
    """The creation-time verdicts read the trace up to the first lifecycle step: what a step
    sets up again (a replugged device's regions and dma-bufs) is its own evidence. So do
    its messages (a replugged BAR's refused mapping warns again)."""
    first = ([s.before for s in steps] + ([unplug.before] if unplug else [])
             + [t.before for t in teardown if isinstance(t, Teardown | UnplugRevoked)])
    marks = [m.trace_line for m in first]
    creation = lines[:min(marks)] if marks and min(marks) >= 0 else lines
    said = [m.stderr_line for m in first]
    stderr = stderr[:min(said)] if said and min(said) >= 0 else stderr
    return L2Run(tuple(parse_trace("\n".join(creation))),
                 tuple(parse_messages("\n".join(stderr))), process, mtree, alive, decode_steps)


#: How long an L2 that failed a step gets to be gone before it counts as stuck.
DYING_S = 5.0


def _hang(stack: L1Stack, l2: L2Qemu, step: str, error: HarnessError) -> Hang | None:
    """The failure of a step as a hang, if that is what it is: L2 still there with a task
    blocked in the kernel (a close, an unplug, an ioctl that never returns leaves QMP or
    qtest unanswered until their deadlines); None for any other failure."""
    try:
        if l2.pid is None or not l2.running():
            return None
        # an L2 that is dying (killed, its exit closing its devices: an FLR sleeps in D
        # state for a while) is gone within moments; one stuck in the kernel is not
        if stack.vfio.wait_gone(l2.pid, DYING_S)[0]:
            return None
    except HarnessError:  # L1 itself is gone: the error says enough
        return None
    stuck = stack.vfio.stuck(l2.pid)
    if stuck.culprit() is None:
        return None
    return Hang(step, error.message, stuck)


def _held(check: str, ending: Ending) -> str:
    """Why the L1 can no longer be used after this teardown ("": it can): a task of L2 that
    did not return holds its devices, and no signal ends it."""
    if ending.completed:
        return ""
    where = ending.stuck.describe() if ending.stuck else "L1 could not say where it waits"
    return f"L2 hung in {check}: {where}"


def _untrusted(timer: Timer) -> str:
    """Why, by what its kernel said so far, the L1 is not to be used for more ("": it is)."""
    return kernel_log.untrusted(timer.witness.windows) if timer.witness is not None else ""


def collect(stack: L1Stack, be: Backend, through: PassedThrough, wanted: set[str], out: Path,
            seed: int, timer: Timer, qemu: str = L2_QEMU,
            facts: QemuFacts | None = None, traces: tuple[str, ...] = ()) -> Evidence:
    """One backend's evidence for the `wanted` checks: an L2 with the three devices, its
    lifecycle steps in the order the registry runs them, then the side L2 if a wanted check
    reads it. `traces`: more events on."""
    if be.sockets is not None:
        return _served(stack, be, through, out, timer, qemu, facts)
    machine = stack.machine
    devices = through.devices
    ports = (machine.host_ports[L1_QMP_PORT], machine.host_ports[L1_QTEST_PORT])
    spec = main_spec(be, devices, qemu, traces, stack.platform)
    bar_access = p2p = None
    steps: dict[str, LifecycleStep] = {}
    unplug: UnplugCycle | None = None
    teardown: dict[str, Ending] = {}
    held = ""                  # why this L1 can no longer be used ("": it can)
    hang: Hang | None = None   # a step that never returned
    not_run: list[str] = []    # checks whose steps an L2 stuck in the kernel took with it
    left: list[LeftAfter] = []  # what L1 held once each L2 no teardown check judges ended
    process: KernelProcess | None = None  # the main L2 as the L1 kernel last saw it
    key = f"{stack.viommu.name}/{stack.kernel}/{be.name}"  # seeds this backend's patterns
    todo = registry.collection(wanted)
    if timer.witness is not None:
        timer.witness.between(f"before the {be.name} L2")
    with timer("l2_start"):
        l2 = L2Qemu(stack.session, spec, out, *ports, watch=stack.vfio)
        l2.start()
    try:
        pci = PciConfig(l2.qtest, l2.spec.platform.l2)
        # Only BAR programming needs these: on at run time, off again after.
        l2.set_trace(BAR_TRACE, True)
        with timer("assign_bars"):
            edu_slot = pci.find(EduDevice().vendor_device)
            iv_slot = pci.find(IvshmemDevice().vendor_device)
            nvme_slot = pci.find(NvmeDevice().vendor_device)
            edu_placed = pci.place(edu_slot)
            iv_placed = pci.place(iv_slot)
            nvme_bar, nvme_bar0 = pci.place(nvme_slot)[0]
            edu_bar, edu_bar0 = edu_placed[0]
            iv_bars = {index: address for index, (_, address) in iv_placed.items()}
        with timer("decode_witness"):
            decode_steps = l2_probes.enable_witnessed(
                stack, l2, pci, [(edu_slot, devices["edu"], True),
                                 (iv_slot, devices["ivshmem"], True),
                                 (nvme_slot, devices["nvme"], True)])
        l2.set_trace(BAR_TRACE, False)
        process = decode_steps[-1].kernel
        with timer("mtree"):
            mtree = l2_probes.mtree(l2)
        edu = EduEngine(l2.qtest, edu_bar0)
        if "bar_access" in todo.creation:
            with timer("bar_access"):
                bar_access = l2_probes.bar_access(l2, edu, iv_bars[0])
        if "p2p" in todo.creation:
            with timer("p2p"):
                p2p = l2_probes.p2p(stack, l2, edu, iv_bars[2], seed, key,
                                    registry.get("p2p-dma").p2p_destination(be.name))
        programmed = lifecycle.Programmed(
            pci, edu_slot, edu_bar, edu_bar0, iv_slot, iv_placed, devices["ivshmem"],
            spec.devices[1], through.reset_methods.get(devices["ivshmem"], ""),
            lifecycle.Resettable(nvme_slot, nvme_bar, nvme_bar0, devices["nvme"],
                                 through.reset_methods.get(devices["nvme"], "")))
        for check in todo.lifecycle:
            with timer(check.name):
                steps[check.name] = lifecycle.run(check, stack, l2, programmed, edu, seed, key,
                                                  be.name)
        for check in todo.last:  # each leaves the device plugged afresh
            if held:  # L2 is stuck in the kernel: nothing more can be asked of it
                not_run.append(check.name)
                continue
            with timer(check.name):
                played = check.step()(stack, l2, programmed, edu, seed, key,
                                      check.p2p_destination(be.name))
            if isinstance(played, UnplugCycle):
                unplug = played
            else:
                teardown[check.name] = played
                held = _held(check.name, played)
        alive = l2.running()
        if todo.end is not None and held:
            not_run.append(todo.end.name)
        elif todo.end is not None:  # it ends L2 its own way
            with timer(todo.end.name):
                ended = todo.end.step()(stack, l2, programmed, devices)
            teardown[todo.end.name] = ended
            held = _held(todo.end.name, ended)
    except HarnessError as e:
        hang = _hang(stack, l2, timer.current, e)
        if hang is None:
            raise l2.explain(e) from None
        held = hang.describe()
    finally:
        with timer("l2_stop"):
            # an L2 that would not end holds its devices in a task no signal ends: no use
            # asking it to quit or waiting for the signals, only for its files
            l2.stop(timeout=1.0, graceful=False) if held else l2.stop()
    untrusted = _untrusted(timer)
    unjudged: list[str] = []
    if hang is None and todo.end is None:  # a plain stop: no teardown check asks after it
        left.append(LeftAfter("l2_stop", stack.vfio.leftover(
            process.exporters if process else ())))
    if hang is not None:  # only the hung step's checks are judged here: on what hung
        hung = {c.name for c in registry.REGISTRY.values()
                if c.own_step == hang.step and c.name in wanted} or set(wanted)
        return Evidence(backend=be.name, devices=devices, kernel_probe=through.probes,
                        main=L2Run((), (), None, (), False), bars=through.bars, qemu=facts,
                        held=held, hang=hang, not_run=tuple(sorted(set(wanted) - hung)),
                        kernel=timer.witness.take() if timer.witness is not None else ())
    lines = files.read(out / "l2-trace.log").splitlines()
    main = _creation_run(lines, files.read(out / "l2-stderr.log").splitlines(),
                         list(steps.values()), unplug, process, mtree, alive, decode_steps,
                         tuple(teardown.values()))
    steps = {check: lifecycle.with_traces(step, lines) for check, step in steps.items()}
    if unplug is not None:
        unplug = lifecycle.unplug_with_traces(unplug, lines)
    teardown = {name: lifecycle.revoked_unplug_with_traces(t, lines)
                if isinstance(t, UnplugRevoked) else t for name, t in teardown.items()}
    for check in todo.alone:  # the devices are L1's alone now: no L2 holds them
        if check.only_backend not in (None, be.name):
            continue
        if held or untrusted:
            (unjudged if untrusted and not held else not_run).append(check.name)
            continue
        with timer(check.name):
            alone = check.step()(stack, devices["ivshmem"])
        teardown[check.name] = alone
        held, untrusted = _held(check.name, alone), _untrusted(timer)
    for check in todo.own:  # an L2 of its own, on the device the main L2 let go
        if check.only_backend not in (None, be.name) or (
                check.needs_dmabuf and kernel_has_dmabuf(through.probes) is False):
            continue
        if held or untrusted:
            (unjudged if untrusted and not held else not_run).append(check.name)
            continue
        with timer(check.name):
            own = check.step()(stack, spec, devices["ivshmem"], out / check.name, ports)
        teardown[check.name] = own
        held, untrusted = _held(check.name, own), _untrusted(timer)
    side = None
    if todo.side and held:
        not_run.extend(c.name for c in registry.in_phase(registry.SIDE, wanted))
    elif todo.side and untrusted:
        unjudged.extend(c.name for c in registry.in_phase(registry.SIDE, wanted))
    elif todo.side:
        with timer("side_l2"):
            side = side_l2.collect(stack, spec, {"edu": devices["edu"], "nvme": devices["nvme"]},
                                   through.bars, out / "side", ports)
            left.append(LeftAfter("side_l2", stack.vfio.leftover(
                side.run.process.exporters if side.run.process else ())))
    return Evidence(backend=be.name, devices=devices, kernel_probe=through.probes, main=main,
                    bar_access=bar_access, p2p=p2p, bars=through.bars, qemu=facts,
                    lifecycle=steps, unplug=unplug, side=side, teardown=teardown,
                    held=held, not_run=tuple(not_run), left=tuple(left),
                    untrusted=untrusted, unjudged=tuple(unjudged),
                    kernel=timer.witness.take() if timer.witness is not None else ())


#: Where the served edu's P2P goes: a vfio-pci BAR (a BAR of another served device comes
#: to the server with no fd, ever: measured, so there is nothing to check there).
P2P_TO = "legacy"


def _served(stack: L1Stack, be: Backend, through: PassedThrough, out: Path, timer: Timer,
            qemu: str, facts: QemuFacts | None) -> Evidence:
    """The vfio-user backend's one L2: edu on the harness's server, ivshmem beside it as
    vfio-pci (so that edu's P2P reaches a kernel BAR), each witness's view (collect/
    vfio_user.py). One L2 serves all its cells: the budget is one L2's time."""
    if timer.witness is not None:
        timer.witness.between(f"before the {be.name} L2")
    with timer("vfio_user"):
        ev = vfio_user.collect(stack, {n: through.bound[n] for n in ("edu", "ivshmem")}, out,
                               qemu=qemu, ivshmem_on=BACKENDS[P2P_TO])
    return Evidence(backend=be.name, devices=through.devices, kernel_probe=through.probes,
                    main=L2Run(ev.run.trace, (), None, (), not ev.l2_end, ()),
                    bars=through.bars, qemu=facts, vfio_user=ev,
                    kernel=timer.witness.take() if timer.witness is not None else ())
