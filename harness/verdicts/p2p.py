"""The P2P verdict: bytes written into ivshmem's BAR 2 through L2, moved by edu's DMA to
another offset of the same BAR, read back by L0 out of the BAR's file; a pass also needs
the route the backend maps BARs by (a dma-buf, or an address) traced at BAR 2's IOVA.
Lifecycle and teardown checks judge their transfers after a step with the same function."""

import re
from collections.abc import Sequence

from harness.evidence.gathered import Evidence
from harness.evidence.records import (
    ContainerDmaMapFailed,
    IoasMapFailed,
    IommufdMap,
    IommufdMapFile,
    ListenerAddRam,
    P2PNotSupported,
    P2PTransfer,
    TraceRecord,
)
from harness.l2.backends import backend
from harness.verdicts.verdict import (
    Verdict,
    error_verdict,
    in_range,
    iommu_faults,
    missing_evidence,
    trace_ground,
)


def p2p_dma(ev: Evidence) -> Verdict:
    p2p = ev.p2p
    missing = [] if p2p is not None else ["the P2P transfer was not run"]
    missing += missing_evidence(ev, ev.main)
    if missing:
        return error_verdict(missing)
    assert p2p is not None
    return transfer(ev, p2p, ev.main.trace)


def _arrived(ev: Evidence, p2p: P2PTransfer, mapping: list[dict]) -> tuple[str, str]:
    """Bytes that arrived pass only by the route the backend maps BARs by, traced."""
    by_dmabuf = [m for m in mapping if m["event"] == "IommufdMapFile" and m["ret"] == 0]
    by_address = [m for m in mapping if m["event"] == "ListenerAddRam"]
    if backend(ev.backend).maps_bars_by_dmabuf and not by_dmabuf:
        return "fail", (f"the bytes arrived, but no successful iommufd_backend_map_file_dma "
                        f"at BAR 2's IOVA {p2p.bar2_iova:#x} was traced: the route is unproven")
    if not backend(ev.backend).maps_bars_by_dmabuf and not by_address:
        return "fail", (f"the bytes arrived, but no vfio_listener_region_add_ram at BAR 2's "
                        f"IOVA {p2p.bar2_iova:#x} was traced: the route is unproven")
    how = (f"mapped through its dma-buf (iommufd_backend_map_file_dma fd "
           f"{by_dmabuf[0]['fd']})" if by_dmabuf else "mapped by address")
    return "pass", (f"{p2p.size} bytes went ivshmem BAR 2 -> edu -> BAR 2 + "
                    f"0x{p2p.dst_offset:x} and L0 read them back out of the file "
                    f"(BAR 2 {how})")


def transfer(ev: Evidence, p2p: P2PTransfer, trace_seq: Sequence[TraceRecord]) -> Verdict:
    """A P2P transfer judged by its bytes and by the mapping of BAR 2 in `trace_seq` (the
    whole trace at creation; the lines after the BAR came back, in a lifecycle step)."""
    trace = list(trace_seq)
    bar2 = (p2p.bar2_iova, p2p.bar2_iova + 0x100000)
    mapping = [vars(r) | {"event": type(r).__name__} for r in trace
               if isinstance(r, IommufdMapFile | IommufdMap | ListenerAddRam)
               and in_range(getattr(r, "iova", getattr(r, "start", -1)), bar2)]
    refused = [m for m in mapping if m.get("ret", 0) < 0]
    refused += [vars(m) for m in ev.main.messages
                if isinstance(m, ContainerDmaMapFailed) and in_range(m.iova, bar2)]
    failures = [m.text for m in ev.main.messages
                if isinstance(m, IoasMapFailed | ContainerDmaMapFailed | P2PNotSupported)]
    faults = [f for f in iommu_faults(p2p.l1_dmesg)
              if any(in_range(int(a, 16), bar2) for a in re.findall(r"0x[0-9a-fA-F]+", f))]
    source_ok = p2p.source_in_file == p2p.pattern
    clean = not any(p2p.before)
    findings = set()
    if refused:
        findings.add("bar-map-refused")
    if faults:
        findings.add("dma-faulted")
    if source_ok and clean and not p2p.engine_error and not p2p.arrived:
        findings.add("bytes-missing")
    evidence = {
        "seed": p2p.seed, "size": p2p.size, "bar2_iova": hex(p2p.bar2_iova),
        "pattern": p2p.pattern.hex(), "read_back": p2p.after.hex(),
        "destination_before": p2p.before.hex(),
        "source_offset": p2p.src_offset, "destination_offset": p2p.dst_offset,
        "bar2_mapping": mapping, "bar2_mapping_refused": refused, "mapping_failures": failures,
        "l1_dmesg_during_dma": list(p2p.l1_dmesg),
    }
    grounds = (f"L0: {p2p.size} bytes at ivshmem file offsets {p2p.src_offset:#x} (source) and "
               f"{p2p.dst_offset:#x} (destination)", trace_ground(ev.main),
               f"L2 trace: {len(mapping)} IOMMU mapping event(s) at BAR 2's IOVA",
               f"L1 dmesg during the DMA: {len(p2p.l1_dmesg)} line(s)")

    def verdict(observed: str, reason: str) -> Verdict:
        return Verdict(observed, reason, evidence, frozenset(findings), grounds)

    if not source_ok:
        return verdict("fail", "the pattern written to BAR 2 through L2 never reached the "
                               "ivshmem file: the BAR mmap path is broken")
    if not clean:
        return verdict("fail", "the destination was not clean before the DMA")
    if p2p.engine_error:
        return verdict("fail", f"the DMA never started: {p2p.engine_error}")
    if p2p.arrived:
        return verdict(*_arrived(ev, p2p, mapping))
    where = f"; L1 kernel: {faults[0]}" if faults else "; no IOMMU fault at BAR 2 logged in L1"
    why = f"; {failures[0]}" if failures else ""
    refusal = "; the BAR's IOMMU mapping was refused" if refused else \
        "; no refused IOMMU mapping of BAR 2 was traced"
    return verdict("fail", f"the bytes did not arrive (read {p2p.after[:8].hex()}..., "
                           f"wanted {p2p.pattern[:8].hex()}...){refusal}{why}{where}")
