"""The three verdicts, decided from evidence alone.

Each verdict is a pure function of an `Evidence` bundle: it returns what was
observed (pass, fail or skip) and why, in words a maintainer can check against
the artifacts. Whether that was expected is the matrix's business, not theirs.
"""

import re
from collections import defaultdict
from dataclasses import dataclass

from harness.evidence import (
    ContainerDmaMapFailed,
    DmabufNotSupported,
    DmabufUnavailable,
    Evidence,
    IoasMapFailed,
    IommufdMap,
    IommufdMapFile,
    L2Run,
    ListenerAddRam,
    P2PNotSupported,
    RegionDmabuf,
    RegionMmap,
    RegionSetup,
    of_type,
)

PAGE = 4096
EDU_ID = 0x010000ED
#: VFIO_REGION_INFO_FLAG_MMAP: the kernel lets userspace mmap the region.
REGION_FLAG_MMAP = 0x4
DMABUF_EXPORTER = "vfio_pci_core"


@dataclass(frozen=True)
class Verdict:
    observed: str  # pass | fail | skip
    reason: str
    evidence: dict


def _regions(run: L2Run) -> dict[str, RegionSetup]:
    return {r.name: r for r in of_type(list(run.trace), RegionSetup)}


def _mmaps(run: L2Run) -> dict[str, list[RegionMmap]]:
    out: dict[str, list[RegionMmap]] = defaultdict(list)
    for m in of_type(list(run.trace), RegionMmap):
        out[m.name].append(m)
    return dict(out)


def _dmabufs(run: L2Run) -> dict[str, list[RegionDmabuf]]:
    out: dict[str, list[RegionDmabuf]] = defaultdict(list)
    for d in of_type(list(run.trace), RegionDmabuf):
        out[d.name].append(d)
    return dict(out)


def qualifying_regions(run: L2Run) -> dict[str, list[RegionMmap]]:
    """Mmapped regions that should have a dma-buf: a BAR of at least a page."""
    regions = _regions(run)
    return {name: maps for name, maps in _mmaps(run).items()
            if name in regions and regions[name].size >= PAGE and regions[name].region < 6}


def sub_page_regions(run: L2Run) -> dict[str, list[RegionMmap]]:
    regions = _regions(run)
    return {name: maps for name, maps in _mmaps(run).items()
            if name in regions and regions[name].size < PAGE}


def _unsupported_reason(ev: Evidence) -> str:
    said = sorted({err or "unsupported" for ok, err in ev.kernel_probe.values() if not ok})
    return (f"the L1 kernel has no VFIO dma-buf: VFIO_DEVICE_FEATURE_PROBE(DMA_BUF) answered "
            f"{', '.join(said)} for {', '.join(sorted(ev.kernel_probe))}")


def _mtree_problems(run: L2Run, names: list[str]) -> list[str]:
    missing = [n for n in names if not any(m.startswith(f"{n} mmaps[") for m in run.mtree_mmaps)]
    return [f"info mtree shows no mmaps for {n}" for n in missing]


def _dmabuf_problems(run: L2Run, label: str) -> list[str]:
    """A dma-buf per qualifying region, none for the others, and the kernel agreeing."""
    problems = []
    qualifying = qualifying_regions(run)
    dmabufs = _dmabufs(run)
    fds: dict[str, int] = {}
    for name, maps in qualifying.items():
        found = dmabufs.get(name, [])
        if len(found) != len(maps):
            problems.append(f"{label}{name}: {len(found)} vfio_region_dmabuf for "
                            f"{len(maps)} mmap(s)")
            continue
        if len({d.fd for d in found}) != 1 or found[0].fd < 0:
            problems.append(f"{label}{name}: dma-buf fds {[d.fd for d in found]}, "
                            f"expected one valid fd for the region")
            continue
        fds[name] = found[0].fd
        ranges = sorted((d.offset, d.size) for d in found)
        expected = sorted((m.start, m.size) for m in maps)
        if ranges != expected:
            problems.append(f"{label}{name}: dma-buf ranges {ranges} differ from mmaps {expected}")
    if len(set(fds.values())) != len(fds):
        problems.append(f"{label}regions share a dma-buf fd: {fds}")
    for name in set(dmabufs) - set(qualifying):
        problems.append(f"{label}{name} has a dma-buf but does not qualify "
                        f"(sub-page or not mmapped)")
    if run.process is None:
        problems.append(f"{label}no view of the L2 process from the L1 kernel")
        return problems
    held = {fd: (size, exporter) for fd, size, exporter in run.process.dmabuf_fds}
    if len(held) != len(qualifying):
        problems.append(f"{label}the L1 kernel shows {len(held)} dma-buf fd(s) in L2, "
                        f"for {len(qualifying)} qualifying region(s)")
    for name, fd in fds.items():
        want = sum(m.size for m in qualifying[name])
        if fd not in held:
            problems.append(f"{label}{name}: fd {fd} from the trace is not a dma-buf in "
                            f"/proc/PID/fd")
        elif held[fd][0] != want:
            problems.append(f"{label}{name}: the kernel says fd {fd} is {held[fd][0]} bytes, "
                            f"the region's mmaps are {want}")
        elif held[fd][1] != DMABUF_EXPORTER:
            problems.append(f"{label}{name}: fd {fd} is exported by {held[fd][1]}, "
                            f"not {DMABUF_EXPORTER}")
    return problems


