"""results.json and the table on stdout: the record of a matrix run.

A results.json says which run made it from the run's first second: `begin`
writes the run's stamp (id, start, harness version and commit, host, command
line, selection) with `"complete": false` over whatever the directory held (an
earlier run's file is kept beside it as results.previous.json), and `write`
completes it. A run that is killed leaves its own incomplete record, never an
earlier run's finished one.
"""

import contextlib
import functools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.base import files
from harness.base.errors import BadInput
from harness.checks.matrix import CellResult, L1Complaints
from harness.evidence.records import PACKAGED
from harness.verdicts.verdict import HUNG

if TYPE_CHECKING:
    from harness.images.store import Images

COLUMNS = ("vIOMMU", "backend", "kernel", "check", "expected", "outcome", "time")
#: What every results.json this harness writes says it is; a reader refuses any other.
SCHEMA = "vfio-harness-results/2"
#: An earlier run's files, moved aside when a run begins in the same directory.
PREVIOUS = {"results.json": "results.previous.json", "report.html": "report.previous.html"}


SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


@functools.cache
def _validator() -> Any:
    """The checker of results.schema.json (jsonschema is imported by readers only)."""
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


#: What every cell of a results.json has, whoever wrote it.
CELL_FIELDS = ("id", "viommu", "backend", "kernel", "check", "expected", "outcome", "met")


def load(results_dir: Path, finished: bool = False) -> dict:
    """A results.json of this harness's schema, stamped with the run that made it;
    `finished`: refuse a run that did not complete (interrupted, killed, failed)."""
    path = results_dir / "results.json" if results_dir.is_dir() else results_dir
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"no results.json at {path}") from None
    except ValueError as e:
        raise BadInput(f"{path} is not valid JSON: {e}") from None
    run = data.get("run") if isinstance(data, dict) else None
    if not isinstance(run, dict) or data.get("schema") != SCHEMA or not run.get("run_id"):
        said = data.get("schema") if isinstance(data, dict) else None
        raise BadInput(f"{path} is not a results.json of this vfio-harness (schema {said!r}, "
                       f"not {SCHEMA!r}, or no run stamp): written by an older version or by "
                       f"something else")
    if not isinstance(data.get("cells"), list):
        raise BadInput(f"{path} has no 'cells' list: not a vfio-harness results.json")
    if finished and run.get("complete") is not True:
        raise BadInput(f"{path}: run {run['run_id']} (started {run.get('started', '?')}) did "
                       f"not finish: {incomplete_why(run)}; its cells are not a finished run")
    for n, cell in enumerate(data["cells"]):
        missing = [f for f in CELL_FIELDS if not isinstance(cell, dict) or f not in cell]
        if missing:
            raise BadInput(f"{path}: cell {n} lacks {', '.join(missing)}: not a vfio-harness "
                           f"results.json, or a damaged one")
    problem = min(_validator().iter_errors(data), key=lambda e: list(map(str, e.path)),
                  default=None)
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "the top"
        raise BadInput(f"{path} does not follow {SCHEMA} ({SCHEMA_FILE.name}) at {where}: "
                       f"{problem.message}")
    return data


def incomplete_why(run: dict) -> str:
    if "ended" not in run:
        return "it never wrote its end (killed, or still running)"
    return "it ended before every selected cell ran (interrupted, or a failure stopped it)"



def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def source_commit() -> dict | None:
    """The harness's own git commit (and whether its tree has changes), if it runs from a
    checkout: what a results file names as its maker besides the version."""
    here = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty)}


def stamp(front_end: str, selection: dict, run_id: str | None = None) -> dict:
    """The run's identity, known before anything is built or booted."""
    return {"run_id": run_id or f"{front_end}-{uuid.uuid4()}", "started": now(),
            "front_end": front_end, "harness_version": __version__,
            "harness_source": source_commit(), "host": socket.gethostname(),
            "command_line": list(sys.argv), "selection": selection, "complete": False}


def begin(results_dir: Path, run: dict) -> Path:
    """This run's record, incomplete, in place of whatever `results_dir` held."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, previous in PREVIOUS.items():
        if (results_dir / name).exists():
            os.replace(results_dir / name, results_dir / previous)
    path = results_dir / "results.json"
    files.write_atomic(path, json.dumps({"schema": SCHEMA, "run": run, "cells": []},
                                        indent=2, default=jsonable) + "\n")
    return path


def abandon(results_dir: Path) -> None:
    """Undo `begin` for a run refused as bad input before it did anything: no record of a
    run that never was, the earlier run's files back, no directory made for nothing."""
    (results_dir / "results.json").unlink(missing_ok=True)
    for name, previous in PREVIOUS.items():
        if (results_dir / previous).exists():
            os.replace(results_dir / previous, results_dir / name)
    with contextlib.suppress(OSError):
        results_dir.rmdir()  # only if empty


def write(results_dir: Path, cells: list[CellResult], run_info: dict) -> Path:
    """results.json, artifact paths relative to it, so the directory can move as a whole.
    `run_info` holds the stamp `begin` wrote, and whether the run is complete."""
    records = []
    for c in cells:
        record = c.record()
        if record["artifacts"]:
            record["artifacts"] = os.path.relpath(Path(record["artifacts"]).resolve(),
                                                  results_dir.resolve())
        records.append(record)
    path = results_dir / "results.json"
    run = {**run_info, "ended": now()}
    files.write_atomic(path, json.dumps({"schema": SCHEMA, "run": run, "cells": records},
                                        indent=2, default=jsonable) + "\n")
    return path


