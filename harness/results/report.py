"""The matrix as a page people look at, and the merge of sharded runs.

`render` turns results.json into one self-contained HTML file: a coloured
table read at a glance (a row per check, in the order they run; columns
grouped by vIOMMU, then kernel, then backend; an expected failure or skip shows
its signature), each cell linking to its reason, its evidence and its artifacts
further down the page. No script,
no server: it opens from disk or from a CI artifact browser.

`merge` joins the results.json of CI shards (each ran part of the matrix
through the run filters) into one, refusing a cell that two shards both ran.
"""

import html
import json
import os
from pathlib import Path

from harness.base.errors import BadInput
from harness.results.results_file import (
    SCHEMA,
    incomplete_why,
    load,
    now,
    reproduce,
    stamp,
)

COLOURS = {"pass": "#2e7d32", "xfail": "#7cb342", "skip": "#9e9e9e", "fail": "#c62828",
           "xpass": "#ef6c00", "error": "#6a1b9a"}
ARTIFACT_NAMES = ("l2-stderr.log", "l2-trace.log", "l2-qmp.jsonl", "l2-cmdline.txt",
                  "l2-mtree.txt", "l2-qtest.txt")
L1_ARTIFACT_NAMES = ("l0-console.log", "l1-dmesg.txt", "l0-qmp.jsonl", "l0-cmdline.txt",
                     "l0-qemu-stderr.log")


def merge(shards: list[Path], out: Path) -> dict:
    """One results.json from many; artifact paths rewritten to stay valid from `out`."""
    cells: dict[str, dict] = {}
    runs = []
    for shard in shards:
        data = load(shard)
        shard_dir = shard if shard.is_dir() else shard.parent
        run = data["run"]
        if run.get("complete") is not True:
            raise BadInput(f"shard {shard} is incomplete (run {run['run_id']}: "
                           f"{incomplete_why(run)}): a merge of it would hide the missing "
                           f"cells")
        runs.append({"shard": str(shard), **run})
        for cell in data["cells"]:
            if cell["id"] in cells:
                raise BadInput(f"cell {cell['id']} is in two shards (the second: {shard}); "
                               f"shards must run disjoint parts of the matrix")
            if cell.get("artifacts"):
                cell = {**cell, "artifacts": os.path.relpath(shard_dir / cell["artifacts"], out)}
            cells[cell["id"]] = cell
    run = {**stamp("merge", {}), "shards": runs, "complete": True, "ended": now()}
    return {"schema": SCHEMA, "run": run, "cells": sorted(cells.values(), key=_order)}


def _check_order(check: str) -> tuple:
    """Checks in the order they run (the registry's); one it does not know, after them."""
    from harness.checks import registry

    known = registry.names()
    return (known.index(check), "") if check in known else (len(known), check)


def _backend_order(backend: str) -> tuple:
    from harness.checks.registry import BACKENDS

    return (BACKENDS.index(backend), "") if backend in BACKENDS else (len(BACKENDS), backend)


def _viommu(cell: dict) -> str:
    """The vIOMMU as the table heads it: with its platform where that is not x86_64 (a merge
    of shards may hold both platforms' virtio-iommu)."""
    arch = cell.get("arch", "x86_64")
    return cell["viommu"] if arch == "x86_64" else f"{arch} {cell['viommu']}"


def _order(cell: dict) -> tuple:
    return (_viommu(cell), cell["kernel"], _backend_order(cell["backend"]),
            _check_order(cell["check"]))


def render(data: dict, base: Path) -> str:
    """The page for `data`; artifact links are relative to `base`, where it is written."""
    cells = sorted(data["cells"], key=_order)
    unmet = [c for c in cells if not c.get("met")]
    finished = data.get("run", {}).get("complete") is True
    e = html.escape
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>vfio-harness matrix{'' if finished else ' (INCOMPLETE RUN)'}</title>"
           "<style>",
           "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse}",
           "td,th{border:1px solid #ccc;padding:.3em .4em;text-align:center}",
           "#matrix td.cell{min-width:5em} td.cell a{color:#fff;text-decoration:none;"
           "display:block} #matrix th.check{text-align:left}",
           ".small{font-size:80%;opacity:.85} pre{background:#f5f5f5;padding:.6em;"
           "overflow-x:auto;max-height:30em;white-space:pre-wrap;word-break:break-all}"
           " .unmet{outline:3px solid #000}",
           "</style></head><body>",
           "<h1>vfio-harness matrix</h1>", _provenance(data.get("run", {})),
           f"<p id='summary'>{len(cells)} cells, {len(unmet)} not as expected: "
           f"{_counts(cells)}</p>"]
    out += _matrix_table(cells)
    for q in _qemus_under_test(data.get("run", {})):
        out.append(f"<p id='qemu-under-test'>QEMU under test: {e(q.get('version', '?'))} "
                   f"({e(q.get('origin', '?'))}), sha256 {e(q.get('sha256', '?'))}; "
                   f"vfio_region_dmabuf event: {'yes' if q.get('has_dmabuf_event') else 'no'}, "
                   f"iommufd object: {'yes' if q.get('has_iommufd_object') else 'no'}</p>")
    out.append(_series_section(data))
    out.append(f"<details id='run'><summary>run: seed, versions, selection</summary>"
               f"<pre>{e(json.dumps(data.get('run', {}), indent=2))}</pre></details>")
    out.append("<h2>Cells</h2>")
    for cell in cells:
        out.append(_cell_section(cell, base, data.get("run", {})))
    out.append("</body></html>")
    return "\n".join(out)


