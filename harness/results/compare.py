"""Baseline against candidate: which cells changed, and the evidence that changed with them.

Two results directories (two `run`s of the same cells, ideally the same seed)
are held side by side, cell by cell. A cell is a new failure (met its
expectation on the baseline, not on the candidate), fixed, still failing,
unchanged, an infrastructure error (an L1 that did not boot on either side is
not the change's fault), or only on one side. Every changed cell is explained
by what changed in its backend's evidence summary (evidence.summarize): trace
events that appeared or vanished, by event and region; warnings; the kernel's
view of dma-buf fds; the P2P bytes.

The text report follows the kernel test robot's mails: what was compared, the
new failures marked, and a line to reproduce each.
"""

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from harness.results import bisection
from harness.results.results_file import load, reproduce
from harness.verdicts import kernel_health

NEW_FAILURE, FIXED, STILL_FAILING, UNCHANGED, INFRASTRUCTURE, ONE_SIDE = (
    "new failure", "fixed", "still failing", "unchanged", "infrastructure error",
    "only on one side")
ORDER = (NEW_FAILURE, INFRASTRUCTURE, FIXED, STILL_FAILING, ONE_SIDE, UNCHANGED)


@dataclass
class CellChange:
    id: str
    status: str
    baseline: dict | None
    candidate: dict | None
    evidence_changes: list[str] = field(default_factory=list)

    def outcome_line(self) -> str:
        b = self.baseline["outcome"] if self.baseline else "absent"
        c = self.candidate["outcome"] if self.candidate else "absent"
        return f"{b} -> {c}"

    def record(self) -> dict:
        return {"id": self.id, "status": self.status, "outcomes": self.outcome_line(),
                "baseline_reason": (self.baseline or {}).get("reason"),
                "candidate_reason": (self.candidate or {}).get("reason"),
                "evidence_changes": self.evidence_changes}


@dataclass
class Comparison:
    baseline_dir: Path
    candidate_dir: Path
    baseline_run: dict
    candidate_run: dict
    cells: list[CellChange]
    bisect: dict | None = None  # which patch of the candidate's series brought each failure

    def culprit(self, cell_id: str) -> str | None:
        return bisection.culprit(self.bisect, cell_id)

    @property
    def regressions(self) -> list[CellChange]:
        return [c for c in self.cells if c.status == NEW_FAILURE]

    def by_status(self, status: str) -> list[CellChange]:
        return [c for c in self.cells if c.status == status]

    def outside(self) -> tuple[set[str], set[str]]:
        """(titles the candidate's kernels gave outside every cell, the baseline's):
        at a boot, between L2s, at the end."""
        return outside_titles(self.candidate_run), outside_titles(self.baseline_run)

    @property
    def new_outside(self) -> list[str]:
        """Outside-cell reports only the candidate's kernels made: new failures of the
        run, if of no cell."""
        candidate, baseline = self.outside()
        return sorted(candidate - baseline)

    def exit_code(self) -> int:
        """0 nothing regressed, 1 something did (infrastructure errors count: nothing is
        known of those cells; so does a new report outside every cell)."""
        return 1 if (self.regressions or self.by_status(INFRASTRUCTURE)
                     or self.new_outside) else 0

    def record(self) -> dict:
        candidate, baseline = self.outside()
        return {"baseline": {"dir": str(self.baseline_dir), "run": self.baseline_run},
                "candidate": {"dir": str(self.candidate_dir), "run": self.candidate_run},
                "counts": {s: len(self.by_status(s)) for s in ORDER},
                "cells": [c.record() for c in self.cells],
                "kernel_outside_cells": {"new": self.new_outside,
                                         "gone": sorted(baseline - candidate),
                                         "both": sorted(candidate & baseline)},
                **({"bisect": self.bisect} if self.bisect else {})}


def _infrastructure(cell: dict | None) -> bool:
    return bool(cell and cell["outcome"] == "error"
                and cell.get("infrastructure"))


def kernel_titles(cell: dict | None) -> set[str]:
    """The titles of the kernel reports a cell stood on ("WARNING: refcount bug in F")."""
    return set(kernel_health.titles((cell or {}).get("evidence")))


def classify(baseline: dict | None, candidate: dict | None) -> str:
    """A cell's change. The kernel's reports are held by title: a report the baseline's
    kernel made too is the base's known bug, not the candidate's (the cell is unchanged
    when the check itself saw the same on both sides); a title only the candidate's kernel
    gave is a new failure even where the baseline failed too."""
    if baseline is None or candidate is None:
        return ONE_SIDE
    if _infrastructure(baseline) or _infrastructure(candidate):
        return INFRASTRUCTURE
    if baseline["met"] and not candidate["met"]:
        return NEW_FAILURE
    if not baseline["met"] and candidate["met"]:
        return FIXED
    if not baseline["met"]:
        before, after = kernel_titles(baseline), kernel_titles(candidate)
        if after - before:
            return NEW_FAILURE
        if after and after == before and _check_saw(baseline) == _check_saw(candidate):
            return UNCHANGED
        return STILL_FAILING
    return UNCHANGED


