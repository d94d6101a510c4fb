"""The quit-while-revoked verdict on a captured real run (intel-iommu, dmabuf kernel,
iommufd, QEMU 11.1.3, Linux 7.2.13), and on that run with one thing broken at a time: a
dma-buf left live, a quit that never returns, a dma-buf or a VFIO fd left behind in L1, a
device that does not open again."""

import dataclasses
import json

from harness.checks.matrix import EXPECTATIONS
from harness.evidence.records import KernelProcess, Moment, P2PTransfer, parse_trace
from harness.evidence.stuck import Stuck, parse
from harness.evidence.teardown import ClosedBeforeUnmap, Leftover, Teardown, UnplugRevoked
from harness.verdicts.teardown import (
    NO_DMABUF,
    dmabuf_closed_before_unmap,
    quit_while_revoked,
    unplug_while_revoked,
)
from tests.unit.test_verdicts import DATA, EDU, IVSHMEM, captured

CAPTURE = json.loads((DATA / "intel-iommu-dmabuf-iommufd-quit-while-revoked.json").read_text())
EXPORTER = "vfio_pci_core"
#: /proc/PID/task/TID/stack of a QEMU whose exit closes a device whose dma-buf cleanup waits
#: for a completion nobody signals (the shape of the 7.2 stack of do_exit's fput).
STUCK_STACK = """[<0>] __wait_for_common+0x10a/0x1b0
[<0>] vfio_pci_dma_buf_cleanup+0x11c/0x1a0
[<0>] vfio_pci_core_close_device+0x45/0xd0
[<0>] vfio_df_close+0x4f/0x80
[<0>] vfio_df_unbind_iommufd+0x2c/0x50
[<0>] vfio_device_fops_release+0x2a/0x50
[<0>] __fput+0xe6/0x2b0
[<0>] task_work_run+0x59/0x90
[<0>] do_exit+0x2f4/0xa70
[<0>] do_group_exit+0x30/0x80
[<0>] __x64_sys_exit_group+0x18/0x20
[<0>] x64_sys_call+0x14fa/0x1500
[<0>] do_syscall_64+0x5d/0x170
[<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e"""


def _moment(label: str, states: list, commands: dict | None = None) -> Moment:
    kernel = KernelProcess(tuple((fd, 1 << 20, EXPORTER) for fd, _ in states), (),
                           tuple((fd, 10 + fd) for fd, _ in states),
                           tuple((fd, state) for fd, state in states), 40, (5, 7, 9))
    return Moment(label, kernel, 100, None, 10, commands or {})


def teardown(**changes) -> Teardown:
    c = CAPTURE
    t = Teardown(c["check"], c["devices"], _moment("before", c["dmabufs_before"]),
                 _moment("memory decode off on every device", c["dmabufs_revoked"],
                         c["commands_revoked"]),
                 c["ended"], c["waited_s"], c["deadline_s"], c["quit_error"],
                 leftover=Leftover((), (), c["leftover"]["waited_s"], "", 0),
                 reopened=c["reopened"])
    return dataclasses.replace(t, **changes)


def judged(t: Teardown | None = None, **changes):
    return quit_while_revoked(captured(teardown={"quit-while-revoked": t or teardown()},
                                       **changes))


def test_the_captured_quit_passes_as_expected():
    assert EXPECTATIONS[("quit-while-revoked", "dmabuf", "iommufd")].outcome == "pass"
    v = judged()
    assert v.observed == "pass", v.reason
    assert "8 revoked dma-buf(s)" in v.reason and "exited with status 0" in v.reason
    assert v.evidence["teardown"]["reopened"] == CAPTURE["reopened"]


def test_a_dmabuf_still_live_with_decode_off_fails_naming_it():
    states = [[fd, "live" if fd == 33 else s] for fd, s in CAPTURE["dmabufs_revoked"]]
    t = teardown(revoked=_moment("off", states, CAPTURE["commands_revoked"]))
    v = judged(t)
    assert v.observed == "fail"
    assert "dma-buf fd(s) [33] not revoked (fd 33: live)" in v.reason


def test_a_device_still_decoding_fails_naming_it():
    commands = dict(CAPTURE["commands_revoked"], **{"0000:00:03.0": 0x106})
    v = judged(teardown(revoked=_moment("off", CAPTURE["dmabufs_revoked"], commands)))
    assert v.observed == "fail" and "memory decode still on" in v.reason
    assert "0000:00:03.0" in v.reason


