"""A/B on two real runs of the intel-iommu cells (seed 5): the packaged QEMU against one
whose VFIO_DEVICE_FEATURE(DMA_BUF) is refused by an LD_PRELOAD shim."""

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.results import compare

DATA = Path(__file__).parent.parent / "data" / "ab-refuse-dmabuf"
BASE, CAND = DATA / "baseline", DATA / "candidate"


def test_the_broken_candidate_regresses_exactly_the_dmabuf_kernel_cells():
    c = compare.compare(BASE, CAND)
    assert sorted(x.id for x in c.regressions) == [
        "intel-iommu-iommufd-dmabuf-dmabuf-per-region", "intel-iommu-iommufd-dmabuf-mmap-fallback",
        "intel-iommu-iommufd-dmabuf-p2p-dma", "intel-iommu-legacy-dmabuf-dmabuf-per-region",
        "intel-iommu-legacy-dmabuf-mmap-fallback"]
    assert len(c.by_status(compare.UNCHANGED)) == 7  # legacy P2P and the no-dmabuf kernel
    assert c.exit_code() == 1


def test_each_regression_is_explained_by_the_evidence_that_changed():
    c = compare.compare(BASE, CAND)
    p2p = next(x for x in c.regressions if x.id == "intel-iommu-iommufd-dmabuf-p2p-dma")
    changes = "\n".join(p2p.evidence_changes)
    assert "- vfio_region_dmabuf 0000:00:03.0 BAR 2 vanished (was 1)" in changes
    assert "- iommufd_backend_map_file_dma iova 0xc0200000 size 0x100000 -> 0 vanished" in changes
    assert "+ iommufd_backend_map_dma iova 0xc0200000 size 0x100000 -> -1 appeared" in changes
    assert "VFIO dma-buf not supported in kernel" in changes
    assert "~ P2P: {'arrived': True" in changes
    assert not any("0x5" in line and "vfio_container_dma_map" in line
                   for line in p2p.evidence_changes)  # host pointers never make a change


def test_the_text_report_marks_new_failures_and_says_how_to_reproduce():
    report = compare.text(compare.compare(BASE, CAND))
    assert "+ intel-iommu-iommufd-dmabuf-p2p-dma: pass -> fail" in report
    assert "reproduce: vfio-harness run --viommu intel-iommu --backend iommufd --kernel " \
           "dmabuf --check p2p-dma --seed 5 --l2-qemu /tmp/qemu-refuse-dmabuf" in report
    assert report.rstrip().endswith("REGRESSION: the candidate broke what the baseline did")


def test_a_run_against_itself_has_no_change():
    c = compare.compare(BASE, BASE)
    assert {x.status for x in c.cells} == {compare.UNCHANGED} and c.exit_code() == 0
    assert compare.text(c).rstrip().endswith("no regression")


def test_swapped_sides_are_fixes(tmp_path):
    c = compare.compare(CAND, BASE)
    assert len(c.by_status(compare.FIXED)) == 5 and c.exit_code() == 0


def _edited(tmp_path: Path, source: Path, change) -> Path:
    out = tmp_path / source.name
    shutil.copytree(source, out)
    data = json.loads((out / "results.json").read_text())
    change(data)
    (out / "results.json").write_text(json.dumps(data))
    return out


def test_an_l1_that_did_not_boot_is_infrastructure_not_a_regression(tmp_path):
    def no_boot(data):
        for cell in data["cells"]:
            if cell["kernel"] == "no-dmabuf":
                cell.update(outcome="error", met=False, reason="L1 intel-iommu/no-dmabuf: "
                            "L0 QEMU exited while L1 was booting",
                            evidence={}, infrastructure=True, error_stage="L1 boot")
    c = compare.compare(BASE, _edited(tmp_path, BASE, no_boot))
    assert len(c.by_status(compare.INFRASTRUCTURE)) == 6 and not c.regressions
    assert c.exit_code() == 1  # nothing is known of those cells


def test_cells_on_one_side_only_are_named(tmp_path):
    def drop(data):
        data["cells"] = [x for x in data["cells"] if x["check"] != "p2p-dma"]
    c = compare.compare(BASE, _edited(tmp_path, BASE, drop))
    assert len(c.by_status(compare.ONE_SIDE)) == 4


def test_every_format_is_written(tmp_path):
    written = compare.write(compare.compare(BASE, CAND), tmp_path)
    assert json.loads(written["json"].read_text())["counts"]["new failure"] == 5
    suite = ET.fromstring(written["junit"].read_text())
    assert suite.get("failures") == "5" and suite.get("tests") == "12"
    assert "intel-iommu-legacy-dmabuf-mmap-fallback" in written["html"].read_text()


def test_a_directory_without_results_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no results.json"):
        compare.compare(tmp_path, CAND)