def outside_titles(run: dict) -> set[str]:
    """The titles of what a run's L1 kernels said outside every cell."""
    return {c.get("title") or c.get("headline") or c.get("said", "")
            for l1 in run.get("kernel_outside_cells") or () for c in l1.get("complaints", ())}


def _check_saw(cell: dict) -> tuple:
    """What the check itself observed under a kernel report (kernel_health keeps it)."""
    evidence = cell.get("evidence") or {}
    return cell["outcome"], evidence.get("check_observed"), tuple(sorted(cell.get("findings", [])))


def kernel_changes(baseline: dict, candidate: dict) -> list[str]:
    """Both sides' kernel report titles: new, gone, and said on both."""
    before, after = kernel_titles(baseline), kernel_titles(candidate)
    return ([f"+ kernel report: {t}" for t in sorted(after - before)]
            + [f"- kernel report gone: {t}" for t in sorted(before - after)]
            + [f"= kernel report on both sides: {t}" for t in sorted(before & after)])


def evidence_changes(baseline: dict, candidate: dict) -> list[str]:
    """What changed between two cells' evidence summaries, one line per change."""
    a = baseline.get("evidence", {}).get("summary") or {}
    b = candidate.get("evidence", {}).get("summary") or {}
    out = kernel_changes(baseline, candidate)
    if not a or not b:
        return out + ["no evidence summary on " + ("either side" if not a and not b else
                                                   "the baseline" if not a else
                                                   "the candidate")]
    for event in sorted(set(a.get("events", {})) | set(b.get("events", {}))):
        ea, eb = a.get("events", {}).get(event, {}), b.get("events", {}).get(event, {})
        for subject in sorted(set(ea) | set(eb)):
            na, nb = ea.get(subject, 0), eb.get(subject, 0)
            if na and not nb:
                out.append(f"- {event} {subject} vanished (was {na})")
            elif nb and not na:
                out.append(f"+ {event} {subject} appeared ({nb})")
            elif na != nb:
                out.append(f"~ {event} {subject}: {na} -> {nb}")
    wa, wb = set(a.get("warnings", [])), set(b.get("warnings", []))
    out += [f"+ warning: {w}" for w in sorted(wb - wa)]
    out += [f"- warning gone: {w}" for w in sorted(wa - wb)]
    for key, label in (("kernel_dmabufs", "L1 kernel: L2's dma-buf fds"),
                       ("kernel_vfio_maps", "L1 kernel: L2's VFIO device mappings"),
                       ("p2p", "P2P"), ("l2_alive_at_end", "L2 alive at the end")):
        if a.get(key) != b.get(key):
            out.append(f"~ {label}: {a.get(key)} -> {b.get(key)}")
    return out


def compare(baseline_dir: Path, candidate_dir: Path) -> Comparison:
    base, cand = load(baseline_dir, finished=True), load(candidate_dir, finished=True)
    a = {c["id"]: c for c in base["cells"]}
    b = {c["id"]: c for c in cand["cells"]}
    cells = []
    for cell_id in sorted(set(a) | set(b)):
        change = CellChange(cell_id, classify(a.get(cell_id), b.get(cell_id)),
                            a.get(cell_id), b.get(cell_id))
        if change.status != UNCHANGED and change.baseline and change.candidate:
            change.evidence_changes = evidence_changes(change.baseline, change.candidate)
        cells.append(change)
    cells.sort(key=lambda c: (ORDER.index(c.status), c.id))
    series = {s["sha256"] for s in (cand.get("run", {}).get("kernel_series") or {}).values()}
    return Comparison(baseline_dir, candidate_dir, base.get("run", {}), cand.get("run", {}),
                      cells, bisection.load(candidate_dir, series))


def _describe(run: dict) -> str:
    qemus = run.get("l2_qemu") or []
    qemu = "; ".join(f"{q.get('version')} ({q.get('origin')}, sha256 {str(q.get('sha256'))[:12]})"
                     for q in qemus if isinstance(q, dict)) or "unknown QEMU"
    series = run.get("kernel_series") or {}
    kernels = ", ".join(f"{k} {v}" + (f" + {series[k]['title']!r} ({len(series[k]['patches'])} "
                                      f"patch(es), {series[k]['sha256'][:12]})"
                                      if k in series else "")
                        for k, v in (run.get("kernels") or {}).items())
    return f"{qemu}; kernels {kernels or 'unknown'}; seed {run.get('seed', '?')}"