def dmabuf_per_region(ev: Evidence) -> Verdict:
    if not ev.kernel_has_dmabuf:
        return Verdict("skip", _unsupported_reason(ev), {"kernel_probe": ev.kernel_probe})
    run = ev.main
    qualifying = qualifying_regions(run)
    problems = _dmabuf_problems(run, "")
    problems += _mtree_problems(run, sorted(_mmaps(run)))
    if not qualifying:
        problems.append("no region qualified for a dma-buf (no mmapped BAR of a page or more)")
    for name in sub_page_regions(run):
        if name in _dmabufs(run):
            problems.append(f"sub-page {name} has a dma-buf")
    no_mmap_summary = None
    if ev.no_mmap is not None:
        edu_bdf = ev.devices.get("edu", "")
        edu_regions = [n for n in _regions(ev.no_mmap) if n.startswith(edu_bdf)]
        mmapped = [n for n in _mmaps(ev.no_mmap) if n.startswith(edu_bdf)]
        with_dmabuf = [n for n in _dmabufs(ev.no_mmap) if n.startswith(edu_bdf)]
        if not edu_regions:
            problems.append("x-no-mmap=on: edu's regions were never set up")
        if mmapped or with_dmabuf:
            problems.append(f"x-no-mmap=on: edu still has mmaps {mmapped} / "
                            f"dma-bufs {with_dmabuf}")
        problems += _dmabuf_problems(ev.no_mmap, "x-no-mmap=on: ")
        no_mmap_summary = {"edu_mmaps": mmapped, "edu_dmabufs": with_dmabuf,
                           "dmabufs": sorted(_dmabufs(ev.no_mmap))}
    evidence = {
        "qualifying_regions": {n: [(m.start, m.size) for m in maps]
                               for n, maps in qualifying.items()},
        "sub_page_regions": sorted(sub_page_regions(run)),
        "vfio_region_dmabuf": [vars(d) for ds in _dmabufs(run).values() for d in ds],
        "kernel_dmabuf_fds": run.process.dmabuf_fds if run.process else None,
        "mtree_mmaps": run.mtree_mmaps,
        "x_no_mmap": no_mmap_summary,
    }
    if problems:
        return Verdict("fail", "; ".join(problems), evidence)
    fd_list = ", ".join(f"{n} fd {d[0].fd}" for n, d in sorted(_dmabufs(run).items()))
    return Verdict("pass", f"one dma-buf per qualifying region ({fd_list}), matching the "
                           f"kernel's fds and sizes; sub-page and x-no-mmap regions have none",
                   evidence)


def _bar_access_problems(ev: Evidence) -> list[str]:
    access = ev.bar_access
    if access is None:
        return ["BAR access was not tried"]
    problems = []
    if access.edu_id != EDU_ID:
        problems.append(f"edu id reads 0x{access.edu_id:08x} through L2, not 0x{EDU_ID:08x}")
    if access.liveness_read != (~access.liveness_written & 0xFFFFFFFF):
        problems.append(f"edu liveness: wrote 0x{access.liveness_written:08x}, read "
                        f"0x{access.liveness_read:08x} (not its inverse)")
    if access.ivshmem_bar0_written is not None and \
            access.ivshmem_bar0_read != access.ivshmem_bar0_written:
        problems.append(f"ivshmem BAR 0: wrote 0x{access.ivshmem_bar0_written:x}, read "
                        f"0x{access.ivshmem_bar0_read or 0:x}")
    return problems


