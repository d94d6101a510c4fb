"""results.json and the table on stdout: the record of a matrix run."""

import json
from collections import Counter
from pathlib import Path

from harness.scenario import CellResult

COLUMNS = ("vIOMMU", "backend", "kernel", "check", "expected", "outcome", "time")


def write(results_dir: Path, cells: list[CellResult], run_info: dict) -> Path:
    path = results_dir / "results.json"
    path.write_text(json.dumps({"run": run_info, "cells": [c.record() for c in cells]},
                               indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def table(cells: list[CellResult]) -> str:
    rows = [(c.cell.viommu, c.cell.backend, c.cell.kernel, c.cell.check, c.cell.expected,
             c.outcome + ("" if c.met else " !!"), f"{c.duration_s:.1f}s") for c in cells]
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    counts = Counter(c.outcome for c in cells)
    unmet = [c for c in cells if not c.met]
    lines.append("")
    lines.append(", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
                 + f"; {len(unmet)} not as expected")
    for c in unmet:
        lines.append(f"  !! {c.cell.id}: expected {c.cell.expected}, got {c.outcome}: {c.reason}")
    for c in cells:
        if c.met and c.outcome in ("skip", "xfail"):
            lines.append(f"  {c.outcome}: {c.cell.id}: {c.reason}")
    return "\n".join(lines)
