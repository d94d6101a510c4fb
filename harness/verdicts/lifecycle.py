"""Verdicts on the lifecycle steps (lifecycle.py), decided from evidence alone.

A step passes only if every act of it left its mark: the BAR left L2's DMA map
while it was away (the listener's region_del; iommufd's unmap where it had been
mapped), edu's DMA into it was blocked, the L1 kernel says the BAR's dma-buf
was revoked while the BAR was away and live again after (the same fd and inode
throughout), iommufd mapped that same dma-buf again, and the P2P transfer then
worked, judged exactly as the creation-time one (verdicts.transfer). Missing
evidence is `error`, as everywhere.
"""

from harness.evidence.gathered import Evidence
from harness.evidence.records import (
    IommufdMap,
    IommufdMapFile,
    IommufdUnmap,
    LifecycleStep,
    ListenerAddRam,
    ListenerDel,
    Other,
    RegionDmabuf,
    TraceRecord,
    UnplugCycle,
    of_type,
)
from harness.l2.backends import backend
from harness.verdicts.creation import region_name
from harness.verdicts.p2p import transfer
from harness.verdicts.verdict import Verdict, error_verdict, missing_evidence

PCI_COMMAND_MEMORY = 0x2
#: How each step takes the BAR away, in the words of a reason.
AWAY = {"decode-toggle": "memory decode was off", "reset": "L2 was reset and BAR 2 unassigned",
        "reset-while-revoked": "every device's memory decode was off and L2 was reset"}
BACK = {"decode-toggle": "memory decode came back", "reset": "the BARs were programmed again",
        "reset-while-revoked": "the BARs were programmed again"}
#: The steps that reset L2 (and nvme by FLR).
RESETS = ("reset", "reset-while-revoked")


def _mapped_at(trace: tuple[TraceRecord, ...], iova: int) -> bool:
    """Whether, by the end of `trace`, iommufd had a mapping at `iova` (last event wins)."""
    mapped = False
    for r in trace:
        if isinstance(r, IommufdMapFile | IommufdMap) and r.iova == iova:
            mapped = r.ret == 0
        elif isinstance(r, IommufdUnmap) and r.iova == iova and r.ret == 0:
            mapped = False
    return mapped


def _in_dma_map(trace: tuple[TraceRecord, ...], start: int) -> bool:
    """Whether, by the end of `trace`, the VFIO listener had the region at `start` in L2's
    DMA map (an x-no-mmap BAR never is: it is not RAM to the listener)."""
    mapped = False
    for r in trace:
        if isinstance(r, ListenerAddRam) and r.start == start:
            mapped = True
        elif isinstance(r, ListenerDel) and r.start == start:
            mapped = False
    return mapped


def _bar_dmabuf_fd(ev: Evidence, step: LifecycleStep) -> int | None:
    name = region_name(step.device, step.bar)
    fds = {r.fd for r in of_type(list(ev.main.trace), RegionDmabuf) if r.name == name}
    return next(iter(fds)) if len(fds) == 1 else None


