"""Every report class on its sample, syzbot's titles and guilty frames, and the lines that are
no report: userspace's, and the kernel's known-harmless ones.

The samples are tests/data/kernel/*.txt: the captured ones are L1 logs as the witness
read them; the others are written from the formats in the kernel's source (lockdep,
KASAN, KFENCE, SLUB, kmemleak, the traps and die()), in 7.2's wording where it differs."""

from pathlib import Path

import pytest

from harness.evidence import guilty_frame
from harness.evidence.kernel_log import KernelWindow, LogLine, reports
from harness.evidence.report_classes import CLASSES, HARMLESS, classify
from harness.verdicts import kernel_health
from harness.verdicts.verdict import Verdict

DATA = Path(__file__).parent.parent / "data" / "kernel"

#: The title each class's sample gets: the class and the function it is about.
TITLES = {
    "kasan-invalid-free.txt": "KASAN: invalid-free in vfio_pci_dma_buf_release",
    "kasan-slab-use-after-free.txt": "KASAN: slab-use-after-free Read in vfio_pci_dma_buf_move",
    "kfence-use-after-free.txt": "KFENCE: use-after-free read in vfio_pci_dma_buf_attach",
    "x86-null-deref.txt": "BUG: unable to handle kernel NULL pointer dereference in "
                          "vfio_pci_dma_buf_iommufd_map",
    "x86-paging-request.txt": "BUG: unable to handle kernel paging request in "
                              "vfio_pci_core_do_io_rw",
    "arm64-null-deref.txt": "unable to handle kernel NULL pointer dereference in "
                            "vfio_pci_dma_buf_iommufd_map",
    "arm-unhandled-fault.txt": "Unhandled fault: imprecise external abort in "
                               "vfio_pci_core_do_io_rw",
    "x86-soft-lockup.txt": "BUG: soft lockup in vfio_pci_dma_buf_move",
    "x86-hard-lockup.txt": "watchdog: hard lockup in vfio_pci_intx_mask",
    "x86-rcu-expedited-stall.txt": "INFO: rcu detected stall in vfio_pci_dma_buf_move",
    "x86-hung-task.txt": "INFO: task hung in vfio_pci_dma_buf_cleanup",
    "x86-hung-task-io-wait.txt": "INFO: task hung in vfio_pci_mmap_huge_fault",
    "x86-task-cant-die.txt": "INFO: task can't die in vfio_pci_core_close_device",
    "x86-invalid-wait-context.txt": "BUG: Invalid wait context in vfio_pci_dma_buf_revoke",
    "x86-lockdep-irq-unsafe.txt": "possible deadlock in vfio_pci_dma_buf_move",
    "x86-lockdep-inconsistent.txt": "inconsistent lock state in vfio_pci_dma_buf_notify",
    "x86-suspicious-rcu.txt": "WARNING: suspicious RCU usage in vfio_pci_dma_buf_find",
    "x86-bad-unlock-balance.txt": "WARNING: bad unlock balance in vfio_pci_dma_buf_cleanup",
    "x86-held-lock-freed.txt": "WARNING: held lock freed in vfio_pci_dma_buf_release",
    "x86-lock-held-returning.txt": "WARNING: lock held when returning to user space in "
                                   "vfio_pci_core_feature_dma_buf",
    "x86-still-has-locks-held.txt": "BUG: still has locks held in vfio_pci_dma_buf_cleanup",
    "x86-non-static-key.txt": "INFO: trying to register non-static key in "
                              "vfio_pci_dma_buf_move",
    "captured-x86-7.2.13-double-put-at-l2-stop.txt": "WARNING: refcount bug in "
                                                     "vfio_pci_dma_buf_release",
    "captured-x86-7.2.13-lockdep-iommufd-map-under-resv.txt": "possible deadlock in "
                                                             "vfio_pci_dma_buf_iommufd_map",
    "captured-x86-7.2.13-slub-double-free-at-l2-exit.txt": "SLUB: Object already free in "
                                                           "vfio_pci_dma_buf_release",
    "x86-odebug.txt": "WARNING: ODEBUG bug in vfio_pci_dma_buf_release",
    "x86-locking-bug.txt": "WARNING: locking bug in vfio_pci_dma_buf_cleanup",
    "arm64-warning.txt": "WARNING in vfio_pci_dma_buf_move",
    "x86-list-corruption.txt": "BUG: corrupted list in vfio_pci_dma_buf_cleanup",
    "x86-kernel-bug.txt": "kernel BUG in vfio_pci_dma_buf_cleanup",
    "x86-general-protection-fault.txt": "general protection fault in vfio_pci_dma_buf_move",
    "x86-stack-segment.txt": "stack segment fault in iopt_unmap_iova_range",
    "x86-divide-error.txt": "divide error in vfio_pci_dma_buf_phys_vec",
    "x86-invalid-opcode.txt": "invalid opcode in vfio_pci_dma_buf_map",
    "x86-double-fault.txt": "PANIC: double fault in vfio_pci_dma_buf_attach",
    "arm64-internal-error.txt": "Internal error: Oops - BUG in vfio_pci_dma_buf_cleanup",
    "x86-oops.txt": "Oops in vfio_pci_dma_buf_unmap",
    "x86-sleeping-in-atomic.txt": "BUG: sleeping function called from invalid context in "
                                  "vfio_pci_dma_buf_move",
    "x86-scheduling-while-atomic.txt": "BUG: scheduling while atomic in "
                                       "vfio_pci_dma_buf_wait_revoked",
    "x86-spinlock-bad-magic.txt": "BUG: spinlock bad magic in vfio_pci_intx_mask",
    "x86-workqueue-leaked-lock.txt": "BUG: workqueue leaked lock or atomic in "
                                     "vfio_pci_dma_buf_work",
    "x86-workqueue-lockup.txt": "BUG: workqueue lockup",
    "x86-bad-page-state.txt": "BUG: Bad page state",
    "x86-bad-rss-counter.txt": "BUG: Bad rss-counter state",
    "x86-bug-other.txt": "BUG: unable to revoke dma-buf ADDR held by 2 importers in "
                         "vfio_pci_dma_buf_move",
    "x86-slub-double-free.txt": "SLUB: Object already free in vfio_pci_dma_buf_release",
    "x86-ubsan-old.txt": "UBSAN: undefined-behaviour in vfio_pci_dma_buf_phys_vec",
    "x86-ubsan-array-index.txt": "UBSAN: array-index-out-of-bounds in "
                                 "vfio_pci_core_feature_dma_buf",
    "x86-kmemleak.txt": "memory leak in vfio_pci_core_feature_dma_buf",
    "x86-kmemleak-summary.txt": "memory leak (kmemleak found it; its objects are in "
                                "/sys/kernel/debug/kmemleak)",
    "x86-unregister-netdevice.txt": "unregister_netdevice: waiting for DEV to become free",
    "x86-panic-after-warning.txt": "WARNING in vfio_pci_dma_buf_move",
    "x86-panic.txt": "kernel panic: Attempted to kill init! exitcode=ADDR",
    "x86-warning-other.txt": "WARNING: Flushing system-wide workqueues will be prohibited in "
                             "near future",
}