def kernels_info(images: "Images") -> dict:
    """What the run's L1 kernels were: versions, and the series, image or tree each came
    from; every front end records the same (compare reads it)."""
    k = images.kernels
    return {"kernels": {n: i.manifest["versions"]["kernel"] for n, i in k.items()},
            "kernel_series": {n: i.manifest["series"] for n, i in k.items()
                              if "series" in i.manifest},
            "kernel_images": {n: i.manifest["kernel_image"] for n, i in k.items()
                              if "kernel_image" in i.manifest},
            "kernel_trees": {n: i.manifest["kernel_tree"] for n, i in k.items()
                             if "kernel_tree" in i.manifest},
            "images": builds(images)}


def builds(images: "Images") -> dict:
    """Which builds the L1s booted, by their artifacts' names and their manifests' sha256
    (not versions: a series or a rebuild keeps the version): what an A/B checks before it
    takes an earlier run as its baseline."""
    def of(manifest: dict, file: str, boot_args: tuple[str, ...] = ()) -> dict:
        return {"artifact": f"{manifest.get('name')}-{manifest.get('key')}",
                "sha256": manifest.get("files", {}).get(file, {}).get("sha256"),
                **({"boot_args": list(boot_args)} if boot_args else {})}
    return {"kernels": {n: of(i.manifest, i.bzimage.name, i.boot_args)
                        for n, i in images.kernels.items()},
            "rootfs": of(images.rootfs.manifest, images.rootfs.qcow2.name)}


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


def reproduce(cell: dict, run: dict) -> str:
    """The command that reruns one cell as `run` ran it: its coordinates, seed, kernel
    under test and QEMU under test."""
    args = ["vfio-harness", "run",
            *(["--arch", cell["arch"]] if cell.get("arch", "x86_64") != "x86_64" else []),
            "--viommu", cell["viommu"], "--backend", cell["backend"],
            "--kernel", cell["kernel"], "--check", cell["check"]]
    if run.get("seed") is not None:
        args += ["--seed", str(run["seed"])]
    kernel = cell["kernel"]
    series = (run.get("kernel_series") or {}).get(kernel)
    if series:
        args += ["--kernel-patches", series["source"]]
        if series.get("of"):
            args += ["--kernel-patches-first", str(series["first"])]
    image = (run.get("kernel_images") or {}).get(kernel)
    if image:
        args += ["--kernel-image", image["path"]]
        if image.get("config", "").startswith("/"):
            args += ["--kernel-config", image["config"]]
    tree = (run.get("kernel_trees") or {}).get(kernel)
    if tree:
        args += ["--kernel-tree", tree["path"]]  # as the image manifest records it
    for q in run.get("l2_qemu") or []:
        if isinstance(q, dict) and q.get("origin") not in (None, PACKAGED):
            args += ["--l2-qemu", q["origin"]]
    return " ".join(shlex.quote(a) for a in args)


def junit(cells: list[CellResult], name: str = "vfio-harness",
          run: dict | None = None, culprit=lambda cell_id: None) -> str:
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
            blamed = culprit(c.cell.id)
            node = ET.SubElement(case, tag, message=(f"{blamed}: " if blamed else "")
                                 + f"expected {c.cell.expected}, got {c.outcome}: "
                                   f"{c.reason}"[:1000])
            node.text = f"{c.reason}\nartifacts: {c.artifacts}" + (
                f"\nreproduce: {reproduce(c.record(), run)}" if run is not None else "")
        elif c.outcome in ("skip", "xfail"):
            prefix = "xfail: " if c.outcome == "xfail" else ""
            ET.SubElement(case, "skipped", message=f"{prefix}{c.reason}"[:1000])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def outside_cells(said: Sequence[L1Complaints]) -> dict:
    """The run record's part for what L1 kernels said outside every cell."""
    return {"kernel_outside_cells": [{"l1": s.l1, "complaints": list(s.complaints)}
                                     for s in said]} if said else {}


def last_line(cells: list[CellResult], finished: bool,
              outside: Sequence[L1Complaints] = ()) -> str:
    """The run's one closing line: how it went, which cells a dead L2 took with it, which
    hung, and what an L1 kernel said outside every cell."""
    unmet = sum(1 for c in cells if not c.met)
    line = (f"vfio-harness: {len(cells)} cell(s), {unmet} not as expected"
            + ("" if finished else "; the run did not finish"))
    for said in outside:
        line += f"; the L1 kernel complained outside every cell: {said.describe()}"
    died: dict[str, list[CellResult]] = {}
    for c in cells:
        if c.l2_end:
            where = f"{c.cell.viommu}/{c.cell.kernel}/{c.cell.backend}"
            died.setdefault(where, []).append(c)
    if died:
        taken = sum(len(v) for v in died.values())
        how = "; ".join(f"{where}: {(v[0].l2_end or '').split(', as L1')[0]}"
                        for where, v in died.items())
        line += f"; L2 QEMU died and took {taken} cell(s) with it ({how})"
    hung = [c.cell.id for c in cells if HUNG in c.findings]
    if hung:
        line += (f"; {len(hung)} cell(s) hung in the L1 kernel, each L1 discarded "
                 f"({', '.join(hung[:4])}{', ...' if len(hung) > 4 else ''})")
    return line


def exit_code(cells: list[CellResult], outside: Sequence[L1Complaints] = ()) -> int:
    """0 every cell met its expectation; 3 the only cells that did not were ended by a
    deadline (the stage is in their reason); 1 otherwise, for a run with no cell, and for
    one whose L1 kernel complained outside every cell."""
    unmet = [c for c in cells if not c.met]
    if not cells or outside:
        return 1
    if not unmet:
        return 0
    return 3 if all(c.deadline for c in unmet) else 1
