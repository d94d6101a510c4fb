"""The check registry: a check is one record, and everything else reads it.

The toy check below is registered in one place, with a verdict of its own, and
is then found in the matrix, the CLI's choices, the runner's judging, the
pytest markers, the report, the avocado variants and compare, with no other
file touched."""

import json
import re

import pytest

from harness.arguments import parser as _parser
from harness.checks import matrix, registry
from harness.checks.matrix import Cell, CellResult
from harness.collect.scenario import Timer
from harness.evidence.gathered import Evidence
from harness.results import compare, report, results_file
from harness.run import runner
from harness.verdicts.verdict import Verdict
from tests.conftest import pytest_configure


def toy_verdict(ev: Evidence) -> Verdict:
    return Verdict("pass" if ev.backend == "legacy" else "fail", f"toy on {ev.backend}", {},
                   frozenset({"bytes-missing"}) if ev.backend == "iommufd" else frozenset())


@pytest.fixture
def toy():
    check = registry.register(registry.Check(
        "toy-check", "a check made up for this test", registry.CREATION, toy_verdict,
        {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
         "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bytes-missing]"}},
        {("no-dmabuf", "iommufd"): "the toy's why"}, exercises=(("hw/misc/toy.c", "*"),)))
    yield check
    registry.unregister("toy-check")
    assert "toy-check" not in matrix.CHECKS


def test_the_registry_holds_every_check_in_the_order_they_run():
    assert registry.names() == ("mmap-fallback", "p2p-dma", "vfio-user-regions",
                                "vfio-user-p2p", "decode-toggle", "reset",
                                "reset-while-revoked", "dmabuf-unplug", "unplug-while-revoked",
                                "quit-while-revoked", "dmabuf-closed-before-unmap",
                                "kill-while-mapped", "dmabuf-per-region", "multi-range")
    assert {c.own_step for c in registry.REGISTRY.values()} >= {"p2p", "side_l2"}
    destinations = {(c.name, b): c.p2p_destination(b) for c in registry.REGISTRY.values()
                    if c.p2p_slot is not None for b in c.backends}
    assert len(set(destinations.values())) == len(destinations)  # no two share a place
    assert destinations[("p2p-dma", "legacy")] == 0x1000
    assert destinations[("dmabuf-unplug", "iommufd")] == 0x8000


def test_a_check_is_registered_once_with_a_known_phase():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.get("reset"))
    with pytest.raises(ValueError, match="unknown phase"):
        registry.register(registry.Check("x", "x", "sometime", toy_verdict, {}))
    with pytest.raises(ValueError, match="unknown finding"):
        registry.register(registry.Check("y", "y", registry.CREATION, toy_verdict,
                                         {"dmabuf": {"legacy": "pass",
                                                     "iommufd": "xfail[nonsense]"}}))
    with pytest.raises(ValueError, match="check z, kernel dmabuf: expectations for legacy, "
                                         "not for every backend"):
        registry.register(registry.Check("z", "z", registry.CREATION, toy_verdict,
                                         {"dmabuf": {"legacy": "pass"}}))
    assert not {"x", "y", "z"} & set(registry.REGISTRY)


def test_a_check_registered_in_one_place_is_everywhere(toy, tmp_path):
    # the matrix and its expectations
    cell = Cell("intel-iommu", "iommufd", "no-dmabuf", "toy-check")
    assert cell.id in {c.id for c in matrix.cells()}
    assert "toy-check" in matrix.CHECKS
    assert cell.expected == "xfail" and cell.why == "the toy's why"
    assert ("toy-check", "iommufd") in matrix.exercised_by("hw/misc/toy.c")
    # the CLI
    assert _parser().parse_args(["run", "--check", "toy-check"]).check == ["toy-check"]
    # the runner judges it with its own verdict
    ev = Evidence(backend="iommufd", devices={}, kernel_probe={}, main=None)  # type: ignore
    (judged,) = runner.judge([cell], ev, Timer(), 0.0, "")
    assert (judged.outcome, judged.met, judged.reason) == ("xfail", True, "toy on iommufd")
    # its marker
    lines = []
    pytest_configure(type("Config", (), {"addinivalue_line": lambda _, k, v: lines.append(v)})())
    assert "toy_check: the toy-check check: a check made up for this test" in lines
    # the avocado variants
    assert cell.id in {v["variant_id"] for v in matrix.avocado_variants(matrix.cells(), {})}
    # the report: a row of its own, after the creation-time checks it was registered
    # beside and before the lifecycle steps
    base, cand = tmp_path / "base", tmp_path / "cand"
    legacy = Cell("intel-iommu", "legacy", "no-dmabuf", "toy-check")
    for out, outcome in ((base, "pass"), (cand, "fail")):
        cells = [CellResult(legacy, outcome, "why", {}, 1.0),
                 CellResult(Cell("intel-iommu", "legacy", "no-dmabuf", "reset"), "pass", "ok",
                            {}, 1.0),
                 CellResult(Cell("intel-iommu", "legacy", "no-dmabuf", "p2p-dma"), "pass",
                            "ok", {}, 1.0)]
        out.mkdir()
        results_file.write(out, cells,
                           {**results_file.stamp("test", {}), "seed": 3, "complete": True})
    page = report.write_html(cand).read_text()
    table = page[page.index("<table id='matrix'>"):page.index("</table>")]
    assert re.findall(r"<th class='check'>([^<]+)</th>", table) == ["p2p-dma", "toy-check",
                                                                    "reset"]
    # compare: its regression is named, with the line that reproduces it
    text = compare.text(compare.compare(base, cand))
    assert f"+ {legacy.id}: pass -> fail" in text
    assert "--check toy-check" in text
    assert json.loads((cand / "results.json").read_text())["cells"][0]["check"] == "toy-check"


def test_a_check_has_cells_only_on_the_backends_it_names():
    check = registry.register(registry.Check(
        "toy-legacy", "a check of one backend", registry.CREATION, toy_verdict,
        {"dmabuf": {"legacy": "pass"}}, backends=("legacy",),
        exercises=(("hw/misc/toy.c", "*"),)))
    try:
        assert {(c.backend, c.kernel) for c in matrix.cells()
                if c.check == check.name} == {("legacy", "dmabuf")}
        assert ("toy-legacy", "iommufd") not in matrix.exercised_by("hw/misc/toy.c")
        with pytest.raises(ValueError, match="not for every backend it has cells on "
                                             r"\(legacy\)"):
            registry.register(registry.Check(
                "toy-both", "x", registry.CREATION, toy_verdict,
                {"dmabuf": {"legacy": "pass", "iommufd": "pass"}}, backends=("legacy",)))
    finally:
        registry.unregister("toy-legacy")