def lines(name: str, facility: int = 0) -> tuple[LogLine, ...]:
    return tuple(LogLine(i, 4, i * 1000, text, facility)
                 for i, text in enumerate((DATA / name).read_text().splitlines()))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.kind}:{c.header.pattern[:40]}")
def test_each_class_reads_its_sample_as_one_report_with_its_title(cls):
    assert cls.sample in TITLES, f"no expected title for {cls.sample}"
    found = reports(lines(cls.sample))
    assert [r.title for r in found] == [TITLES[cls.sample]]
    (report,) = found
    assert report.kind == cls.kind or cls.joins  # a panic is its report's end
    # a line of the sample is this class's header (the table's order does not shadow it)
    assert any((c := classify(t)) and c[0] is cls for t in report.lines)


def test_the_table_has_no_class_without_a_sample_and_no_sample_without_a_class():
    assert {c.sample for c in CLASSES} == set(TITLES)
    assert all((DATA / name).is_file() for name in TITLES)


def test_a_panic_is_the_end_of_the_report_before_it_and_a_report_alone_otherwise():
    (warn,) = reports(lines("x86-panic-after-warning.txt"))
    assert warn.lines[-1].startswith("---[ end Kernel panic")
    (fault,) = reports(lines("x86-double-fault.txt"))  # "Fatal exception in interrupt"
    assert fault.title == "PANIC: double fault in vfio_pci_dma_buf_attach"
    (panic,) = reports(lines("x86-panic.txt"))
    assert panic.kind == "panic"


def test_kmemleaks_summary_joins_its_objects_and_stands_alone_without_them():
    both = lines("x86-kmemleak.txt") + lines("x86-kmemleak-summary.txt")
    assert [r.title for r in reports(both)] == ["memory leak in vfio_pci_core_feature_dma_buf"]
    warn_then_summary = lines("arm64-warning.txt") + lines("x86-kmemleak-summary.txt")
    assert [r.kind for r in reports(warn_then_summary)] == ["warning", "kmemleak"]


