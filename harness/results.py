"""results.json and the table on stdout: the record of a matrix run."""

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from harness import files
from harness.matrix import CellResult

COLUMNS = ("vIOMMU", "backend", "kernel", "check", "expected", "outcome", "time")


def write(results_dir: Path, cells: list[CellResult], run_info: dict) -> Path:
    """results.json, artifact paths relative to it, so the directory can move as a whole."""
    records = []
    for c in cells:
        record = c.record()
        if record["artifacts"]:
            record["artifacts"] = os.path.relpath(Path(record["artifacts"]).resolve(),
                                                  results_dir.resolve())
        records.append(record)
    path = results_dir / "results.json"
    files.write_atomic(path, json.dumps({"run": run_info, "cells": records}, indent=2,
                                        default=jsonable) + "\n")
    return path


def qemu_under_test(cells: list[CellResult]) -> list[dict]:
    """Each distinct QEMU under test the cells ran, as probed in L1 (normally one)."""
    found: dict[str, dict] = {}
    for c in cells:
        q = c.evidence.get("qemu_under_test")
        if q:
            found.setdefault(q["sha256"], q)
    return list(found.values())


def prune(results_dir: Path, cells: list[CellResult]) -> list[Path]:
    """Drop the artifacts of L2 runs and L1 boots whose every cell met its expectation.

    A cell's artifacts are its backend's L2 directory and, one level up, its L1
    boot's files; both are shared with sibling cells, so they go only when all
    the cells that share them went as expected. Returns what was kept.
    """
    top = results_dir.resolve()
    groups: dict[Path, list[CellResult]] = {}
    for c in cells:
        if c.artifacts:
            l2_dir = Path(c.artifacts).resolve()
            for directory in (l2_dir, l2_dir.parent):
                if top in directory.parents:  # never the results directory, nor outside it
                    groups.setdefault(directory, []).append(c)
    kept = []
    for directory, members in sorted(groups.items(), key=lambda kv: -len(kv[0].parts)):
        if all(m.met for m in members):
            shutil.rmtree(directory, ignore_errors=True)
        elif directory.exists():
            kept.append(directory)
    return kept


def jsonable(value: object) -> object:
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
        lines.append(f"  !! {c.cell.id}: expected {c.cell.expectation.describe()}, got "
                     f"{c.outcome}: {c.reason}")
    for c in cells:
        if c.met and c.outcome in ("skip", "xfail"):
            lines.append(f"  {c.outcome}: {c.cell.id}: {c.reason}")
    return "\n".join(lines)


def junit(cells: list[CellResult], name: str = "vfio-harness") -> str:
    """JUnit XML (the xunit2 flavour GitLab and GitHub render): a testcase per cell.

    An expected skip is <skipped>; an xfail is <skipped> too, its message
    starting "xfail:"; a cell that did not meet its expectation is <failure>
    (or <error> for an error), with the reason and the artifacts' place.
    """
    suite = ET.Element("testsuite", name=name, tests=str(len(cells)),
                       failures=str(sum(1 for c in cells if not c.met and c.outcome != "error")),
                       errors=str(sum(1 for c in cells if c.outcome == "error")),
                       skipped=str(sum(1 for c in cells if c.met and c.outcome in
                                       ("skip", "xfail"))),
                       time=f"{sum(c.duration_s for c in cells):.2f}")
    for c in cells:
        case = ET.SubElement(suite, "testcase", classname=f"matrix.{c.cell.viommu}.{c.cell.kernel}",
                             name=c.cell.id, time=f"{c.duration_s:.2f}")
        if not c.met:
            tag = "error" if c.outcome == "error" else "failure"
            node = ET.SubElement(case, tag, message=f"expected {c.cell.expected}, got "
                                                    f"{c.outcome}: {c.reason}"[:1000])
            node.text = f"{c.reason}\nartifacts: {c.artifacts}"
        elif c.outcome in ("skip", "xfail"):
            prefix = "xfail: " if c.outcome == "xfail" else ""
            ET.SubElement(case, "skipped", message=f"{prefix}{c.reason}"[:1000])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def exit_code(cells: list[CellResult]) -> int:
    """0 every cell met its expectation; 3 the only cells that did not were ended by a
    deadline (the stage is in their reason); 1 otherwise, and for a run with no cell."""
    unmet = [c for c in cells if not c.met]
    if not cells:
        return 1
    if not unmet:
        return 0
    return 3 if all(c.evidence.get("deadline") for c in unmet) else 1
