"""What every ended L2 left in the L1 kernel, held against every cell that stood on it.

A dma-buf reference leaked on an error path (a refused IOMMU_IOAS_MAP_FILE that
never puts the dma-buf it got, say) shows in no answer QEMU receives and in no
report of the kernel: the dma-buf simply outlives every file that refers to it.
So, as with the kernel's own reports (kernel_health.py), each L2 that no
teardown check judges is asked after, once it has ended: debugfs must list no
dma-buf of that L2's exporter and no process may hold a VFIO fd. Whatever is
left fails every cell whose evidence came from that L2, whatever the check
itself found, and no expected failure explains it away unless it names it.
"""

from harness.evidence.teardown import LeftAfter
from harness.verdicts.verdict import LEFT, Verdict


def judge(verdict: Verdict, left: list[LeftAfter]) -> Verdict:
    """`verdict`, failed if an L2 it stood on left something behind; an error if L1 could
    not say."""
    if not left:
        return verdict
    evidence = {**verdict.evidence, "left_behind": [
        {"step": a.step, **a.leftover.record()} for a in left]}
    kept = [a for a in left if a.leftover.dmabufs or a.leftover.holders]
    if kept:
        first = kept[0]
        return Verdict("fail", f"once its L2 had ended ({first.step}, waited "
                               f"{first.leftover.waited_s:g} s): {first.leftover.describe()}; "
                               f"the check itself: {verdict.observed}: {verdict.reason}",
                       evidence, verdict.findings | {LEFT},
                       (*verdict.grounds, "L1 kernel: what each ended L2 left (debugfs, /proc)"))
    unknown = [a for a in left if a.leftover.error]
    if unknown:
        return Verdict("error", f"what L1 held once its L2 had ended ({unknown[0].step}) is "
                                f"unknown: {unknown[0].leftover.error}; the check itself: "
                                f"{verdict.observed}: {verdict.reason}", evidence,
                       verdict.findings, verdict.grounds)
    return Verdict(verdict.observed, verdict.reason, evidence, verdict.findings,
                   (*verdict.grounds, "L1 kernel: nothing left once its L2 had ended"))
