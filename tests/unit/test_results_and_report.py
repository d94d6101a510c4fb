"""results.json, pruning of artifacts, the HTML page and the merge of shards."""

import json
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.checks import matrix
from harness.checks.matrix import Cell, CellResult
from harness.results import report, results_file

#: A finished run's stamp, as `results_file.stamp` and the end of a run make it.
STAMP = {**results_file.stamp("test", {}), "complete": True}


def make_run(tmp_path: Path, outcomes: dict[tuple[str, str], str], vi="intel-iommu",
             kernel="dmabuf") -> tuple[Path, list[CellResult]]:
    """A results directory with L1/L2 artifact dirs like a real run's."""
    out = tmp_path / "run"
    cells = []
    for (backend, check), outcome in outcomes.items():
        l2_dir = out / f"{vi}-{kernel}" / backend
        l2_dir.mkdir(parents=True, exist_ok=True)
        (l2_dir / "l2-stderr.log").write_text("stderr\n")
        (l2_dir.parent / "l0-console.log").write_text("console\n")
        cells.append(CellResult(Cell(vi, backend, kernel, check), outcome, f"why {outcome}",
                                {"bytes": b"\x01\x02"}, 1.5, str(l2_dir)))
    return out, cells


def test_results_json_has_the_fields_and_relative_artifacts(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass"})
    data = json.loads(results_file.write(out, cells, {**STAMP, "seed": 1}).read_text())
    (cell,) = data["cells"]
    for key in ("viommu", "backend", "kernel", "check", "expected", "outcome", "reason",
                "evidence", "duration_s"):
        assert key in cell
    assert cell["artifacts"] == "intel-iommu-dmabuf/legacy"
    assert cell["evidence"]["bytes"] == "0102"


def test_prune_keeps_what_failed_and_drops_what_passed(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass",
                                     ("iommufd", "p2p-dma"): "fail"})
    kept = results_file.prune(out, cells)
    assert not (out / "intel-iommu-dmabuf" / "legacy").exists()
    assert (out / "intel-iommu-dmabuf" / "iommufd" / "l2-stderr.log").exists()
    assert (out / "intel-iommu-dmabuf" / "l0-console.log").exists()  # shared with the failure
    assert kept == [out.resolve() / "intel-iommu-dmabuf" / "iommufd",
                    out.resolve() / "intel-iommu-dmabuf"]


def test_prune_never_removes_the_results_directory(tmp_path):
    out = tmp_path / "run"
    (out / "intel-iommu-dmabuf").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    l1_error = CellResult(Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma"), "pass", "", {},
                          0.0, str(out / "intel-iommu-dmabuf"))
    results_file.prune(out, [l1_error])
    assert (out / "results.json").exists()


def test_html_shows_every_cell_coloured_and_linked(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass",
                                     ("iommufd", "p2p-dma"): "xfail"})
    results_file.write(out, cells, {**STAMP, "seed": 1})
    page = report.write_html(out).read_text()
    assert page.count("class='cell ") == 2
    assert "background:#2e7d32" in page and "background:#7cb342" in page
    assert "href='#intel-iommu-iommufd-dmabuf-p2p-dma'" in page
    assert "href='intel-iommu-dmabuf/legacy/l2-stderr.log'" in page


def test_html_names_the_qemu_under_test_and_each_cells_grounds(tmp_path):
    out, _ = make_run(tmp_path, {})
    cell = CellResult.settled(Cell("intel-iommu", "iommufd", "no-dmabuf", "p2p-dma"), "fail",
                              "the bytes did not arrive", {}, 1.0, "",
                              frozenset({"bytes-missing"}), ("L0: 64 bytes at offsets",))
    qemu = {"version": "QEMU emulator version 11.1.3", "origin": "packaged in the rootfs",
            "sha256": "ab" * 32, "has_dmabuf_event": True, "has_iommufd_object": True}
    out.mkdir(parents=True, exist_ok=True)
    results_file.write(out, [cell], {**STAMP, "l2_qemu": [qemu]})
    page = report.write_html(out).read_text()
    assert "QEMU under test: QEMU emulator version 11.1.3 (packaged in the rootfs), sha256 " \
           + "ab" * 32 in page
    assert "<li>L0: 64 bytes at offsets</li>" in page
    assert "signature: bar-map-refused, bytes-missing; found: bytes-missing" in page
    assert not cell.met and cell.outcome == "fail"  # without the refused mapping: no xfail


