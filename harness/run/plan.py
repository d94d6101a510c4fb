"""A run's plan: everything decided before any L1 boots, built once and passed down whole.

The CLI (`run`, `ab`) and the test front ends build a `RunPlan` from what they
were asked; the runner and everything below it read what they need from it.
No stage re-derives or re-validates an input another stage already settled.
"""

from dataclasses import dataclass, field
from pathlib import Path

from harness.checks import matrix, registry
from harness.checks.matrix import Cell
from harness.images.recipe import Recipe
from harness.images.store import Images
from harness.l0.qemu_binary import QemuBinary
from harness.platforms import X86_64, Platform


@dataclass(frozen=True)
class Selection:
    viommus: tuple[str, ...] = matrix.DEFAULT_VIOMMUS
    backends: tuple[str, ...] = matrix.BACKENDS
    kernels: tuple[str, ...] = field(default_factory=lambda: tuple(Recipe.load().kernels))
    checks: tuple[str, ...] = field(default_factory=registry.names)

    def cells(self) -> list[Cell]:
        return matrix.cells(self.viommus, self.backends, self.kernels, self.checks)

    def record(self) -> dict:
        return {k: list(v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class Side:
    """One QEMU and kernel under test, and where its cells go: a run has one side, an A/B
    two. Sides with the same L1 kernel share its boots."""

    results: Path
    l2_qemu: Path | None = None  # None: the rootfs's packaged QEMU
    images: Images | None = None  # None: the run's images (a side with a series has its own)
    traces: tuple[str, ...] = ()  # more trace events for L2: those a series under test adds


@dataclass(frozen=True)
class Boot:
    """One L1 boot of the plan and the sides whose cells it runs."""

    viommu: str
    kernel: str
    images: Images
    directory: Path  # where its L1's artifacts go
    sides: tuple[Side, ...]

    @property
    def name(self) -> str:
        return f"{self.viommu}/{self.kernel}"


@dataclass(frozen=True)
class RunPlan:
    selection: Selection
    qemu: QemuBinary          # L0's
    images: Images
    accel: str
    seed: int
    l1_dir: Path              # where the L1 boots' artifacts go
    sides: tuple[Side, ...]
    ssh_port: int | None = None
    jobs: int = 1
    platform: Platform = X86_64

    def boots(self) -> list[Boot]:
        """One L1 boot per (vIOMMU, kernel, kernel image): sides whose kernel is the same
        image share it."""
        out = []
        for vi in self.selection.viommus:
            for kernel in self.selection.kernels:
                groups: dict[Path, list[Side]] = {}
                for side in self.sides:
                    groups.setdefault((side.images or self.images).kernels[kernel].bzimage,
                                      []).append(side)
                for n, group in enumerate(groups.values()):
                    out.append(Boot(vi, kernel, group[0].images or self.images,
                                    self.l1_dir / str(n) if len(groups) > 1 else self.l1_dir,
                                    tuple(group)))
        return out

    def in_matrix_order(self, results: list) -> list:
        """Cells of parallel L1s arrive interleaved: the selection's order, for tables and
        files."""
        order = {c.id: n for n, c in enumerate(self.selection.cells())}
        return sorted(results, key=lambda r: order.get(r.cell.id, len(order)))
