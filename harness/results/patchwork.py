"""The check a CI bot posts on Patchwork for a series, written, never posted from here.

Patchwork's REST API takes a check on a patch as {state, target_url, context,
description} (POST /api/patches/ID/checks/), with state pending, success,
warning or fail. `pwclient check-create` posts the same fields; the README
shows both. A run that met every expectation, or an A/B with no regression, is
success; one whose only problems are infrastructure errors (an L1 that did not
boot: nothing is known of those cells) is warning; anything else is fail.
"""

import json
from pathlib import Path

from harness.checks.matrix import CellResult
from harness.verdicts import kernel_health

CONTEXT = "vfio-harness"
STATES = ("pending", "success", "warning", "fail")


def check(state: str, description: str, target_url: str) -> dict:
    if state not in STATES:
        raise ValueError(f"not a Patchwork check state: {state}")
    return {"state": state, "target_url": target_url, "context": CONTEXT,
            "description": description[:255]}


def for_run(cells: list[CellResult], target_url: str, culprit=lambda cell_id: None) -> dict:
    unmet = [c for c in cells if not c.met]
    infra = [c for c in unmet if c.infrastructure]
    if not cells:
        return check("fail", "no cell ran", target_url)
    if not unmet:
        return check("success", f"{len(cells)} cells met their expectations", target_url)
    if len(infra) == len(unmet):
        return check("warning", f"{len(infra)} of {len(cells)} cells unknown: infrastructure "
                                f"errors ({infra[0].reason.splitlines()[0][:120]})", target_url)
    first = next(c for c in unmet if c not in infra)
    blamed = culprit(first.cell.id)
    said = next((t for c in unmet for t in kernel_health.titles(c.evidence)), None)
    return check("fail", (f"{blamed}: " if blamed else "")
                 + (f"the kernel: {said}; " if said else "")
                 + f"{len(unmet)} of {len(cells)} cells not as expected, first "
                   f"{first.cell.id}: {first.outcome}", target_url)


def for_comparison(comparison, target_url: str) -> dict:
    from harness.results.compare import INFRASTRUCTURE, kernel_titles

    regressions = comparison.regressions
    infra = comparison.by_status(INFRASTRUCTURE)
    if regressions:
        names = ", ".join(c.id for c in regressions[:3])
        more = f" and {len(regressions) - 3} more" if len(regressions) > 3 else ""
        culprit = comparison.culprit(regressions[0].id)
        said = next((t for c in regressions for t in sorted(kernel_titles(c.candidate)
                                                              - kernel_titles(c.baseline))), None)
        return check("fail", (f"{culprit}: " if culprit else "")
                     + (f"the kernel: {said}; " if said else "")
                     + f"{len(regressions)} new failure(s) against the baseline: "
                       f"{names}{more}", target_url)
    if comparison.new_outside:
        return check("fail", f"the kernel: {comparison.new_outside[0]}; a new report outside "
                             f"every cell (boot, between L2s or end)", target_url)
    if infra:
        return check("warning", f"no regression seen, but {len(infra)} cell(s) unknown "
                                f"(infrastructure errors)", target_url)
    return check("success", f"no regression in {len(comparison.cells)} cells against the "
                            f"baseline", target_url)


def write(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
