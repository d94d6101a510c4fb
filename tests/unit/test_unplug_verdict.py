"""The dmabuf-unplug verdict on a captured real run (intel-iommu, dmabuf kernel, iommufd,
QEMU 11.1.3, five unplug/plug cycles): QEMU's dma-buf leak is the expected failure and
nothing else; a fixed QEMU would be an xpass; any other breakage is a plain failure."""

import dataclasses
import json

from harness.checks.matrix import EXPECTATIONS, settle
from harness.evidence.records import (
    KernelProcess,
    Moment,
    Other,
    P2PTransfer,
    RegionDmabuf,
    UnplugCycle,
    parse_trace,
)
from harness.verdicts.lifecycle import dmabuf_unplug
from tests.unit.test_verdicts import DATA, IVSHMEM, MIB, captured, maps, with_main

LINES = (DATA / "intel-iommu-dmabuf-iommufd-unplug.trace").read_text().splitlines()
CAPTURE = json.loads((DATA / "intel-iommu-dmabuf-iommufd-unplug.json").read_text())
EXPECTED = EXPECTATIONS[("dmabuf-unplug", "dmabuf", "iommufd")]


def _trace(a: int, b: int) -> tuple:
    return tuple(parse_trace("\n".join(LINES[a:b])))


def _moment(label: str, m: dict) -> Moment:
    kernel = KernelProcess(tuple((fd, MIB, "vfio_pci_core") for fd, _ in m["dmabufs"]),
                           maps(MIB, 4096, MIB), tuple(map(tuple, m["dmabufs"])),
                           tuple(map(tuple, m["states"])), m["fd_count"],
                           tuple(m["vfio_device_fds"]))
    return Moment(label, kernel, m["trace_line"], m.get("command"))


def cycle() -> UnplugCycle:
    before, unplugged, replugged, final = (_moment(k, m) for k, m in CAPTURE["moments"].items())
    a = CAPTURE["after"]
    pattern = bytes.fromhex(a["pattern"])
    iova = a["bar2_iova"] if isinstance(a["bar2_iova"], int) else int(a["bar2_iova"], 16)
    return UnplugCycle(
        device=CAPTURE["device"], bar=2, iova=iova, size=MIB, before=before,
        unplugged=unplugged, replugged=replugged, final=final,
        trace_unplugging=_trace(before.trace_line, unplugged.trace_line),
        trace_replugging=_trace(unplugged.trace_line, replugged.trace_line),
        after=P2PTransfer(seed=a["seed"], size=a["size"], bar2_iova=iova, src_offset=0,
                          dst_offset=a["destination_offset"], pattern=pattern,
                          source_in_file=pattern, before=bytes(64),
                          after=bytes.fromhex(a["read_back"]), l1_dmesg=()),
        cycles=CAPTURE["cycles"], alive=True,
        plugged=_moment("plugged, the others decoding", CAPTURE["plugged"]))


def judged(**changes):
    ev = with_main(captured(unplug=dataclasses.replace(cycle(), **changes)),
                   trace=_trace(0, CAPTURE["creation_end"]))
    return dmabuf_unplug(ev)


def fixed() -> dict:
    """What a QEMU that closes an unplugged BAR's dma-buf would have left."""
    c = cycle()

    def without_leaks(m: Moment, keep: set[int]) -> Moment:
        k = m.kernel
        kept = [i for i, (fd, _) in enumerate(k.dmabuf_inodes) if fd in keep]
        gone = len(k.dmabuf_inodes) - len(kept)
        return dataclasses.replace(m, kernel=dataclasses.replace(
            k, dmabuf_fds=tuple(k.dmabuf_fds[i] for i in kept),
            dmabuf_inodes=tuple(k.dmabuf_inodes[i] for i in kept),
            dmabuf_states=tuple(k.dmabuf_states[i] for i in kept), fd_count=k.fd_count - gone))

    edu_fd = 19
    new_fd = next(r.fd for r in c.trace_replugging if isinstance(r, RegionDmabuf)
                  and r.name == f"{IVSHMEM} BAR 2")
    final = without_leaks(c.final, {edu_fd, max(fd for fd, _ in c.final.kernel.dmabuf_inodes)})
    replugged = without_leaks(c.replugged, {edu_fd, new_fd})
    final = dataclasses.replace(final, kernel=dataclasses.replace(
        final.kernel, fd_count=replugged.kernel.fd_count))
    return {"unplugged": without_leaks(c.unplugged, {edu_fd}), "replugged": replugged,
            "final": final}


