"""The kernel's reports read out of its log, and the witness's verdict over a cell.

tests/data/kernel/captured-*.txt are L1 logs as the witness read them (7.2.13, an
adversarial series of tests/data/series); the others are written in the forms other
kernels print (Linux 6.x's WARNING line, lockdep, hung task, an Oops, arm64)."""

from pathlib import Path

import pytest

from harness.checks import registry
from harness.checks.matrix import Cell, CellResult, settle
from harness.checks.registry import expectation
from harness.evidence.kernel_log import (
    KernelWindow,
    LogLine,
    parse_kmsg,
    reports,
    taint_letters,
)
from harness.l1.guest import vfio_l1
from harness.verdicts import kernel_health
from harness.verdicts.verdict import SPLAT, Verdict

DATA = Path(__file__).parent.parent / "data" / "kernel"


def lines(name: str) -> tuple[LogLine, ...]:
    return tuple(LogLine(i, 4, i * 1000, text)
                 for i, text in enumerate((DATA / name).read_text().splitlines()))


def test_a_refcount_underflow_is_one_report_with_its_message_and_the_code_at_fault():
    (r,) = reports(lines("x86-refcount-underflow.txt"))
    assert r.kind == "refcount"
    assert r.headline == "refcount_t: underflow; use-after-free."
    assert r.where.startswith("WARNING: CPU: 0 PID: 412 at lib/refcount.c:28")
    # the '?' frames and the warning machinery are left out; the call trace's top is the bug
    assert r.frames == ("vfio_pci_dma_buf_release", "dma_buf_release", "__dentry_kill",
                        "__fput")
    assert r.lines[-1].startswith("---[ end trace")
    assert not any("resetting" in x for x in r.lines)  # the lines around it are not its


def test_linux_7_2s_refcount_warning_as_captured_from_the_double_put_series():
    (r,) = reports(lines("captured-x86-7.2.13-double-put-at-l2-stop.txt"))
    assert r.kind == "refcount"
    assert r.headline == "refcount_t: underflow; use-after-free."
    assert r.where == ("WARNING: lib/refcount.c:28 at refcount_warn_saturate+0x1b/0x70, "
                       "CPU#0: call_rcu/93")
    assert r.frames == ("vfio_pci_dma_buf_release", "dma_buf_release", "dentry_kill",
                        "finish_dput")
    assert r.lines[-1].startswith("---[ end trace")


def test_linux_7_2s_lockdep_report_as_captured_from_the_lock_order_series():
    """The lock being taken names the function, not the validator's frames above it."""
    (r,) = reports(lines("captured-x86-7.2.13-lockdep-iommufd-map-under-resv.txt"))
    assert r.kind == "lockdep"
    assert r.headline == "WARNING: possible circular locking dependency detected"
    assert r.frames == ("vfio_pci_dma_buf_iommufd_map", "iopt_alloc_dmabuf_pages",
                        "iopt_map_file_pages", "iommufd_ioas_map_file")
    assert r.lines[-1] == " </TASK>"
    assert any("(reservation_ww_class_mutex)" in x for x in r.lines)


def test_linux_7_2s_slub_report_is_one_with_the_warning_that_follows_it():
    """7.2's SLUB WARNs after its consistency report: that WARN's call trace is the report's,
    and names the function that freed twice."""
    (r,) = reports(lines("captured-x86-7.2.13-slub-double-free-at-l2-exit.txt"))
    assert r.kind == "slub"
    assert r.title == "SLUB: Object already free in vfio_pci_dma_buf_release"
    assert r.lines[0].startswith("BUG kmalloc-16 (Tainted: G    B   W          ): Object already")
    assert r.lines[-1] == " </TASK>"  # the WARN's trace: its own, then lockdep's irq stamps
    assert any(x.startswith("Allocated in vfio_pci_core_feature_dma_buf") for x in r.lines)


def test_an_arm64_warning_ends_with_its_call_trace():
    (r,) = reports(lines("arm64-warning.txt"))
    assert r.kind == "warning" and r.where == ""
    assert r.headline.startswith("WARNING: CPU: 0 PID: 377 at drivers/vfio/pci/"
                                 "vfio_pci_dmabuf.c:358")
    assert r.frames[:2] == ("vfio_pci_dma_buf_move", "vfio_pci_config_rw")
    assert not any("page fault" in x for x in r.lines)


