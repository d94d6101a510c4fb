"""Cell results for test front ends, an L1 at a time, shared within one run only.

pytest asks for cells one test at a time in one process; avocado runs every
test in a process of its own. Either way the first cell of a (vIOMMU, kernel)
boots that L1 and runs its selected cells, and the others take their result:
within a process from memory, across avocado's processes from
`<out>/<viommu>-<kernel>/cells.json`, written atomically under a lock.

That file is stamped with the run's identity (its id, seed, QEMU under test and
its sha256, image keys, harness version). A process reuses it only when the
identity is its own: a file left by an earlier run, or by a run of another
QEMU, means a fresh boot, so a re-run never replays old verdicts. A file that
is torn or not ours is an error that names it.
"""

import fcntl
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import __version__
from harness.base import files, paths
from harness.base.checksum import sha256_file
from harness.base.deadline import Deadline, wait_for
from harness.base.errors import HarnessError
from harness.base.progress import say
from harness.checks.matrix import Cell, CellResult
from harness.images.recipe import Recipe
from harness.images.store import Images, ImageStore
from harness.l0 import accel
from harness.l0.qemu_binary import QemuBinary
from harness.platforms import X86_64, Platform
from harness.results.results_file import jsonable
from harness.run import parallel, runner
from harness.run.plan import Boot, RunPlan, Selection, Side

FORMAT = "vfio-harness cells 1"


@dataclass(frozen=True)
class Setup:
    qemu: QemuBinary
    images: Images
    accel: str

    @classmethod
    def from_environment(cls, cache: str | None = None, qemu: str | None = None,
                         kernels: list[str] | None = None, accelerator: str = "auto",
                         platform: Platform = X86_64) -> "Setup":
        """The built images (all kernel variants, or `kernels`), L0 QEMU and accelerator."""
        store = ImageStore(Recipe.load(platform=platform), paths.cache_dir(cache))
        images = store.load(kernels)
        binary = QemuBinary.find(qemu, platform)
        kernel = next(iter(images.kernels.values())).bzimage
        forced = None if accelerator == "auto" else accelerator
        return cls(binary, images, accel.choose(binary, kernel, store.cache, force=forced,
                                                platform=platform).accel)


@dataclass(frozen=True)
class RunIdentity:
    """What makes two processes part of the same run: only then may one use the other's cells."""

    run_id: str
    seed: int
    l2_qemu: str
    l2_qemu_sha256: str
    images: dict[str, str]
    harness: str

    @classmethod
    def of(cls, run_id: str, seed: int, setup: Setup, l2_qemu: Path | None) -> "RunIdentity":
        images = {f"kernel-{n}": k.manifest.get("key", "") for n, k in setup.images.kernels.items()}
        images["rootfs"] = setup.images.rootfs.manifest.get("key", "")
        if l2_qemu:
            qemu, sha = str(l2_qemu.resolve()), sha256_file(l2_qemu)
        else:
            qemu, sha = f"packaged {setup.images.rootfs.qemu_version}", ""
        return cls(run_id, seed, qemu, sha, images, __version__)


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