def test_qemu_11_1_3_leaks_the_dmabuf_and_that_is_exactly_the_expected_failure():
    v = judged()
    assert v.observed == "fail" and v.findings == {"dmabuf-outlives-device"}, v.reason
    assert "is still open in L2 after the device was unplugged" in v.reason
    assert "L2's fds grew from 27 to 31 over 4 more unplug/plug cycles (4 of them dma-bufs)" \
        in v.reason
    assert settle(EXPECTED, v.observed, v.reason, v.findings)[:2] == ("xfail", True)


def test_a_qemu_that_closes_the_dmabuf_passes_and_shows_as_xpass():
    v = judged(**fixed())
    assert v.observed == "pass", v.reason
    assert "its dma-buf (fd 22) closed, a new one (fd 23) live after device_add" in v.reason
    assert settle(EXPECTED, v.observed, v.reason, v.findings)[:2] == ("xpass", False)


def test_the_leak_cannot_hide_a_replug_whose_p2p_broke():
    c = cycle()
    assert c.after is not None
    v = judged(after=dataclasses.replace(c.after, after=bytes(64)))
    assert v.observed == "fail" and not v.findings
    assert "once the device was plugged again: the bytes did not arrive" in v.reason
    assert settle(EXPECTED, v.observed, v.reason, v.findings)[1] is False


def test_regions_never_exited_fail():
    c = cycle()
    kept = tuple(r for r in c.trace_unplugging
                 if not (isinstance(r, Other) and r.event == "vfio_region_exit"))
    v = judged(**fixed(), trace_unplugging=kept)
    assert v.observed == "fail" and not v.findings
    assert f"no vfio_region_exit for {IVSHMEM} BAR 2" in v.reason


def test_a_device_fd_left_open_fails():
    c = cycle()
    still = dataclasses.replace(c.unplugged.kernel,
                                vfio_device_fds=c.before.kernel.vfio_device_fds)
    v = judged(unplugged=dataclasses.replace(c.unplugged, kernel=still))
    assert v.observed == "fail" and not v.findings
    assert "0 VFIO device fd(s) closed by the unplug" in v.reason


def test_a_replugged_dmabuf_that_is_not_live_fails():
    f = fixed()
    k = f["replugged"].kernel
    f["replugged"] = dataclasses.replace(f["replugged"], kernel=dataclasses.replace(
        k, dmabuf_states=tuple((fd, "revoked") for fd, _ in k.dmabuf_states)))
    v = judged(**f)
    assert v.observed == "fail" and "not a new live dma-buf" in v.reason


def test_fds_that_grow_for_another_reason_are_not_the_known_leak():
    f = fixed()
    f["final"] = dataclasses.replace(f["final"], kernel=dataclasses.replace(
        f["final"].kernel, fd_count=f["replugged"].kernel.fd_count + 3))
    v = judged(**f)
    assert v.observed == "fail" and not v.findings
    assert "(0 of them dma-bufs)" in v.reason


def test_missing_evidence_is_an_error():
    c = cycle()
    assert judged(final=dataclasses.replace(c.final, trace_line=-1)).observed == "error"
    assert judged(after=None).observed == "error"
    assert dmabuf_unplug(captured()).observed == "error"


def test_a_replugged_dmabuf_that_another_device_keeps_live_is_not_the_devices_own():
    """The foreign-dmabuf lie at the replug: the new dma-buf is live while edu decodes and
    ivshmem, back, does not yet: it is not ivshmem's (legacy maps BAR 2 by address, so
    only this tells)."""
    c = cycle()
    plugged = c.plugged
    states = tuple((fd, "live" if fd == 23 else s) for fd, s in plugged.kernel.dmabuf_states)
    v = judged(plugged=dataclasses.replace(
        plugged, kernel=dataclasses.replace(plugged.kernel, dmabuf_states=states)))
    assert v.observed == "fail"
    assert (f"the new dma-buf of {IVSHMEM} BAR 2 (fd 23, inode 3) was live while the other "
            f"devices decoded memory again and {IVSHMEM} did not yet (command 0x0100)"
            ) in v.reason
    assert settle(EXPECTED, v.observed, v.reason, v.findings)[1] is False


def test_no_view_between_the_replug_and_its_decoding_is_an_error():
    v = judged(plugged=None)
    assert v.observed == "error"
    assert "no L1 kernel view between the replug" in v.reason
