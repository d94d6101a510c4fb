"""The kill-while-mapped verdict on captured real runs (intel-iommu, iommufd, QEMU 11.1.3,
Linux 7.2.13, both kernels), and on them with one thing broken at a time: a kill that
never returns, nothing mapped when the kill came, a dma-buf or a VFIO fd left behind, an
L2 that ended some other way, a device that does not open again."""

import dataclasses
import json

from harness.evidence import records
from harness.evidence.stuck import parse
from harness.evidence.teardown import Killed, Leftover
from harness.verdicts.killed import kill_while_mapped
from tests.unit.test_teardown_verdict import STUCK_STACK, _moment
from tests.unit.test_verdicts import DATA, captured

CAPTURE = json.loads((DATA / "intel-iommu-iommufd-kill-while-mapped.json").read_text())


def killed(kernel: str = "dmabuf", **changes) -> Killed:
    c = CAPTURE[kernel]
    maps = tuple(getattr(records, m["event"])(**{k: v for k, v in m.items() if k != "event"})
                 for m in c["maps"])
    k = Killed("kill-while-mapped", c["device"], c["iova"],
               _moment("BAR 2 mapped, before the kill", c["dmabufs_before"]), c["ended"],
               c["waited_s"], c["deadline_s"], maps, c.get("traced", 40),
               leftover=Leftover((), (), c["leftover"]["waited_s"], "", 0),
               reopened=c["reopened"])
    return dataclasses.replace(k, **changes)


def judged(k: Killed, kernel: str = "dmabuf", backend: str = "iommufd"):
    probe = {} if kernel == "dmabuf" else {"0000:00:03.0": (False, "ENOTTY")}
    return kill_while_mapped(captured(teardown={"kill-while-mapped": k}, backend=backend,
                                      **({"kernel_probe": probe} if probe else {})))


def test_the_captured_kill_passes_as_expected():
    v = judged(killed())
    assert v.observed == "pass", v.reason
    assert v.reason.startswith("L2 was killed by SIGKILL (9) with BAR 2's dma-buf mapped into "
                               "its IOAS at 0xc0100000: gone 0.228 s after the signal"), v.reason


def test_a_kernel_without_dmabuf_skips_on_its_own_probe():
    """The no-dmabuf capture: BAR 2's map refused, nothing through a dma-buf to kill under
    (the L2 of its own is no longer started there)."""
    v = judged(killed("no-dmabuf"), "no-dmabuf")
    assert v.observed == "skip" and v.findings == {"kernel-lacks-dmabuf"}
    v = judged(killed("no-dmabuf"))  # the same evidence on a kernel that has dma-buf
    assert v.observed == "fail" and "nothing was mapped through a dma-buf" in v.reason


def test_it_is_played_once_per_l1_in_the_iommufd_cell():
    v = judged(killed(), backend="legacy")
    assert v.observed == "skip" and v.findings == {"iommufd-only"}


def test_a_kill_that_does_not_end_l2_is_a_hang_with_the_stuck_task():
    stuck = parse({"pid": 1770, "tasks": [{"tid": 1770, "comm": "qemu-system-x86", "state":
                                           "D (disk sleep)", "wchan": "__wait_for_common",
                                           "stack": STUCK_STACK.splitlines()}]})
    v = judged(killed(ended=None, waited_s=30.0, stuck=stuck, leftover=None, reopened=""))
    assert v.observed == "fail" and "hung" in v.findings
    assert v.reason.startswith("L2 did not end within 30 s of SIGKILL with BAR 2 of "
                               "0000:00:03.0 mapped: "), v.reason
    assert "vfio_pci_dma_buf_cleanup" in v.reason


def test_nothing_mapped_through_a_dmabuf_at_the_kill_fails():
    v = judged(killed(maps=(records.IommufdMapFile(0xC0100000, 1 << 20, 19, -14),)))
    assert v.observed == "fail"
    assert "no successful iommufd_backend_map_file_dma at BAR 2's IOVA 0xc0100000" in v.reason


def test_a_dmabuf_or_a_vfio_fd_left_after_the_kill_fails_naming_it():
    left = Leftover((("vfio_pci_core", 4711, 1 << 20),),
                    ((1, "init", 9, "/dev/vfio/devices/vfio0"),), 2.0)
    v = judged(killed(leftover=left))
    assert v.observed == "fail" and v.findings == {"left-behind"}
    assert "1 dma-buf(s) of L2's exporter still alive" in v.reason
    assert "init (pid 1) fd 9 -> /dev/vfio/devices/vfio0" in v.reason


def test_an_l2_that_ended_otherwise_or_a_device_that_does_not_open_fails():
    v = judged(killed(ended="exited with status 0"))
    assert v.observed == "fail" and "L2 exited with status 0 after SIGKILL" in v.reason
    v = judged(killed(reopened="VFIO_DEVICE_BIND_IOMMUFD: EBUSY"))
    assert v.observed == "fail"
    assert "opened again after the kill: VFIO_DEVICE_BIND_IOMMUFD: EBUSY" in v.reason


def test_an_l1_that_cannot_say_what_is_left_is_an_error():
    v = judged(killed(leftover=Leftover((), (), 0.0, "SSH connection to L1 is gone")))
    assert v.observed == "error" and "unknown: SSH connection to L1 is gone" in v.reason


def test_an_l2_that_wrote_no_trace_is_an_error_not_a_verdict_on_the_mapping():
    v = judged(killed(maps=(), traced=0))
    assert v.observed == "error" and "wrote no trace" in v.reason