def _dmabuf_problems(ev: Evidence, step: LifecycleStep, errors: list[str]) -> list[str]:
    """What the L1 kernel says of L2's dma-bufs across the step; `errors` gets what it
    could not say."""
    moments = (step.before, step.disabled, step.enabled)
    identities = [sorted(m.kernel.dmabuf_inodes) for m in moments]
    if ev.kernel_dmabuf is False:
        held = [f"{m.label}: {len(m.kernel.dmabuf_fds)}" for m in moments if m.kernel.dmabuf_fds]
        return [f"the L1 kernel shows dma-buf fds in L2 on a kernel without VFIO dma-buf "
                f"({', '.join(held)})"] if held else []
    problems = []
    if identities[0] != identities[1] or identities[0] != identities[2]:
        problems.append("L2's dma-bufs changed across the step (fd, inode): " + "; ".join(
            f"{m.label} {i}" for m, i in zip(moments, identities, strict=True)))
    fd = _bar_dmabuf_fd(ev, step)
    if fd is None and not any(m.kernel.dmabuf_fds for m in moments):
        problems.append("L2 holds no dma-buf on a kernel with VFIO dma-buf (the L1 kernel's "
                        "view at every moment): there was nothing to revoke")
        return problems
    if fd is None:
        errors.append(f"no single vfio_region_dmabuf for {region_name(step.device, step.bar)} "
                      f"in L2's trace: which dma-buf to follow is unknown")
        return problems
    wanted = {"before": "live", "disabled": "revoked", "enabled": "live"}
    for key, m in zip(wanted, moments, strict=True):
        state = dict(m.kernel.dmabuf_states).get(fd)
        if state is None:
            problems.append(f"the L1 kernel shows no dma-buf fd {fd} in L2 at '{m.label}'")
        elif state not in ("live", "revoked", "several-ranges"):
            errors.append(f"the L1 kernel could not be asked about dma-buf fd {fd} at "
                          f"'{m.label}': {state}")
        elif state != wanted[key]:
            problems.append(f"the L1 kernel says BAR {step.bar}'s dma-buf (fd {fd}) was {state} "
                            f"at '{m.label}', not {wanted[key]}")
    if backend(ev.backend).maps_bars_by_dmabuf:
        again = [r for r in of_type(list(step.trace_enabling), IommufdMapFile)
                 if r.iova == step.iova]
        if not any(r.fd == fd and r.ret == 0 for r in again):
            got = ", ".join(f"fd {r.fd} ({r.ret})" for r in again) or "none"
            problems.append(f"iommufd did not map BAR {step.bar}'s dma-buf (fd {fd}) at "
                            f"{step.iova:#x} again once {BACK[step.check]} "
                            f"(iommufd_backend_map_file_dma there: {got})")
    return problems


def _reset_dmabuf(ev: Evidence, step: LifecycleStep, errors: list[str]
                  ) -> tuple[list[str], list[str]]:
    """The reset device's own dma-buf: revoked while it was reset, live again after."""
    dr = step.device_reset
    assert dr is not None
    name = region_name(dr.device, dr.bar)
    fds = {r.fd for r in of_type(list(ev.main.trace), RegionDmabuf) if r.name == name}
    held = any(m.kernel.dmabuf_fds for m in (step.before, step.disabled, step.enabled))
    if len(fds) != 1:  # (none at all: the step's own check says L2 holds no dma-buf)
        if held:
            errors.append(f"no single vfio_region_dmabuf for {name}: which dma-buf to follow "
                          f"is unknown")
        return [], []
    fd = fds.pop()
    states = [dict(m.kernel.dmabuf_states).get(fd)
              for m in (step.before, step.disabled, step.enabled)]
    if states != ["live", "revoked", "live"]:
        return [f"the L1 kernel says {name}'s dma-buf (fd {fd}) was "
                f"{' -> '.join(map(str, states))} across the reset, not "
                f"live -> revoked -> live"], []
    return [], [f"its dma-buf (fd {fd}) revoked and live again"]


