"""What a selection plans: the L1s, backends, checks and collection steps its cells need,
and no more. The pytest front end plans from the items left after deselection."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.checks import matrix, registry
from harness.run.plan import RunPlan, Selection, Side

ROOT = Path(__file__).resolve().parents[2]


def collection(*checks: str) -> registry.Collection:
    return registry.collection(set(checks))


def names(checks: tuple[registry.Check, ...]) -> list[str]:
    return [c.name for c in checks]


def test_a_lifecycle_check_alone_runs_its_own_step_and_no_other():
    todo = collection("reset")
    assert names(todo.lifecycle) == ["reset"] and todo.last == ()
    assert todo.creation == frozenset() and not todo.side


def test_the_last_step_alone_runs_without_the_lifecycle_steps_before_it():
    todo = collection("dmabuf-unplug")
    assert names(todo.last) == ["dmabuf-unplug"] and todo.lifecycle == ()
    assert not todo.side


def test_multi_range_alone_needs_the_side_l2_and_nothing_of_the_main_one_beyond_creation():
    todo = collection("multi-range")
    assert todo.side and todo.lifecycle == () and todo.last == ()
    assert todo.creation == frozenset()


def test_p2p_dma_brings_the_bar_access_it_depends_on():
    assert collection("p2p-dma").creation == {"bar_access", "p2p"}
    assert collection("mmap-fallback").creation == {"bar_access"}


def test_lifecycle_steps_keep_the_run_order_whatever_the_selection_order():
    assert names(collection("reset", "decode-toggle").lifecycle) == ["decode-toggle", "reset"]


def test_the_whole_matrix_collects_everything():
    todo = collection(*registry.names())
    assert todo.side and todo.creation == {"bar_access", "p2p"}
    assert names(todo.lifecycle) == ["decode-toggle", "reset", "reset-while-revoked"]
    assert names(todo.last) == ["dmabuf-unplug", "unplug-while-revoked"]
    assert todo.end is not None and todo.end.name == "quit-while-revoked"


def test_an_l2_ends_once_so_two_checks_that_end_it_cannot_share_it():
    registry.register(registry.Check("toy-end", "ends L2 its own way", registry.END,
                                     lambda ev: None,  # type: ignore[arg-type,return-value]
                                     {"dmabuf": {"legacy": "pass", "iommufd": "pass"}}))
    try:
        with pytest.raises(ValueError, match="would each end the same L2"):
            collection("quit-while-revoked", "toy-end")
        assert collection("toy-end").end.name == "toy-end"
    finally:
        registry.unregister("toy-end")


def plan_of(selection: Selection) -> RunPlan:
    image = SimpleNamespace(bzimage=Path("/images/bzImage"))
    images = SimpleNamespace(kernels={"dmabuf": image, "no-dmabuf": image})
    return RunPlan(selection, None, images, "tcg", 1, Path("/l1"),  # type: ignore[arg-type]
                   (Side(Path("/out")),))


def test_cells_picked_one_by_one_boot_only_their_l1s_and_run_only_themselves():
    picked = [matrix.Cell("virtio-iommu", "iommufd", "no-dmabuf", "reset"),
              matrix.Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma")]
    selection = Selection.of_cells(picked)
    assert [b.name for b in plan_of(selection).boots()] == ["virtio-iommu/no-dmabuf",
                                                             "intel-iommu/dmabuf"]
    assert selection.on_boot("intel-iommu", "dmabuf") == [picked[1]]
    assert selection.on_boot("intel-iommu", "no-dmabuf") == []  # not booted: see above
    assert sorted(c.id for c in selection.cells()) == sorted(c.id for c in picked)
    assert selection.record()["cells"] == sorted(c.id for c in picked)


def test_a_bisect_step_boots_one_l1_per_backend_each_in_its_own_directory():
    import dataclasses

    picked = [matrix.Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma"),
              matrix.Cell("intel-iommu", "iommufd", "dmabuf", "p2p-dma"),
              matrix.Cell("intel-iommu", "iommufd", "dmabuf", "reset")]
    plan = dataclasses.replace(plan_of(Selection.of_cells(picked)), boot_per_backend=True)
    boots = plan.boots()
    assert [(b.name, b.directory) for b in boots] == [
        ("intel-iommu/dmabuf/legacy", Path("/l1/legacy")),
        ("intel-iommu/dmabuf/iommufd", Path("/l1/iommufd"))]
    one = dataclasses.replace(plan_of(Selection.of_cells(picked[1:])), boot_per_backend=True)
    assert [(b.name, b.directory, b.backend) for b in one.boots()] == [
        ("intel-iommu/dmabuf", Path("/l1"), None)]  # one backend: one L1, as before


def test_a_cross_product_is_recorded_by_its_axes():
    selection = Selection(("intel-iommu",), ("legacy",), ("dmabuf",), ("reset",))
    assert "cells" not in selection.record()
    assert [c.id for c in selection.cells()] == ["intel-iommu-legacy-dmabuf-reset"]


def collect_only(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          "--collect-only", "-q", *args, "tests/vm/test_matrix.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_pytest_plans_a_k_on_one_cell_id_as_that_cell_alone():
    out = collect_only("-k", "intel-iommu-iommufd-no-dmabuf-p2p-dma")
    assert "matrix plan: 1 cell(s) on 1 L1(s) (intel-iommu/no-dmabuf); backends iommufd; " \
           "checks p2p-dma" in out


def test_pytest_plans_a_marker_selection_as_its_viommu_and_check():
    out = collect_only("-m", "intel_iommu and p2p_dma")
    assert "matrix plan: 4 cell(s) on 2 L1(s) (intel-iommu/dmabuf, intel-iommu/no-dmabuf); " \
           "backends legacy, iommufd; checks p2p-dma" in out


def test_avocado_variants_carry_the_selected_cells_of_their_l1():
    cells = matrix.cells(("intel-iommu",), ("legacy",), ("dmabuf",), ("reset", "p2p-dma"))
    variants = matrix.avocado_variants(cells, {})
    values = {key: value for _, key, value in variants[0]["variant"][0][1]}
    assert json.loads(json.dumps(values["l1_cells"])) == [
        ["intel-iommu", "legacy", "dmabuf", "reset"],
        ["intel-iommu", "legacy", "dmabuf", "p2p-dma"]]


@pytest.mark.parametrize("argv, kernels", [
    (["run"], ("dmabuf", "no-dmabuf")),
    (["run", "--kernel-patches", "s.mbox"], ("debug", "no-dmabuf")),
    (["ab", "--candidate-kernel-patches", "s.mbox"], ("debug", "no-dmabuf")),
    (["ab", "--candidate-kernel-patches", "s.mbox", "--bisect"], ("debug", "no-dmabuf")),
    (["ab", "--candidate-kernel-patches", "s.mbox", "--kernel", "dmabuf"], ("dmabuf",)),
    (["ab", "--candidate-l2-qemu", "/usr/bin/true"], ("dmabuf", "no-dmabuf")),
    (["ab", "--arch", "aarch64", "--candidate-kernel-patches", "s.mbox"],
     ("debug", "no-dmabuf")),
])
def test_a_kernel_series_is_judged_on_the_debug_kernel_unless_a_kernel_is_chosen(argv, kernels):
    """The recipe's data, as the CLI reads it: the debug kernel, which can report what a
    series brings, takes dmabuf's place."""
    from harness import arguments, cli

    args = arguments.parser().parse_args(argv)
    assert cli._selection(args).kernels == kernels