def test_nothing_to_revoke_on_a_dmabuf_kernel_fails():
    t = teardown(before=_moment("before", []), revoked=_moment("off", [],
                                                               CAPTURE["commands_revoked"]))
    v = judged(t)
    assert v.observed == "fail" and "nothing to revoke" in v.reason


def test_a_quit_that_never_returns_fails_with_the_stuck_task():
    stuck = parse({"pid": 812, "tasks": [
        {"tid": 812, "comm": "qemu-system-x86", "state": "D (disk sleep)",
         "wchan": "__wait_for_common", "stack": STUCK_STACK.splitlines()},
        {"tid": 813, "comm": "qemu-system-x86", "state": "S (sleeping)", "wchan": "futex",
         "stack": ["[<0>] futex_wait_queue+0x60/0x90"]}]})
    v = judged(teardown(ended=None, waited_s=30.0, stuck=stuck, leftover=None, reopened={}))
    assert v.observed == "fail"
    assert v.reason.startswith("L2 did not end within 30 s of QMP quit with every device's "
                               "memory decode off: qemu-system-x86 (tid 812) in D (disk "
                               "sleep): vfio_pci_dma_buf_cleanup < vfio_pci_core_close_device")
    assert v.evidence["teardown"]["stuck"]["tasks"][0]["stack"][1] == "vfio_pci_dma_buf_cleanup"


def test_a_stuck_task_is_found_among_sleeping_ones_and_the_scheduler_is_passed_over():
    stuck = parse({"pid": 1, "tasks": [
        {"tid": 2, "comm": "worker", "state": "S (sleeping)", "wchan": "", "stack": []},
        {"tid": 3, "comm": "qemu", "state": "D (disk sleep)", "wchan": "",
         "stack": STUCK_STACK.splitlines()}]})
    assert stuck.culprit() is not None and stuck.culprit().tid == 3
    assert stuck.culprit().top()[0] == "vfio_pci_dma_buf_cleanup"
    assert "no task" in Stuck(1, ()).describe()


def test_a_dmabuf_left_alive_after_the_quit_fails():
    t = teardown(leftover=Leftover(((EXPORTER, 1234, 1 << 20),), (), 2.0, "", 1))
    v = judged(t)
    assert v.observed == "fail" and v.findings == {"left-behind"}
    assert "1 dma-buf(s) of L2's exporter still alive in the L1 kernel" in v.reason
    assert "inode 1234" in v.reason


def test_a_vfio_fd_held_after_the_quit_fails_naming_the_holder():
    t = teardown(leftover=Leftover((), ((977, "sleep", 4, "/dev/vfio/devices/vfio0"),), 2.0))
    v = judged(t)
    assert v.observed == "fail" and "sleep (pid 977) fd 4 -> /dev/vfio/devices/vfio0" in v.reason


def test_an_l1_that_cannot_say_what_is_left_is_an_error_not_a_pass():
    v = judged(teardown(leftover=Leftover((), (), 0.0, "bufinfo: not in the format")))
    assert v.observed == "error" and "not in the format" in v.reason
    assert judged(teardown(leftover=None)).observed == "error"


def test_a_device_that_does_not_open_again_fails_naming_it():
    reopened = dict(CAPTURE["reopened"], **{"0000:00:04.0": "open /dev/vfio/devices/vfio2: "
                                                           "EBUSY"})
    v = judged(teardown(reopened=reopened))
    assert v.observed == "fail" and "0000:00:04.0 opened again after the quit: open" in v.reason
    missing = {k: v for k, v in CAPTURE["reopened"].items() if k != "0000:00:02.0"}
    assert judged(teardown(reopened=missing)).observed == "error"


def test_an_l2_killed_or_failing_at_quit_fails():
    v = judged(teardown(ended="was killed by SIGSEGV (11)"))
    assert v.observed == "fail" and "was killed by SIGSEGV (11) after QMP quit" in v.reason


