"""A/B: a baseline and a candidate on the same L1 boots, images, seed and cells, compared.

The sides are set up by whoever asks (the CLI's `ab`: QEMU builds, kernel series,
a kernel image); this runs the plan, writes each side's results.json and report,
and compares them (compare.py). An interrupted A/B keeps what each side produced,
each side's record saying it did not finish.
"""

import time
from collections.abc import Callable
from pathlib import Path

from harness.checks.matrix import CellResult, L1Complaints
from harness.results import compare, report, results_file
from harness.run import runner
from harness.run.plan import RunPlan, Side

#: (cells of one side, the side, when the run began) -> that side's run record
Record = Callable[[list[CellResult], Side, float], dict]


def run(plan: RunPlan, record: Record, out: Path,
        baseline: Path) -> tuple[compare.Comparison, dict[str, Path]]:
    """The plan's sides, their records, and the comparison of `baseline`'s results with
    the candidate's (the plan's last side) written to `out` (compare.txt, .json, .xml,
    .html; the candidate's report gets the A/B section). The baseline is a side of the
    plan, or an earlier run's results taken as it (then the plan has the candidate only)."""
    candidate = plan.sides[-1]
    began = time.monotonic()
    cells: dict[Path, list[CellResult]] = {s.results: [] for s in plan.sides}
    outside: dict[Path, list[L1Complaints]] = {s.results: [] for s in plan.sides}
    try:
        for side, item in runner.run(plan):
            if isinstance(item, CellResult):
                cells[side.results].append(item)
            else:
                outside[side.results].append(item)
    finally:
        for side in plan.sides:
            ordered = plan.in_matrix_order(cells[side.results])
            results_file.write(side.results, ordered, {
                **record(ordered, side, began),
                **results_file.outside_cells(outside[side.results])})
            report.write_html(side.results)
    c = compare.compare(baseline, candidate.results)
    written = compare.write(c, out)
    report.write_html(candidate.results, extra=compare.html_section(c))
    return c, written
