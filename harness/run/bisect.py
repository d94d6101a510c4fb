"""Which patch of a series brought each new failure: a bisect over the series' prefixes.

Prefix k is the kernel with the series' first k patches; prefix 0 is the pinned
kernel, prefix N the whole series. Every bisected cell failed with the whole
series (bad at N) and met its expectation without it (good at 0: the A/B's
baseline says so; a plain run proves it only if the answer hangs on it). Each
step builds one prefix (store.build_prefix: incremental, from the previous
step's work tree) and judges only the cells whose interval still contains it, so
cells broken by one patch share every step. It runs them as they failed: with every
check of the L2s they stood on (`context`), since a check's verdict can rest on what
an earlier one did to the same L2 (a device unplugged early leaves a dma-buf that
only L2's exit releases; run alone, the exit would find nothing to trip on). The
first bad patch of a cell is the smallest k bad with k - 1 good, as git bisect names
the first bad commit.

A prefix that does not build is skipped as `git bisect skip` skips a commit:
another prefix in the interval is tried; when only skipped ones are left, the
answer is the range that could hold the culprit, said as such. A cell the
harness could not judge at a step (an L1 that did not boot) is skipped for
that cell alone.

`Search` is the pure part (no I/O; unit-tested on its own); `bisect` drives it
with a function that builds and runs one step.
"""

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.base.errors import BadInput, HarnessError
from harness.base.progress import say
from harness.checks.matrix import Cell, CellResult
from harness.images.series import Series
from harness.images.store import ImageStore
from harness.results import results_file
from harness.results.bisection import FIRST_BAD, NOT_THE_SERIES, RANGE
from harness.run import runner
from harness.run.plan import RunPlan, Selection, Side

#: What a step says of one cell: bad (fails as with the whole series), good, or None
#: (not judged: an infrastructure error).
Verdict = bool | None
#: A verdict as the record and the progress lines say it.
SAID = {True: "bad", False: "good", None: "not judged"}


@dataclass
class Search:
    patches: int
    cells: list[str]
    good_known: bool = True  # prefix 0 known to be good (an A/B's baseline ran it)
    good: dict[str, int] = field(default_factory=dict)   # largest prefix seen good
    bad: dict[str, int] = field(default_factory=dict)    # smallest prefix seen bad
    unbuilt: dict[int, str] = field(default_factory=dict)  # prefix -> why it did not build
    unjudged: dict[str, set[int]] = field(default_factory=dict)
    zero_bad: set[str] = field(default_factory=set)  # bad without any patch
    zero_good: set[str] = field(default_factory=set)  # seen good without any patch

    def __post_init__(self) -> None:
        for c in self.cells:
            self.good.setdefault(c, 0)
            self.bad.setdefault(c, self.patches)
            self.unjudged.setdefault(c, set())

    def _open(self, cell: str) -> list[int]:
        """Prefixes still worth trying for `cell`, best (nearest the middle) first."""
        lo, hi = self.good[cell], self.bad[cell]
        mid = (lo + hi) / 2
        ks = [k for k in range(lo + 1, hi)
              if k not in self.unbuilt and k not in self.unjudged[cell]]
        return sorted(ks, key=lambda k: (abs(k - mid), k))

    def _needs_zero(self, cell: str) -> bool:
        return (not self.good_known and self.good[cell] == 0
                and cell not in self.zero_bad | self.zero_good
                and 0 not in self.unjudged[cell] and not self._open(cell))

    def next(self) -> tuple[int, list[str]] | None:
        """The next prefix to try and the cells to run on it; None when every cell is
        settled."""
        for cell in self.cells:
            if cell in self.zero_bad:
                continue
            ks = self._open(cell)
            if ks:
                k = ks[0]
                return k, [c for c in self.cells if c not in self.zero_bad
                           and k in self._open(c)]
        waiting = [c for c in self.cells if self._needs_zero(c)]
        return (0, waiting) if waiting else None

    def record(self, k: int, verdicts: dict[str, Verdict]) -> None:
        for cell, bad in verdicts.items():
            if bad is None:
                self.unjudged[cell].add(k)
            elif k == 0:
                (self.zero_bad if bad else self.zero_good).add(cell)
            elif bad:
                self.bad[cell] = min(self.bad[cell], k)
            else:
                self.good[cell] = max(self.good[cell], k)

    def skip(self, k: int, why: str) -> None:
        self.unbuilt[k] = why

    def result(self, cell: str) -> dict:
        """What the search says of `cell`: its first bad patch, or the range that holds
        it (skipped prefixes in the way), or that the pinned kernel fails too."""
        if cell in self.zero_bad:
            return {"verdict": NOT_THE_SERIES, "first_bad": None, "could_be": []}
        lo, hi = self.good[cell], self.bad[cell]
        zero_unproven = not self.good_known and lo == 0 and cell not in self.zero_good
        if hi - lo == 1 and not zero_unproven:
            return {"verdict": FIRST_BAD, "first_bad": hi, "could_be": [hi]}
        return {"verdict": RANGE, "first_bad": None, "could_be": list(range(lo + 1, hi + 1))}