def _device_reset(ev: Evidence, step: LifecycleStep, transfer_failed: bool,
                  errors: list[str]) -> tuple[list[str], str]:
    """Problems with the reset of a device that has a reset method, and what was shown."""
    dr = step.device_reset
    assert dr is not None
    problems = []
    if not dr.reset_method:
        errors.append(f"the L1 kernel has no reset method for {dr.device} (sysfs reset_method "
                      f"is empty): a reset of the device itself cannot be shown")
    how = [r for r in of_type(list(step.trace_disabling + step.trace_enabling), Other)
           if (r.event.startswith("vfio_pci_reset_") or r.event.startswith("vfio_pci_hot_reset"))
           and dr.device in r.text]
    if not how:
        problems.append(f"no vfio_pci_reset_flr (nor another way of resetting {dr.device}) in "
                        f"L2's trace after system_reset, though the L1 kernel can reset it "
                        f"({dr.reset_method})")
    if dr.before != dr.written:
        errors.append(f"{dr.device}: register {dr.register:#x} read {dr.before:#x} after "
                      f"{dr.written:#x} was written: a reset cannot be told from it")
    elif dr.after != 0:
        problems.append(f"{dr.device} was not reset: register {dr.register:#x} still reads "
                        f"{dr.after:#x} once its BAR is back (written {dr.written:#x}; the "
                        f"device's reset clears it)")
    for m, decoding in ((step.disabled, False), (step.enabled, True)):
        command = m.commands.get(dr.device)
        if command is None:
            errors.append(f"no command register of {dr.device} from the L1 kernel at "
                          f"'{m.label}'")
        elif bool(command & PCI_COMMAND_MEMORY) != decoding:
            problems.append(f"{dr.device} {'still decodes' if not decoding else 'does not decode'}"
                            f" memory at '{m.label}' (command {command:#06x})")
    shown = [f"{dr.device} (reset_method {dr.reset_method}) reset by QEMU "
             f"({how[0].event if how else 'untraced'}): register {dr.register:#x} "
             f"{dr.written:#x} -> {dr.after:#x}"]
    if ev.kernel_dmabuf:
        revoked, seen = _reset_dmabuf(ev, step, errors)
        problems += revoked
        shown += seen
    if dr.blocked.engine_error:
        problems.append(f"no DMA read of {dr.device} could be tried while its BAR was away: "
                        f"{dr.blocked.engine_error}")
    elif dr.blocked.arrived:
        problems.append(f"edu read {dr.device}'s registers by DMA while its BAR was away "
                        f"({dr.blocked.got.hex()})")
    else:
        shown.append("edu's DMA read of it blocked while away")
    if dr.read.arrived:
        shown.append(f"its registers read by DMA once back ({dr.read.got.hex()})")
    elif not transfer_failed:  # else: BAR 2's P2P failed too, and that failure is the verdict
        problems.append(f"edu's DMA read of {dr.device} once its BAR was back brought "
                        f"{dr.read.got.hex()}, not {dr.read.expected.hex()}"
                        f"{'; ' + dr.read.engine_error if dr.read.engine_error else ''}")
    return problems, ", ".join(shown)


def _step_missing(ev: Evidence, step: LifecycleStep | None, check: str) -> list[str]:
    missing = [] if step is not None else [f"the {check} step was not run"]
    missing += missing_evidence(ev, ev.main)
    if step is not None:
        missing += [f"no trace position at '{m.label}'"
                    for m in (step.before, step.disabled, step.enabled) if m.trace_line < 0]
        if step.blocked is None or step.after is None or step.bar_access is None:
            missing.append(f"the {check} step did not finish its transfers")
    return missing


def _left_the_map(ev: Evidence, step: LifecycleStep, away: str) -> list[str]:
    """QEMU's witness that the BAR left L2's DMA map (and iommufd's IOAS) while away."""
    problems = []
    end = step.iova + step.size - 1
    if _in_dma_map(step.trace_earlier, step.iova) and not any(
            r.start == step.iova and r.end == end
            for r in of_type(list(step.trace_disabling), ListenerDel)):
        problems.append(f"no vfio_listener_region_del of BAR {step.bar} ({step.iova:#x}-{end:#x}) "
                        f"while {away}: it stayed in L2's DMA map")
    by_dmabuf = backend(ev.backend).maps_bars_by_dmabuf
    if by_dmabuf and _mapped_at(step.trace_earlier, step.iova) and not any(
            r.iova == step.iova and r.size == step.size and r.ret == 0
            for r in of_type(list(step.trace_disabling), IommufdUnmap)):
        problems.append(f"iommufd did not unmap BAR {step.bar} at {step.iova:#x} while {away}")
    return problems


