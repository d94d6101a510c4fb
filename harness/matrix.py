"""The run's model, in one place: what a cell is, what was expected of it and why, and what
it produced.

The expectations are one table, as data; the CLI, the pytest parametrization
and the avocado variants all read it, and none of them restates an
expectation. An expectation other than pass carries a signature: the findings
(named in verdicts.FINDINGS) that the verdict must have established for the
skip or the failure to be the one expected. A failure for another reason is a
failure; a skip for another reason is not the expected skip.
"""

import random
import re
from dataclasses import dataclass

from harness.verdicts import FINDINGS

CHECKS = ("dmabuf-per-region", "mmap-fallback", "p2p-dma", "decode-toggle", "reset",
          "dmabuf-unplug", "multi-range")
BACKENDS = ("legacy", "iommufd")
DEFAULT_VIOMMUS = ("intel-iommu", "virtio-iommu")

#: Expected outcome per (check, kernel variant, backend); the same for every vIOMMU.
#: `skip[a,b]` / `xfail[a,b]`: the findings that must be present (the signature).
EXPECTATIONS_TABLE = """
# check           kernel     legacy                        iommufd
dmabuf-per-region dmabuf     pass                          pass
dmabuf-per-region no-dmabuf  skip[kernel-lacks-dmabuf]     skip[kernel-lacks-dmabuf]
mmap-fallback     dmabuf     pass                          pass
mmap-fallback     no-dmabuf  pass                          pass
p2p-dma           dmabuf     pass                          pass
p2p-dma           no-dmabuf  pass                          xfail[bar-map-refused,bytes-missing]
decode-toggle     dmabuf     pass                          pass
decode-toggle     no-dmabuf  pass                          xfail[bar-map-refused,bytes-missing]
reset             dmabuf     pass                          pass
reset             no-dmabuf  pass                          xfail[bar-map-refused,bytes-missing]
dmabuf-unplug     dmabuf     xfail[dmabuf-outlives-device] xfail[dmabuf-outlives-device]
dmabuf-unplug     no-dmabuf  pass                          xfail[bar-map-refused,bytes-missing]
multi-range       dmabuf     pass                          xfail[multi-range-refused,read-missing]
multi-range       no-dmabuf  pass                          xfail[bar-map-refused,read-missing]
"""

#: QEMU 11.1.3's own bug, expected until a fixed QEMU turns these cells into xpass.
QEMU_KEEPS_DMABUF = (
    "QEMU 11.1.3 hands each BAR's dma-buf fd to the mmap's RAMBlock (ram_block->fd, "
    "hw/vfio/region.c) and nothing closes it: an unplugged device's dma-buf stays open in "
    "L2, one more per unplug (seen: 5 cycles, 5 dma-buf fds left, L2's fds 26 -> 31)")

#: Why a cell is expected not to pass: shown beside its outcome.
WHY = {
    ("dmabuf-per-region", "no-dmabuf", "legacy"):
        "the kernel has no VFIO dma-buf, so there is nothing to check",
    ("dmabuf-per-region", "no-dmabuf", "iommufd"):
        "the kernel has no VFIO dma-buf, so there is nothing to check",
    ("p2p-dma", "no-dmabuf", "iommufd"):
        "iommufd maps a BAR only through its dma-buf: without one IOMMU_IOAS_MAP fails "
        "and the DMA to the BAR's IOVA faults",
    ("decode-toggle", "no-dmabuf", "iommufd"):
        "once the BAR is back, iommufd still cannot map it without a dma-buf: the P2P "
        "after the step fails as at creation",
    ("dmabuf-unplug", "dmabuf", "legacy"): QEMU_KEEPS_DMABUF,
    ("dmabuf-unplug", "dmabuf", "iommufd"): QEMU_KEEPS_DMABUF,
    ("dmabuf-unplug", "no-dmabuf", "iommufd"):
        "once the device is plugged again, iommufd still cannot map BAR 2 without a "
        "dma-buf: the P2P after the cycle fails as at creation",
    ("multi-range", "dmabuf", "iommufd"):
        "iommufd maps a VFIO dma-buf of one range only (vfio_pci_dma_buf_iommufd_map: "
        "\"More than one range to iommufd will require proper DMABUF support\", EOPNOTSUPP): "
        "a BAR mmapped around its MSI-X table is not mapped, and a DMA to it faults",
    ("multi-range", "no-dmabuf", "iommufd"):
        "without a dma-buf iommufd cannot map the BAR's pieces at all (IOMMU_IOAS_MAP of "
        "the mmap: Bad address), as for any BAR at creation",
    ("reset", "no-dmabuf", "iommufd"):
        "once the BARs are programmed again, iommufd still cannot map BAR 2 without a "
        "dma-buf: the P2P after the step fails as at creation",
}

#: Outcomes of a cell as reported. A verdict observes pass, fail, skip or error;
#: the expectation turns an expected fail into xfail and an unexpected pass into xpass.
OUTCOMES = ("pass", "fail", "xfail", "xpass", "skip", "error")

