"""The run as KCIDB JSON: valid against kcidb-io's schema (v5.3), statuses honest."""

import json
import subprocess
import sys

import kcidb_io

from harness.checks.matrix import Cell, CellResult
from harness.results import kcidb, results_file
from tests.unit.test_results_and_report import make_run


def written(tmp_path, outcomes, infrastructure=False, name="run"):
    out, cells = make_run(tmp_path / name, outcomes)
    if infrastructure:
        cells = [CellResult(c.cell, "error", "L1 intel-iommu/dmabuf: SSH never came up", {},
                            1.0, c.artifacts, infrastructure=True) for c in cells]
    results_file.write(out, cells, {**results_file.stamp("test", {}), "arch": "x86_64",
                                    "seed": 1, "complete": True,
                                    "kernels": {"dmabuf": "7.2.13"}})
    return out


def test_a_run_is_a_valid_kcidb_document_with_a_test_per_cell(tmp_path):
    out = written(tmp_path, {("legacy", "p2p-dma"): "pass", ("iommufd", "dmabuf-unplug"): "fail",
                             ("legacy", "dmabuf-per-region"): "skip"})
    doc = kcidb.document(results_file.load(out))
    kcidb_io.schema.LATEST.validate(doc)
    (checkout,) = doc["checkouts"]
    (build,) = doc["builds"]
    assert build["checkout_id"] == checkout["id"] and build["architecture"] == "x86_64"
    assert build["config_name"] == "dmabuf" and checkout["git_commit_name"] == "v7.2.13"
    tests = {t["path"]: t for t in doc["tests"]}
    assert set(tests) == {"vfio.p2p_dma.intel_iommu.legacy",
                          "vfio.dmabuf_unplug.intel_iommu.iommufd",
                          "vfio.dmabuf_per_region.intel_iommu.legacy"}
    assert all(t["build_id"] == build["id"] for t in doc["tests"])
    assert tests["vfio.p2p_dma.intel_iommu.legacy"]["status"] == "PASS"
    assert tests["vfio.dmabuf_per_region.intel_iommu.legacy"]["status"] == "SKIP"


def test_an_expected_failure_is_a_failure_that_says_it_was_expected(tmp_path):
    """The unplug leak on QEMU 11.1.3 is an xfail here; in KCIDB it is FAIL, not PASS."""
    cell = Cell("intel-iommu", "iommufd", "dmabuf", "dmabuf-unplug")
    result = CellResult.settled(cell, "fail", "leaked", {}, 1.0, str(tmp_path),
                                frozenset(cell.expectation.signature))
    assert result.outcome == "xfail" and result.met
    record = {**result.record(), "infrastructure": False}
    assert kcidb.status(record) == "FAIL"
    assert kcidb.status({**record, "outcome": "xpass"}) == "PASS"


def test_a_cell_its_l1_never_ran_is_a_miss_not_an_error(tmp_path):
    out = written(tmp_path, {("legacy", "p2p-dma"): "pass"}, infrastructure=True)
    doc = kcidb.document(results_file.load(out))
    kcidb_io.schema.LATEST.validate(doc)
    assert [t["status"] for t in doc["tests"]] == ["MISS"]


def test_compare_writes_both_sides_as_checkouts(tmp_path):
    base = written(tmp_path, {("legacy", "p2p-dma"): "pass"}, name="base")
    cand = written(tmp_path, {("legacy", "p2p-dma"): "fail"}, name="cand")
    target = tmp_path / "kcidb.json"
    p = subprocess.run([sys.executable, "-m", "harness", "compare", str(base), str(cand),
                        "--kcidb", str(target)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr  # a regression
    doc = json.loads(target.read_text())
    kcidb_io.schema.LATEST.validate(doc)
    assert len(doc["checkouts"]) == 2 and len({t["id"] for t in doc["tests"]}) == 2
    assert sorted(t["status"] for t in doc["tests"]) == ["FAIL", "PASS"]


def test_a_cell_the_kernel_failed_carries_the_reports_title(tmp_path):
    out, cells = make_run(tmp_path / "run", {("legacy", "p2p-dma"): "pass"})
    said = {"kernel_reports": [{"title": "WARNING: refcount bug in vfio_pci_dma_buf_release"}]}
    cells = [CellResult(c.cell, "fail", "the L1 kernel complained during l2_stop: WARNING: "
                        "refcount bug in vfio_pci_dma_buf_release: ...", said, 1.0, c.artifacts,
                        findings=frozenset({"kernel-splat"})) for c in cells]
    results_file.write(out, cells, {**results_file.stamp("test", {}), "arch": "x86_64",
                                    "seed": 1, "complete": True})
    doc = kcidb.document(results_file.load(out))
    kcidb_io.schema.LATEST.validate(doc)
    (test,) = doc["tests"]
    assert test["status"] == "FAIL"
    assert test["misc"]["kernel_reports"] == ["WARNING: refcount bug in vfio_pci_dma_buf_release"]
    assert "WARNING: refcount bug in vfio_pci_dma_buf_release" in test["comment"]