def text(c: Comparison) -> str:
    counts = ", ".join(f"{len(c.by_status(s))} {s}" for s in ORDER if c.by_status(s))
    lines = ["vfio-harness A/B report", "",
             f"baseline:  {c.baseline_dir}", f"           {_describe(c.baseline_run)}",
             f"candidate: {c.candidate_dir}", f"           {_describe(c.candidate_run)}", "",
             f"{len(c.cells)} cells: {counts}", ""]
    if c.bisect:
        lines += [*bisection.lines(c.bisect, lambda cell_id: next(
            reproduce(x.candidate, c.candidate_run) for x in c.cells
            if x.id == cell_id and x.candidate)), ""]
    if c.regressions:
        lines.append("New failures (marked +), with the evidence that changed:")
    for status in ORDER[:-1]:
        changed = c.by_status(status)
        if not changed:
            continue
        if status != NEW_FAILURE:
            lines.append(f"{status[0].upper()}{status[1:]}:")
        shown: tuple[str, list[str]] | None = None
        for cell in changed:
            mark = "+ " if status == NEW_FAILURE else "  "
            lines.append(f"{mark}{cell.id}: {cell.outcome_line()}")
            if cell.candidate:
                lines.append(f"      candidate: {cell.candidate.get('reason', '')}")
            if status in (NEW_FAILURE, FIXED) and cell.baseline:
                lines.append(f"      baseline:  {cell.baseline.get('reason', '')}")
            if c.culprit(cell.id):
                lines.append(f"      bisect:    {c.culprit(cell.id)}")
            l2 = cell.id.rsplit("-", 2)[0] if cell.candidate is None else "-".join(
                cell.candidate[k] for k in ("viommu", "backend", "kernel"))
            if shown == (l2, cell.evidence_changes) and cell.evidence_changes:
                lines.append("      evidence that changed: as above (the same L2)")
            else:
                lines += [f"      {line}" for line in cell.evidence_changes]
            shown = (l2, cell.evidence_changes)
            if status == NEW_FAILURE and cell.candidate:
                lines.append(f"      reproduce: {reproduce(cell.candidate, c.candidate_run)}")
        lines.append("")
    candidate, baseline = c.outside()
    if candidate | baseline:
        lines += ["Outside every cell (boots, between L2s, ends), the kernels' reports:",
                  *(f"+ {t}" for t in sorted(candidate - baseline)),
                  *(f"- gone: {t}" for t in sorted(baseline - candidate)),
                  *(f"= on both sides: {t}" for t in sorted(candidate & baseline)), ""]
    known = sorted({t for cell in c.by_status(UNCHANGED) for t in kernel_titles(cell.candidate)})
    if known:
        lines += ["Unchanged: the baseline's kernel made the same report(s) in the same cells "
                  "(a known bug of the base, not the candidate's):",
                  *(f"  = {t}" for t in known), ""]
    verdict = ("REGRESSION: the candidate broke what the baseline did" if c.regressions else
               "REGRESSION: the candidate's kernel made a new report outside every cell"
               if c.new_outside else
               "UNKNOWN: infrastructure errors hide some cells" if c.by_status(INFRASTRUCTURE)
               else "no regression")
    lines.append(verdict)
    return "\n".join(lines) + "\n"


def junit(c: Comparison) -> str:
    suite = ET.Element("testsuite", name="vfio-harness-ab", tests=str(len(c.cells)),
                       failures=str(len(c.regressions)),
                       errors=str(len(c.by_status(INFRASTRUCTURE))))
    for cell in c.cells:
        case = ET.SubElement(suite, "testcase", classname="ab", name=cell.id)
        detail = "\n".join([cell.outcome_line(), *cell.evidence_changes])
        if cell.status == NEW_FAILURE:
            culprit = f"; {c.culprit(cell.id)}" if c.culprit(cell.id) else ""
            ET.SubElement(case, "failure", message=f"new failure: {cell.outcome_line()}"
                                                   f"{culprit}").text = detail
        elif cell.status == INFRASTRUCTURE:
            ET.SubElement(case, "error", message="infrastructure error").text = detail
        elif cell.status != UNCHANGED:
            ET.SubElement(case, "system-out").text = f"{cell.status}: {detail}"
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def html_section(c: Comparison) -> str:
    import html
    e = html.escape
    rows = []
    for cell in c.cells:
        if cell.status == UNCHANGED:
            continue
        rows.append(f"<tr class='ab {e(cell.status.replace(' ', '-'))}'><td>{e(cell.id)}</td>"
                    f"<td>{e(cell.status)}</td><td>{e(cell.outcome_line())}</td>"
                    f"<td><pre>{e(chr(10).join(cell.evidence_changes))}</pre></td></tr>")
    return ("<section id='ab'><h2>A/B: candidate against baseline</h2>"
            f"<p>baseline {e(_describe(c.baseline_run))}<br>candidate "
            f"{e(_describe(c.candidate_run))}</p><p>"
            + ", ".join(f"{len(c.by_status(s))} {e(s)}" for s in ORDER) + "</p>"
            "<table><tr><th>cell</th><th>status</th><th>outcomes</th><th>evidence that "
            "changed</th></tr>" + "".join(rows) + "</table></section>"
            + (bisection.html_section(c.bisect) if c.bisect else ""))


def write(c: Comparison, out: Path) -> dict[str, Path]:
    """compare.txt, compare.json, compare.xml (JUnit) and compare.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"text": out / "compare.txt", "json": out / "compare.json",
             "junit": out / "compare.xml", "html": out / "compare.html"}
    files["text"].write_text(text(c))
    files["json"].write_text(json.dumps(c.record(), indent=2) + "\n")
    files["junit"].write_text(junit(c))
    files["html"].write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                             "vfio-harness A/B</title></head><body>" + html_section(c)
                             + "</body></html>")
    return files