def test_no_dmabuf_kernel_passes_with_nothing_revoked_and_devices_that_open():
    no = {bdf: (False, "ENOTTY: Inappropriate ioctl for device") for bdf in CAPTURE["reopened"]}
    t = teardown(before=_moment("before", []),
                 revoked=_moment("off", [], CAPTURE["commands_revoked"]),
                 reopened={bdf: NO_DMABUF for bdf in CAPTURE["reopened"]})
    v = judged(t, kernel_probe=no)
    assert v.observed == "pass", v.reason
    assert "no dma-buf (the kernel has none)" in v.reason
    live = judged(dataclasses.replace(t, revoked=_moment("off", [[20, "live"]],
                                                        CAPTURE["commands_revoked"])),
                  kernel_probe=no)
    assert live.observed == "fail" and "kernel without VFIO dma-buf" in live.reason


def test_no_teardown_recorded_is_an_error():
    assert quit_while_revoked(captured()).observed == "error"


#: debugfs dma_buf/bufinfo as drivers/dma-buf/dma-buf.c (7.2) prints it: two dma-bufs.
BUFINFO = ("\nDma-buf Objects:\nsize    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n"
           "00001048576\t00000002\t00080007\t00000001\tvfio_pci_core\t00000042\t<none>\n"
           "\tAttached Devices:\nTotal 0 devices attached\n\n"
           "00000004096\t00000002\t00080007\t00000002\tudmabuf\t00000007\t<none>\n"
           "\tAttached Devices:\n\t0000:00:02.0\nTotal 1 devices attached\n\n"
           "\nTotal 2 objects, 1052672 bytes\n")


def test_the_guest_helper_reads_every_dmabuf_alive_from_debugfs(tmp_path):
    from harness.l1.guest import vfio_l1

    path = tmp_path / "bufinfo"
    path.write_text(BUFINFO)
    assert vfio_l1._bufinfo(str(path)) == [["vfio_pci_core", 42, 1048576], ["udmabuf", 7, 4096]]
    # a text it cannot vouch for is never an empty list: a total that does not add up, or
    # another format
    path.write_text(BUFINFO.replace("Total 2 objects", "Total 3 objects"))
    assert vfio_l1._bufinfo(str(path)) is None
    path.write_text("size\texp_name\n")
    assert vfio_l1._bufinfo(str(path)) is None


# -- unplug-while-revoked ------------------------------------------------------------------

UNPLUG = json.loads((DATA / "intel-iommu-dmabuf-iommufd-unplug-while-revoked.json").read_text())
IVSHMEM_BDF = UNPLUG["device"]
BAR2 = 0xC0200000


def _view(label: str, device_fds: tuple[int, ...], command: int | None = 0x106) -> Moment:
    states = UNPLUG["states"][label]
    kernel = KernelProcess(tuple((fd, 1 << 20, EXPORTER) for fd, _ in states), (),
                           tuple((fd, 100 + fd) for fd, _ in states),  # a new fd: a new inode
                           tuple((fd, state) for fd, state in states), 40, device_fds)
    return Moment(label, kernel, 100, command, 10, {IVSHMEM_BDF: command})


def unplugged_step(**changes) -> UnplugRevoked:
    pattern = bytes(range(64))
    u = UnplugRevoked(
        "unplug-while-revoked", IVSHMEM_BDF, 2, BAR2, _view("before", (5, 7, 9)),
        _view("ivshmem's memory decode off", (5, 7, 9), 0x104),
        _view("unplugged", (5, 9), None), UNPLUG["waited_s"], UNPLUG["deadline_s"],
        replugged=_view("plugged again", (5, 7, 9)),
        after=P2PTransfer(seed=7, size=64, bar2_iova=BAR2, src_offset=0, dst_offset=0xA000,
                          pattern=pattern, source_in_file=pattern, before=bytes(64),
                          after=pattern, l1_dmesg=()),
        trace_replugging=tuple(parse_trace(
            f"1@1.0:iommufd_backend_map_file_dma  iommufd=15 ioas=2 iova=0x{BAR2:x} "
            f"size=0x100000 fd=34 start=0x0 readonly=0 (0)")))
    return dataclasses.replace(u, **changes)


def judged_unplug(u: UnplugRevoked | None = None, **changes):
    return unplug_while_revoked(captured(
        teardown={"unplug-while-revoked": u or unplugged_step()}, **changes))


def test_the_captured_unplug_of_a_revoked_device_passes():
    assert EXPECTATIONS[("unplug-while-revoked", "dmabuf", "iommufd")].outcome == "pass"
    v = judged_unplug()
    assert v.observed == "pass", v.reason
    assert v.reason.startswith(f"{IVSHMEM_BDF} unplugged 0.243 s after device_del with 1 "
                               f"dma-buf(s) revoked (1 kept open by QEMU, revoked); plugged "
                               f"again with a new live dma-buf")
    assert v.evidence["unplug_while_revoked"]["own_dmabufs"] == [33]


