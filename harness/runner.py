"""The matrix run: one L1 boot per (vIOMMU, kernel), all of its cells on that boot.

Shared by the CLI and the test front ends. An L1 that cannot boot, or dies
half-way, turns the cells it had not yet produced into `error`, with the
reason; the cells it did produce keep their verdicts.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import matrix, scenario, stack
from harness.errors import BadInput, HarnessError
from harness.images import Images
from harness.l0 import viommu
from harness.l2 import L2_QEMU, upload_qemu
from harness.progress import say
from harness.qemu_binary import QemuBinary
from harness.scenario import CellResult


@dataclass(frozen=True)
class Selection:
    viommus: tuple[str, ...] = matrix.DEFAULT_VIOMMUS
    backends: tuple[str, ...] = matrix.BACKENDS
    kernels: tuple[str, ...] = ("dmabuf", "no-dmabuf")
    checks: tuple[str, ...] = matrix.CHECKS

    def cells(self) -> list[matrix.Cell]:
        return matrix.cells(self.viommus, self.backends, self.kernels, self.checks)


def run(qemu: QemuBinary, images: Images, selection: Selection, results_dir: Path,
        accel: str, seed: int, ssh_port: int | None = None,
        l2_qemu: Path | None = None) -> Iterator[CellResult]:
    for vi in selection.viommus:
        for kernel in selection.kernels:
            yield from run_l1(qemu, images, vi, kernel, selection, results_dir, accel, seed,
                              ssh_port, l2_qemu)


def run_l1(qemu: QemuBinary, images: Images, vi: str, kernel: str, selection: Selection,
           results_dir: Path, accel: str, seed: int, ssh_port: int | None = None,
           l2_qemu: Path | None = None) -> Iterator[CellResult]:
    """All selected cells of one (vIOMMU, kernel); `l2_qemu`, a local QEMU build to test
    instead of the rootfs's packaged one."""
    wanted = matrix.cells([vi], selection.backends, [kernel], selection.checks)
    done: set[str] = set()
    run_dir = results_dir / f"{vi}-{kernel}"
    began = time.monotonic()
    try:
        with stack.booted(qemu, images, viommu(vi), kernel, run_dir, accel=accel,
                          ssh_port=ssh_port) as l1:
            under_test = upload_qemu(l1.session, l2_qemu) if l2_qemu else L2_QEMU
            for result in scenario.run_on_l1(l1, list(selection.backends),
                                             list(selection.checks), run_dir, seed,
                                             under_test):
                done.add(result.cell.id)
                say(f"{result.cell.id}: {result.outcome} ({result.reason[:100]})")
                yield result
    except BadInput:
        raise  # the user's to fix, not a verdict: the whole run stops with exit code 2
    except HarnessError as e:
        say(f"L1 {vi}/{kernel}: {e.message}")
        for cell in wanted:
            if cell.id not in done:
                yield CellResult(cell, "error", f"L1 {vi}/{kernel}: {e}", {},
                                 time.monotonic() - began, str(run_dir))
