"""The L1 kernel's own word on a cell: any report it logged, or taint it took, fails it.

Every check's verdict judges what that check asks about; this one is laid over
all of them, as the kernel test robot treats a WARNING in a boot it tests: a
cell whose steps made the kernel complain (a WARNING, BUG, Oops, refcount or
lockdep report, KASAN/KFENCE/UBSAN, a hung task, a soft lockup, a new taint)
fails with finding `kernel-splat`, whatever else it showed, an expected failure
included (its own signature no longer explains it). A window the kernel could
not be asked about is missing evidence: the cell is an error, never a pass.
Which windows a cell stood on is the registry's to say (`Check.stands_on`).
"""

import dataclasses

from harness.evidence.kernel_log import KernelReport, KernelWindow, reports, taint_letters
from harness.verdicts.verdict import SPLAT, Verdict


@dataclasses.dataclass(frozen=True)
class Complaint:
    step: str
    report: KernelReport | None   # None: a taint with no report to show for it
    new_taint: int

    def describe(self) -> str:
        taint = f" (taint +{taint_letters(self.new_taint)})" if self.new_taint else ""
        if self.report is None:
            return f"during {self.step}: the kernel took a new taint{taint} and logged no report"
        return f"during {self.step}: {self.report.summary()}{taint}"

    def record(self) -> dict:
        return {"step": self.step, "new_taint": taint_letters(self.new_taint),
                **(self.report.record() if self.report else {"kind": "taint"})}


def complaints(windows: list[KernelWindow] | tuple[KernelWindow, ...]) -> list[Complaint]:
    """What the kernel said in these windows: each report, and each new taint no report of
    its window accounts for (the bits stay set: a later window never repeats them)."""
    out: list[Complaint] = []
    for window in windows:
        found = reports(window.lines)
        for i, report in enumerate(found):
            out.append(Complaint(window.step, report, window.new_taint if i == 0 else 0))
        if window.new_taint and not found:
            out.append(Complaint(window.step, None, window.new_taint))
    return out


def titles(evidence: dict | None) -> list[str]:
    """The titles of the kernel reports a cell's evidence holds, in the order they came
    (a results.json cell's evidence and a CellResult's alike)."""
    said = [r.get("title") or r.get("headline", "")
            for r in (evidence or {}).get("kernel_reports") or ()]
    return list(dict.fromkeys(said))


def unread(windows) -> list[str]:
    return [f"after {w.step}: {w.unread}" for w in windows if w.unread]


def judge(verdict: Verdict, windows: list[KernelWindow]) -> Verdict:
    """`verdict`, failed if the kernel complained in `windows`, an error if one was not read."""
    said = complaints(windows)
    evidence = {**verdict.evidence, "kernel_windows": [w.step for w in windows]}
    if said:
        evidence["kernel_reports"] = [c.record() for c in said]
        evidence["check_observed"] = verdict.observed  # compare holds it apart from the report
        first = said[0].describe()
        more = f" (and {len(said) - 1} more report(s))" if len(said) > 1 else ""
        return Verdict("fail", f"the L1 kernel complained {first}{more}; the check itself: "
                               f"{verdict.observed}: {verdict.reason}", evidence,
                       verdict.findings | {SPLAT},
                       (*verdict.grounds, "L1 kernel log and taint around each step"))
    missing = unread(windows)
    if missing:
        return Verdict("error", f"the L1 kernel's log could not be read {missing[0]}; the "
                                f"check itself: {verdict.observed}: {verdict.reason}", evidence,
                       verdict.findings, verdict.grounds)
    return Verdict(verdict.observed, verdict.reason, evidence, verdict.findings,
                   (*verdict.grounds, "L1 kernel log and taint around each step: no report")
                   if windows else verdict.grounds)
