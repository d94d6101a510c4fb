"""Verdicts on how an L2 ended (collect/teardown.py), decided from evidence alone.

What the kernel must do when a device is closed while its dma-bufs are revoked
(Linux 7.2, drivers/vfio/pci/vfio_pci_dmabuf.c): vfio_pci_core_close_device
calls vfio_pci_dma_buf_cleanup, which drains each dma-buf through the revoke
path (idempotent for one already revoked), detaches it from the device and
drops the device registration it held; the dma-buf itself lives on only while
a file refers to it, and QEMU's files close with it. So once L2 has quit: it
ended within its deadline and with status 0, no VFIO dma-buf is left in the
kernel (debugfs lists none) and no process holds a VFIO fd, and each device
opens again (with a live dma-buf of a BAR where the kernel offers them). The
kernel's own reports during the quit are the witness's (kernel_health.py), as
for every cell.
"""

from harness.evidence.gathered import Evidence
from harness.evidence.records import Moment
from harness.evidence.stuck import Stuck
from harness.evidence.teardown import ClosedBeforeUnmap, Leftover, Teardown, UnplugRevoked
from harness.verdicts.p2p import transfer
from harness.verdicts.verdict import HUNG, LEFT, Verdict, error_verdict, missing_evidence

PCI_COMMAND_MEMORY = 0x2
#: What a device opened afresh answers where the kernel offers no VFIO dma-buf.
NO_DMABUF = "opened (the kernel offers no dma-buf)"


def _record(t: Teardown) -> dict:
    return {"teardown": {
        "check": t.check, "devices": t.devices, "ended": t.ended, "waited_s": t.waited_s,
        "deadline_s": t.deadline_s, "quit_error": t.quit_error,
        "dmabufs_before": [list(s) for s in t.before.kernel.dmabuf_states],
        "dmabufs_revoked": [list(s) for s in t.revoked.kernel.dmabuf_states],
        "commands_revoked": t.revoked.commands,
        "stuck": t.stuck.record() if t.stuck else None,
        "leftover": t.leftover.record() if t.leftover else None,
        "reopened": t.reopened}}


def _revocation_problems(ev: Evidence, t: Teardown) -> list[str]:
    """Whether the act did what it claims: every device stopped decoding (as the L1 kernel
    reads each one's command register) and every dma-buf L2 held was revoked."""
    problems = []
    still = [bdf for bdf, cmd in t.revoked.commands.items()
             if cmd is not None and cmd & PCI_COMMAND_MEMORY]
    if still:
        problems.append(f"memory decode still on in the L1 kernel's view of {', '.join(still)} "
                        f"after L2 turned it off")
    states = dict(t.revoked.kernel.dmabuf_states)
    if ev.kernel_dmabuf is False:
        if states:
            problems.append(f"L2 holds {len(states)} dma-buf fd(s) on a kernel without VFIO "
                            f"dma-buf")
        return problems
    if not t.before.kernel.dmabuf_states:
        problems.append("L2 holds no dma-buf on a kernel with VFIO dma-buf: there was nothing "
                        "to revoke before the quit")
    live = sorted(fd for fd, state in states.items() if state != "revoked")
    if live:
        problems.append(f"with memory decode off everywhere the L1 kernel still calls L2's "
                        f"dma-buf fd(s) {live} not revoked ("
                        + ", ".join(f"fd {fd}: {states[fd]}" for fd in live) + ")")
    return problems


def left_behind(leftover: Leftover | None) -> tuple[list[str], str]:
    """(what L1 still held once L2 was gone, as problems; why L1 could not say, or "")."""
    if leftover is None or leftover.error:
        return [], leftover.error if leftover else "not asked"
    if leftover.dmabufs or leftover.holders:
        return [f"after L2 ended (waited {leftover.waited_s:g} s): {leftover.describe()}"], ""
    return [], ""


def where(stuck: Stuck | None) -> str:
    return stuck.describe() if stuck else "L1 could not say where it waits"


def _revoked_count(m: Moment) -> int:
    return sum(1 for _, state in m.kernel.dmabuf_states if state == "revoked")


