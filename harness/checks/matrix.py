"""The run's model: what a cell is, what was expected of it and why, and what it produced.

The expectations are data in each check's record (registry.py); the CLI, the
pytest parametrization and the avocado variants all read them from there, and
none of them restates an expectation. An expectation other than pass carries a
signature: the findings (named in verdicts.FINDINGS) that the verdict must have
established for the skip or the failure to be the one expected. A failure for
another reason is a failure; a skip for another reason is not the expected skip.
"""

import functools
import random
from dataclasses import dataclass

from harness.checks import registry
from harness.checks.registry import EXERCISES, EXPECTATIONS, Expectation
from harness.images.recipe import Recipe
from harness.platforms import PLATFORMS, X86_64
from harness.verdicts.verdict import FATAL, FINDINGS

BACKENDS = registry.BACKENDS
DEFAULT_VIOMMUS = X86_64.default_viommus

__all__ = ["EXERCISES", "EXPECTATIONS", "Expectation"]


def __getattr__(name: str) -> object:
    """`CHECKS`: every registered check, in the order they run (read from the registry
    each time, so that a check registered later is in it too)."""
    if name == "CHECKS":
        return registry.names()
    raise AttributeError(name)


#: Outcomes of a cell as reported. A verdict observes pass, fail, skip or error;
#: the expectation turns an expected fail into xfail and an unexpected pass into xpass.
OUTCOMES = ("pass", "fail", "xfail", "xpass", "skip", "error")


def exercised_by(path: str) -> list[tuple[str, str]]:
    """(check, backend) of the cells that run code of `path`; empty if none is known to."""
    return sorted({(c, b) for prefix, names, backends in EXERCISES if path.startswith(prefix)
                   for c in names for b in backends})


@functools.cache
def _judged_as() -> dict[str, str]:
    return {name: v.judged_as for name, v in Recipe.load().kernels.items()}


def expectation_of(check: str, kernel: str, backend: str) -> Expectation | None:
    """What is expected of a cell: the table's row for its kernel, or for the variant the
    recipe says it is judged as (debug: as dmabuf)."""
    return EXPECTATIONS.get((check, _judged_as().get(kernel, kernel), backend))


def new_seed() -> int:
    """A fresh seed for a run's P2P patterns; runs record it so a pattern can be redone."""
    return random.SystemRandom().randrange(2**32)


@dataclass(frozen=True)
class Cell:
    """One (vIOMMU, backend, kernel variant, check): the unit a verdict is given for."""

    viommu: str
    backend: str
    kernel: str
    check: str
    arch: str = X86_64.arch

    @property
    def id(self) -> str:
        return f"{PLATFORMS[self.arch].tag}{self.viommu}-{self.backend}-{self.kernel}-{self.check}"

    @property
    def expectation(self) -> Expectation:
        found = expectation_of(self.check, self.kernel, self.backend)
        if found is None:
            raise KeyError((self.check, self.kernel, self.backend))
        return found

    @property
    def expected(self) -> str:
        return self.expectation.outcome

    @property
    def why(self) -> str:
        return self.expectation.why


def cells(viommus=DEFAULT_VIOMMUS, backends=BACKENDS, kernels: tuple[str, ...] | None = None,
          selected: tuple[str, ...] | None = None, arch: str = X86_64.arch) -> list[Cell]:
    """The cells of a selection, checks in the order they run (default: every check, the
    recipe's default kernel variants)."""
    names = registry.names() if selected is None else selected
    kernels = Recipe.load().matrix_kernels if kernels is None else kernels
    return [Cell(v, b, k, c, arch) for v in viommus for k in kernels for b in backends
            for c in names if expectation_of(c, k, b) is not None]