def test_kmemleaks_lowercase_backtrace_ends_at_its_last_frame():
    (leak,) = reports(lines("x86-kmemleak.txt"))
    assert leak.lines[-1].strip().startswith("entry_SYSCALL_64")  # "resetting" is not its


def test_slubs_allocated_and_freed_lines_are_part_of_its_report_not_reports():
    old_style = [LogLine(0, 3, 0, "BUG kmalloc-64 (Not tainted): Poison overwritten"),
                 LogLine(1, 3, 0, "INFO: Allocated in vfio_pci_core_feature_dma_buf+0x1a4/0x460"
                                  " age=12 cpu=0 pid=455"),
                 LogLine(2, 3, 0, "INFO: Freed in kfree+0xd1/0x3a0 age=2 cpu=0 pid=93")]
    (r,) = reports(old_style)
    assert r.title == "SLUB: Poison overwritten" and len(r.lines) == 3


def test_the_guilty_frame_is_read_without_the_compilers_suffixes():
    assert guilty_frame.plain("vfio_pci_dma_buf_move.isra.0") == "vfio_pci_dma_buf_move"
    assert guilty_frame.plain("f.constprop.0.isra.0") == "f"
    assert guilty_frame.plain("g.isra.56.cold.74") == "g"
    assert guilty_frame.plain("h.part.3") == "h" and guilty_frame.plain("k.cold") == "k"
    # machinery renamed by the compiler is still machinery
    assert guilty_frame.is_machinery("__warn.cold") and guilty_frame.is_machinery(
        "refcount_warn_saturate.part.0")
    texts = ["Call Trace:", " <TASK>", " ? report_bug.isra.0+0x1/0x2",
             " __might_resched.cold+0x1/0x2", " vfio_x.part.0+0x3/0x4", " </TASK>"]
    assert guilty_frame.guilty(("trace",), texts) == "vfio_x"


def test_the_faulting_instruction_is_the_guilty_frame_where_a_trace_has_none():
    texts = ["Oops: divide error: 0000 [#1] SMP", "RIP: 0010:iopt_area_split.cold+0x4/0x8"]
    assert reports([LogLine(0, 0, 0, t) for t in texts])[0].title == \
        "divide error in iopt_area_split"


def test_userspace_lines_never_start_or_join_a_report():
    """What a program writes into /dev/kmsg carries facility 1 (LOG_USER) or more: a
    "WARNING:" of sshd's, systemd's or a test's is not the kernel's."""
    user = [LogLine(0, 4, 0, "WARNING: CPU: 0 PID: 1 at fake.c:1 fake+0x0/0x10", 1),
            LogLine(1, 3, 0, "BUG: KASAN: slab-use-after-free in fake+0x0/0x10", 3),
            LogLine(2, 4, 0, "WARNING: /etc/ssh/moduli does not exist, using fixed modulus", 4)]
    assert reports(user) == []
    # the kernel's report goes on around a userspace line in its middle
    kernel = list(lines("arm64-warning.txt"))
    mixed = kernel[:5] + [LogLine(99, 4, 0, "Kernel panic - not syncing: from userspace", 1)] \
        + kernel[5:]
    (r,) = reports(mixed)
    assert r.title == "WARNING in vfio_pci_dma_buf_move"
    assert not any("from userspace" in t for t in r.lines)


@pytest.mark.parametrize("harmless", HARMLESS, ids=lambda h: h.pattern.pattern[:40])
def test_each_harmless_line_has_its_reason_and_starts_no_report(harmless):
    assert harmless.why
    example = harmless.example
    assert harmless.pattern.match(example)
    assert classify(example) is None
    assert reports([LogLine(0, 4, 0, example)]) == []


def test_lockdep_running_out_of_room_is_a_report_not_harmless():
    """It turns lockdep off for the rest of the boot: every later lock check is blind, and
    syzbot reports it too."""
    (r,) = reports([LogLine(0, 4, 0, "BUG: MAX_LOCKDEP_CHAIN_HLOCKS too low!")])
    assert r.title == "BUG: MAX_LOCKDEP_CHAIN_HLOCKS too low"


def test_a_clean_log_with_harmless_and_userspace_lines_stays_clean():
    window = KernelWindow("l2_start", lines("benign.txt") + lines("harmless.txt") + (
        LogLine(90, 4, 0, "WARNING: written by a test from userspace", 1),), 0, 0)
    passed = Verdict("pass", "all good", {}, frozenset(), ("trace",))
    assert kernel_health.judge(passed, [window]).observed == "pass"