def mmap_fallback(ev: Evidence) -> Verdict:
    run = ev.main
    messages = list(run.messages)
    not_supported = of_type(messages, DmabufNotSupported)
    unavailable = of_type(messages, DmabufUnavailable)
    problems = []
    mmaps = _mmaps(run)
    regions = _regions(run)
    mmappable = [n for n, r in regions.items() if r.flags & REGION_FLAG_MMAP and r.size]
    if ev.kernel_has_dmabuf:
        # The fallback that still happens here: the sub-page BAR, whose dma-buf is refused.
        path = "sub-page BAR"
        fallback = sorted(sub_page_regions(run))
        if not fallback:
            problems.append("no sub-page BAR was mmapped: nothing exercised the fallback")
        warned = sorted(u.region for u in unavailable)
        if warned != fallback:
            problems.append(f"'dma-buf unavailable' warnings for {warned}, "
                            f"expected one for each of {fallback}")
        if not_supported:
            problems.append("QEMU said dma-buf is not supported in kernel, on a kernel that has it")
        for name in fallback:
            if name in _dmabufs(run):
                problems.append(f"{name} fell back and yet has a dma-buf")
    else:
        path = "dma-buf not supported in kernel"
        fallback = sorted(mmaps)
        if len(not_supported) != 1:
            problems.append(f"{len(not_supported)} 'VFIO dma-buf not supported in kernel' "
                            f"warnings, expected exactly one")
        if of_type(list(run.trace), RegionDmabuf):
            problems.append("vfio_region_dmabuf traced on a kernel without VFIO dma-buf")
        if run.process and run.process.dmabuf_fds:
            problems.append(f"L2 holds dma-buf fds {run.process.dmabuf_fds} on a kernel "
                            f"without VFIO dma-buf")
    missing = [n for n in mmappable if n not in mmaps]
    if missing:
        problems.append(f"mmappable regions not mmapped: {missing}")
    problems += _mtree_problems(run, sorted(mmaps))
    problems += _bar_access_problems(ev)
    if not run.alive_at_end:
        problems.append("L2 QEMU did not survive")
    mapping_failures = [m.text for m in messages
                        if isinstance(m, IoasMapFailed | ContainerDmaMapFailed | P2PNotSupported)]
    evidence = {
        "path": path,
        "fallback_regions": fallback,
        "warnings": [m.text for m in not_supported + unavailable],
        "mmaps": {n: [(m.start, m.size) for m in ms] for n, ms in mmaps.items()},
        "bar_access": vars(ev.bar_access) if ev.bar_access else None,
        "l2_alive": run.alive_at_end,
        "bar_iommu_mapping_failures": mapping_failures,  # recorded, not judged
    }
    if problems:
        return Verdict("fail", "; ".join(problems), evidence)
    return Verdict("pass", f"{path}: warned once, regions {fallback} stay mmapped and usable, "
                           f"QEMU kept running", evidence)


def p2p_dma(ev: Evidence) -> Verdict:
    p2p = ev.p2p
    if p2p is None:
        return Verdict("fail", "the P2P transfer was not run", {})
    trace = list(ev.main.trace)
    bar2 = (p2p.bar2_iova, p2p.bar2_iova + 0x100000)
    mapping = [vars(r) | {"event": type(r).__name__} for r in trace
               if isinstance(r, IommufdMapFile | IommufdMap | ListenerAddRam)
               and bar2[0] <= getattr(r, "iova", getattr(r, "start", -1)) < bar2[1]]
    failures = [m.text for m in ev.main.messages
                if isinstance(m, IoasMapFailed | ContainerDmaMapFailed | P2PNotSupported)]
    evidence = {
        "seed": p2p.seed, "size": p2p.size, "bar2_iova": hex(p2p.bar2_iova),
        "pattern": p2p.pattern.hex(), "read_back": p2p.after.hex(),
        "destination_before": p2p.before.hex(),
        "source_offset": p2p.src_offset, "destination_offset": p2p.dst_offset,
        "bar2_mapping": mapping, "mapping_failures": failures,
        "l1_dmesg_during_dma": list(p2p.l1_dmesg),
    }
    if p2p.source_in_file != p2p.pattern:
        return Verdict("fail", "the pattern written to BAR 2 through L2 never reached the "
                               "ivshmem file: the BAR mmap path is broken", evidence)
    if any(b for b in p2p.before):
        return Verdict("fail", "the destination was not clean before the DMA", evidence)
    if p2p.arrived:
        how = ("iommufd_backend_map_file_dma" if any(m["event"] == "IommufdMapFile"
                                                     for m in mapping) else "mapping by address")
        return Verdict("pass", f"{p2p.size} bytes went ivshmem BAR 2 -> edu -> BAR 2 + "
                               f"0x{p2p.dst_offset:x} and L0 read them back ({how})", evidence)
    refused = iommu_faults(p2p.l1_dmesg)
    where = f"; L1 kernel: {refused[0]}" if refused else "; no IOMMU fault logged in L1"
    why = f"; {failures[0]}" if failures else ""
    return Verdict("fail", f"the bytes did not arrive (read {p2p.after[:8].hex()}..., "
                           f"wanted {p2p.pattern[:8].hex()}...){why}{where}", evidence)


def iommu_faults(dmesg: tuple[str, ...]) -> list[str]:
    """Fault lines of the L1 kernel, those naming the faulting address first."""
    faults = [line.strip() for line in dmesg if "fault" in line.lower()]
    return sorted(faults, key=lambda line: not re.search(r"fault addr|page fault from", line))


VERDICTS = {"dmabuf-per-region": dmabuf_per_region, "mmap-fallback": mmap_fallback,
            "p2p-dma": p2p_dma}