def _decoding(step: LifecycleStep, errors: list[str]) -> list[str]:
    """The L1 kernel's witness: the device decodes memory exactly when L2 says it does."""
    problems = []
    for m, decoding in ((step.disabled, False), (step.enabled, True)):
        if m.command is None:
            errors.append(f"no command register of {step.device} from the L1 kernel at "
                          f"'{m.label}'")
        elif bool(m.command & PCI_COMMAND_MEMORY) != decoding:
            problems.append(f"the device {'still decodes' if not decoding else 'does not decode'}"
                            f" memory at '{m.label}' (command {m.command:#06x} as the L1 kernel "
                            f"reads it), while L2 had turned decoding "
                            f"{'off' if not decoding else 'on'}")
    return problems


def _blocked(step: LifecycleStep, away: str) -> list[str]:
    """L0's witness: edu's DMA into the BAR while it was away did not land in ivshmem."""
    blocked = step.blocked
    assert blocked is not None
    if blocked.engine_error:
        return [f"no DMA could be tried while {away}: {blocked.engine_error}"]
    if blocked.arrived:
        return [f"edu's DMA reached BAR {step.bar} while {away}: the "
                f"{len(blocked.pattern)} bytes landed at file offset "
                f"{blocked.dst_offset:#x}"]
    return []


def _step_evidence(step: LifecycleStep, after: Verdict, reset_shown: str) -> dict:
    blocked = step.blocked
    assert blocked is not None
    return {
        "device": step.device, "bar": step.bar, "iova": hex(step.iova), "size": step.size,
        "moments": {m.label: {"trace_line": m.trace_line, "command": m.command,
                              "dmabufs": list(m.kernel.dmabuf_inodes),
                              "states": list(m.kernel.dmabuf_states),
                              "fd_count": m.kernel.fd_count}
                    for m in (step.before, step.disabled, step.enabled)},
        "blocked_dma": {"iova": hex(blocked.iova), "pattern": blocked.pattern.hex(),
                        "read_back": blocked.after.hex(), "l1_dmesg": list(blocked.l1_dmesg)},
        "after": after.evidence, "reset_method": step.reset_method,
        "trace_disabling": len(step.trace_disabling), "trace_enabling": len(step.trace_enabling),
        "device_reset": None if step.device_reset is None else {
            "device": step.device_reset.device, "reset_method": step.device_reset.reset_method,
            "register": hex(step.device_reset.register),
            "written": hex(step.device_reset.written), "before": hex(step.device_reset.before),
            "after": hex(step.device_reset.after),
            "blocked_read": step.device_reset.blocked.got.hex(),
            "read_after": step.device_reset.read.got.hex(),
            "registers": step.device_reset.read.expected.hex(),
            "summary": reset_shown},
    }


