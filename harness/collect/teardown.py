"""The teardown checks, played on the main L2 once every other step is done: how it ends.

A guest that shuts down has its devices stop decoding memory before its VMM
quits (the drivers' shutdown, then the firmware's), so the L1 kernel closes
each VFIO device while the device's dma-bufs are revoked. Every other step
gives decode back before L2 stops; this one does not. The quit then gets a
deadline of its own: a close that never returns (a dma-buf cleanup waiting for
a completion nobody signals) is the evidence, with the stuck task's kernel
stack, not a run that hangs. What L1 holds afterwards, and whether each device
opens again, is asked of the L1 kernel. Nothing here judges.
"""

import time

from harness.base.deadline import Deadline, wait_for
from harness.base.errors import HarnessError
from harness.base.qmp import QmpRefused
from harness.collect.l2_probes import p2p
from harness.collect.lifecycle import IVSHMEM_ID, Programmed, moment_of, replug, view_at
from harness.collect.stack import L1Stack
from harness.evidence.records import Moment
from harness.evidence.teardown import ClosedBeforeUnmap, Teardown, UnplugRevoked
from harness.l2.dma_engine import DmaEngine
from harness.l2.qemu import L2Qemu

#: From the quit to L2 gone: QEMU 11.1.3 quits in well under a second here; a close that
#: blocks is a hang long before this.
QUIT_DEADLINE_S = 30.0
#: From device_del to the device gone from QOM and its fd closed in L1: 0.3 to 0.6 s here.
UNPLUG_DEADLINE_S = 20.0
#: For L2's shell to write how L2 ended, once L2 is gone.
STATUS_WAIT_S = 3.0


def _slots(dev: Programmed) -> dict[str, int]:
    """name -> slot in L2 of every device L2 drives."""
    out = {"edu": dev.edu_slot, "ivshmem": dev.ivshmem_slot}
    if dev.resettable:
        out["nvme"] = dev.resettable.slot
    return out


def ended_status(l2: L2Qemu) -> str:
    """How L2 ended, once it is gone: its shell may take a moment to write it."""
    end = time.monotonic() + STATUS_WAIT_S
    while True:
        how = l2.status()
        if how is not None or time.monotonic() >= end:
            return how or "ended, but its shell wrote no status"
        time.sleep(0.05)


def quit_while_revoked(stack: L1Stack, l2: L2Qemu, dev: Programmed, bdfs: dict[str, str],
                       deadline_s: float = QUIT_DEADLINE_S) -> Teardown:
    """Memory decode off on every device, as a guest leaves them when it shuts down, then
    QMP quit; L2 gone within `deadline_s`, or its tasks' kernel stacks. `bdfs`: each
    device's BDF in L1, by name."""
    assert l2.pid is not None
    slots = _slots(dev)
    devices = {name: bdfs[name] for name in slots}
    held = tuple(devices.values())
    before = moment_of(stack, l2, held, "before")
    for slot in slots.values():
        dev.pci.set_memory(slot, False)
    revoked = moment_of(stack, l2, held, "memory decode off on every device")
    # whose dma-bufs to look for once L2 is gone: the exporters the kernel named for L2's
    exporters = before.kernel.exporters
    quit_error = ""
    began = time.monotonic()
    try:
        l2.qmp.cmd("quit")
    except (HarnessError, OSError, EOFError) as e:  # the wait below says the rest
        quit_error = f"{type(e).__name__}: {e}"
    gone, _ = stack.vfio.wait_gone(l2.pid, max(0.0, deadline_s - (time.monotonic() - began)))
    waited = round(time.monotonic() - began, 3)
    if not gone:  # the devices are held by a task that will not end: asking them would hang
        return Teardown("quit-while-revoked", devices, before, revoked, None, waited,
                        deadline_s, quit_error, stuck=stack.vfio.stuck(l2.pid))
    return Teardown("quit-while-revoked", devices, before, revoked, ended_status(l2), waited,
                    deadline_s, quit_error, leftover=stack.vfio.leftover(exporters),
                    reopened=stack.vfio.reopen(list(held)))


def _in_qom(l2: L2Qemu, qom_id: str, deadline: Deadline) -> bool:
    """Whether QOM still has the device; an L2 whose main loop does not answer within the
    deadline raises (a close that never returns blocks that loop)."""
    try:
        l2.qmp.cmd_within(min(deadline.remaining(), 5.0), "qom-get",
                          path=f"/machine/peripheral/{qom_id}", property="type")
        return True
    except QmpRefused:
        return False


