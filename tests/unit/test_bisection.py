"""A bisect's answer as the A/B and the run write it: text, JSON, JUnit, HTML, Patchwork."""

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.checks.matrix import Cell, CellResult
from harness.images.series import Patch, Series
from harness.results import bisection, compare, patchwork, results_file
from harness.run.bisect import Unbuilt, bisect

AB = Path(__file__).parent.parent / "data" / "ab-refuse-dmabuf"
URL = "https://ci.example.org/1/report.html"


def series(n: int = 10) -> Series:
    return Series(Path("/s.mbox"), "vfio/pci: ten", tuple(
        Patch(k, f"vfio/pci: patch {k}", "A Developer", f"d{k}") for k in range(1, n + 1)))


def record(cells: dict[str, int], unbuilt=frozenset(), n: int = 10, good_known=True) -> dict:
    def step(k, ids):
        if k in unbuilt:
            raise Unbuilt("drivers/vfio/pci/vfio_pci_rdwr.c:494:16: error: 'x' undeclared")
        return {c: k >= cells[c] for c in ids}, f"/r/{k}"
    return bisect(series(n), list(cells), step, good_known)


def test_the_text_leads_with_the_first_bad_patch_and_reproduces_at_it():
    r = record({"a": 7, "b": 7, "c": 3}, unbuilt={5})
    text = "\n".join(bisection.lines(r, lambda cell_id: f"vfio-harness run --x {cell_id}"))
    assert 'first bad patch 7/10 "vfio/pci: patch 7"' in text
    assert 'first bad patch 3/10 "vfio/pci: patch 3"' in text
    assert text.index("    + a") < text.index("    + b") < text.index("reproduce: vfio-harness "
                                                                   "run --x a")
    assert "reproduce: vfio-harness run --x a --kernel-patches-first 7" in text
    assert "patch 5/10 does not build (skipped, as git bisect skip does): drivers/vfio/pci/" \
           "vfio_pci_rdwr.c:494:16: error:" in text


def test_a_range_and_a_pinned_kernel_failure_are_said_as_such():
    r = record({"a": 3}, unbuilt={2}, n=4)
    assert bisection.culprit(r, "a") == "first bad patch one of 2-3/4 (2 did not build)"
    r = record({"a": 0}, n=4, good_known=False)
    assert bisection.culprit(r, "a") == "fails without the series too: not the series' doing"
    assert bisection.culprit(r, "not-bisected") is None and bisection.culprit(None, "a") is None


def test_the_last_patch_reproduces_with_the_whole_series():
    r = record({"a": 10})
    assert "--kernel-patches-first" not in "\n".join(bisection.lines(r, lambda c: "run"))


def _ab_with_bisect(tmp_path: Path, sha: str) -> tuple[Path, Path, str]:
    base, cand = tmp_path / "baseline", tmp_path / "candidate"
    shutil.copytree(AB / "baseline", base)
    shutil.copytree(AB / "candidate", cand)
    data = json.loads((cand / "results.json").read_text())
    data["run"]["kernel_series"] = {"dmabuf": {**series().record(), "sha256": "f" * 64}}
    (cand / "results.json").write_text(json.dumps(data))
    regressed = compare.compare(base, cand).regressions[0].id
    r = record({regressed: 7})
    r["series"]["sha256"] = sha
    bisection.write(cand, r)
    return base, cand, regressed


def test_an_ab_carries_the_bisect_of_its_candidates_series_into_every_form(tmp_path):
    base, cand, regressed = _ab_with_bisect(tmp_path, "f" * 64)
    c = compare.compare(base, cand)
    named = 'first bad patch 7/10 "vfio/pci: patch 7"'
    assert c.culprit(regressed) == named
    assert f"      bisect:    {named}" in compare.text(c)
    assert c.record()["bisect"]["cells"][regressed]["first_bad"] == 7
    case = next(t for t in ET.fromstring(compare.junit(c)) if t.get("name") == regressed)
    assert named in case.find("failure").get("message")
    assert "id='bisect'" in compare.html_section(c)
    assert patchwork.for_comparison(c, URL)["description"].startswith(named)


def test_a_bisect_of_another_series_left_in_the_directory_is_not_read(tmp_path):
    base, cand, _ = _ab_with_bisect(tmp_path, "0" * 64)
    c = compare.compare(base, cand)
    assert c.bisect is None and "Bisected" not in compare.text(c)


def test_a_runs_junit_and_check_name_the_patch():
    cell = CellResult(Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma"), "fail", "why", {}, 1.0)
    r = record({cell.cell.id: 4})

    def blamed(cell_id):
        return bisection.culprit(r, cell_id)
    case = ET.fromstring(results_file.junit([cell], culprit=blamed)).find("testcase/failure")
    assert case.get("message").startswith('first bad patch 4/10 "vfio/pci: patch 4": expected')
    assert patchwork.for_run([cell], URL, blamed)["description"].startswith("first bad patch 4")