def test_an_unplug_whose_close_never_returns_fails_with_the_stuck_task():
    stuck = parse({"pid": 812, "tasks": [
        {"tid": 812, "comm": "qemu-system-x86", "state": "D (disk sleep)",
         "wchan": "__wait_for_common", "stack": STUCK_STACK.replace(
             "do_exit+0x2f4/0xa70", "__do_sys_close+0x3d/0x80").splitlines()}]})
    u = unplugged_step(unplugged=None, replugged=None, after=None, waited_s=20.0,
                       not_done="ivshmem still in L2's QOM (gave up after 20 s)", stuck=stuck)
    v = judged_unplug(u)
    assert v.observed == "fail"
    assert v.reason.startswith(f"the unplug of {IVSHMEM_BDF} with its dma-buf(s) revoked did "
                               "not complete within 20 s (ivshmem still in L2's QOM (gave up "
                               "after 20 s)): qemu-system-x86 (tid 812) in D (disk sleep): "
                               "vfio_pci_dma_buf_cleanup < vfio_pci_core_close_device")


def test_a_dmabuf_live_again_after_its_device_closed_fails():
    states = [[fd, "live" if fd == 33 else s] for fd, s in UNPLUG["states"]["unplugged"]]
    unplugged = _view("unplugged", (5, 9), None)
    unplugged = dataclasses.replace(unplugged, kernel=dataclasses.replace(
        unplugged.kernel, dmabuf_states=tuple(map(tuple, states))))
    v = judged_unplug(unplugged_step(unplugged=unplugged))
    assert v.observed == "fail" and "fd 33: live after its device was closed" in v.reason


def test_a_device_plugged_again_without_a_new_live_dmabuf_fails():
    replugged = _view("plugged again", (5, 7, 9))
    replugged = dataclasses.replace(replugged, kernel=dataclasses.replace(
        replugged.kernel, dmabuf_states=tuple((fd, "revoked" if fd == 34 else s)
                                              for fd, s in replugged.kernel.dmabuf_states)))
    v = judged_unplug(unplugged_step(replugged=replugged))
    assert v.observed == "fail" and "has no new live dma-buf" in v.reason


def test_nothing_revoked_by_the_decode_going_off_fails():
    v = judged_unplug(unplugged_step(revoked=_view("before", (5, 7, 9), 0x104)))
    assert v.observed == "fail" and "no dma-buf of L2 went from live to revoked" in v.reason
    still = judged_unplug(unplugged_step(revoked=_view("ivshmem's memory decode off",
                                                       (5, 7, 9), 0x106)))
    assert still.observed == "fail" and "memory decode still on" in still.reason


def test_a_device_fd_still_held_after_the_unplug_fails():
    v = judged_unplug(unplugged_step(unplugged=_view("unplugged", (5, 7, 9), None)))
    assert v.observed == "fail" and "still holds 3 VFIO device fd(s)" in v.reason


def test_a_step_that_hung_fails_its_check_in_the_kernels_terms():
    from harness.evidence.stuck import Hang
    from harness.verdicts.teardown import hung

    assert hung(captured()) is None
    stuck = parse({"pid": 9, "tasks": [{"tid": 93, "comm": "call_rcu", "state": "D (disk sleep)",
                                        "wchan": "", "stack": STUCK_STACK.splitlines()}]})
    v = hung(captured(hang=Hang("dmabuf-unplug", "QMP device_add: no answer", stuck)))
    assert v is not None and v.observed == "fail" and v.findings == {"hung"}
    assert v.reason == ("L2 hung in dmabuf-unplug (QMP device_add: no answer): call_rcu (tid 93) "
                        "in D (disk sleep): vfio_pci_dma_buf_cleanup < vfio_pci_core_close_device"
                        " < vfio_df_close < vfio_df_unbind_iommufd < vfio_device_fops_release "
                        "< __fput")


# -- dmabuf-closed-before-unmap ------------------------------------------------------------

ALONE = json.loads((DATA / "intel-iommu-dmabuf-closed-before-unmap.json").read_text())


