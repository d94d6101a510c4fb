"""A bisect's answer in words: the text, JUnit, HTML and Patchwork forms all read it here.

The record is run/bisect.py's (bisect.json in the candidate's results). As the
kernel test robot's mails do, the answer leads with the first bad patch and the
failures it brought, then what could not be settled and why (a patch that does
not build), and a line that reproduces the failure at that patch.
"""

import html
import json
import shlex
from pathlib import Path

FILE = "bisect.json"
#: What a bisect says of a cell.
FIRST_BAD, RANGE, NOT_THE_SERIES = "first bad patch", "one of", "fails without the series"


def load(candidate_dir: Path, series_sha256: set[str]) -> dict | None:
    """The bisect of the candidate's series, if one was made (a bisect of another series
    left in the directory is not this candidate's)."""
    try:
        record = json.loads((candidate_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("series", {}).get("sha256") in series_sha256 else None


def write(candidate_dir: Path, record: dict) -> Path:
    path = candidate_dir / FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _patch(p: dict, total: int) -> str:
    return f"{p['number']}/{total} \"{p['subject']}\""


def culprit(record: dict | None, cell_id: str) -> str | None:
    """One phrase for one cell: its first bad patch, the range that holds it, or that
    the pinned kernel fails too."""
    if not record or cell_id not in record["cells"]:
        return None
    r, total = record["cells"][cell_id], record["series"]["patches"]
    if r["verdict"] == FIRST_BAD:
        return f"first bad patch {_patch(r['patch'], total)}"
    if r["verdict"] == NOT_THE_SERIES:
        return "fails without the series too: not the series' doing"
    numbers = [p["number"] for p in r["could_be"]]
    skipped = f" ({', '.join(map(str, r['skipped']))} did not build)" if r["skipped"] else ""
    return f"first bad patch one of {numbers[0]}-{numbers[-1]}/{total}{skipped}"


def reproduce(line: str, patches: int) -> str:
    """A cell's reproduce line at a prefix of its series."""
    return f"{line} --kernel-patches-first {shlex.quote(str(patches))}"


def lines(record: dict, reproduce_line=None) -> list[str]:
    """The bisect block of the A/B text: failures grouped by the patch that brought them.
    `reproduce_line(cell_id)` gives the cell's line with the whole series."""
    series, steps = record["series"], record["steps"]
    total = series["patches"]
    unbuilt = [s for s in steps if not s["built"]]
    out = [f"Bisected over the {total} patches of \"{series['title']}\" "
           f"({series['sha256'][:12]}): {len(steps)} step(s)"
           + (f", {len(unbuilt)} of them not built" if unbuilt else "")
           + f", {record['duration_s']:.0f} s"]
    groups: dict[str, list[str]] = {}
    for cell_id in record["cells"]:
        groups.setdefault(culprit(record, cell_id) or "", []).append(cell_id)
    for phrase, cells in groups.items():
        out.append(f"  {phrase}")
        r = record["cells"][cells[0]]
        if r["patch"] and r["patch"].get("author"):
            out.append(f"      author: {r['patch']['author']}")
        out += [f"    + {c}" for c in cells]
        if r["verdict"] == FIRST_BAD and reproduce_line:
            line = reproduce_line(cells[0])
            if r["first_bad"] < total:
                line = reproduce(line, r["first_bad"])
            out.append(f"      reproduce: {line}")
    for k, why in record.get("unbuilt", {}).items():
        out.append(f"  patch {k}/{total} does not build (skipped, as git bisect skip does): "
                   f"{why}")
    return out


def html_section(record: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(c)}</td><td>{e(culprit(record, c) or '')}</td></tr>"
                   for c in record["cells"])
    unbuilt = "".join(f"<li>patch {e(k)}/{record['series']['patches']} does not build: "
                      f"{e(why)}</li>" for k, why in record.get("unbuilt", {}).items())
    return ("<section id='bisect'><h2>Bisect: which patch brought each new failure</h2>"
            f"<p>{e(lines(record)[0])}</p><table><tr><th>cell</th><th>first bad patch</th>"
            f"</tr>{rows}</table>" + (f"<ul>{unbuilt}</ul>" if unbuilt else "") + "</section>")