def quit_while_revoked(ev: Evidence) -> Verdict:
    t = ev.teardown.get("quit-while-revoked")
    if not isinstance(t, Teardown):
        return error_verdict(["no teardown of L2 was recorded"])
    evidence = _record(t)
    problems = _revocation_problems(ev, t)
    grounds = (f"L1 kernel: {len(t.before.kernel.dmabuf_states)} dma-buf(s) in L2 before, "
               f"{_revoked_count(t.revoked)} revoked with decode off on "
               f"{len(t.revoked.commands)} device(s)",)
    if t.ended is None:
        problems.insert(0, f"L2 did not end within {t.deadline_s:g} s of QMP quit with every "
                           f"device's memory decode off: {where(t.stuck)}")
        return Verdict("fail", "; ".join(problems), evidence, frozenset({HUNG}), grounds)
    if t.ended != "exited with status 0":
        problems.append(f"L2 {t.ended} after QMP quit (not status 0)")
    left, unknown = left_behind(t.leftover)
    if unknown:
        return error_verdict([f"what L1 held after the quit is unknown: {unknown}"], evidence)
    problems += left
    found = frozenset({LEFT}) if left else frozenset()
    usable = NO_DMABUF if ev.kernel_dmabuf is False else "live"
    unusable = {bdf: how for bdf, how in t.reopened.items() if how != usable}
    missing_devices = sorted(set(t.devices.values()) - set(t.reopened))
    if missing_devices:
        return error_verdict([f"the device(s) {', '.join(missing_devices)} were not opened again"],
                      evidence)
    for bdf, how in sorted(unusable.items()):
        problems.append(f"{bdf} opened again after the quit: {how} (expected: {usable})")
    if problems:
        return Verdict("fail", "; ".join(problems), evidence, found, grounds)
    freed = (f"{_revoked_count(t.revoked)} revoked dma-buf(s)" if ev.kernel_dmabuf is not False
             else "no dma-buf (the kernel has none)")
    return Verdict("pass", f"L2 quit with memory decode off on {len(t.devices)} device(s) and "
                           f"{freed}: it {t.ended} {t.waited_s:g} s after the quit; L1 then "
                           f"held no VFIO dma-buf or fd, and every device opened again "
                           f"({'a BAR dma-buf live and mapped' if usable == 'live' else usable})",
                   evidence, frozenset(), grounds)


def _states(m: Moment) -> dict[int, str]:
    return dict(m.kernel.dmabuf_states)


def _inodes(m: Moment) -> dict[int, int]:
    return dict(m.kernel.dmabuf_inodes)