def test_lockdep_hung_task_and_oops_are_reports_of_their_kind():
    (lockdep,) = reports(lines("x86-lockdep-circular.txt"))
    assert lockdep.kind == "lockdep"
    assert lockdep.headline == "WARNING: possible circular locking dependency detected"
    assert lockdep.frames[0] == "vfio_pci_dma_buf_release"
    (hung,) = reports(lines("x86-hung-task.txt"))
    assert hung.kind == "hung-task" and "qemu-system-x86:455" in hung.headline
    assert hung.frames[:2] == ("vfio_pci_dma_buf_cleanup", "vfio_pci_core_close_device")
    (oops,) = reports(lines("x86-null-deref.txt"))
    assert oops.kind == "bug" and "NULL pointer dereference" in oops.headline
    assert any(x.startswith("Oops: ") for x in oops.lines)  # one report, not two
    assert oops.frames[0] == "iopt_map_file_pages"


def test_iommu_faults_and_driver_messages_are_no_reports():
    assert reports(lines("benign.txt")) == []


def test_several_reports_in_one_window_are_each_found():
    both = lines("x86-hung-task.txt") + lines("x86-refcount-underflow.txt")
    assert [r.kind for r in reports(both)] == ["hung-task", "refcount"]


def test_taint_letters_are_the_kernels():
    assert taint_letters(1 << 9) == "W"
    assert taint_letters((1 << 7) | (1 << 9) | (1 << 14)) == "DWL"


def window(step: str, name: str | None = None, before: int = 0, after: int = 0,
           unread: str = "") -> KernelWindow:
    return KernelWindow(step, lines(name) if name else (), before, after, unread)


PASSED = Verdict("pass", "all good", {}, frozenset(), ("trace",))


def test_a_report_fails_a_passing_cell_in_the_kernels_words():
    v = kernel_health.judge(PASSED, [window("l2_start"),
                                     window("l2_stop", "x86-refcount-underflow.txt", 0, 512)])
    assert v.observed == "fail" and SPLAT in v.findings
    assert v.reason.startswith("the L1 kernel complained during l2_stop: WARNING: refcount "
                               "bug in vfio_pci_dma_buf_release: refcount_t: underflow; "
                               "use-after-free. (WARNING: CPU: 0 PID: 412 at lib/refcount.c:28")
    assert "call trace: vfio_pci_dma_buf_release < dma_buf_release" in v.reason
    assert "(taint +W)" in v.reason and v.reason.endswith("the check itself: pass: all good")
    assert v.evidence["kernel_reports"][0]["lines"][0] == "refcount_t: underflow; use-after-free."


def test_a_new_taint_without_a_report_fails_too_and_an_old_one_does_not():
    v = kernel_health.judge(PASSED, [window("reset", before=0, after=1 << 9)])
    assert v.observed == "fail" and "new taint (taint +W) and logged no report" in v.reason
    assert kernel_health.judge(PASSED, [window("reset", before=1 << 9, after=1 << 9)]) \
        .observed == "pass"


def test_a_window_the_kernel_was_not_asked_about_is_an_error_never_a_pass():
    v = kernel_health.judge(PASSED, [window("p2p", unread="L1 went away")])
    assert v.observed == "error" and "after p2p: L1 went away" in v.reason


def test_a_clean_kernel_leaves_the_verdict_and_says_what_it_stood_on():
    v = kernel_health.judge(PASSED, [window("l2_start", "benign.txt")])
    assert (v.observed, v.reason) == ("pass", "all good")
    assert v.grounds[-1] == "L1 kernel log and taint around each step: no report"


def test_the_splat_fails_an_expected_failure_whose_signature_does_not_name_it():
    exp = expectation("xfail[dmabuf-outlives-device]")
    found = frozenset({"dmabuf-outlives-device", SPLAT})
    outcome, met, reason = settle(exp, "fail", "leak and splat", found)
    assert (outcome, met) == ("fail", False) and "not the expected failure" in reason
    assert settle(exp, "fail", "leak", frozenset({"dmabuf-outlives-device"}))[:2] == \
        ("xfail", True)


