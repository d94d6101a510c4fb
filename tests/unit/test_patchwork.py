"""The Patchwork check a run or an A/B would post, in the shape of Patchwork's REST API."""

import json
import subprocess
import sys
from pathlib import Path

from harness.checks.matrix import Cell, CellResult
from harness.results import compare, patchwork

AB = Path(__file__).parent.parent / "data" / "ab-refuse-dmabuf"
URL = "https://ci.example.org/vfio-harness/1234/report.html"


def cell(outcome: str, infrastructure: bool = False) -> CellResult:
    return CellResult(Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma"), outcome,
                      "L1 intel-iommu/dmabuf: L0 QEMU exited" if infrastructure else "why",
                      {}, 1.0, infrastructure=infrastructure)


def test_the_fields_patchwork_takes():
    record = patchwork.for_run([cell("pass")], URL)
    assert set(record) == {"state", "target_url", "context", "description"}
    assert record["context"] == "vfio-harness" and record["target_url"] == URL


def test_run_states():
    assert patchwork.for_run([cell("pass")], URL)["state"] == "success"
    assert patchwork.for_run([cell("pass"), cell("fail")], URL)["state"] == "fail"
    assert patchwork.for_run([cell("pass"), cell("error", True)], URL)["state"] == "warning"
    assert patchwork.for_run([], URL)["state"] == "fail"


def test_comparison_states():
    broken = patchwork.for_comparison(compare.compare(AB / "baseline", AB / "candidate"), URL)
    assert broken["state"] == "fail"
    assert broken["description"].startswith("5 new failure(s) against the baseline: ")
    same = patchwork.for_comparison(compare.compare(AB / "baseline", AB / "baseline"), URL)
    assert same["state"] == "success"


def test_compare_writes_the_check(tmp_path):
    check = tmp_path / "check.json"
    p = subprocess.run([sys.executable, "-m", "harness", "compare", str(AB / "baseline"),
                        str(AB / "candidate"), "--out", str(tmp_path), "--patchwork-check",
                        str(check)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    record = json.loads(check.read_text())
    assert record["state"] == "fail" and record["target_url"].startswith("file://")


def test_a_kernel_report_is_named_by_its_title_in_the_check():
    said = {"kernel_reports": [{"title": "WARNING: refcount bug in vfio_pci_dma_buf_release",
                                "headline": "refcount_t: underflow; use-after-free."}]}
    splat = CellResult(Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma"), "fail", "why",
                       said, 1.0)
    description = patchwork.for_run([cell("pass"), splat], URL)["description"]
    assert description.startswith("the kernel: WARNING: refcount bug in "
                                   "vfio_pci_dma_buf_release; 1 of 2 cells not as expected")
