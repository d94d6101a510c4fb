"""The creation-time verdicts, decided from evidence alone.

Each verdict is a pure function of an `Evidence` bundle. It returns what was
observed, why, the findings it established (what an expected failure or skip
is matched against, see matrix.py) and the grounds it stood on. It passes
only on positive evidence of this run:

- the list of what must be there comes from the L1 kernel (the devices' BARs,
  its dma-buf probe), never from what the QEMU under test chose to report;
- missing evidence (no trace, no vfio_region_setup for a device, no kernel
  view, a known event that no longer parses, a warning in an unknown wording)
  is `error`, never a pass and never "0 found";
- a reason names only checks that ran.

Whether an outcome was expected is the matrix's business, not theirs.
"""

from collections import defaultdict
from dataclasses import dataclass

from harness.evidence.gathered import Evidence
from harness.evidence.records import (
    ContainerDmaMapFailed,
    DmabufNotSupported,
    DmabufUnavailable,
    IoasMapFailed,
    IommufdMap,
    IommufdMapFile,
    L2Run,
    ListenerAddRam,
    P2PNotSupported,
    P2PRead,
    RegionDmabuf,
    RegionMmap,
    RegionSetup,
    SideRun,
    UnknownDmabufWarning,
    of_type,
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

PAGE = 4096
EDU_ID = 0x010000ED
DMABUF_EXPORTER = "vfio_pci_core"

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


def region_name(bdf: str, bar: int) -> str:
    """QEMU's name of a BAR region (vfio_region_setup, vfio_region_mmap, info mtree)."""
    return f"{bdf} BAR {bar}"


def kernel_bars(ev: Evidence, devices: list[str] | None = None) -> dict[str, int]:
    """Region name -> size of every memory BAR the L1 kernel has for the devices."""
    wanted = ev.devices.values() if devices is None else [ev.devices[d] for d in devices]
    return {region_name(bdf, index): size for bdf in wanted
            for index, size in sorted(ev.bars.get(bdf, {}).items())}


def _page_up(size: int) -> int:
    return (size + PAGE - 1) // PAGE * PAGE


# -- evidence that must be there before anything is judged ----------------------------------

def _kernel_probe_problem(ev: Evidence) -> str | None:
    if ev.kernel_dmabuf is None:
        return (f"the L1 kernel's VFIO dma-buf probe gave no usable answer "
                f"({ev.kernel_probe or 'no device probed'}): whether it has dma-buf is unknown")
    return None


def _kernel_ground(ev: Evidence) -> str:
    said = sorted({"supported" if ok else (err or "unsupported")
                   for ok, err in ev.kernel_probe.values()})
    return f"L1 kernel: VFIO_DEVICE_FEATURE_PROBE(DMA_BUF) on {len(ev.kernel_probe)} " \
           f"device(s): {', '.join(said)}"


def _process_ground(run: L2Run, label: str = "") -> str:
    p = run.process
    assert p is not None
    return (f"{label}L1 kernel: L2 holds {len(p.dmabuf_fds)} dma-buf fd(s) (/proc/PID/fdinfo) "
            f"and {len(p.vfio_maps)} VFIO device mapping(s) (/proc/PID/maps)")


def _bars_ground(ev: Evidence) -> str:
    return "L1 kernel: BARs " + ", ".join(f"{n} {s:#x}" for n, s in kernel_bars(ev).items())


# -- shared checks ----------------------------------------------------------------------------

def _mmapped_problems(run: L2Run, names: list[str], label: str = "") -> list[str]:
    """Each region is mmapped in QEMU's trace, in `info mtree` and, by the kernel's own
    account, as a mapping of the VFIO device of that size."""
    problems = []
    mmaps = _mmaps(run)
    kernel_sizes = list(run.process.vfio_map_sizes()) if run.process else []
    for name in names:
        if name not in mmaps:
            problems.append(f"{label}{name} was not mmapped (no vfio_region_mmap)")
            continue
        if not any(m.startswith(f"{name} mmaps[") for m in run.mtree_mmaps):
            problems.append(f"{label}info mtree shows no mmaps for {name}")
        for m in mmaps[name]:
            size = _page_up(m.size)
            if size in kernel_sizes:
                kernel_sizes.remove(size)
            else:
                problems.append(f"{label}{name} mmaps[{m.index}]: the L1 kernel shows no VFIO "
                                f"device mapping of {size:#x} bytes in L2 (/proc/PID/maps): "
                                f"the mmap is not of the device")
    return problems


#: The L1 kernel's answers to a private IOMMU_IOAS_MAP_FILE of a dma-buf: mapped (one range,
#: or refused only for having several) means live, ENODEV means revoked.
_LIVE, _REVOKED = ("live", "several-ranges"), "revoked"


@dataclass(frozen=True)
class Attribution:
    """Whose BAR each dma-buf a region claims exports, in the L1 kernel's words. `problems`
    are dma-bufs proven not to be their region's (a fail); `unanswered`, what the witness
    could not say (an error)."""

    problems: list[str]
    unanswered: list[str]
    owners: dict[str, dict]


def _shared_inodes(claimed: dict[str, int], inodes: dict[int, int], label: str) -> list[str]:
    """Two regions whose fds are one dma-buf (one inode in the L1 kernel) share it."""
    sharing: dict[int, list[str]] = defaultdict(list)
    for name, fd in sorted(claimed.items()):
        if inodes.get(fd, -1) >= 0:
            sharing[inodes[fd]].append(name)
    return [f"{label}{' and '.join(names)} hold one and the same dma-buf (the L1 kernel's "
            f"inode {ino}: {', '.join(f'{n} fd {claimed[n]}' for n in names)}): each region "
            f"needs its own" for ino, names in sorted(sharing.items()) if len(names) > 1]


def attribute(run: L2Run, claimed: dict[str, int], regions: dict[str, list[str]],
              label: str = "") -> Attribution:
    """Each region's dma-buf (`claimed`: region name -> the fd L2 traced for it) must be a
    dma-buf of its own, and its own device's: the L1 kernel keeps a device's dma-bufs
    revoked until that device decodes memory, and the devices were given decode one at a
    time, so a dma-buf is live in exactly the views where its owner decodes. `regions`:
    BDF -> that device's regions, to name the region a dma-buf really belongs to."""
    problems: list[str] = []
    unanswered: list[str] = []
    owners: dict[str, dict] = {}
    steps = run.decode_steps
    if not claimed:
        return Attribution(problems, unanswered, owners)
    if len(steps) < 2:
        return Attribution(problems, [f"{label}no decode witness: the L1 kernel was not asked "
                                      f"about L2's dma-bufs as each device started decoding"],
                           owners)
    inodes = dict(steps[-1].kernel.dmabuf_inodes)
    problems += _shared_inodes(claimed, inodes, label)
    devices = sorted({bdf for step in steps for bdf in step.commands})
    decodes = {bdf: tuple(step.decoding(bdf) for step in steps) for bdf in devices}
    unread = [bdf for bdf, seen in decodes.items() if None in seen]
    if unread:
        return Attribution(problems, [f"{label}the L1 kernel could not read {bdf}'s command "
                                      f"register at every step of the decode witness"
                                      for bdf in unread], owners)
    for name, fd in sorted(claimed.items()):
        ino = inodes.get(fd, -1)
        if ino < 0:
            continue  # not a dma-buf at all: _dmabuf_problems says so
        live = []
        for n, step in enumerate(steps):
            same = dict(step.kernel.dmabuf_inodes).get(fd) == ino
            state = dict(step.kernel.dmabuf_states).get(fd) if same else None
            if state not in (*_LIVE, _REVOKED):
                unanswered.append(f"{label}{name}: the L1 kernel gave no revoke answer for "
                                  f"fd {fd} at step {n} of the decode witness ({state!r})")
                break
            live.append(state in _LIVE)
        else:
            owner = [bdf for bdf, seen in decodes.items() if list(seen) == live]
            own = name.split(" BAR ")[0]
            owners[name] = {"fd": fd, "ino": ino, "live": live, "owner": owner}
            if own in owner and len(owner) == 1:
                continue
            if own in owner:
                unanswered.append(f"{label}{name}: the decode witness cannot tell "
                                  f"{' from '.join(owner)} apart (they decoded together)")
            elif owner:
                theirs = ", ".join(regions.get(owner[0]) or [owner[0]])
                problems.append(f"{label}{name}'s dma-buf (fd {fd}, inode {ino}) is not its "
                                f"own BAR's: the L1 kernel kept it live exactly while "
                                f"{owner[0]} decoded memory, so it exports {theirs}")
            else:
                when = ", ".join("live" if x else "revoked" for x in live)
                problems.append(f"{label}{name}'s dma-buf (fd {fd}, inode {ino}) follows no "
                                f"device's memory decode ({when} as the devices started "
                                f"decoding one by one): the L1 kernel ties it to no BAR of "
                                f"{own}")
    return Attribution(problems, unanswered, owners)


def _dmabuf_problems(run: L2Run, qualifying: list[str], label: str = "") -> Attribution:
    """One dma-buf per qualifying region (one trace line per mmap, one fd, ranges equal
    to the mmaps), none for any other region, the kernel agreeing on fds and sizes, and
    each dma-buf the region's own (`attribute`)."""
    problems = []
    mmaps, dmabufs = _mmaps(run), _dmabufs(run)
    fds: dict[str, int] = {}
    for name in qualifying:
        maps, found = mmaps.get(name, []), dmabufs.get(name, [])
        if not maps:
            continue  # reported by _mmapped_problems
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
    for name in sorted(set(dmabufs) - set(qualifying)):
        problems.append(f"{label}{name} has a dma-buf but does not qualify "
                        f"(sub-page, not mmapped or not a BAR of the L1 kernel)")
    assert run.process is not None
    held = {fd: (size, exporter) for fd, size, exporter in run.process.dmabuf_fds}
    if len(held) != len(qualifying):
        problems.append(f"{label}the L1 kernel shows {len(held)} dma-buf fd(s) in L2, "
                        f"for {len(qualifying)} qualifying region(s)")
    for name, fd in fds.items():
        want = sum(m.size for m in mmaps[name])
        if fd not in held:
            problems.append(f"{label}{name}: fd {fd} from the trace is not a dma-buf in the "
                            f"L1 kernel's view (/proc/PID/fd)")
        elif held[fd][0] != want:
            problems.append(f"{label}{name}: the kernel says fd {fd} is {held[fd][0]} bytes, "
                            f"the region's mmaps are {want}")
        elif held[fd][1] != DMABUF_EXPORTER:
            problems.append(f"{label}{name}: fd {fd} is exported by {held[fd][1]}, "
                            f"not {DMABUF_EXPORTER}")
    regions: dict[str, list[str]] = defaultdict(list)
    for name in qualifying:
        regions[name.split(" BAR ")[0]].append(name)
    witnessed = attribute(run, fds, regions, label)
    return Attribution(problems + witnessed.problems, witnessed.unanswered, witnessed.owners)


def _side_bars(side: SideRun) -> dict[str, int]:
    """Region name -> size of every memory BAR of the side L2's devices (the L1 kernel's)."""
    return {region_name(bdf, i): size for bdf in side.devices.values()
            for i, size in sorted(side.bars.get(bdf, {}).items())}


def _qemu_lacks_dmabuf(ev: Evidence) -> str | None:
    if ev.qemu is not None and not ev.qemu.has_dmabuf_event:
        return (f"the QEMU under test ({ev.qemu.version}) has no vfio_region_dmabuf trace "
                f"event: it has no VFIO dma-buf code")
    return None


# -- the verdicts -------------------------------------------------------------------------------

def _per_region_evidence(run: L2Run, qualifying: list[str], sub_page: list[str]
                         ) -> dict[str, object]:
    return {
        "qualifying_regions": {n: [(m.start, m.size) for m in _mmaps(run).get(n, [])]
                               for n in qualifying},
        "sub_page_regions": sub_page,
        "vfio_region_dmabuf": [vars(d) for ds in _dmabufs(run).values() for d in ds],
        "kernel_dmabuf_fds": run.process.dmabuf_fds if run.process else None,
        "kernel_vfio_map_sizes": run.process.vfio_map_sizes() if run.process else None,
        "mtree_mmaps": run.mtree_mmaps,
        "x_no_mmap": None,
    }


def dmabuf_per_region(ev: Evidence) -> Verdict:
    probe_problem = _kernel_probe_problem(ev)
    if probe_problem:
        return error_verdict([probe_problem], {"kernel_probe": ev.kernel_probe})
    if ev.kernel_dmabuf is False:
        said = sorted({err or "" for _, err in ev.kernel_probe.values()})
        return Verdict("skip", f"the L1 kernel has no VFIO dma-buf: VFIO_DEVICE_FEATURE_PROBE"
                               f"(DMA_BUF) answered {', '.join(said)} for "
                               f"{', '.join(sorted(ev.kernel_probe))}",
                       {"kernel_probe": ev.kernel_probe}, frozenset({"kernel-lacks-dmabuf"}),
                       (_kernel_ground(ev),))
    run = ev.main
    missing = missing_evidence(ev, run)
    if ev.side is not None:
        missing += missing_evidence(ev, ev.side.run, "x-no-mmap=on: ", ev.side.devices,
                                    ev.side.bars)
    if missing:
        return error_verdict(missing)
    bars = kernel_bars(ev)
    qualifying = [n for n, size in bars.items() if size >= PAGE]
    sub_page = [n for n, size in bars.items() if size < PAGE]
    grounds = [_kernel_ground(ev), _bars_ground(ev), trace_ground(run), _process_ground(run),
               f"info mtree: {len(run.mtree_mmaps)} mmaps"]
    evidence = _per_region_evidence(run, qualifying, sub_page)
    problems = []
    lacks = _qemu_lacks_dmabuf(ev)
    if lacks:
        problems.append(lacks)
    if not qualifying:
        problems.append("the L1 kernel has no BAR of a page or more on these devices: "
                        "nothing qualifies for a dma-buf")
    problems += _mmapped_problems(run, qualifying + sub_page)
    own = _dmabuf_problems(run, qualifying)
    problems += own.problems
    unanswered = list(own.unanswered)
    if of_type(list(run.messages), DmabufNotSupported):
        problems.append("QEMU said VFIO dma-buf is not supported in kernel, on a kernel whose "
                        "probe says it is")
    checked = [f"one dma-buf per BAR of a page or more ({', '.join(qualifying)}), traced once "
               f"per mmap with the mmaps' ranges, held by L2 as the kernel's dma-buf fds of "
               f"those sizes from {DMABUF_EXPORTER}"]
    if sub_page:
        checked.append(f"none for the sub-page {', '.join(sub_page)}")
    if ev.side is not None:
        side = _x_no_mmap(ev.side, own)
        problems += side.problems
        unanswered += side.unanswered
        evidence["x_no_mmap"] = side.evidence
        grounds += side.grounds
        checked.append(side.checked)
    evidence["attribution"] = own.owners
    grounds.append(_witness_ground(run))
    checked.append("each its own device's and no other region's (the L1 kernel revoked it "
                   "until that device, and only that one, decoded memory)")
    if problems:
        return Verdict("fail", "; ".join(problems + unanswered), evidence,
                       grounds=tuple(grounds))
    if unanswered:
        return error_verdict(unanswered, evidence)
    fd_list = ", ".join(f"{n} fd {d[0].fd}" for n, d in sorted(_dmabufs(run).items()))
    return Verdict("pass", f"{'; '.join(checked)} ({fd_list})", evidence,
                   grounds=tuple(grounds))


@dataclass(frozen=True)
class _NoMmapSide:
    """What the side L2 (edu with x-no-mmap=on) shows of dmabuf-per-region."""
    problems: list[str]
    unanswered: list[str]
    evidence: dict
    grounds: list[str]
    checked: str


def _x_no_mmap(side: SideRun, own: Attribution) -> _NoMmapSide:
    """No mmap, no dma-buf for edu; the devices beside it get their own, not the main L2's."""
    no_mmap = side.run
    edu = side.devices.get("edu", "")
    problems = []
    edu_regions = [n for n in _regions(no_mmap) if n.startswith(edu)]
    mmapped = [n for n in _mmaps(no_mmap) if n.startswith(edu)]
    with_dmabuf = [n for n in _dmabufs(no_mmap) if n.startswith(edu)]
    if not edu_regions:
        problems.append("x-no-mmap=on: edu's regions were never set up")
    if mmapped or with_dmabuf:
        problems.append(f"x-no-mmap=on: edu still has mmaps {mmapped} / "
                        f"dma-bufs {with_dmabuf}")
    others = [n for n, size in _side_bars(side).items()
              if size >= PAGE and not n.startswith(edu)]
    beside = _dmabuf_problems(no_mmap, others, "x-no-mmap=on: ")
    problems += beside.problems + _shared_between(own, beside, "the side L2's ")
    return _NoMmapSide(
        problems, list(beside.unanswered),
        {"edu_mmaps": mmapped, "edu_dmabufs": with_dmabuf, "dmabufs": sorted(_dmabufs(no_mmap))},
        [trace_ground(no_mmap, "x-no-mmap=on "), _process_ground(no_mmap, "x-no-mmap=on ")],
        f"none for edu with x-no-mmap=on, while {', '.join(others)} beside it "
        f"got {'its' if len(others) == 1 else 'theirs'}")


def _shared_between(main: Attribution, other: Attribution, label: str) -> list[str]:
    """Two L2s never hold one dma-buf: a region's dma-buf in one that is a region's in the
    other (the same inode) was handed across."""
    inodes = {o["ino"]: name for name, o in main.owners.items()}
    return [f"{label}{name} and the main L2's {inodes[o['ino']]} hold one and the same "
            f"dma-buf (inode {o['ino']}): each L2 needs its own"
            for name, o in sorted(other.owners.items()) if o["ino"] in inodes]


def _witness_ground(run: L2Run, label: str = "") -> str:
    return (f"{label}L1 kernel: the revoke state of L2's dma-bufs in {len(run.decode_steps)} "
            f"views, before any device decoded memory and after each one started")


def _bar_access_problems(ev: Evidence) -> list[str]:
    access = ev.bar_access
    assert access is not None
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


def _sub_page_fallback(run: L2Run, bars: dict[str, int], not_supported: list,
                       unavailable: list) -> tuple[list[str], list[str]]:
    """The fallback that still happens on a kernel with dma-buf: the sub-page BAR, whose
    dma-buf is refused. Returns the regions that fell back, and the problems."""
    problems = []
    fallback = [n for n, size in bars.items() if size < PAGE]
    if not fallback:
        problems.append("the L1 kernel has no sub-page BAR on these devices: nothing "
                        "exercised the fallback")
    warned = sorted(u.region for u in unavailable)
    if warned != sorted(fallback):
        problems.append(f"'dma-buf unavailable' warnings for {warned}, "
                        f"expected one for each of {fallback}")
    if not_supported:
        problems.append("QEMU said dma-buf is not supported in kernel, on a kernel that has it")
    for name in fallback:
        if name in _dmabufs(run):
            problems.append(f"{name} fell back and yet has a dma-buf")
    return fallback, problems


def _whole_fallback(ev: Evidence, not_supported: list) -> list[str]:
    """On a kernel without dma-buf every BAR falls back, said once, and no dma-buf exists."""
    run = ev.main
    problems = []
    lacks = _qemu_lacks_dmabuf(ev)
    if len(not_supported) != 1:
        problems.append(f"{len(not_supported)} 'VFIO dma-buf not supported in kernel' "
                        f"warnings, expected exactly one" + (f" ({lacks})" if lacks else ""))
    if of_type(list(run.trace), RegionDmabuf):
        problems.append("vfio_region_dmabuf traced on a kernel without VFIO dma-buf")
    if run.process and run.process.dmabuf_fds:
        problems.append(f"L2 holds dma-buf fds {run.process.dmabuf_fds} on a kernel "
                        f"without VFIO dma-buf")
    return problems


def mmap_fallback(ev: Evidence) -> Verdict:
    run = ev.main
    probe_problem = _kernel_probe_problem(ev)
    missing = ([probe_problem] if probe_problem else []) + missing_evidence(ev, run)
    if ev.bar_access is None:
        missing.append("BAR access through L2 was not tried")
    unknown = of_type(list(run.messages), UnknownDmabufWarning)
    for u in unknown:
        missing.append(f"QEMU warned about dma-buf in a wording this harness does not know: "
                       f"{u.text!r}")
    if missing:
        return error_verdict(missing, {"warnings_in_unknown_wording": [u.text for u in unknown]})
    messages = list(run.messages)
    not_supported = of_type(messages, DmabufNotSupported)
    unavailable = of_type(messages, DmabufUnavailable)
    bars = kernel_bars(ev)
    if ev.kernel_dmabuf:
        path, warning = "sub-page BAR", "'dma-buf unavailable' once per sub-page BAR"
        fallback, problems = _sub_page_fallback(run, bars, not_supported, unavailable)
    else:
        path, warning = ("dma-buf not supported in kernel",
                         "'VFIO dma-buf not supported in kernel' once")
        fallback, problems = list(bars), _whole_fallback(ev, not_supported)
    problems += _mmapped_problems(run, list(bars))
    problems += _bar_access_problems(ev)
    if not run.alive_at_end:
        problems.append("L2 QEMU did not survive")
    mapping_failures = [m.text for m in messages
                        if isinstance(m, IoasMapFailed | ContainerDmaMapFailed | P2PNotSupported)]
    evidence = {
        "path": path,
        "fallback_regions": fallback,
        "warnings": [m.text for m in not_supported + unavailable],
        "mmaps": {n: [(m.start, m.size) for m in ms] for n, ms in _mmaps(run).items()},
        "bar_access": vars(ev.bar_access),
        "l2_alive": run.alive_at_end,
        "bar_iommu_mapping_failures": mapping_failures,  # recorded, not judged
    }
    grounds = (_kernel_ground(ev), _bars_ground(ev), trace_ground(run), _process_ground(run),
               f"L2 stderr: {len(messages)} message(s)",
               "BAR access through L2 (qtest): edu id and liveness, ivshmem BAR 0")
    if problems:
        return Verdict("fail", "; ".join(problems), evidence, grounds=grounds)
    return Verdict("pass", f"{path}: QEMU warned {warning} ({', '.join(fallback)}); every BAR "
                           f"of the kernel ({', '.join(bars)}) mmapped in the trace, info mtree "
                           f"and the kernel's maps; edu id, liveness and ivshmem BAR 0 read "
                           f"right through L2; QEMU kept running", evidence, grounds=grounds)


EOPNOTSUPP = -95


def _multi_range_missing(ev: Evidence, mr: SideRun) -> list[str]:
    """Why the multi-range evidence cannot be judged: the side L2's, the fixture's word that
    it made the BAR split, the DMA read, QEMU's warnings in a known wording."""
    run = mr.run
    missing = missing_evidence(ev, run, devices=mr.devices, bars=mr.bars)
    if region_name(mr.device, mr.bar) not in _side_bars(mr):
        missing.append(f"the L1 kernel has no {region_name(mr.device, mr.bar)}")
    if not mr.withheld:
        missing.append("the msix-split fixture never said it withheld MSIX_MAPPABLE (not "
                       "preloaded into the QEMU under test?): no region was made to split")
    if mr.read is None:
        missing.append("the DMA read from the split BAR was not run")
    missing += [f"QEMU warned about dma-buf in a wording this harness does not know: {u.text!r}"
                for u in of_type(list(run.messages), UnknownDmabufWarning)]
    return missing[:6]


def _split_problems(ev: Evidence, mr: SideRun, pieces: list[tuple[int, int]],
                    evidence: dict) -> tuple[list[str], list[str]]:
    """The BAR in pieces, each mmapped of the device; on a dma-buf kernel one dma-buf of as
    many ranges that is the device's own (several-ranges in the kernel's word), on one
    without none; L2 alive at the end. (problems, what the witness could not answer)"""
    run = mr.run
    assert run.process is not None
    name = region_name(mr.device, mr.bar)
    problems = []
    if len(pieces) < 2:
        problems.append(f"QEMU mmapped {name} in {len(pieces)} piece(s) though the kernel's "
                        f"MSIX_MAPPABLE was withheld: expected the BAR around its MSI-X table")
    # edu is there with x-no-mmap=on, for the dmabuf-per-region check: only the split
    # device's regions are this check's.
    qualifying = [n for n, size in _side_bars(mr).items()
                  if size >= PAGE and n.startswith(mr.device)]
    problems += _mmapped_problems(run, qualifying)
    unanswered: list[str] = []
    if ev.kernel_dmabuf:
        own = _dmabuf_problems(run, qualifying)
        problems += own.problems
        unanswered = own.unanswered
        evidence["attribution"] = own.owners
        dmabufs = _dmabufs(run)
        fd = dmabufs[name][0].fd if dmabufs.get(name) else None
        state = dict(run.process.dmabuf_states).get(fd) if fd is not None else None
        if fd is not None and len(pieces) > 1 and state != "several-ranges":
            problems.append(f"{name}: the L1 kernel calls its dma-buf (fd {fd}) {state!r}, "
                            f"not one of several ranges")
    else:
        if of_type(list(run.trace), RegionDmabuf) or run.process.dmabuf_fds:
            problems.append("a dma-buf on a kernel without VFIO dma-buf")
        if len(of_type(list(run.messages), DmabufNotSupported)) != 1:
            problems.append("QEMU did not warn once that VFIO dma-buf is not supported in "
                            "kernel")
    if not run.alive_at_end:
        problems.append("L2 QEMU did not survive")
    return problems, unanswered


def _pieces_into_iommu(ev: Evidence, mr: SideRun, pieces: list[tuple[int, int]]
                       ) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """How each piece went into the IOMMU, by the trace at its IOVA and QEMU's warnings:
    (the starts of the pieces mapped, (start, return codes) of those refused)."""
    run = mr.run
    mapped, refused = [], []
    for start, size in pieces:
        span = (mr.iova + start, mr.iova + start + size)
        events = [r for r in run.trace if isinstance(r, IommufdMapFile | IommufdMap)
                  and in_range(r.iova, span)]
        failed = [m for m in run.messages
                  if isinstance(m, ContainerDmaMapFailed) and in_range(m.iova, span)]
        added = [r for r in run.trace if isinstance(r, ListenerAddRam)
                 and in_range(r.start, span)]
        if failed or any(r.ret < 0 for r in events):
            refused.append((start, [m.ret for m in failed] or
                            [r.ret for r in events if r.ret < 0]))
        elif (events and all(r.ret == 0 for r in events)) or \
                (not backend(ev.backend).maps_bars_by_dmabuf and added):
            mapped.append(start)
    return mapped, refused


def _multi_range_findings(ev: Evidence, read: P2PRead,
                          refused: list[tuple[int, list[int]]]) -> set[str]:
    """What the pieces' mapping and the DMA read show, as findings an expectation names."""
    findings = set()
    rets = [r for _, piece in refused for r in piece]
    if EOPNOTSUPP in rets and backend(ev.backend).maps_bars_by_dmabuf:
        findings.add("multi-range-refused")
    elif refused:
        findings.add("bar-map-refused")
    if not read.engine_error and not read.arrived and any(read.expected):
        findings.add("read-missing")
    return findings


def multi_range(ev: Evidence) -> Verdict:
    """A BAR QEMU mmaps in pieces (around its MSI-X table): one dma-buf of as many ranges
    (the kernel's word: several-ranges), or none on a kernel without; each piece mapped
    for DMA on the legacy container, and a DMA read through it bringing back the
    registers; what iommufd does with the pieces (the kernel refuses a dma-buf of more
    than one range) established as findings."""
    mr = ev.side
    probe_problem = _kernel_probe_problem(ev)
    if mr is None or probe_problem:
        return error_verdict([probe_problem or "the side L2 (multi-range) was not run"])
    missing = _multi_range_missing(ev, mr)
    if missing:
        return error_verdict(missing)
    run, read = mr.run, mr.read
    assert run.process is not None and read is not None
    name = region_name(mr.device, mr.bar)
    pieces = sorted((m.start, m.size) for m in _mmaps(run).get(name, []))
    dmabufs = _dmabufs(run)
    grounds = (_kernel_ground(ev), "L1 kernel: BARs " + ", ".join(
        f"{n} {s:#x}" for n, s in _side_bars(mr).items()), trace_ground(run),
        _process_ground(run), f"the fixture: {'; '.join(mr.withheld)}",
        f"edu's DMA read of {len(read.expected)} bytes at {read.iova:#x}")
    evidence: dict[str, object] = {
        "region": name, "mmaps": pieces, "fixture": list(mr.withheld),
        "vfio_region_dmabuf": [vars(d) for d in dmabufs.get(name, [])],
        "kernel_dmabuf_fds": run.process.dmabuf_fds,
        "kernel_dmabuf_states": run.process.dmabuf_states,
        "read": {"iova": hex(read.iova), "expected": read.expected.hex(),
                 "got": read.got.hex(), "engine_error": read.engine_error,
                 "l1_dmesg": list(read.l1_dmesg)},
    }
    problems, unanswered = _split_problems(ev, mr, pieces, evidence)
    mapped, refused = _pieces_into_iommu(ev, mr, pieces)
    evidence["pieces_mapped"] = [hex(s) for s in mapped]
    evidence["pieces_refused"] = [(hex(s), rets) for s, rets in refused]
    findings = _multi_range_findings(ev, read, refused)
    if problems:
        return Verdict("fail", "; ".join(problems + unanswered), evidence, grounds=grounds)
    if unanswered:
        return error_verdict(unanswered, evidence)
    if not any(read.expected):
        return Verdict("fail", f"L2 read zeros from {name} through its mmap: nothing to "
                               f"compare a DMA read with", evidence, grounds=grounds)
    if read.engine_error:
        return Verdict("fail", f"the DMA read never ran: {read.engine_error}", evidence,
                       grounds=grounds)
    unmapped = [hex(s) for s, _ in pieces if s not in mapped and s not in dict(refused)]
    split = " + ".join(f"[{s:#x}, {s + n:#x})" for s, n in pieces)
    how = (f"one dma-buf (fd {dmabufs[name][0].fd}) of {len(pieces)} ranges, traced once per "
           f"mmap, which the L1 kernel holds as several ranges" if ev.kernel_dmabuf else
           "no dma-buf (the kernel has none)")
    if read.arrived and not refused and not unmapped:
        return Verdict("pass", f"{name} mmapped in {len(pieces)} pieces ({split}) around its "
                               f"MSI-X table, {how}; each piece mapped for DMA, and edu read "
                               f"{read.expected.hex()} through the first one by DMA",
                       evidence, frozenset(findings), grounds)
    faults = iommu_faults(read.l1_dmesg)
    where = f"; L1 kernel: {faults[0]}" if faults else ""
    if refused and not read.arrived:
        said = ", ".join(f"{s:#x}: {r}" for s, r in refused)
        return Verdict("fail", f"{name} mmapped in {len(pieces)} pieces ({split}), {how}; the "
                               f"IOMMU mapping of the pieces was refused ({said}) and edu's DMA "
                               f"read brought back {read.got.hex()}, not {read.expected.hex()}"
                               f"{where}", evidence, frozenset(findings), grounds)
    return Verdict("fail", f"{name}: pieces mapped {evidence['pieces_mapped']}, refused "
                           f"{evidence['pieces_refused']}, unaccounted {unmapped}; DMA read "
                           f"brought back {read.got.hex()}, L2 reads {read.expected.hex()}"
                           f"{where}", evidence, frozenset(findings), grounds)