#: Which cells exercise which source files (QEMU's and the kernel's), by path prefix: a
#: series' files are shown beside the cells that run their code. "*" is every value.
EXERCISES_TABLE = """
# path prefix                           checks                                   backends
hw/vfio/region.c                        *                                        *
hw/vfio/trace-events                    *                                        *
hw/vfio/pci.c                           *                                        *
hw/vfio/device.c                        *                                        *
hw/vfio/listener.c                      *                                        *
hw/pci/pci.c                            decode-toggle,reset,dmabuf-unplug        *
hw/pci/pcie.c                           dmabuf-unplug                            *
system/physmem.c                        dmabuf-unplug                            *
drivers/vfio/pci/vfio_pci_config.c      decode-toggle,reset                      *
hw/vfio/iommufd.c                       *                                        iommufd
backends/iommufd.c                      p2p-dma,dmabuf-per-region,multi-range    iommufd
hw/vfio/container                       mmap-fallback,p2p-dma                    legacy
system/memory.c                         mmap-fallback,p2p-dma                    *
drivers/vfio/pci/vfio_pci_dmabuf.c      *                                        *
drivers/vfio/pci/vfio_pci_core.c        *                                        *
drivers/vfio/pci/vfio_pci_rdwr.c        mmap-fallback                            *
drivers/vfio/device_cdev.c              *                                        iommufd
drivers/vfio/group.c                    *                                        legacy
drivers/vfio/vfio_iommu_type1.c         p2p-dma                                  legacy
drivers/iommu/iommufd/                  *                                        iommufd
drivers/pci/p2pdma.c                    dmabuf-per-region,p2p-dma                *
drivers/dma-buf/                        dmabuf-per-region,p2p-dma                *
drivers/iommu/intel/                    p2p-dma                                  *
drivers/iommu/virtio-iommu.c            p2p-dma                                  *
"""


def _exercises(table: str) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    rows = []
    for line in table.strip().splitlines():
        if line.lstrip().startswith("#"):
            continue
        prefix, checks, backends = line.split()
        rows.append((prefix, tuple(CHECKS) if checks == "*" else tuple(checks.split(",")),
                     tuple(BACKENDS) if backends == "*" else tuple(backends.split(","))))
    return rows


EXERCISES = _exercises(EXERCISES_TABLE)


def exercised_by(path: str) -> list[tuple[str, str]]:
    """(check, backend) of the cells that run code of `path`; empty if none is known to."""
    return sorted({(c, b) for prefix, checks, backends in EXERCISES if path.startswith(prefix)
                   for c in checks for b in backends})


@dataclass(frozen=True)
class Expectation:
    outcome: str                      # pass | xfail | skip
    signature: tuple[str, ...] = ()   # findings the xfail or skip must show
    why: str = ""

    def describe(self) -> str:
        if not self.signature:
            return self.outcome
        return f"{self.outcome} ({'; '.join(FINDINGS[s] for s in self.signature)})"


_ENTRY = re.compile(r"^(?P<outcome>pass|xfail|skip)(?:\[(?P<signature>[a-z0-9,-]+)\])?$")


def _parse(table: str) -> dict[tuple[str, str, str], Expectation]:
    out = {}
    for line in table.strip().splitlines():
        if line.lstrip().startswith("#"):
            continue
        check, kernel, *per_backend = line.split()
        for backend, entry in zip(BACKENDS, per_backend, strict=True):
            m = _ENTRY.match(entry)
            if not m:
                raise ValueError(f"bad expectation {entry!r} in: {line}")
            signature = tuple(m.group("signature").split(",")) if m.group("signature") else ()
            unknown = [s for s in signature if s not in FINDINGS]
            if unknown:
                raise ValueError(f"unknown finding(s) {unknown} in: {line}")
            if (m.group("outcome") == "pass") != (not signature):
                raise ValueError(f"pass takes no signature, xfail and skip need one: {line}")
            out[(check, kernel, backend)] = Expectation(
                m.group("outcome"), signature, WHY.get((check, kernel, backend), ""))
    return out


EXPECTATIONS = _parse(EXPECTATIONS_TABLE)


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

    @property
    def id(self) -> str:
        return f"{self.viommu}-{self.backend}-{self.kernel}-{self.check}"

    @property
    def expectation(self) -> Expectation:
        return EXPECTATIONS[(self.check, self.kernel, self.backend)]

    @property
    def expected(self) -> str:
        return self.expectation.outcome

    @property
    def why(self) -> str:
        return self.expectation.why


def cells(viommus=DEFAULT_VIOMMUS, backends=BACKENDS, kernels=("dmabuf", "no-dmabuf"),
          checks=CHECKS) -> list[Cell]:
    return [Cell(v, b, k, c) for v in viommus for k in kernels for b in backends for c in checks
            if (c, k, b) in EXPECTATIONS]


def settle(expectation: Expectation, observed: str, reason: str,
           findings: frozenset[str] = frozenset()) -> tuple[str, bool, str]:
    """(reported outcome, met, reason) of a verdict held against its expectation.

    An expected failure or skip counts only with its signature: without it the
    reason says which finding was missing, and the cell is not met.
    """
    reported = observed
    if expectation.outcome == "xfail":
        reported = {"fail": "xfail", "pass": "xpass"}.get(observed, observed)
    met = reported == expectation.outcome
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
        return {"id": c.id, "viommu": c.viommu, "backend": c.backend, "kernel": c.kernel,
                "check": c.check, "expected": c.expected,
                "expected_signature": list(c.expectation.signature), "outcome": self.outcome,
                "met": self.met, "reason": self.reason, "expected_because": c.why,
                "findings": list(self.findings), "grounds": list(self.grounds),
                "evidence": self.evidence, "duration_s": round(self.duration_s, 2),
                "artifacts": self.artifacts}


def avocado_variants(cells_: list[Cell], params: dict) -> list[dict]:
    """The cells as avocado json_variants state (`avocado run --json-variants-load FILE`):
    one variant per cell, named by its id, carrying its coordinates and `params`."""
    out = []
    for cell in cells_:
        values = {"viommu": cell.viommu, "backend": cell.backend, "kernel": cell.kernel,
                  "check": cell.check, "expected": cell.expected, **params}
        node = "/run/matrix"
        out.append({"paths": ["/run/*"], "variant_id": cell.id,
                    "variant": [[node, [[node, key, value] for key, value in values.items()]]]})
    return out