def _step(ev: Evidence, check: str) -> Verdict:
    step = ev.lifecycle.get(check)
    missing = _step_missing(ev, step, check)
    if missing:
        return error_verdict(missing)
    assert step is not None and step.blocked is not None and step.after is not None
    away = AWAY[check]
    errors: list[str] = []
    problems = [] if step.alive else [f"L2 died during the {check} step"]
    problems += _left_the_map(ev, step, away) + _decoding(step, errors) + _blocked(step, away)
    problems += _dmabuf_problems(ev, step, errors)
    resets = [r for r in of_type(list(step.trace_disabling + step.trace_enabling), Other)
              if r.event == "vfio_pci_reset" and step.device in r.text]
    if check in RESETS and not resets:
        problems.append(f"no vfio_pci_reset of {step.device} in L2's trace after system_reset")
    after = transfer(ev, step.after, step.trace_enabling)
    reset_shown = ""
    if check in RESETS and step.device_reset is not None:
        more, reset_shown = _device_reset(ev, step, after.observed != "pass", errors)
        problems += more
    if errors:
        return error_verdict(errors)
    fd = _bar_dmabuf_fd(ev, step)
    evidence = _step_evidence(step, after, reset_shown)
    grounds = (f"L2 trace: {len(step.trace_disabling)} line(s) while {away}, "
               f"{len(step.trace_enabling)} while {BACK[check]}",
               "L1 kernel: L2's dma-bufs at 3 moments (fdinfo; revoke state by a private "
               "IOMMU_IOAS_MAP_FILE of a copy of each fd)",
               f"L0: the ivshmem file at {step.blocked.dst_offset:#x} (blocked DMA) and "
               f"{step.after.dst_offset:#x} (P2P after)") + after.grounds
    if problems:  # not the transfer's findings: an expected failure must fail for its reason
        return Verdict("fail", "; ".join(problems), evidence, frozenset(), grounds)
    if after.observed != "pass":
        return Verdict(after.observed, f"once {BACK[check]}: {after.reason}", evidence,
                       after.findings, grounds)
    revoked = (f"its dma-buf (fd {fd}) revoked and live again, the same fd and inode, "
               if ev.kernel_dmabuf and fd is not None else "")
    device_reset = ""
    if check in RESETS:
        device_reset = (f"; QEMU reset {step.device} (vfio_pci_reset; L1 reset_method: "
                        f"{step.reset_method or 'none, so the device itself was not reset'})")
        if reset_shown:
            device_reset += f"; {reset_shown}"
    return Verdict("pass", f"BAR {step.bar} left L2's DMA map while {away}, {revoked}edu's DMA "
                           f"into it was blocked, and once {BACK[check]}: {after.reason}"
                           f"{device_reset}", evidence, after.findings, grounds)


def _replug_witness(cycle: UnplugCycle, name: str, fd: int, ino: int | None) -> str | None:
    """Why the replugged device's new dma-buf is not its own ("" if it is; None if the
    witness was not taken): VFIO keeps a device's dma-bufs revoked until it decodes memory,
    so the new one must be revoked while the other devices decode again and it does not
    yet, and live once it does (checked by the caller)."""
    plugged = cycle.plugged
    if plugged is None or plugged.command is None:
        return None
    if plugged.command & 0x2:
        return ""  # it decodes already: this witness cannot tell (the step's checks stand)
    if dict(plugged.kernel.dmabuf_inodes).get(fd) != ino:
        return None  # not yet the dma-buf QEMU traced: nothing to compare
    state = dict(plugged.kernel.dmabuf_states).get(fd)
    if state == "revoked":
        return ""
    return (f"the new dma-buf of {name} (fd {fd}, inode {ino}) was {state or 'absent'} "
            f"while the other devices decoded memory again and {cycle.device} did not yet "
            f"(command {plugged.command:#06x}): the L1 kernel does not tie it to that "
            f"device's BAR")


#: A problem the unplug cycle shows, and the finding it is (None: not a known one).
Problem = tuple[str, str | None]


def _unplug_missing(ev: Evidence, cycle: UnplugCycle | None) -> list[str]:
    missing = [] if cycle is not None else ["the unplug cycle was not run"]
    missing += missing_evidence(ev, ev.main)
    if cycle is not None:
        missing += [f"no trace position at '{m.label}'" for m in
                    (cycle.before, cycle.unplugged, cycle.replugged, cycle.final)
                    if m.trace_line < 0]
        if cycle.after is None:
            missing.append("no P2P transfer after the device came back")
    return missing


def _device_gone(cycle: UnplugCycle, name: str) -> list[Problem]:
    """QEMU's witness (the region's exit and finalize) and the kernel's (one device fd
    fewer) that the device itself went."""
    problems: list[Problem] = []
    if not cycle.alive:
        problems.append(("L2 died during the unplug cycles", None))
    for event in ("vfio_region_exit", "vfio_region_finalize"):
        if not any(isinstance(r, Other) and r.event == event and f"Device {cycle.device}, "
                   f"region {cycle.bar}" in r.text for r in cycle.trace_unplugging):
            problems.append((f"no {event} for {name} in L2's trace after device_del", None))
    gone = len(cycle.before.kernel.vfio_device_fds) - len(cycle.unplugged.kernel.vfio_device_fds)
    if gone != 1:
        problems.append((f"the L1 kernel shows {gone} VFIO device fd(s) closed by the unplug "
                         f"(before {list(cycle.before.kernel.vfio_device_fds)}, after "
                         f"{list(cycle.unplugged.kernel.vfio_device_fds)}), not the device's "
                         f"one", None))
    return problems