def read_store(path: Path, identity: RunIdentity) -> dict[str, dict] | None:
    """The records in `path` if this run wrote them; None if absent or from another run."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path} is torn or unreadable ({e}); remove it or use another "
                           f"results directory", stage="shared cell results") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT \
            or not isinstance(data.get("identity"), dict) \
            or not isinstance(data.get("cells"), dict):
        raise HarnessError(f"{path} is not a vfio-harness cell results file ({FORMAT}); remove "
                           f"it or use another results directory", stage="shared cell results")
    if data["identity"] != asdict(identity):
        theirs = data["identity"].get("run_id", "?")
        say(f"{path}: from another run ({theirs}), not this one ({identity.run_id}): "
            f"booting afresh")
        return None
    return data["cells"]


class CellResults:
    """`boots`: the (vIOMMU, kernel) pairs this process will ask for; the first cell asked
    for then boots all of them, `jobs` at a time (pytest). Without it, one at a time, as
    each is asked for (avocado: each test its own process). `selection`: the cells a boot
    runs (default: all of its L1's)."""

    def __init__(self, setup: Setup, out: Path, seed: int, run_id: str,
                 l2_qemu: Path | None = None, ssh_port: int | None = None,
                 boots: list[tuple[str, str]] | None = None, jobs: int = 1,
                 selection: Selection | None = None):
        self.setup, self.out, self.seed, self.l2_qemu = setup, out, seed, l2_qemu
        self.ssh_port = ssh_port
        self.boots = boots or []
        self.jobs = jobs
        self.identity = RunIdentity.of(run_id, seed, setup, l2_qemu)
        self.plan = RunPlan(selection or Selection(), setup.qemu, setup.images, setup.accel,
                            seed, out, (Side(out, l2_qemu),), ssh_port, jobs)
        self._memory: dict[str, dict] = {}
        self._done: set[tuple[str, str]] = set()  # the L1s whose cells are in memory
        #: The results this process produced itself (the others' are only records).
        self.produced: dict[str, CellResult] = {}

    def get(self, cell: Cell) -> dict:
        """The record of `cell` (as in results.json), running its L1 if nobody has yet."""
        if cell.id not in self._memory:
            pair = (cell.viommu, cell.kernel)
            if pair in self.boots and self.jobs > 1 and self.ssh_port is None:
                self._all_records()
            else:
                self._memory.update(self._l1_records(*pair))
                self._done.add(pair)
        return self._memory[cell.id]

    def _all_records(self) -> None:
        """Every L1 of `boots` not yet in memory, side by side (runner's parallel L1s)."""
        wanted = [b for b in self.boots if b not in self._done]
        self.out.mkdir(parents=True, exist_ok=True)
        records: dict[tuple[str, str], dict[str, dict]] = {b: {} for b in wanted}

        def work(boot: tuple[str, str]):
            for _, result in runner.cells_only(runner.run_boot(self.plan, self._boot(*boot))):
                yield boot, result

        for boot, result in parallel.run(wanted, self.jobs, work, lambda b: "/".join(b)):
            self.produced[result.cell.id] = result
            records[boot][result.cell.id] = result.record()
        for (vi, kernel), cells in records.items():
            self._write_store(self.out / f"{vi}-{kernel}" / "cells.json", cells)
            self._memory.update(cells)
            self._done.add((vi, kernel))

    def _boot(self, viommu: str, kernel: str) -> Boot:
        return Boot(viommu, kernel, self.setup.images, self.out, self.plan.sides)

    def qemu_under_test(self) -> dict | None:
        """The QEMU under test as the runs of this process found it in L1."""
        for record in self._memory.values():
            if "qemu_under_test" in record.get("evidence", {}):
                return record["evidence"]["qemu_under_test"]
        return None

    def _l1_records(self, viommu: str, kernel: str) -> dict[str, dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        store = self.out / f"{viommu}-{kernel}" / "cells.json"
        with (self.out / f".lock-{viommu}-{kernel}").open("w") as lock:
            _lock(lock, Deadline(f"waiting for L1 {viommu}/{kernel} of another test process",
                                 LOCK_DEADLINE))
            shared = read_store(store, self.identity)
            if shared is not None:
                return shared
            records = {}
            for _, result in runner.cells_only(
                    runner.run_boot(self.plan, self._boot(viommu, kernel))):
                self.produced[result.cell.id] = result
                records[result.cell.id] = result.record()
            self._write_store(store, records)
            return records

    def _write_store(self, path: Path, cells: dict[str, dict]) -> None:
        """One L1's records, stamped with this run's identity, written atomically."""
        files.write_atomic(path, json.dumps(
            {"format": FORMAT, "identity": asdict(self.identity), "cells": cells},
            indent=2, default=jsonable))