def unplug_while_revoked(ev: Evidence) -> Verdict:
    """The unplug of a device whose dma-bufs are revoked: ivshmem's own dma-bufs (those that
    went from live to revoked exactly when its decode went off; edu's and nvme's stay live)
    are revoked when QEMU closes the device; the close returns (QOM and L1 show the device
    gone within the deadline); the dma-bufs QEMU keeps open afterwards stay revoked (the
    kernel detached them); the device plugged again gets a new dma-buf, live once it
    decodes, and the P2P transfer through it works (judged as every transfer is)."""
    u = ev.teardown.get("unplug-while-revoked")
    if not isinstance(u, UnplugRevoked):
        return error_verdict(["no unplug of a revoked device was recorded"])
    missing = missing_evidence(ev, ev.main)  # the P2P after is judged on the trace, too
    if missing:
        return error_verdict(missing)
    before, revoked = _states(u.before), _states(u.revoked)
    own = sorted(fd for fd, state in revoked.items()
                 if state == "revoked" and before.get(fd) == "live")
    evidence = {"unplug_while_revoked": {
        "device": u.device, "own_dmabufs": own, "waited_s": u.waited_s,
        "deadline_s": u.deadline_s, "not_done": u.not_done,
        "stuck": u.stuck.record() if u.stuck else None,
        "states": {m.label: [list(x) for x in m.kernel.dmabuf_states]
                   for m in (u.before, u.revoked, u.unplugged, u.replugged) if m}}}
    grounds: tuple[str, ...] = (f"L1 kernel: {len(own)} dma-buf(s) of {u.device} revoked by "
                                f"its decode going off, {len(revoked)} in L2 then",)
    problems = []
    command = u.revoked.command  # the unplugged device's, as the L1 kernel reads it
    if command is not None and command & PCI_COMMAND_MEMORY:
        problems.append(f"memory decode still on in the L1 kernel's view of {u.device} after "
                        f"L2 turned it off")
    dmabuf = ev.kernel_dmabuf is not False
    if dmabuf and not own:
        problems.append(f"no dma-buf of L2 went from live to revoked when {u.device}'s memory "
                        f"decode went off: there was nothing revoked to close")
    if not dmabuf and revoked:
        problems.append(f"L2 holds {len(revoked)} dma-buf fd(s) on a kernel without VFIO "
                        f"dma-buf")
    if u.unplugged is None:
        problems.insert(0, f"the unplug of {u.device} with its dma-buf(s) revoked did not "
                           f"complete within {u.deadline_s:g} s ({u.not_done}): "
                           f"{where(u.stuck)}")
        return Verdict("fail", "; ".join(problems), evidence, frozenset({HUNG}), grounds)
    if len(u.unplugged.kernel.vfio_device_fds) >= len(u.before.kernel.vfio_device_fds):
        problems.append(f"L2 still holds {len(u.unplugged.kernel.vfio_device_fds)} VFIO device "
                        f"fd(s) after the unplug (as many as before)")
    after_close = _states(u.unplugged)
    live = [fd for fd in own if after_close.get(fd) not in (None, "revoked")]
    if live:
        problems.append(f"the dma-buf(s) {live} of {u.device} are "
                        + ", ".join(f"fd {fd}: {after_close[fd]}" for fd in live)
                        + " after its device was closed (not revoked)")
    if u.replugged is None or u.after is None:
        return error_verdict(["the device was not plugged again"], evidence)
    new = {fd for fd, ino in _inodes(u.replugged).items()
           if ino not in set(_inodes(u.before).values())}
    new_live = sorted(fd for fd in new if _states(u.replugged).get(fd) == "live")
    if dmabuf and not new_live:
        problems.append(f"{u.device} plugged again has no new live dma-buf in L2 (new fds "
                        f"{sorted(new)}): the device closed with its dma-bufs revoked is not "
                        f"usable again")
    after = transfer(ev, u.after, u.trace_replugging)
    evidence["p2p_after"] = after.evidence
    grounds += (f"unplugged in {u.waited_s:g} s",) + after.grounds
    if problems:
        return Verdict("fail", "; ".join(problems), evidence, frozenset(), grounds)
    if after.observed != "pass":
        return Verdict(after.observed, f"once {u.device} was plugged again: {after.reason}",
                       evidence, after.findings, grounds)
    kept = [fd for fd in own if fd in after_close]
    return Verdict("pass", f"{u.device} unplugged {u.waited_s:g} s after device_del with "
                           f"{len(own) if dmabuf else 'no'} dma-buf(s) revoked"
                           + (f" ({len(kept)} kept open by QEMU, revoked)" if kept else "")
                           + f"; plugged again{' with a new live dma-buf' if dmabuf else ''}, "
                           f"and {after.reason}", evidence, after.findings, grounds)


def hung(ev: Evidence) -> Verdict | None:
    """The verdict of every check whose step never returned (Evidence.hang): a failure in
    the kernel's own terms (where L2's task waits), whatever the check would have judged;
    None if no step hung."""
    if ev.hang is None:
        return None
    h = ev.hang
    return Verdict("fail", h.describe(), {"hang": {"step": h.step, "error": h.error,
                                                   "stuck": h.stuck.record()}},
                   frozenset({HUNG}), (f"L1 kernel: L2's tasks during {h.step}",))


