"""What a verdict is, the findings it can establish, and what every verdict checks first:
that the evidence it would stand on is there (else it is `error`, never a pass)."""

import re
from collections import Counter
from dataclasses import dataclass

from harness.evidence.gathered import Evidence
from harness.evidence.records import L2Run, RegionSetup, Unparsed, of_type

#: What a verdict can establish beyond pass or fail, by name: the signatures of
#: expected failures and skips in matrix.py are made of these.
FINDINGS = {
    "kernel-lacks-dmabuf": "the L1 kernel's VFIO_DEVICE_FEATURE_PROBE(DMA_BUF) answered ENOTTY "
                           "for every passed-through device",
    "bar-map-refused": "the IOMMU mapping of the BAR's IOVA was refused (a map at that IOVA "
                       "returned an error)",
    "bytes-missing": "the pattern reached the source BAR in L0's file, the destination was "
                     "clean, and the bytes did not arrive",
    "dma-faulted": "the L1 kernel logged an IOMMU fault at the BAR's IOVA during the DMA",
    "dmabuf-outlives-device": "the dma-buf of an unplugged device's BAR stays open in L2 "
                              "after its device fd was closed (the L1 kernel's fdinfo), one "
                              "more per unplug",
    "multi-range-refused": "iommufd refused to map the pieces of a dma-buf of several ranges "
                           "(EOPNOTSUPP, -95)",
    "read-missing": "edu's DMA read from the BAR did not bring back what L2 reads there "
                       "through the BAR's mmap",
    "kernel-splat": "the L1 kernel logged a report of its own (WARNING, BUG, Oops, refcount, "
                    "lockdep, KASAN/KFENCE/UBSAN, hung task, soft lockup) or took a new taint "
                    "during the cell's steps",
    "iommufd-only": "the check drives iommufd itself, with no QEMU: it is played once per "
                    "L1, in the iommufd backend's cell",
    "hung": "a step of L2 (a quit, a close, an unplug) did not return within its deadline: "
            "a task of L2 waits in the kernel, and the L1 is discarded",
    "bar-fd-withheld": "QEMU's vfio-user client handed the server a BAR's range for DMA "
                       "with no fd (the BAR's RAMBlock has none: no dma-buf), so the "
                       "server, another process, has nothing to map there",
    "served-no-dmabuf": "a device served over vfio-user has no dma-buf: no kernel exporter "
                        "is involved, QEMU made none for its regions (no vfio_region_dmabuf "
                        "for it), and L2 holds none beyond its vfio-pci BARs' (the L1 "
                        "kernel's fdinfo)",
    "left-behind": "once the cell's L2 had ended, the L1 kernel still had a dma-buf of its "
                   "exporter alive (debugfs) or a process held a VFIO fd: a reference of "
                   "that L2's was never given back",
}
#: The kernel's own complaint (verdicts/kernel_health.py), a step that never returned, and
#: what an ended L2 left in the kernel (verdicts/left_behind.py): findings no expected
#: failure's signature explains away, unless it names them.
SPLAT, HUNG, LEFT = "kernel-splat", "hung", "left-behind"
FATAL = frozenset({SPLAT, HUNG, LEFT})


@dataclass(frozen=True)
class Verdict:
    observed: str  # pass | fail | skip | error (evidence missing)
    reason: str
    evidence: dict
    findings: frozenset[str] = frozenset()
    grounds: tuple[str, ...] = ()


def missing_evidence(ev: Evidence, run: L2Run | None, label: str = "",
             devices: dict[str, str] | None = None,
             bars: dict[str, dict[int, int]] | None = None) -> list[str]:
    """Why this L2 run's evidence cannot be judged at all; empty if it can. `devices` and
    `bars`: the L2's, if not the main L2's."""
    if run is None:
        return [f"{label}no L2 run was recorded"]
    if not run.trace:
        return [f"{label}L2's trace is missing (the trace file is empty): no evidence to judge"]
    problems = []
    for u in of_type(list(run.trace), Unparsed):
        problems.append(f"{label}a {u.event} line no longer parses: {u.text!r}")
    set_up = {r.device for r in of_type(list(run.trace), RegionSetup)}
    for name, bdf in sorted((devices or ev.devices).items()):
        if bdf not in set_up:
            problems.append(f"{label}no vfio_region_setup for {name} ({bdf}) in L2's trace: the "
                            f"trace is missing or incomplete")
    if run.process is None:
        problems.append(f"{label}no view of the L2 process from the L1 kernel")
    known = ev.bars if bars is None else bars
    if not known or any(bdf not in known for bdf in (devices or ev.devices).values()):
        problems.append("no L1 kernel view of the devices' BARs")
    return problems[:6]


def error_verdict(problems: list[str], evidence: dict | None = None) -> Verdict:
    return Verdict("error", "evidence missing: " + "; ".join(problems), evidence or {})


def trace_ground(run: L2Run, label: str = "") -> str:
    counts = Counter(type(r).__name__ for r in run.trace)
    return (f"{label}L2 trace: {counts['RegionSetup']} vfio_region_setup, "
            f"{counts['RegionMmap']} vfio_region_mmap, {counts['RegionDmabuf']} "
            f"vfio_region_dmabuf")


def in_range(address: int, span: tuple[int, int]) -> bool:
    return span[0] <= address < span[1]


def iommu_faults(dmesg: tuple[str, ...]) -> list[str]:
    """Fault lines of the L1 kernel, those naming the faulting address first."""
    faults = [line.strip() for line in dmesg if "fault" in line.lower()]
    return sorted(faults, key=lambda line: not re.search(r"fault addr|page fault from", line))
