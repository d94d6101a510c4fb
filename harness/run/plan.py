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
    """The cells a run is to produce: a cross product of the four axes (the CLI's options),
    narrowed to `only` when a front end selected cells one by one (pytest's -m and -k)."""

    viommus: tuple[str, ...] = matrix.DEFAULT_VIOMMUS
    backends: tuple[str, ...] = matrix.BACKENDS
    kernels: tuple[str, ...] = field(default_factory=lambda: Recipe.load().matrix_kernels)
    checks: tuple[str, ...] = field(default_factory=registry.names)
    only: frozenset[str] | None = None  # cell ids; None: the whole cross product
    arch: str = X86_64.arch

    @classmethod
    def of_cells(cls, cells: list[Cell]) -> "Selection":
        """Exactly `cells`: the axes they span, in their order, narrowed to their ids."""
        def axis(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(getattr(c, name) for c in cells))
        arches = axis("arch") or (X86_64.arch,)
        if len(arches) > 1:
            raise ValueError(f"cells of {len(arches)} platforms in one selection: {arches}")
        return cls(axis("viommu"), axis("backend"), axis("kernel"), axis("check"),
                   frozenset(c.id for c in cells), arches[0])

    def cells(self) -> list[Cell]:
        every = matrix.cells(self.viommus, self.backends, self.kernels, self.checks, self.arch)
        return every if self.only is None else [c for c in every if c.id in self.only]

    def on_boot(self, viommu: str, kernel: str) -> list[Cell]:
        """The cells one L1 boot produces: its backends and checks, no others."""
        return [c for c in self.cells() if c.viommu == viommu and c.kernel == kernel]

    def describe(self) -> str:
        """One line: how many cells on which L1s, with which backends and checks."""
        cells = self.cells()
        l1s = list(dict.fromkeys(f"{c.viommu}/{c.kernel}" for c in cells))
        backends = list(dict.fromkeys(c.backend for c in cells))
        checks = list(dict.fromkeys(c.check for c in cells))
        return (f"{len(cells)} cell(s) on {len(l1s)} L1(s) ({', '.join(l1s)}); backends "
                f"{', '.join(backends)}; checks {', '.join(checks)}")

    def record(self) -> dict:
        axes = {"viommus": list(self.viommus), "backends": list(self.backends),
                "kernels": list(self.kernels), "checks": list(self.checks),
                **({"arch": self.arch} if self.arch != X86_64.arch else {})}
        return axes if self.only is None else {**axes, "cells": sorted(self.only)}


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
    backend: str | None = None  # only this backend's cells (None: all of them)

    @property
    def name(self) -> str:
        return f"{self.viommu}/{self.kernel}" + (f"/{self.backend}" if self.backend else "")


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
    keep_failed: float = 0.0  # seconds an L1 with unmet cells is held up after them
    #: One L1 per backend, side by side (a bisect step: a few cells, the boot a small part
    #: of each L1's time); else one L1 runs both backends' cells, one after the other.
    boot_per_backend: bool = False

    def boots(self) -> list[Boot]:
        """One L1 boot per (vIOMMU, kernel, kernel image): sides whose kernel is the same
        image share it."""
        out = []
        for vi in self.selection.viommus:
            for kernel in self.selection.kernels:
                if not self.selection.on_boot(vi, kernel):
                    continue  # a front end's selection may leave out a whole L1
                groups: dict[Path, list[Side]] = {}
                for side in self.sides:
                    groups.setdefault((side.images or self.images).kernels[kernel].bzimage,
                                      []).append(side)
                backends = list(dict.fromkeys(c.backend for c in self.selection.on_boot(
                    vi, kernel))) if self.boot_per_backend else [None]
                for n, group in enumerate(groups.values()):
                    directory = self.l1_dir / str(n) if len(groups) > 1 else self.l1_dir
                    for be in backends:
                        out.append(Boot(vi, kernel, group[0].images or self.images,
                                        directory / be if be and len(backends) > 1
                                        else directory, tuple(group),
                                        be if len(backends) > 1 else None))
        return out

    def in_matrix_order(self, results: list) -> list:
        """Cells of parallel L1s arrive interleaved: the selection's order, for tables and
        files."""
        order = {c.id: n for n, c in enumerate(self.selection.cells())}
        return sorted(results, key=lambda r: order.get(r.cell.id, len(order)))