def _matrix_table(cells: list[dict]) -> list[str]:
    """Checks as rows; columns vIOMMU > kernel > backend, each level a header row."""
    e = html.escape
    checks = sorted({c["check"] for c in cells}, key=_check_order)
    cols = sorted({(_viommu(c), c["kernel"], c["backend"]) for c in cells},
                  key=lambda k: (k[0], k[1], _backend_order(k[2])))
    by_key = {(_viommu(c), c["kernel"], c["backend"], c["check"]): c for c in cells}
    out = ["<table id='matrix'>"]
    for depth, label in enumerate(("vIOMMU", "kernel", "backend")):
        out.append(f"<tr><th>{label}</th>")
        groups: list[tuple[tuple[str, ...], int]] = []
        for col in cols:
            key = col[:depth + 1]
            if groups and groups[-1][0] == key:
                groups[-1] = (key, groups[-1][1] + 1)
            else:
                groups.append((key, 1))
        out += [f"<th colspan='{n}'>{e(key[-1])}</th>" for key, n in groups]
        out.append("</tr>")
    for check in checks:
        out.append(f"<tr><th class='check'>{e(check)}</th>")
        for vi, kernel, backend in cols:
            cell = by_key.get((vi, kernel, backend, check))
            out.append(_absent(check, backend) if cell is None else _matrix_cell(cell))
        out.append("</tr>")
    out.append("</table>")
    return out


def _absent(check: str, backend: str) -> str:
    """A place with no cell: a dash where the check has no cell on that backend at all (its
    meaning does not carry over), else a cell this run did not run."""
    from harness.checks import registry

    if check in registry.REGISTRY and backend not in registry.get(check).backends:
        return (f"<td class='none' title='{html.escape(check)} has no cell on "
                f"{html.escape(backend)}'>&ndash;</td>")
    return "<td class='absent'>not run</td>"


def _matrix_cell(cell: dict) -> str:
    """The outcome; below it what was expected if it was not met, else the signature of an
    expected failure or skip (what it must show to count)."""
    e = html.escape
    outcome = cell["outcome"]
    if not cell.get("met"):
        note = f"expected {cell['expected']}"
    else:
        note = ", ".join(cell.get("expected_signature") or [])
    return (f"<td class='cell {e(outcome)}{'' if cell.get('met') else ' unmet'}' "
            f"data-cell='{e(cell['id'])}' style='background:{COLOURS.get(outcome, '#000')}'>"
            f"<a href='#{e(cell['id'])}' title='{e(cell['id'])}'>{e(outcome)}"
            + (f"<br><span class='small'>{e(note)}</span>" if note else "") + "</a></td>")


def _provenance(run: dict) -> str:
    """Which run made these results, first; an unfinished run says so before anything."""
    e = html.escape
    source = run.get("harness_source") or {}
    changes = " (with changes)" if source.get("dirty") else ""
    commit = f", commit {source.get('commit', '')[:12]}{changes}" if source else ""
    made = (f"<p id='provenance'>run {e(str(run.get('run_id', '?')))}, started "
            f"{e(str(run.get('started', '?')))}, ended {e(str(run.get('ended', 'never')))} on "
            f"{e(str(run.get('host', '?')))}; vfio-harness {e(str(run.get('harness_version')))}"
            f"{e(commit)}</p>")
    if run.get("complete") is True:
        return made
    return (f"<p id='incomplete' style='background:#c62828;color:#fff;padding:.6em;"
            f"font-weight:bold'>INCOMPLETE RUN: {e(incomplete_why(run))}. The cells below are "
            f"what it produced before it stopped; this is not a finished run.</p>" + made)