def _dmabufs_across(ev: Evidence, cycle: UnplugCycle, name: str
                    ) -> tuple[list[Problem], str | None, int | None, int | None]:
    """The device's dma-buf followed across the cycle: the old one closed with the device,
    a new live one after device_add, tied to the device's BAR. Returns the problems, why
    the question cannot be answered (or None), and the old and new fds."""
    problems: list[Problem] = []
    created = [r for r in of_type(list(ev.main.trace), RegionDmabuf) if r.name == name]
    old_fd = created[0].fd if created else None
    inodes_before = dict(cycle.before.kernel.dmabuf_inodes)
    inodes_unplugged = dict(cycle.unplugged.kernel.dmabuf_inodes)
    new = [r for r in of_type(list(cycle.trace_replugging), RegionDmabuf) if r.name == name]
    new_fd = new[0].fd if new else None
    if not ev.kernel_dmabuf:
        if any(m.kernel.dmabuf_fds for m in (cycle.before, cycle.replugged, cycle.final)):
            problems.append(("the L1 kernel shows dma-buf fds in L2 on a kernel without VFIO "
                             "dma-buf", None))
        return problems, None, old_fd, new_fd
    if not inodes_before:
        problems.append((f"L2 holds no dma-buf on a kernel with VFIO dma-buf (the L1 kernel's "
                         f"view before the unplug): there is none of {name} to follow", None))
        return problems, None, old_fd, new_fd
    if old_fd is None:
        return problems, (f"no vfio_region_dmabuf for {name} in L2's trace: which of L2's "
                          f"dma-bufs {sorted(inodes_before)} to follow is unknown"), None, new_fd
    if old_fd not in inodes_before:
        problems.append((f"the fd {old_fd} QEMU traced as the dma-buf of {name} is not a "
                         f"dma-buf in the L1 kernel's view (it shows {sorted(inodes_before)})",
                         None))
        return problems, None, old_fd, new_fd
    if inodes_unplugged.get(old_fd) == inodes_before[old_fd]:
        problems.append((f"the dma-buf of {name} (fd {old_fd}, inode "
                         f"{inodes_before[old_fd]}) is still open in L2 after the device "
                         f"was unplugged and its device fd closed (the L1 kernel's fdinfo)",
                         "dmabuf-outlives-device"))
    if new_fd is None:
        problems.append((f"no vfio_region_dmabuf for {name} once it was plugged again", None))
        return problems, None, old_fd, new_fd
    state = dict(cycle.replugged.kernel.dmabuf_states).get(new_fd)
    ino = dict(cycle.replugged.kernel.dmabuf_inodes).get(new_fd)
    if state != "live" or ino in inodes_before.values():
        problems.append((f"the L1 kernel shows the new dma-buf of {name} (fd "
                         f"{new_fd}) as {state or 'absent'}, inode {ino}: not a "
                         f"new live dma-buf", None))
    witness = _replug_witness(cycle, name, new_fd, ino)
    if witness is None:
        return problems, (f"no L1 kernel view between the replug and {name}'s device "
                          f"decoding memory: whose the new dma-buf is cannot be told"), \
            old_fd, new_fd
    if witness:
        problems.append((witness, None))
    return problems, None, old_fd, new_fd