#: What debugfs must say of the dma-buf at each moment of closed-before-unmap: iommufd
#: holds its own reference from IOMMU_IOAS_MAP_FILE (dma_buf_get in iopt_map_file_pages)
#: until the area's pages are released by the unmap (iopt_release_pages: dma_buf_put).
ALIVE = {"mapped": True, "fd closed, still mapped": True, "unmapped": False}
PLAYED = ("IOMMU_IOAS_ALLOC", "open", "VFIO_DEVICE_BIND_IOMMUFD",
          "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "memory decode on", "VFIO_DEVICE_FEATURE(DMA_BUF)",
          "IOMMU_IOAS_MAP_FILE", "close the dma-buf fd", "IOMMU_IOAS_UNMAP", "close the device")


def iommufd_dmabuf_only(ev: Evidence, nothing: str) -> Verdict | None:
    """The skip of a check of the kernel's iommufd dma-buf path outside the one cell per L1
    that plays it (registry.iommufd_only); None in that cell."""
    if ev.backend != "iommufd":
        return Verdict("skip", "played once per L1, in the iommufd backend's cell", {},
                       frozenset({"iommufd-only"}))
    if ev.kernel_dmabuf is False:
        return Verdict("skip", f"the L1 kernel has no VFIO dma-buf: {nothing}", {},
                       frozenset({"kernel-lacks-dmabuf"}))
    return None


def dmabuf_closed_before_unmap(ev: Evidence) -> Verdict:
    """A dma-buf whose fd is closed while iommufd maps it: iommufd's own reference keeps it
    alive (debugfs lists it) until the unmap, which releases it (vfio_pci_dma_buf_release
    takes it off the device's list); every step answers, the device closes and opens
    again with a live dma-buf."""
    skipped = iommufd_dmabuf_only(ev, "nothing to map")
    if skipped:
        return skipped
    c = ev.teardown.get("dmabuf-closed-before-unmap")
    if not isinstance(c, ClosedBeforeUnmap):
        return error_verdict(["the helper's closed-before-unmap was not recorded"])
    evidence = {"closed_before_unmap": {
        "device": c.device, "bar": c.bar, "size": c.size, "steps": [list(x) for x in c.steps],
        "alive": c.alive, "close_s": c.close_s, "waited_s": c.waited_s, "error": c.error,
        "not_done": c.not_done, "stuck": c.stuck.record() if c.stuck else None,
        "reopened": c.reopened}}
    if not c.completed:
        return Verdict("fail", f"the helper's closed-before-unmap on {c.device} did not answer "
                               f"within {c.deadline_s:g} s ({c.not_done}): {where(c.stuck)}",
                       evidence, frozenset({HUNG}))
    if c.error:
        return error_verdict([f"closed-before-unmap could not be played on {c.device}: {c.error}"],
                      evidence)
    problems = [f"{name}: {result}" for name, result in c.steps if result != "ok"]
    played = [name for name, _ in c.steps]
    if not problems and played != list(PLAYED):
        problems.append(f"the steps played were {played}, not {list(PLAYED)}")
    for moment, wanted in ALIVE.items():
        seen = c.alive.get(moment)
        if not problems and seen is None:
            return error_verdict([f"debugfs could not say whether the dma-buf was alive once "
                           f"{moment}"], evidence)
        if seen is not None and seen != wanted:
            problems.append(f"the dma-buf was {'still' if seen else 'no longer'} alive in the "
                            f"L1 kernel once {moment} (debugfs)")
    if c.reopened != "live":
        problems.append(f"{c.device} opened again: {c.reopened} (expected: live)")
    grounds = (f"L1 kernel: BAR {c.bar} ({c.size} bytes) of {c.device}, its dma-buf alive "
               + ", ".join(f"{m}: {v}" for m, v in c.alive.items()),)
    if problems:
        return Verdict("fail", f"closed-before-unmap on {c.device}: " + "; ".join(problems),
                       evidence, frozenset(), grounds)
    return Verdict("pass", f"BAR {c.bar}'s dma-buf of {c.device}, mapped into an IOAS, outlived "
                           f"its fd while mapped and went with the unmap; the device closed in "
                           f"{c.close_s:g} s and opened again with a live dma-buf", evidence,
                   frozenset(), grounds)