def _series_section(data: dict) -> str:
    """Each series under test: the cells that run the files it touches, and where each
    trace event it adds or changes fired (by device or region, how often) or that it never
    did."""
    from harness.checks.matrix import exercised_by

    run = data.get("run", {})
    found = [("series being validated", run["series"])] if run.get("series") else []
    found += [(f"kernel series ({k})", s) for k, s in (run.get("kernel_series") or {}).items()]
    if not found:
        return ""
    e = html.escape
    parts = ["<section id='series'><h2>Series under test</h2>"]
    for label, series in found:
        parts.append(f"<h3>{e(label)}: {e(series.get('title', ''))}</h3><ul>"
                     + "".join(f"<li>{p['number']}: {e(p['subject'])}</li>"
                               for p in series.get("patches", [])) + "</ul>")
        parts.append("<table class='files'><tr><th>file the series touches</th>"
                     "<th>cells that run it</th></tr>")
        for path in series.get("files", []):
            runs = exercised_by(path)
            where = ", ".join(f"{c} ({b})" for c, b in runs) or "no cell is known to run it"
            parts.append(f"<tr><td>{e(path)}</td><td>{e(where)}</td></tr>")
        parts.append("</table>")
        events = series.get("trace_events", [])
        if events:
            parts.append("<table class='events'><tr><th>trace event</th><th>fired</th></tr>")
            for event in events:
                fired = _fired(data["cells"], event)
                text = "; ".join(f"{where}: {n}x {subject or '(no device named)'}"
                                 for where, subject, n in fired) or "never fired"
                if not fired and _unknown_to_qemu(data["cells"], event):
                    text += " (the QEMU under test does not have this event)"
                parts.append(f"<tr><td>{e(event)}</td><td>{e(text)}</td></tr>")
            parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def _fired(cells: list[dict], event: str) -> list[tuple[str, str, int]]:
    """(vIOMMU/kernel/backend, device or region, count) of an event, once per L2."""
    seen: dict[tuple[str, str], int] = {}
    for c in cells:
        counts = (c.get("evidence", {}).get("summary") or {}).get("events", {}).get(event, {})
        for subject, n in counts.items():
            seen[(f"{c['viommu']}/{c['kernel']}/{c['backend']}", subject)] = n
    return [(where, subject, n) for (where, subject), n in sorted(seen.items())]


def _unknown_to_qemu(cells: list[dict], event: str) -> bool:
    said = f"trace event '{event}' does not exist"
    return any(said in w for c in cells
               for w in (c.get("evidence", {}).get("summary") or {}).get("warnings", []))


def _qemus_under_test(run: dict) -> list[dict]:
    """The QEMU(s) under test a run (or each shard of a merged run) recorded."""
    runs = run.get("shards", [run])
    found = [q for r in runs for q in (r.get("l2_qemu") or []) if isinstance(q, dict)]
    return list({q.get("sha256"): q for q in found}.values())


def _counts(cells: list[dict]) -> str:
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    return ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))


def _cell_section(cell: dict, base: Path, run: dict) -> str:
    e = html.escape
    parts = [f"<section id='{e(cell['id'])}'><h3>{e(cell['id'])}: "
             f"<span style='color:{COLOURS.get(cell['outcome'], '#000')}'>"
             f"{e(cell['outcome'])}</span> (expected {e(cell['expected'])})</h3>",
             f"<p class='reason'>{e(cell.get('reason', ''))}</p>"]
    if not cell.get("met") and not run.get("shards"):  # a merge: each shard ran its own way
        parts.append(f"<p class='reproduce'>reproduce: <code>{e(reproduce(cell, run))}</code>"
                     f"</p>")
    if cell.get("expected_because"):
        signature = ", ".join(cell.get("expected_signature", []))
        parts.append(f"<p class='small'>expected because {e(cell['expected_because'])}"
                     + (f" (signature: {e(signature)}; found: "
                        f"{e(', '.join(cell.get('findings', [])) or 'nothing')})"
                        if signature else "") + "</p>")
    if cell.get("grounds"):
        parts.append("<ul class='grounds small'>"
                     + "".join(f"<li>{e(g)}</li>" for g in cell["grounds"]) + "</ul>")
    parts.append(f"<p class='small'>{cell.get('duration_s', 0)} s</p>")
    links = _artifact_links(cell.get("artifacts", ""), base)
    if links:
        parts.append("<p class='artifacts'>artifacts: " + " ".join(links) + "</p>")
    parts.append(f"<details><summary>evidence</summary><pre>"
                 f"{e(json.dumps(cell.get('evidence', {}), indent=2))}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _artifact_links(artifacts: str, base: Path) -> list[str]:
    """Links to the cell's artifacts that exist (passing runs may have dropped theirs)."""
    if not artifacts:
        return []
    directory = base / artifacts
    found = [(directory / n, n) for n in ARTIFACT_NAMES]
    found += [(directory.parent / n, n) for n in L1_ARTIFACT_NAMES]
    return [f"<a href='{html.escape(os.path.relpath(p, base))}'>{html.escape(n)}</a>"
            for p, n in found if p.is_file()]


def write_html(results_dir: Path, data: dict | None = None, out: Path | None = None,
               extra: str = "") -> Path:
    """The page; `extra` (an A/B section) goes right below the matrix."""
    data = data if data is not None else load(results_dir)
    out = out or results_dir / "report.html"
    page = render(data, out.parent)
    if extra:
        page = page.replace("<h2>Cells</h2>", extra + "\n<h2>Cells</h2>", 1)
    out.write_text(page)
    return out
