"""The matrix: which cells exist and what each is expected to do, written once, as data.

The CLI, the pytest parametrization and the avocado variants all read this
table; none of them restates an expectation.
"""

import random
from dataclasses import dataclass

CHECKS = ("dmabuf-per-region", "mmap-fallback", "p2p-dma")
BACKENDS = ("legacy", "iommufd")
DEFAULT_VIOMMUS = ("intel-iommu", "virtio-iommu")

#: Expected outcome per (check, kernel variant, backend); the same for every vIOMMU.
EXPECTATIONS_TABLE = """
# check             kernel      legacy   iommufd
dmabuf-per-region   dmabuf      pass     pass
dmabuf-per-region   no-dmabuf   skip     skip
mmap-fallback       dmabuf      pass     pass
mmap-fallback       no-dmabuf   pass     pass
p2p-dma             dmabuf      pass     pass
p2p-dma             no-dmabuf   pass     xfail
"""

#: Why a cell is expected not to pass: shown beside its outcome.
WHY = {
    ("dmabuf-per-region", "no-dmabuf", "legacy"):
        "the kernel has no VFIO dma-buf, so there is nothing to check",
    ("dmabuf-per-region", "no-dmabuf", "iommufd"):
        "the kernel has no VFIO dma-buf, so there is nothing to check",
    ("p2p-dma", "no-dmabuf", "iommufd"):
        "iommufd maps a BAR only through its dma-buf: without one IOMMU_IOAS_MAP fails "
        "and the DMA to the BAR's IOVA faults",
}

OUTCOMES = ("pass", "fail", "xfail", "xpass", "skip", "error")


def new_seed() -> int:
    """A fresh seed for a run's P2P patterns; runs record it so a pattern can be redone."""
    return random.SystemRandom().randrange(2**32)


def _parse(table: str) -> dict[tuple[str, str, str], str]:
    out = {}
    for line in table.strip().splitlines():
        if line.lstrip().startswith("#"):
            continue
        check, kernel, *per_backend = line.split()
        for backend, expected in zip(BACKENDS, per_backend, strict=True):
            if expected not in ("pass", "xfail", "skip"):
                raise ValueError(f"bad expectation {expected!r} in: {line}")
            out[(check, kernel, backend)] = expected
    return out


EXPECTATIONS = _parse(EXPECTATIONS_TABLE)


@dataclass(frozen=True)
class Cell:
    viommu: str
    backend: str
    kernel: str
    check: str

    @property
    def id(self) -> str:
        return f"{self.viommu}-{self.backend}-{self.kernel}-{self.check}"

    @property
    def expected(self) -> str:
        return EXPECTATIONS[(self.check, self.kernel, self.backend)]

    @property
    def why(self) -> str:
        return WHY.get((self.check, self.kernel, self.backend), "")


def cells(viommus=DEFAULT_VIOMMUS, backends=BACKENDS, kernels=("dmabuf", "no-dmabuf"),
          checks=CHECKS) -> list[Cell]:
    return [Cell(v, b, k, c) for v in viommus for k in kernels for b in backends for c in checks
            if (c, k, b) in EXPECTATIONS]


def outcome(expected: str, observed: str) -> str:
    """The reported outcome: a failure that was expected is xfail, a pass that was not, xpass."""
    if expected == "xfail":
        return {"fail": "xfail", "pass": "xpass"}.get(observed, observed)
    return observed


def met(expected: str, reported: str) -> bool:
    return reported == expected


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
