"""A kernel series under test, for real: applied to the pinned source, built incrementally,
booted as L1, and judged against the stock kernel on the same cells (intel-iommu, dmabuf)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.checks import matrix, registry
from tests.vm.conftest import PINNED_BASELINE

SERIES = Path(__file__).parent.parent / "data" / "series"


#: One (vIOMMU, kernel)'s cells: every check on each backend it has cells on.
CELLS = len(matrix.cells(("intel-iommu",), kernels=("dmabuf",)))


def harness(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout)


def ab(series: str, out: Path, baseline: Path) -> subprocess.CompletedProcess:
    """The series against the session's one run of the pinned kernel (its seed too)."""
    return harness("ab", "--candidate-kernel-patches", str(SERIES / series),
                   *PINNED_BASELINE[:4], "--results", str(out), "--baseline-results",
                   str(baseline))


def test_a_series_that_breaks_whole_bar_dmabufs_is_a_regression_with_its_evidence(
        tmp_path, pinned_baseline):
    """An off-by-one in vfio_pci_core_fill_phys_vec: a range ending at the BAR's end is
    refused, so no BAR gets a dma-buf and iommufd cannot map one."""
    p = ab("0001-off-by-one-rejects-whole-bar-dmabufs.mbox", tmp_path, pinned_baseline)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    assert "+ intel-iommu-iommufd-dmabuf-p2p-dma: pass -> fail" in p.stdout
    assert "+ intel-iommu-legacy-dmabuf-dmabuf-per-region: pass -> fail" in p.stdout
    assert "- vfio_region_dmabuf 0000:00:02.0 BAR 0 vanished" in p.stdout
    assert "0000:00:02.0 BAR 0: dma-buf unavailable, using mmap fallback" in p.stdout
    assert "reject dma-buf ranges that reach past the BAR" in p.stdout  # the series is named
    record = json.loads((tmp_path / "compare.json").read_text())
    # no BAR gets a dma-buf, QEMU's or the guest helper's: every cell breaks but legacy P2P
    # (BAR 2 mapped by address), the legacy cells of the checks played in the iommufd
    # cell alone (skips) and the served edu's two cells that involve no dma-buf (its
    # regions, its dma-buf-less skip); vfio-user's P2P into the vfio-pci BAR breaks with it
    # (the server is handed the BAR with no fd)
    iommufd_only = sum(1 for c in registry.REGISTRY.values() if c.only_backend == "iommufd")
    assert record["counts"]["new failure"] == CELLS - 3 - iommufd_only, record["counts"]
    assert record["counts"]["unchanged"] == 3 + iommufd_only, record["counts"]
    assert "+ intel-iommu-vfio-user-dmabuf-vfio-user-p2p: pass -> fail" in p.stdout
    assert "+ intel-iommu-iommufd-dmabuf-kill-while-mapped: pass -> fail" in p.stdout
    assert "+ intel-iommu-iommufd-dmabuf-dmabuf-closed-before-unmap: pass -> fail" in p.stdout
    series = record["candidate"]["run"]["kernel_series"]["dmabuf"]
    assert series["patches"][0]["files"] == ["drivers/vfio/pci/vfio_pci_dmabuf.c"]


def test_a_harmless_series_changes_nothing(tmp_path, pinned_baseline):
    p = ab("0001-comment-only.mbox", tmp_path, pinned_baseline)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert f"{CELLS} cells: {CELLS} unchanged" in p.stdout and "no regression" in p.stdout
    # the baseline was the earlier run's, named, not run again
    said = p.stdout + p.stderr
    assert "baseline: run run-" in said and f"{pinned_baseline}" in said
    assert not (tmp_path / "baseline").exists()
    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["baseline"]["dir"] == str(pinned_baseline), record["baseline"]


@pytest.mark.usefixtures("images")
@pytest.mark.parametrize("series, message", [
    ("does-not-apply.mbox", 'patch 1/1 "vfio/pci: reject dma-buf ranges that reach past the '
                            'BAR" of '),
    ("broken.mbox", "not an mbox of patches"),
])
def test_a_series_that_cannot_be_used_is_one_clear_error(tmp_path, series, message):
    p = harness("run", "--kernel-patches", str(SERIES / series), "--viommu", "intel-iommu",
                "--kernel", "dmabuf", "--results", str(tmp_path))
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()
    assert any(line.startswith("vfio-harness: error: series: ") and message in line
               for line in last), p.stderr
    if series == "does-not-apply.mbox":
        assert "drivers/vfio/pci/vfio_pci_dmabuf.c" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.usefixtures("images")