def settle(expectation: Expectation, observed: str, reason: str,
           findings: frozenset[str] = frozenset()) -> tuple[str, bool, str]:
    """(reported outcome, met, reason) of a verdict held against its expectation.

    An expected failure or skip counts only with its signature: without it the
    reason says which finding was missing, and the cell is not met. A fatal finding
    (the kernel's own complaint) the signature does not name fails an expected failure.
    """
    reported = observed
    if expectation.outcome == "xfail":
        reported = {"fail": "xfail", "pass": "xpass"}.get(observed, observed)
    met = reported == expectation.outcome
    fatal = sorted(f for f in findings if f in FATAL and f not in expectation.signature)
    if met and fatal and reported == "xfail":
        return "fail", False, f"{reason} -- not the expected failure: {FINDINGS[fatal[0]]}"
    missing = [s for s in expectation.signature if s not in findings]
    if met and missing:
        wanted = "; ".join(FINDINGS[s] for s in missing)
        if reported == "xfail":
            return "fail", False, f"{reason} -- not the expected failure: not seen: {wanted}"
        return reported, False, f"{reason} -- not the expected skip: not seen: {wanted}"
    return reported, met, reason


@dataclass
class CellResult:
    """What a cell produced: its outcome against the expectation, the reason and evidence."""

    cell: Cell
    outcome: str
    reason: str
    evidence: dict
    duration_s: float
    artifacts: str = ""
    met: bool | None = None          # None: met if the outcome is the expected one
    findings: tuple[str, ...] = ()
    grounds: tuple[str, ...] = ()    # the evidence the verdict stood on
    #: How an error came about, as fields (never inside the evidence): the stage that
    #: failed, whether a deadline ended it, whether it was the infrastructure (an L1 that
    #: did not boot or died: not the fault of what is under test), and how L2 ended if it
    #: died under the cell.
    error_stage: str | None = None
    deadline: bool = False
    infrastructure: bool = False
    l2_end: str | None = None

    def __post_init__(self) -> None:
        if self.met is None:
            self.met = self.outcome == self.cell.expected and not self.cell.expectation.signature

    @classmethod
    def settled(cls, cell: Cell, observed: str, reason: str, evidence: dict, duration_s: float,
                artifacts: str = "", findings: frozenset[str] = frozenset(),
                grounds: tuple[str, ...] = ()) -> "CellResult":
        outcome, met, reason = settle(cell.expectation, observed, reason, findings)
        return cls(cell, outcome, reason, evidence, duration_s, artifacts, met,
                   tuple(sorted(findings)), grounds)

    def record(self) -> dict:
        c = self.cell
        return {"id": c.id, "arch": c.arch, "viommu": c.viommu, "backend": c.backend,
                "kernel": c.kernel, "check": c.check, "expected": c.expected,
                "expected_signature": list(c.expectation.signature), "outcome": self.outcome,
                "met": self.met, "reason": self.reason, "expected_because": c.why,
                "findings": list(self.findings), "grounds": list(self.grounds),
                "error_stage": self.error_stage, "deadline": self.deadline,
                "infrastructure": self.infrastructure, "l2_end": self.l2_end,
                "evidence": self.evidence, "duration_s": round(self.duration_s, 2),
                "artifacts": self.artifacts}


@dataclass(frozen=True)
class L1Complaints:
    """What an L1 kernel said outside every cell (its boot, between two L2s, its end): no
    cell's to fail, and still a failure of the run, named in its last line."""

    l1: str                        # vIOMMU/kernel
    complaints: tuple[dict, ...]   # verdicts.kernel_health.Complaint records, with `said`

    def describe(self) -> str:
        more = f" (and {len(self.complaints) - 1} more)" if len(self.complaints) > 1 else ""
        return f"L1 {self.l1}: {self.complaints[0]['said']}{more}"


def avocado_variants(cells_: list[Cell], params: dict) -> list[dict]:
    """The cells as avocado json_variants state (`avocado run --json-variants-load FILE`):
    one variant per cell, named by its id, carrying its coordinates and `params`, and the
    selected cells of its L1 (`l1_cells`): the first test of an L1 runs those, no others."""
    l1_cells: dict[tuple[str, str], list[list[str]]] = {}
    for cell in cells_:
        l1_cells.setdefault((cell.viommu, cell.kernel), []).append(
            [cell.viommu, cell.backend, cell.kernel, cell.check])
    out = []
    for cell in cells_:
        values = {"viommu": cell.viommu, "backend": cell.backend, "kernel": cell.kernel,
                  "check": cell.check, "expected": cell.expected,
                  "l1_cells": l1_cells[(cell.viommu, cell.kernel)], **params}
        node = "/run/matrix"
        out.append({"paths": ["/run/*"], "variant_id": cell.id,
                    "variant": [[node, [[node, key, value] for key, value in values.items()]]]})
    return out