def test_merge_rewrites_artifact_paths_and_refuses_overlaps(tmp_path):
    a, cells_a = make_run(tmp_path / "a", {("legacy", "p2p-dma"): "pass"})
    b, cells_b = make_run(tmp_path / "b", {("iommufd", "p2p-dma"): "fail"},
                          vi="virtio-iommu")
    results_file.write(a, cells_a, {**STAMP, "seed": 1})
    results_file.write(b, cells_b, {**STAMP, "seed": 2})
    merged_dir = tmp_path / "merged"
    merged = report.merge([a, b], merged_dir)
    assert [c["id"] for c in merged["cells"]] == ["intel-iommu-legacy-dmabuf-p2p-dma",
                                                  "virtio-iommu-iommufd-dmabuf-p2p-dma"]
    link = merged_dir / merged["cells"][0]["artifacts"] / "l2-stderr.log"
    assert link.resolve().is_file()
    with pytest.raises(BadInput, match="is in two shards"):
        report.merge([a, a], merged_dir)


def test_not_a_results_file_is_bad_input(tmp_path):
    (tmp_path / "results.json").write_text('{"something": 1}')
    with pytest.raises(BadInput, match="is not a results.json of this vfio-harness"):
        report.load(tmp_path)


def test_a_run_stamps_its_record_at_once_and_keeps_the_earlier_one_aside(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass"})
    earlier = {**results_file.stamp("run", {}), "complete": True}
    results_file.write(out, cells, earlier)
    report.write_html(out)
    now = results_file.stamp("run", {"checks": ["p2p-dma"]})
    results_file.begin(out, now)
    data = report.load(out)  # the new run's own record, from its first second
    assert data["run"]["run_id"] == now["run_id"] != earlier["run_id"]
    assert data["run"]["complete"] is False and data["cells"] == []
    for key in ("started", "harness_version", "host", "command_line", "selection"):
        assert data["run"][key] is not None, key
    assert json.loads((out / "results.previous.json").read_text())["run"]["run_id"] == \
        earlier["run_id"]
    assert (out / "report.previous.html").exists() and not (out / "report.html").exists()
    with pytest.raises(BadInput, match=f"run {now['run_id']} .* did not finish: it never "
                                       f"wrote its end"):
        report.load(out, finished=True)


def test_an_unfinished_run_is_never_shown_as_a_finished_one(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass"})
    results_file.write(out, cells, {**results_file.stamp("run", {}), "complete": False})
    page = report.write_html(out).read_text()
    assert "<title>vfio-harness matrix (INCOMPLETE RUN)</title>" in page
    assert "INCOMPLETE RUN: it ended before every selected cell ran" in page
    with pytest.raises(BadInput, match="did not finish: it ended before every selected cell"):
        report.load(out, finished=True)
    with pytest.raises(BadInput, match="is incomplete"):
        report.merge([out], tmp_path / "merged")
    results_file.write(out, cells, {**results_file.stamp("run", {}), "complete": True})
    page = report.write_html(out).read_text()
    assert "INCOMPLETE" not in page and "id='provenance'" in page


def test_abandon_leaves_the_earlier_run_as_it_was(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass"})
    earlier = {**results_file.stamp("run", {}), "complete": True}
    results_file.write(out, cells, earlier)
    results_file.begin(out, results_file.stamp("run", {}))
    results_file.abandon(out)
    assert report.load(out, finished=True)["run"]["run_id"] == earlier["run_id"]
    assert not (out / "results.previous.json").exists()
    fresh = tmp_path / "fresh"
    results_file.begin(fresh, results_file.stamp("run", {}))
    results_file.abandon(fresh)
    assert not fresh.exists()


def test_junit_has_a_testcase_per_cell_with_skips_and_failures(tmp_path):
    import xml.etree.ElementTree as ET

    _, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass",
                                   ("iommufd", "p2p-dma"): "fail",
                                   ("legacy", "dmabuf-per-region"): "error"})
    cells.append(CellResult.settled(Cell("intel-iommu", "iommufd", "no-dmabuf", "p2p-dma"),
                                    "fail", "bytes did not arrive", {}, 1.0, "",
                                    frozenset({"bar-map-refused", "bytes-missing"})))
    suite = ET.fromstring(results_file.junit(cells))
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    assert suite.get("errors") == "1" and suite.get("skipped") == "1"
    by_name = {case.get("name"): case for case in suite}
    assert by_name["intel-iommu-iommufd-dmabuf-p2p-dma"].find("failure") is not None
    skipped = by_name["intel-iommu-iommufd-no-dmabuf-p2p-dma"].find("skipped")
    assert skipped.get("message") == "xfail: bytes did not arrive"
    assert len(by_name["intel-iommu-legacy-dmabuf-p2p-dma"]) == 0  # a plain pass


def test_the_last_line_says_which_cells_a_dead_l2_took():
    died = "L2 QEMU (pid 812) was killed by SIGKILL (9), as L1 saw it; its stderr ended: x"
    cells = [CellResult(Cell("intel-iommu", "iommufd", "dmabuf", check), "error",
                        f"L2 qtest: closed: {died}", {}, 1.0, "", l2_end=died)
             for check in ("p2p-dma", "reset")]
    cells.append(CellResult(Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma"), "pass", "ok",
                            {}, 1.0, None))
    assert results_file.last_line(cells, True) == (
        "vfio-harness: 3 cell(s), 2 not as expected; L2 QEMU died and took 2 cell(s) with it "
        "(intel-iommu/dmabuf/iommufd: L2 QEMU (pid 812) was killed by SIGKILL (9))")
    assert results_file.last_line(cells[2:], False) == \
        "vfio-harness: 1 cell(s), 0 not as expected; the run did not finish"


def test_the_last_line_counts_the_cells_that_hung():
    cells = [CellResult.settled(Cell("intel-iommu", backend, "dmabuf", "unplug-while-revoked"),
                                "fail", "L2 hung in unplug-while-revoked", {}, 1.0, "",
                                frozenset({"hung"})) for backend in ("legacy", "iommufd")]
    assert all(not c.met for c in cells)  # a hang is never an expected outcome
    assert results_file.last_line(cells, True) == (
        "vfio-harness: 2 cell(s), 2 not as expected; 2 cell(s) hung in the L1 kernel, each L1 "
        "discarded (intel-iommu-legacy-dmabuf-unplug-while-revoked, "
        "intel-iommu-iommufd-dmabuf-unplug-while-revoked)")


def test_what_write_writes_follows_the_schema_in_the_repository(tmp_path):
    import jsonschema

    schema = json.loads(results_file.SCHEMA_FILE.read_text())
    assert schema["properties"]["schema"]["const"] == results_file.SCHEMA
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass", ("iommufd", "reset"): "error"})
    cells[1] = CellResult(cells[1].cell, "error", "L1 died", {}, 1.0, "", error_stage="L1 boot",
                          deadline=True, infrastructure=True)
    data = json.loads(results_file.write(out, cells, {**STAMP, "seed": 1}).read_text())
    jsonschema.validate(data, schema)
    (ok, broken) = data["cells"]
    assert (broken["error_stage"], broken["deadline"], broken["infrastructure"]) == \
        ("L1 boot", True, True)
    assert "deadline" not in broken["evidence"]  # status is a field, never evidence
    del broken["infrastructure"]
    (out / "results.json").write_text(json.dumps(data))
    with pytest.raises(BadInput, match="at cells/1: 'infrastructure' is a required property"):
        results_file.load(out)


def test_the_schema_knows_exactly_the_outcomes_a_cell_can_have():
    """The schema is static JSON: it must not drift from the outcomes the matrix reports."""
    schema = json.loads(results_file.SCHEMA_FILE.read_text())
    assert tuple(schema["$defs"]["cell"]["properties"]["outcome"]["enum"]) == matrix.OUTCOMES


def test_every_failing_cell_carries_its_reproduce_line_in_the_report_and_junit(tmp_path):
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass", ("iommufd", "reset"): "fail"})
    run = {**STAMP, "seed": 77, "complete": True,
           "kernel_images": {"dmabuf": {"path": "/k/bzImage", "sha256": "ab",
                                        "config": "/k/.config"}}}
    results_file.write(out, cells, run)
    page = report.write_html(out).read_text()
    line = ("vfio-harness run --viommu intel-iommu --backend iommufd --kernel dmabuf --check "
            "reset --seed 77 --kernel-image /k/bzImage --kernel-config /k/.config")
    assert f"reproduce: <code>{line}</code>" in page
    assert page.count("class='reproduce'") == 1  # the passing cell has none
    xml = results_file.junit(cells, run=results_file.load(out)["run"])
    assert f"reproduce: {line}" in xml