def test_a_cell_stands_on_its_own_step_and_the_shared_ones_only():
    p2p, reset = registry.get("p2p-dma"), registry.get("reset")
    assert p2p.stands_on("p2p") and p2p.stands_on("l2_stop") and p2p.stands_on("l2_start")
    assert not p2p.stands_on("reset") and not reset.stands_on("p2p")
    assert not p2p.stands_on("side_l2") and registry.get("multi-range").stands_on("side_l2")


def test_a_cell_result_of_a_splat_is_not_met():
    cell = Cell("intel-iommu", "iommufd", "dmabuf", "p2p-dma")
    v = kernel_health.judge(PASSED, [window("p2p", "x86-null-deref.txt")])
    r = CellResult.settled(cell, v.observed, v.reason, v.evidence, 1.0, findings=v.findings)
    assert (r.outcome, r.met) == ("fail", False) and SPLAT in r.findings


def test_the_guest_helper_reads_kmsg_records_once_each(monkeypatch):
    """The helper's reader on this host's own /dev/kmsg: records in order, each returned
    once to the same reader, a new reader filtered by the sequence number it is given."""
    if not Path("/dev/kmsg").exists():
        pytest.skip("no /dev/kmsg here")
    monkeypatch.setattr(vfio_l1, "_KMSG", [])
    first, tainted = parse_kmsg(vfio_l1.kmsg(["-1"]))
    assert first and tainted >= 0
    seqs = [x.seq for x in first]
    assert seqs == sorted(seqs)
    again, _ = parse_kmsg(vfio_l1.kmsg([str(seqs[-1])]))
    assert all(x.seq > seqs[-1] for x in again)  # only what came since
    monkeypatch.setattr(vfio_l1, "_KMSG", [])    # a helper started afresh
    fresh, _ = parse_kmsg(vfio_l1.kmsg([str(seqs[-1])]))
    assert all(x.seq > seqs[-1] for x in fresh)


def test_after_a_double_free_the_kernel_is_not_trusted_and_after_a_lock_order_it_is():
    """A double free corrupts the allocator; lockdep's report leaves the kernel as it was."""
    from harness.evidence.kernel_log import untrusted

    windows = [window("decode_witness", "captured-x86-7.2.13-lockdep-iommufd-map-under-resv.txt"),
               window("quit-while-revoked", "captured-x86-7.2.13-slub-double-free-at-l2-exit.txt")]
    assert untrusted(windows) == ("its kernel reported SLUB: Object already free in "
                                  "vfio_pci_dma_buf_release during quit-while-revoked")
    assert untrusted(windows[:1]) == ""


class _ScriptedLog:
    """L1Vfio.kernel_log over a list of records that grows as the test says: each call
    returns what came after `since`, as the helper's reader does."""

    def __init__(self):
        self.records: list[LogLine] = []

    def kernel_log(self, since: int):
        return tuple(r for r in self.records if r.seq > since), 0


def test_what_a_step_reads_during_a_dma_is_its_own_and_still_in_its_window():
    """The lines read during an act of a step (a DMA's IOMMU fault) are the kernel's own
    after the mark, printed as dmesg prints them; the step's window still gets every
    record once, userspace's included (marked there, never a report)."""
    from harness.collect.kernel_witness import KernelWitness

    log = _ScriptedLog()
    witness = KernelWitness(log)  # type: ignore[arg-type]
    log.records.append(LogLine(1, 6, 1_000_000, "booted"))
    witness.between("boot")
    log.records.append(LogLine(2, 6, 49_000_000, "before the DMA"))
    mark = witness.now()
    log.records += [LogLine(3, 3, 50_033_729, "DMAR: [DMA Read NO_PASID] fault addr 0xc0100000"),
                    LogLine(4, 3, 50_100_000, "DMAR: fault addr 0xdead (written by a program)",
                            facility=1)]
    assert witness.since(mark) == ("[   50.033729] DMAR: [DMA Read NO_PASID] fault addr "
                                   "0xc0100000",)
    log.records.append(LogLine(5, 6, 51_000_000, "after"))
    witness.read("p2p")
    (window,) = witness.take()
    assert [line.seq for line in window.lines] == [2, 3, 4, 5]
    assert [line.seq for line in witness.outside[0].lines] == [1]