def alone(**changes) -> ClosedBeforeUnmap:
    c = ALONE
    played = ClosedBeforeUnmap("dmabuf-closed-before-unmap", c["device"],
                               tuple(map(tuple, c["steps"])), dict(c["alive"]), c["bar"],
                               c["size"], c["close_s"], c["waited_s"], 20.0, c["error"],
                               reopened=c["reopened"])
    return dataclasses.replace(played, **changes)


def judged_alone(c: ClosedBeforeUnmap | None = None, **changes):
    return dmabuf_closed_before_unmap(captured(
        teardown={"dmabuf-closed-before-unmap": c or alone()}, **changes))


def test_the_captured_dmabuf_outlives_its_fd_while_mapped_and_goes_with_the_unmap():
    v = judged_alone()
    assert v.observed == "pass", v.reason
    assert "outlived its fd while mapped and went with the unmap" in v.reason


def test_it_is_played_once_per_l1_in_the_iommufd_cell():
    assert judged_alone(backend="legacy").findings == {"iommufd-only"}
    assert EXPECTATIONS[("dmabuf-closed-before-unmap", "dmabuf", "legacy")].outcome == "skip"
    no = {bdf: (False, "ENOTTY: Inappropriate ioctl for device") for bdf in (EDU, IVSHMEM)}
    assert judged_alone(kernel_probe=no).findings == {"kernel-lacks-dmabuf"}


def test_a_dmabuf_freed_with_its_fd_while_still_mapped_fails():
    v = judged_alone(alone(alive={"mapped": True, "fd closed, still mapped": False,
                                  "unmapped": False}))
    assert v.observed == "fail"
    assert "no longer alive in the L1 kernel once fd closed, still mapped" in v.reason


def test_a_dmabuf_left_alive_after_the_unmap_fails():
    v = judged_alone(alone(alive={"mapped": True, "fd closed, still mapped": True,
                                  "unmapped": True}))
    assert v.observed == "fail" and "still alive in the L1 kernel once unmapped" in v.reason


def test_a_step_refused_fails_naming_it_and_an_answer_that_never_came_is_a_hang():
    steps = tuple((n, "ENODEV" if n == "IOMMU_IOAS_UNMAP" else r) for n, r in ALONE["steps"])
    v = judged_alone(alone(steps=steps))
    assert v.observed == "fail" and "IOMMU_IOAS_UNMAP: ENODEV" in v.reason
    stuck = parse({"pid": 400, "tasks": [{"tid": 400, "comm": "python3",
                                          "state": "D (disk sleep)", "wchan": "",
                                          "stack": STUCK_STACK.splitlines()}]})
    hung = judged_alone(alone(steps=(), alive={}, not_done="no answer in 20 s", stuck=stuck))
    assert hung.observed == "fail" and hung.findings == {"hung"}
    assert "did not answer within 20 s (no answer in 20 s): python3 (tid 400)" in hung.reason


def test_a_device_that_does_not_open_again_fails():
    v = judged_alone(alone(reopened="open /dev/vfio/devices/vfio1: EBUSY"))
    assert v.observed == "fail" and "opened again: open" in v.reason


def test_a_close_whose_release_has_not_returned_is_not_taken_for_a_close(monkeypatch):
    """The fd leaves L2's table before the kernel's release runs: while a task of L2 is
    still in the release (the stuck stack above), the device is not closed, and the
    answer names that task; once the release returns, it is."""
    from harness.l1.guest import vfio_l1
    stacks = {"7": STUCK_STACK, "8": "[<0>] do_sys_poll+0x1/0x2\n"}
    monkeypatch.setattr(vfio_l1, "_vfio_device_fds", lambda pid: ["21"])
    monkeypatch.setattr(vfio_l1.os, "listdir", lambda path: sorted(stacks))
    monkeypatch.setattr(vfio_l1, "_read", lambda path, default=None: stacks[path.split("/")[4]])
    answer = vfio_l1.wait_closed(["1770", "2", "0.05"])
    assert answer["closed"] is False and answer["closing"] == [7], answer
    stacks["7"] = "[<0>] futex_wait+0x1/0x2\n"
    answer = vfio_l1.wait_closed(["1770", "2", "0.05"])
    assert answer["closed"] is True and answer["closing"] == [] and answer["waited_s"] < 0.05
    assert vfio_l1.wait_closed(["1770", "1", "0.05"])["closed"] is False  # still held