@dataclass
class Step:
    patches: int  # the prefix
    cells: list[str]
    seconds: float
    unbuilt: str | None = None  # why the prefix did not build
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    results: str | None = None  # the step's results directory

    def record(self) -> dict:
        return {"patches": self.patches, "cells": self.cells, "seconds": round(self.seconds, 1),
                "built": self.unbuilt is None, "build_error": self.unbuilt,
                "verdicts": {c: SAID[v] for c, v in self.verdicts.items()},
                "results": self.results}


class Unbuilt(Exception):
    """A prefix that did not build: skipped, as git bisect skip does."""


#: (prefix, cell ids) -> (cell id -> verdict, the step's results directory); raises
#: Unbuilt when the prefix does not build.
RunStep = Callable[[int, list[str]], tuple[dict[str, Verdict], str]]


def bisect(series: Series, cells: list[str], run_step: RunStep,
           good_known: bool = True) -> dict:
    """The bisect record: per cell the first bad patch (or its range), the steps taken."""
    began = time.monotonic()
    search = Search(len(series.patches), list(cells), good_known)
    steps: list[Step] = []
    while (nxt := search.next()) is not None:
        k, ids = nxt
        t = time.monotonic()
        try:
            verdicts, results = run_step(k, ids)
        except Unbuilt as e:
            search.skip(k, str(e))
            steps.append(Step(k, ids, time.monotonic() - t, unbuilt=str(e)))
            continue
        search.record(k, verdicts)
        steps.append(Step(k, ids, time.monotonic() - t, verdicts=verdicts, results=results))
    patches = {p.number: p for p in series.patches}

    def named(k: int) -> dict:
        p = patches[k]
        return {"number": k, "subject": p.subject, "author": p.author}

    out = {}
    for cell in cells:
        r = search.result(cell)
        out[cell] = {**r, "patch": named(r["first_bad"]) if r["first_bad"] else None,
                     "could_be": [named(k) for k in r["could_be"]],
                     "skipped": sorted(k for k in search.unbuilt if k in r["could_be"])}
    return {"series": {"title": series.title, "source": str(series.source),
                       "sha256": series.sha256, "patches": len(series.patches)},
            "cells": out, "steps": [s.record() for s in steps],
            "unbuilt": {str(k): why for k, why in sorted(search.unbuilt.items())},
            "duration_s": round(time.monotonic() - began, 1)}


def context(cells: list[Cell], ids: list[str]) -> list[Cell]:
    """The cells a step runs to judge `ids`: every one of `cells` (the run's selection)
    that stood on the same L2 as one of them, the same vIOMMU, kernel and backend."""
    wanted = {(c.viommu, c.kernel, c.backend) for c in cells if c.id in ids}
    return [c for c in cells if (c.viommu, c.kernel, c.backend) in wanted]


def steps(plan: RunPlan, store: ImageStore, series: Series, side: Side, out: Path,
          info: Callable[[list[CellResult], float, int, RunPlan], dict],
          judge: Callable[[CellResult], Verdict]) -> RunStep:
    """The step function of a bisect over `series`: the prefix built (store.build_prefix),
    the cells run on it as `plan` runs its own (same L0, seed, accelerator; `side`'s QEMU
    and trace events), its results.json in out/patches-K, each cell judged."""
    cells = {cell.id: cell for cell in plan.selection.cells()}

    def step(k: int, ids: list[str]) -> tuple[dict[str, Verdict], str]:
        directory = out / f"patches-{k:02d}"
        wanted = {cells[i].kernel for i in ids}
        base = dataclasses.replace(plan.images, kernels={
            n: i for n, i in plan.images.kernels.items() if n in wanted})
        try:
            images = store.build_prefix(series, k, base)
        except BadInput:
            raise
        except HarnessError as e:
            raise Unbuilt(first_build_error(e)) from None
        selection = Selection.of_cells(context(list(cells.values()), ids))
        at = dataclasses.replace(plan, selection=selection, images=images, l1_dir=directory,
                                 keep_failed=0.0,  # a bad step is the answer, not a hold
                                 boot_per_backend=True,
                                 sides=(dataclasses.replace(side, results=directory,
                                                            images=images),))
        began = time.monotonic()
        results = at.in_matrix_order([r for _, r in runner.cells_only(runner.run(at))])
        results_file.write(directory, results, info(results, began, k, at))
        results_file.prune(directory, results)
        verdicts = {}
        for r in results:
            if r.cell.id not in ids:
                continue  # run for its L2's sake, not judged
            verdicts[r.cell.id] = judge(r)
            say(f"bisect: {k} of {len(series.patches)} patches: {r.cell.id} "
                f"{SAID[verdicts[r.cell.id]]}")
        return verdicts, str(directory)

    return step


def first_build_error(e: HarnessError) -> str:
    """The compiler's first error as a maintainer would quote it (the path from the top of
    the tree), and where the log is."""
    log = e.message.rsplit("full log: ", 1)[-1] if "full log: " in e.message else None
    errors = [line.strip() for line in (e.details or "").splitlines() if ": error:" in line
              or line.startswith("make") and "Error" in line]
    first = re.sub(r"/\S*/src/[^/\s]+/", "", errors[0]) if errors else e.message.splitlines()[0]
    return first + (f" (log {log})" if log else "")
