"""What an ended L2 left in the L1 kernel fails every cell that stood on that L2, even an
expected failure; nothing left, or no such L2, leaves the verdict as it was."""

from harness.checks import registry
from harness.checks.matrix import settle
from harness.checks.registry import expectation
from harness.evidence.teardown import LeftAfter, Leftover
from harness.verdicts import left_behind
from harness.verdicts.verdict import LEFT, Verdict

REFUSED = Verdict("fail", "iommufd refused to map the pieces", {},
                  frozenset({"multi-range-refused", "read-missing"}))
#: What debugfs listed after the side L2 of a kernel whose refused IOMMU_IOAS_MAP_FILE
#: never gives back the dma-buf it got (the shape of the multi-range cell's nvme BAR 0).
LEAKED = Leftover((("vfio_pci_core", 37, 16384),), (), 2.0, "", 1)


def test_a_dmabuf_left_after_the_side_l2_fails_even_the_expected_failure():
    v = left_behind.judge(REFUSED, [LeftAfter("side_l2", LEAKED)])
    assert v.observed == "fail" and LEFT in v.findings
    assert v.reason.startswith("once its L2 had ended (side_l2, waited 2 s): 1 dma-buf(s) of "
                               "L2's exporter still alive in the L1 kernel (debugfs bufinfo: "
                               "vfio_pci_core inode 37, 16384 bytes); the check itself: fail: "
                               "iommufd refused"), v.reason
    wanted = registry.EXPECTATIONS[("multi-range", "dmabuf", "iommufd")]
    assert wanted.outcome == "xfail"
    outcome, met, reason = settle(wanted, v.observed, v.reason, v.findings)
    assert (outcome, met) == ("fail", False)
    assert "not the expected failure: once the cell's L2 had ended" in reason


def test_a_vfio_fd_still_held_fails_naming_the_holder():
    held = Leftover((), ((812, "sleep", 3, "/dev/vfio/devices/vfio1"),), 2.0)
    v = left_behind.judge(Verdict("pass", "ok", {}), [LeftAfter("l2_stop", held)])
    assert v.observed == "fail"
    assert "VFIO fds still held: sleep (pid 812) fd 3 -> /dev/vfio/devices/vfio1" in v.reason


def test_nothing_left_or_nothing_asked_keeps_the_verdict():
    clean = left_behind.judge(REFUSED, [LeftAfter("side_l2", Leftover((), (), 0.01))])
    assert (clean.observed, clean.reason, clean.findings) == \
        (REFUSED.observed, REFUSED.reason, REFUSED.findings)
    assert clean.evidence["left_behind"][0]["step"] == "side_l2"
    assert left_behind.judge(REFUSED, []) is REFUSED
    assert settle(expectation("xfail[multi-range-refused,read-missing]"), clean.observed,
                  clean.reason, clean.findings)[:2] == ("xfail", True)


def test_an_l1_that_cannot_say_is_an_error_not_a_pass():
    v = left_behind.judge(Verdict("pass", "ok", {}),
                          [LeftAfter("side_l2", Leftover((), (), 0.0, "SSH connection gone"))])
    assert v.observed == "error" and "unknown: SSH connection gone" in v.reason