@pytest.mark.parametrize("sides, code", [((BASE, CAND), 1), ((BASE, BASE), 0),
                                          ((BASE, Path("/nonexistent")), 2)])
def test_the_compare_command_exit_codes(tmp_path, sides, code):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "harness", "compare", *map(str, sides),
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    if code == 2:
        assert "vfio-harness: error: no results.json at /nonexistent" in p.stderr


KERNEL = Path(__file__).parent.parent / "data" / "kernel"


def _kernel_said(*samples: str):
    """An edit: the dmabuf kernel's legacy cells fail on the kernel reports of `samples`
    (the witness's verdict, on the samples' lines), over what their checks saw."""
    from harness.evidence.kernel_log import KernelWindow, LogLine
    from harness.verdicts import kernel_health
    from harness.verdicts.verdict import Verdict

    def edit(data):
        for cell in data["cells"]:
            if (cell["kernel"], cell["backend"]) != ("dmabuf", "legacy"):
                continue
            windows = [KernelWindow("l2_stop", tuple(
                LogLine(i, 4, 0, t) for i, t in enumerate((KERNEL / s).read_text().splitlines())),
                0, 1 << 9) for s in samples]
            v = kernel_health.judge(Verdict(cell["outcome"], cell["reason"], cell["evidence"],
                                            frozenset(cell["findings"]), ()), windows)
            cell.update(outcome=v.observed, met=False, reason=v.reason, evidence=v.evidence,
                        findings=sorted(v.findings))
    return edit


REFCOUNT = "captured-x86-7.2.13-double-put-at-l2-stop.txt"


def test_the_same_kernel_report_on_both_sides_is_the_bases_known_bug_not_a_regression(tmp_path):
    base = _edited(tmp_path / "a", BASE, _kernel_said(REFCOUNT))
    cand = _edited(tmp_path / "b", BASE, _kernel_said(REFCOUNT))
    c = compare.compare(base, cand)
    assert not c.regressions and not c.by_status(compare.STILL_FAILING) and c.exit_code() == 0
    report = compare.text(c)
    assert "= WARNING: refcount bug in vfio_pci_dma_buf_release" in report
    assert report.rstrip().endswith("no regression")


def test_a_new_kernel_report_title_is_a_new_failure_even_where_the_base_failed_too(tmp_path):
    base = _edited(tmp_path / "a", BASE, _kernel_said(REFCOUNT))
    cand = _edited(tmp_path / "b", BASE, _kernel_said(REFCOUNT, "x86-lockdep-circular.txt"))
    c = compare.compare(base, cand)
    legacy = [x for x in c.cells if "-legacy-dmabuf-" in x.id]
    assert legacy and all(x.status == compare.NEW_FAILURE for x in legacy)
    changes = legacy[0].evidence_changes
    assert "+ kernel report: possible deadlock in vfio_pci_dma_buf_release" in changes
    assert "= kernel report on both sides: WARNING: refcount bug in vfio_pci_dma_buf_release" \
        in changes
    report = compare.text(c)
    assert "candidate: the L1 kernel complained during l2_stop: WARNING: refcount bug" in report
    assert "+ kernel report: possible deadlock in vfio_pci_dma_buf_release" in report


def test_a_kernel_report_the_candidate_no_longer_makes_is_a_fix(tmp_path):
    base = _edited(tmp_path / "a", BASE, _kernel_said(REFCOUNT))
    c = compare.compare(base, BASE)
    fixed = c.by_status(compare.FIXED)
    assert fixed and "- kernel report gone: WARNING: refcount bug in vfio_pci_dma_buf_release" \
        in fixed[0].evidence_changes


def _outside(*titles: str):
    def edit(data):
        data["run"]["kernel_outside_cells"] = [{"l1": "intel-iommu/dmabuf", "complaints": [
            {"step": "L1 boot", "kind": "lockdep", "title": t, "said": f"during boot: {t}"}
            for t in titles]}]
    return edit


def test_a_report_outside_every_cell_is_held_by_title_too(tmp_path):
    lockdep = "possible deadlock in msi_domain_get_virq"
    base = _edited(tmp_path / "a", BASE, _outside(lockdep))
    same = compare.compare(base, _edited(tmp_path / "b", BASE, _outside(lockdep)))
    assert same.exit_code() == 0 and "= on both sides: " + lockdep in compare.text(same)
    new = compare.compare(base, _edited(tmp_path / "c", BASE, _outside(
        lockdep, "WARNING in vfio_pci_core_close_device")))
    assert new.exit_code() == 1 and new.new_outside == ["WARNING in vfio_pci_core_close_device"]
    assert compare.text(new).rstrip().endswith(
        "REGRESSION: the candidate's kernel made a new report outside every cell")
    assert new.record()["kernel_outside_cells"]["both"] == [lockdep]