def test_the_trace_events_a_series_adds_are_switched_on_and_reported(tmp_path):
    p = harness("run", "--series", str(SERIES / "qemu-trace-events.mbox"), "--viommu",
                "intel-iommu", "--kernel", "dmabuf", "--backend", "legacy", "--results",
                str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    assert "<section id='series'>" in page
    assert "vfio_region_dmabuf_revoke</td><td>never fired (the QEMU under test does not " \
           "have this event)" in page
    assert re.search(r"intel-iommu/dmabuf/legacy: \d+x 0000:00:02.0", page)  # writes to edu


@pytest.mark.usefixtures("images")
def test_bisect_names_the_first_bad_patch_past_one_that_does_not_build(tmp_path):
    """Four patches: 2 does not build (3 mends it), 4 is the off-by-one. The bisect skips
    2 as git bisect skip would, and names 4 in every form the A/B is written in."""
    junit, check = tmp_path / "ab.xml", tmp_path / "check.json"
    p = harness("ab", "--bisect", "--candidate-kernel-patches", str(SERIES / "bisect-skip-4.mbox"),
                "--viommu", "intel-iommu", "--kernel", "dmabuf", "--backend", "legacy",
                "--check", "dmabuf-per-region", "--results", str(tmp_path / "ab"),
                "--seed", "12", "--junit", str(junit), "--patchwork-check", str(check))
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    named = 'first bad patch 4/4 "vfio/pci: reject dma-buf ranges that reach past the BAR"'
    assert named in p.stdout, p.stdout
    assert re.search(r"patch 2/4 does not build \(skipped, as git bisect skip does\): "
                     r"drivers/vfio/pci/vfio_pci_rdwr\.c:\d+:\d+: error: .bar_probe_count. "
                     r"undeclared", p.stdout), p.stdout
    # the first bad patch is the last: its reproduce line is the whole series'
    assert "--kernel-patches-first" not in p.stdout
    record = json.loads((tmp_path / "ab" / "compare.json").read_text())["bisect"]
    cell = record["cells"]["intel-iommu-legacy-dmabuf-dmabuf-per-region"]
    assert cell["verdict"] == "first bad patch" and cell["first_bad"] == 4, cell
    steps = [(s["patches"], s["built"], s["verdicts"]) for s in record["steps"]]
    cell_id = "intel-iommu-legacy-dmabuf-dmabuf-per-region"
    assert steps == [(2, False, {}), (1, True, {cell_id: "good"}), (3, True, {cell_id: "good"})]
    # each built step has its own results, made by the prefix it says
    for s in record["steps"][1:]:
        run = json.loads((Path(s["results"]) / "results.json").read_text())["run"]
        assert run["kernel_series"]["dmabuf"]["first"] == s["patches"]
        assert run["kernel_series"]["dmabuf"]["of"] == 4
    import xml.etree.ElementTree as ET
    failure = ET.parse(junit).getroot().find("testcase/failure")
    assert failure is not None and named in failure.get("message", "")
    assert json.loads(check.read_text())["description"].startswith(named)
    assert "id='bisect'" in (tmp_path / "ab" / "candidate" / "report.html").read_text()


@pytest.mark.usefixtures("images")
def test_a_run_bisects_its_series_and_runs_the_pinned_kernel_when_the_answer_hangs_on_it(
        tmp_path):
    """A run has no baseline: with a one-patch series the culprit can only be patch 1, and
    that holds only if the pinned kernel meets the expectation: the bisect runs it."""
    junit = tmp_path / "run.xml"
    p = harness("run", "--bisect", "--kernel-patches",
                str(SERIES / "0001-off-by-one-rejects-whole-bar-dmabufs.mbox"),
                "--viommu", "intel-iommu", "--kernel", "dmabuf", "--backend", "legacy",
                "--check", "dmabuf-per-region", "--results", str(tmp_path / "run"),
                "--seed", "12", "--junit", str(junit))
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    named = 'first bad patch 1/1 "vfio/pci: reject dma-buf ranges that reach past the BAR"'
    assert named in p.stdout, p.stdout
    record = json.loads((tmp_path / "run" / "bisect.json").read_text())
    assert [(s["patches"], s["verdicts"]) for s in record["steps"]] == \
        [(0, {"intel-iommu-legacy-dmabuf-dmabuf-per-region": "good"})]
    pinned = json.loads((tmp_path / "run" / "bisect" / "patches-00" / "results.json")
                        .read_text())["run"]
    assert not pinned.get("kernel_series")  # the step ran the kernel without the series
    import xml.etree.ElementTree as ET
    failure = ET.parse(junit).getroot().find("testcase/failure")
    assert failure is not None and failure.get("message", "").startswith(named)
    assert "id='bisect'" in (tmp_path / "run" / "report.html").read_text()
