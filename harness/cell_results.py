"""Cell results for test front ends, an L1 at a time, shared through the results directory.

pytest asks for cells one test at a time in one process; avocado runs every
test in a process of its own, two at a time. Either way the first cell of a
(vIOMMU, kernel) boots that L1 and runs all of its cells, and the others read
their result: the records are written to `<out>/<viommu>-<kernel>/cells.json`
under a lock, so no L1 is booted twice and no front end has scenario code of
its own.
"""

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path

from harness import accel, matrix, paths, runner
from harness.deadline import Deadline, wait_for
from harness.images import Images, ImageStore
from harness.qemu_binary import QemuBinary
from harness.recipe import Recipe
from harness.results import jsonable
from harness.scenario import CellResult


@dataclass(frozen=True)
class Setup:
    qemu: QemuBinary
    images: Images
    accel: str

    @classmethod
    def from_environment(cls, cache: str | None = None, qemu: str | None = None,
                         kernels: list[str] | None = None) -> "Setup":
        """The built images (all kernel variants, or `kernels`), L0 QEMU and accelerator."""
        store = ImageStore(Recipe.load(), paths.cache_dir(cache))
        images = store.load(kernels)
        binary = QemuBinary.find(qemu)
        kernel = next(iter(images.kernels.values())).bzimage
        return cls(binary, images, accel.choose(binary, kernel, store.cache).accel)


#: The longest another process may take over an L1 and all its cells (about 20 s here).
LOCK_DEADLINE = 1800.0


def _lock(handle, deadline: Deadline) -> None:
    """An exclusive lock, waited for until the deadline: a second process waits for
    the first one's L1 rather than booting its own."""
    wait_for(lambda: _try_lock(handle), deadline, "another process still holds the L1",
             interval=0.5)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class CellResults:
    def __init__(self, setup: Setup, out: Path, seed: int, l2_qemu: Path | None = None):
        self.setup, self.out, self.seed, self.l2_qemu = setup, out, seed, l2_qemu
        self._memory: dict[str, dict] = {}
        #: The results this process produced itself (the others' are only records).
        self.produced: dict[str, CellResult] = {}

    def get(self, cell: matrix.Cell) -> dict:
        """The record of `cell` (as in results.json), running its L1 if nobody has yet."""
        if cell.id not in self._memory:
            self._memory.update(self._l1_records(cell.viommu, cell.kernel))
        return self._memory[cell.id]

    def _l1_records(self, viommu: str, kernel: str) -> dict[str, dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        store = self.out / f"{viommu}-{kernel}" / "cells.json"
        with (self.out / f".lock-{viommu}-{kernel}").open("w") as lock:
            _lock(lock, Deadline(f"waiting for L1 {viommu}/{kernel} of another test process",
                                 LOCK_DEADLINE))
            if store.exists():
                return json.loads(store.read_text())
            records = {}
            for result in runner.run_l1(self.setup.qemu, self.setup.images, viommu, kernel,
                                        runner.Selection(), self.out, self.setup.accel,
                                        self.seed, l2_qemu=self.l2_qemu):
                self.produced[result.cell.id] = result
                records[result.cell.id] = result.record()
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(records, indent=2, default=jsonable))
            return records
