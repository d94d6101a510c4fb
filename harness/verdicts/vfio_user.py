"""Verdicts of vfio-user runs: the regions as the server announced them, as the device has
them, and as L2 took them.

The server is a process the harness does not trust more than QEMU: what it announces is
held to L1's view of the device (sysfs BARs), and what L2 did with it to L2's own trace
and to its mappings as the L1 kernel shows them. A region announced mmappable with an fd
must be mapped by L2 from the device's cdev at the region's offset: a mapping of another
file, of another region's offset, or none at all (L2 then reaches the BAR by socket
messages, or not at all) fails naming the region.
"""

from harness.evidence.gathered import Evidence
from harness.evidence.records import RegionDmabuf, RegionMmap, RegionSetup, of_type
from harness.evidence.vfio_user import ServedDevice, VfioUserEvidence, VfioUserRun
from harness.verdicts.verdict import Verdict

PAGE = 4096
VFIO_REGION_INFO_FLAG_MMAP = 4


def _page_up(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _spans(spans: list[tuple[int, int]]) -> str:
    return " + ".join(f"[{a:#x}, {b:#x})" for a, b in spans)


def _device_problems(dev: ServedDevice, run: VfioUserRun) -> tuple[list[str], dict]:
    problems: list[str] = []
    seen: dict[int, dict] = {}
    announced = {e["index"]: e for e in dev.announced if "error" not in e}
    setups = {r.region: r for r in of_type(list(run.trace), RegionSetup)
              if r.device == dev.name}
    for index, size in sorted(dev.bars.items()):
        where = f"region {index} of {dev.bdf}"
        entry = announced.get(index)
        if entry is None:
            problems.append(f"{where}: the server never announced it")
            continue
        if entry["size"] != size:
            problems.append(f"{where}: the server announced {entry['size']:#x} bytes, the "
                            f"device's BAR has {size:#x}")
        setup = setups.get(index)
        if setup is None:
            problems.append(f"{where}: no vfio_region_setup for it in L2's trace")
        elif (setup.size, setup.flags) != (entry["size"], entry["flags"]):
            problems.append(f"{where}: L2 set it up as {setup.size:#x} bytes, flags "
                            f"{setup.flags:#x}; the server announced {entry['size']:#x}, "
                            f"flags {entry['flags']:#x}")
        if dev.no_mmap:  # served without mmap: every access is a message to the server
            messages = [a for a in dev.accesses if a.get("region") == index]
            seen[index] = {"announced": {k: entry[k] for k in ("flags", "size", "fd")},
                           "l2_maps": [], "messages": len(messages)}
            if entry["flags"] & VFIO_REGION_INFO_FLAG_MMAP or entry["fd"]:
                problems.append(f"{where}: the server was to announce it without mmap, and "
                                f"announced flags {entry['flags']:#x} with an fd")
            elif any(m.path == dev.cdev for m in run.maps):
                problems.append(f"{where}: announced without mmap, yet L2 maps {dev.cdev}")
            elif not messages:
                problems.append(f"{where}: announced without mmap, and no REGION_READ/WRITE "
                                f"of it reached the server")
            continue
        mmappable = bool(entry["flags"] & VFIO_REGION_INFO_FLAG_MMAP) and entry["fd"]
        region = (entry["offset"], entry["offset"] + _page_up(entry["size"]))
        from_device = [m for m in run.maps if m.path == dev.cdev
                       and region[0] <= m.offset < region[1]]
        seen[index] = {"announced": {k: entry[k] for k in ("flags", "size", "fd", "offset")},
                       "l2_maps": [(hex(m.offset), m.size) for m in from_device]}
        if not mmappable:
            continue
        if not from_device:
            served = {d.cdev for d in run.devices}  # another device's BAR is no suspect
            others = [m for m in run.maps if m.path not in served
                      and not m.path.startswith("/usr") and m.size == _page_up(entry["size"])]
            instead = (f" (it mapped {others[0].path} at {others[0].offset:#x} instead, of "
                       f"the region's size)" if len(others) == 1 else "")
            problems.append(f"{where}: announced mmappable (flags {entry['flags']:#x}) with "
                            f"an fd, but L2 maps none of {dev.cdev} at the region's offset "
                            f"{entry['offset']:#x}{instead}")
        else:  # whole, or the pieces L2 traced (around an MSI-X table): each at its place
            pieces = sorted({(r.start, _page_up(r.end + 1))  # once, however often mapped
                             for r in of_type(list(run.trace), RegionMmap)
                             if setup is not None and r.name == setup.name}) or \
                [(0, _page_up(entry["size"]))]
            got = sorted((m.offset - entry["offset"], m.offset - entry["offset"] + m.size)
                         for m in from_device)
            if got != pieces:
                problems.append(f"{where}: L2 maps {_spans(got)} of it from {dev.cdev}, not "
                                f"{_spans(pieces)}")
    return problems, seen


def regions(run: VfioUserRun) -> Verdict:
    """Every memory BAR of every served device: announced with the device's size, set up
    by L2 as announced, and, where announced mmappable, mapped by L2 from the device."""
    if not run.trace:
        return Verdict("error", "evidence missing: L2's trace is empty", {})
    problems: list[str] = []
    evidence: dict = {}
    for dev in run.devices:
        found, seen = _device_problems(dev, run)
        problems += found
        evidence[dev.bdf] = seen
    if problems:
        return Verdict("fail", "; ".join(problems), evidence)
    mapped = sum(1 for d in evidence.values() for r in d.values() if r["l2_maps"])
    by_message = sum(1 for d in evidence.values() for r in d.values() if r.get("messages"))
    return Verdict("pass", f"{sum(len(d.bars) for d in run.devices)} BAR(s) of "
                   f"{len(run.devices)} device(s) announced with the devices' sizes and set "
                   f"up by L2 as announced; {mapped} mmapped from the devices' cdevs at "
                   f"their regions' offsets" + (
                       f", {by_message} reached by REGION_READ/WRITE messages (no mmap)"
                       if by_message else ""), evidence)


def served(ev: VfioUserEvidence) -> Verdict:
    """The regions (above), and the devices' answers through them, each read where only
    the device could have put it: edu's liveness register answers the inverse of what L2
    wrote, L2's write at ivshmem BAR 2 is in L0's file, and edu's DMA copied L2's pattern
    from one place of L2's RAM to another (through the memfd QEMU handed the server)."""
    verdict = regions(ev.run)
    if verdict.observed == "error":
        return verdict
    problems = [verdict.reason] if verdict.observed == "fail" and not ev.l2_end else []
    problems += list(ev.problems)  # a dead L2 mapped nothing more: its death is the story
    for bdf, how in ev.servers_ended:
        said = f"; L2 said: {ev.l2_said[0]!r}" if ev.l2_said else "; L2 said nothing of it"
        problems.append(f"the vfio-user server of {bdf} ended while L2 ran: it {how}{said}")
    edu = ev.run.devices[0].bdf
    ivshmem = ev.run.devices[1].bdf if len(ev.run.devices) > 1 else \
        f"ivshmem (on {ev.ivshmem_backend})"
    access = ev.bar_access
    if access is not None and access.liveness_read != access.liveness_written ^ 0xFFFFFFFF:
        problems.append(f"region 0 of {edu}: edu's liveness register read "
                        f"{access.liveness_read:#010x} after L2 wrote "
                        f"{access.liveness_written:#010x} (the device answers the inverse)")
    if ev.bar2_on_l0 and ev.bar2_on_l0 != ev.bar2_written:
        problems.append(f"region 2 of {ivshmem}: L2's write at BAR 2 is not in the device's "
                        f"memory (L0's ivshmem file holds {ev.bar2_on_l0[:8].hex()}..., L2 "
                        f"wrote {ev.bar2_written[:8].hex()}...)")
    if ev.dma_back and ev.dma_back != ev.dma_pattern:
        problems.append(f"{edu}: edu's DMA through the server's IOAS did not copy L2's "
                        f"pattern (read back {ev.dma_back[:8].hex()}...)")
    evidence = {**verdict.evidence, "bar_access": vars(access) if access else None,
                "bar2_reached_device": ev.bar2_on_l0 == ev.bar2_written,
                "dma_copied": ev.dma_back == ev.dma_pattern}
    if problems:
        return Verdict("fail", "; ".join(problems), evidence)
    return Verdict("pass", f"{verdict.reason}; edu answered through its BAR, L2's write "
                   f"reached ivshmem BAR 2 (L0's file), and edu copied {len(ev.dma_pattern)} "
                   f"bytes within L2's RAM by DMA", evidence)


def _bar_map(ev: VfioUserEvidence) -> dict | None:
    """The DMA_MAP edu's server was handed for the range P2P wrote into, if any."""
    for entry in ev.engine_maps:
        if entry["iova"] <= ev.p2p_iova < entry["iova"] + entry["size"]:
            return entry
    return None


def p2p(ev: VfioUserEvidence) -> Verdict:
    """edu, served over vfio-user, copies a pattern by DMA from L2's RAM into ivshmem's BAR
    2, and L0 reads it back out of ivshmem's file. The server can map the BAR only if QEMU
    hands it an fd for it with DMA_MAP: a vfio-pci BAR's RAMBlock has its dma-buf's (QEMU
    11 on a kernel with VFIO dma-buf), a vfio-user BAR's none."""
    if not ev.p2p_pattern or not ev.engine_maps:
        return Verdict("error", "evidence missing: no P2P was tried, or edu's server logged "
                                "no DMA_MAP", {})
    handed = _bar_map(ev)
    evidence = {"iova": hex(ev.p2p_iova), "ivshmem_on": ev.ivshmem_backend,
                "bar_dma_map": handed, "arrived": ev.p2p_on_l0 == ev.p2p_pattern}
    where = f"ivshmem BAR 2 (on {ev.ivshmem_backend}) at {ev.p2p_iova:#x}"
    if ev.p2p_on_l0 == ev.p2p_pattern:
        return Verdict("pass", f"{len(ev.p2p_pattern)} bytes went L2 RAM -> edu (vfio-user) "
                       f"-> {where}, and L0 read them back out of the file; the server was "
                       f"handed the BAR with {handed['fd'] if handed else 'no'} fd and "
                       f"mapped it into the device's IOAS", evidence)
    findings = frozenset({"bytes-missing"})
    if handed is None:
        why = "edu's server was never handed a DMA_MAP covering it"
    elif handed["fd"] == "none":
        why = (f"edu's server was handed the BAR ({handed['iova']:#x}, {handed['size']:#x} "
               f"bytes) with no fd, so nothing is mapped there")
        findings |= {"bar-fd-withheld"}
    else:
        why = f"edu's server was handed it with a {handed['fd']} fd" + (
            f" and could not map it ({handed['error']})" if handed.get("error") else "")
    return Verdict("fail", f"edu's DMA into {where} did not arrive (L0's file holds "
                   f"{ev.p2p_on_l0[:8].hex()}...): {why}" + (
                       f"; {'; '.join(ev.problems)}" if ev.problems else ""),
                   evidence, findings)


def unplug(ev: VfioUserEvidence) -> Verdict:
    """ivshmem, served, unplugged and plugged again: its server sees its client go (the
    device closed with it) and come back, L2 keeps no mapping of the device while it is
    out, and BAR 2 reaches the device again afterwards (L0's file)."""
    u = ev.unplug
    if u is None:
        return Verdict("error", "evidence missing: the unplug was not played" + (
            f" ({'; '.join(ev.problems)})" if ev.problems else ""), {})
    evidence = {"gone_s": u.gone_s, "maps_after": list(u.maps_after),
                "server_events": list(u.server_events), "reached": u.replugged_reached}
    ivshmem = ev.run.devices[-1].bdf
    problems = []
    if tuple(e for e in u.server_events if e != "refused") != (
            "connected", "disconnected", "connected"):
        problems.append(f"ivshmem's server saw {', '.join(u.server_events) or 'nothing'}, "
                        f"not its client go and come back")
    if u.maps_after:
        problems.append(f"L2 still mapped {len(u.maps_after)} range(s) of {ivshmem}'s cdev "
                        f"once it was unplugged: {u.maps_after[0]}")
    if "refused" in u.server_events:
        problems.append("ivshmem's server could not open the device again for the replug "
                        "(its log: refused)")
    if not u.replugged_reached and not ev.problems:  # else the replug's failure says why
        problems.append("after the replug, L2's write at BAR 2 did not reach the device "
                        "(L0's ivshmem file)")
    problems += list(ev.problems)
    if problems:
        return Verdict("fail", "; ".join(problems), evidence)
    return Verdict("pass", f"{ivshmem} unplugged in {u.gone_s} s: its server saw the client "
                   f"go and come back, L2 kept no mapping of it meanwhile, and its BAR 2 "
                   f"reached the device again after the replug", evidence)


def _of_matrix(e: Evidence) -> VfioUserEvidence | Verdict:
    if e.vfio_user is None:
        return Verdict("error", "evidence missing: no vfio-user run on this L1", {})
    return e.vfio_user


def vfio_user_regions(e: Evidence) -> Verdict:
    """The matrix's vfio-user cell of the served device: `served`, on its L2."""
    ev = _of_matrix(e)
    return ev if isinstance(ev, Verdict) else served(ev)


def vfio_user_p2p(e: Evidence) -> Verdict:
    """The matrix's vfio-user cell of P2P into a vfio-pci BAR: `p2p`, on the same L2."""
    ev = _of_matrix(e)
    return ev if isinstance(ev, Verdict) else p2p(ev)


def served_dmabufs(e: Evidence) -> Verdict:
    """dmabuf-per-region's meaning on vfio-user: a served region is the server's, reached
    through the fd it passes, and no kernel exporter stands behind it in L2, so there must
    be no dma-buf of it: none traced, and none in L2's fds beyond those of the vfio-pci
    BARs beside it (one per BAR of a page or more, on a kernel with VFIO dma-buf). A
    client that asked the kernel for one anyway (the served fd is a real device's) is a
    failure; otherwise the cell skips saying so."""
    ev = _of_matrix(e)
    if isinstance(ev, Verdict):
        return ev
    if ev.l2_dmabufs is None:
        return Verdict("error", "evidence missing: no L1 kernel view of L2's dma-bufs (L2 "
                                "was gone)" + (f": {ev.l2_end}" if ev.l2_end else ""), {})
    served = {d.name: d.bdf for d in ev.run.devices}
    made = [r for r in of_type(list(ev.run.trace), RegionDmabuf) if r.device in served]
    # ivshmem, if it was beside the served devices as vfio-pci: its BARs have dma-bufs
    beside = e.devices.get("ivshmem") if ev.ivshmem_backend != "vfio-user" else None
    accounted = sum(1 for size in e.bars.get(beside or "", {}).values() if size >= PAGE) \
        if e.kernel_dmabuf else 0
    evidence = {"served": sorted(served.values()), "traced_for_served": len(made),
                "l2_dmabufs": list(ev.l2_dmabufs), "vfio_pci_bars_with_dmabuf": accounted}
    problems = [f"QEMU made a dma-buf for {served[r.device]}'s {r.name} (vfio_region_dmabuf, "
                f"fd {r.fd}), a region served over vfio-user" for r in made]
    if len(ev.l2_dmabufs) > accounted:
        problems.append(f"L2 holds {len(ev.l2_dmabufs)} dma-buf(s) (the L1 kernel's fdinfo: "
                        f"{', '.join(f'{s:#x}' for s in ev.l2_dmabufs)} bytes), its vfio-pci "
                        f"BARs account for {accounted}: the others are of served regions")
    if problems:
        return Verdict("fail", "; ".join(problems), evidence)
    return Verdict("skip", f"{', '.join(sorted(served.values()))} served over vfio-user: no "
                   f"kernel exporter stands behind a served region, and QEMU made no dma-buf "
                   f"for one (none traced); L2 holds {len(ev.l2_dmabufs)} dma-buf(s), those of "
                   f"the vfio-pci BARs beside it ({accounted})", evidence,
                   frozenset({"served-no-dmabuf"}))


def dmabuf_per_region_any(e: Evidence) -> Verdict:
    """dmabuf-per-region on every backend: where the regions are served, what it means
    there (`served_dmabufs`); on the kernel backends, creation.py's verdict."""
    from harness.verdicts.creation import dmabuf_per_region

    return served_dmabufs(e) if e.vfio_user is not None else dmabuf_per_region(e)