def _fds_flat(ev: Evidence, cycle: UnplugCycle) -> list[Problem]:
    """More cycles must leave L2's fd count where the first replug left it."""
    grown = cycle.final.kernel.fd_count - cycle.replugged.kernel.fd_count
    leaked = len(cycle.final.kernel.dmabuf_fds) - len(cycle.replugged.kernel.dmabuf_fds)
    if not grown:
        return []
    # dma-bufs left behind explain the growth only if the leak is the known one
    leak = "dmabuf-outlives-device" if grown == leaked and ev.kernel_dmabuf else None
    return [(f"L2's fds grew from {cycle.replugged.kernel.fd_count} to "
             f"{cycle.final.kernel.fd_count} over {cycle.cycles - 1} more "
             f"unplug/plug cycles ({leaked} of them dma-bufs)", leak)]


def _unplug_evidence(cycle: UnplugCycle, after: Verdict) -> dict:
    return {
        "device": cycle.device, "cycles": cycle.cycles,
        "moments": {m.label: {"trace_line": m.trace_line, "fd_count": m.kernel.fd_count,
                              "vfio_device_fds": list(m.kernel.vfio_device_fds),
                              "dmabufs": list(m.kernel.dmabuf_inodes),
                              "states": list(m.kernel.dmabuf_states)}
                    for m in (cycle.before, cycle.unplugged, cycle.replugged, cycle.final)},
        "plugged": cycle.plugged and {
            "trace_line": cycle.plugged.trace_line, "command": cycle.plugged.command,
            "dmabufs": list(cycle.plugged.kernel.dmabuf_inodes),
            "states": list(cycle.plugged.kernel.dmabuf_states),
            "fd_count": cycle.plugged.kernel.fd_count,
            "vfio_device_fds": list(cycle.plugged.kernel.vfio_device_fds)},
        "after": after.evidence,
    }


def dmabuf_unplug(ev: Evidence) -> Verdict:
    """The device goes (its regions exited and finalized, its device fd closed, its dma-bufs
    closed), comes back with new dma-bufs, P2P works, and cycles leave L2's fds flat."""
    cycle = ev.unplug
    missing = _unplug_missing(ev, cycle)
    if missing:
        return error_verdict(missing)
    assert cycle is not None and cycle.after is not None
    dev, name = cycle.device, region_name(cycle.device, cycle.bar)
    problems = _device_gone(cycle, name)
    followed, unanswered, old_fd, new_fd = _dmabufs_across(ev, cycle, name)
    if unanswered:
        return error_verdict([unanswered])
    problems += followed + _fds_flat(ev, cycle)
    after = transfer(ev, cycle.after, cycle.trace_replugging)
    evidence = _unplug_evidence(cycle, after)
    grounds = (f"L2 trace: {len(cycle.trace_unplugging)} line(s) while unplugging, "
               f"{len(cycle.trace_replugging)} while plugging again",
               "L1 kernel: L2's fds, VFIO device fds and dma-bufs (fdinfo, revoke state) at 4 "
               "moments") + after.grounds
    if problems:
        if after.observed != "pass":  # a known bug must not hide a broken replug
            problems.append((f"once the device was plugged again: {after.reason}", None))
        findings = {f for _, f in problems}
        known = frozenset(f for f in findings if f) if None not in findings else frozenset()
        return Verdict("fail", "; ".join(p for p, _ in problems), evidence, known, grounds)
    if after.observed != "pass":
        return Verdict(after.observed, f"once the device was plugged again: {after.reason}",
                       evidence, after.findings, grounds)
    dmabufs = (f"its dma-buf (fd {old_fd}) closed, a new one (fd {new_fd}) live after "
               f"device_add, " if ev.kernel_dmabuf and new_fd is not None else "")
    return Verdict("pass", f"{dev} unplugged: regions exited and finalized, its device fd "
                           f"closed, {dmabufs}and once plugged again: {after.reason}; "
                           f"{cycle.cycles} cycles left L2 at {cycle.final.kernel.fd_count} "
                           f"fds", evidence, after.findings, grounds)


def decode_toggle(ev: Evidence) -> Verdict:
    return _step(ev, "decode-toggle")


def reset(ev: Evidence) -> Verdict:
    return _step(ev, "reset")


def reset_while_revoked(ev: Evidence) -> Verdict:
    return _step(ev, "reset-while-revoked")