def unplug_while_revoked(stack: L1Stack, l2: L2Qemu, dev: Programmed, edu: DmaEngine,
                         seed: int, key: str, dst: int,
                         deadline_s: float = UNPLUG_DEADLINE_S) -> UnplugRevoked:
    """ivshmem's memory decode off, as its guest driver leaves it when it lets the device
    go, then device_del completed as the other unplug does it (a reset with ACPI hotplug,
    the slot powered off with native hotplug); within `deadline_s` QOM and the L1 kernel
    must show it gone, else L2's tasks' kernel stacks are the evidence. Then plugged again,
    its BARs programmed, and the P2P transfer through BAR 2."""
    assert l2.pid is not None
    _, iova = dev.ivshmem_bars[2]

    def moment(label: str) -> Moment:
        return view_at(stack, l2, dev, label)

    before = moment("before")
    held = len(before.kernel.vfio_device_fds)
    dev.pci.set_memory(dev.ivshmem_slot, False)
    revoked = moment("ivshmem's memory decode off")
    deadline = Deadline("unplug-while-revoked", deadline_s)
    began = time.monotonic()
    common = {"check": "unplug-while-revoked", "device": dev.ivshmem_bdf, "bar": 2,
              "iova": iova, "before": before, "revoked": revoked, "deadline_s": deadline_s}
    try:
        l2.qmp.cmd_within(deadline.remaining(), "device_del", id=IVSHMEM_ID)
        if l2.spec.platform.l2.native_hotplug:
            dev.pci.slot_power(dev.ivshmem_slot >> 5, on=False)
        else:
            l2.qmp.cmd_within(deadline.remaining(), "system_reset")
        wait_for(lambda: not _in_qom(l2, IVSHMEM_ID, deadline), deadline,
                 "ivshmem still in L2's QOM", interval=0.02)
        closed, _ = stack.vfio.wait_closed(l2.pid, held, deadline.remaining())
        if not closed:
            raise deadline.timeout("the L1 kernel still shows ivshmem's VFIO device open "
                                   "in L2 (its fd, or a task in its release)")
    except HarnessError as e:
        return UnplugRevoked(**common, unplugged=None,  # type: ignore[arg-type]
                             waited_s=round(time.monotonic() - began, 3),
                             not_done=e.message, stuck=stack.vfio.stuck(l2.pid),
                             alive=l2.running())
    waited = round(time.monotonic() - began, 3)
    unplugged = moment("unplugged")
    replug(l2, dev)
    replugged = moment("plugged again")
    after = p2p(stack, l2, edu, iova, seed, f"{key}/unplug-while-revoked", dst)
    return UnplugRevoked(**common, unplugged=unplugged,  # type: ignore[arg-type]
                         waited_s=waited, replugged=replugged, after=after,
                         alive=l2.running())


#: The whole of closed-before-unmap in L1: about 0.1 s here.
ALONE_DEADLINE_S = 20.0


def closed_before_unmap(stack: L1Stack, bdf: str,
                        deadline_s: float = ALONE_DEADLINE_S) -> ClosedBeforeUnmap:
    """The guest helper plays the order itself on `bdf` (no L2 holds it now); an answer
    that does not come within `deadline_s` is a hang, with the helper's own stack."""
    helper = stack.vfio.helper_pid()
    began = time.monotonic()
    try:
        answer = stack.vfio.closed_before_unmap(bdf, deadline_s)
    except HarnessError as e:
        return ClosedBeforeUnmap("dmabuf-closed-before-unmap", bdf, (), {},
                                 waited_s=round(time.monotonic() - began, 3),
                                 deadline_s=deadline_s, not_done=e.message,
                                 stuck=stack.vfio.stuck(helper))
    waited = round(time.monotonic() - began, 3)
    return ClosedBeforeUnmap(
        "dmabuf-closed-before-unmap", bdf,
        tuple((str(n), str(r)) for n, r in answer.get("steps", ())),
        {str(k): v for k, v in answer.get("alive", {}).items()},
        int(answer.get("bar", -1)), int(answer.get("size", 0)),
        float(answer.get("close_s", -1.0)), waited, deadline_s, answer.get("error", ""),
        reopened=stack.vfio.reopen([bdf])[bdf])
