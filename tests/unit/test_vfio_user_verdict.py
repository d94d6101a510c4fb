"""The vfio-user regions verdict on evidence captured from real runs (tests/vm/
test_vfio_user.py, 2026-12-07): the honest server, and the adversary that passes a memfd
for ivshmem's BAR 2. L2's trace and mappings cut to the lines the verdict reads."""

import dataclasses
import json
from pathlib import Path

import pytest

from harness.evidence.records import BarAccess, RegionSetup, parse_trace
from harness.evidence.vfio_user import (
    ServedDevice,
    ServedUnplug,
    VfioUserEvidence,
    VfioUserRun,
    parse_maps,
)
from harness.verdicts.vfio_user import p2p, regions, served, unplug

DATA = Path(__file__).parent.parent / "data" / "vfio-user"
EDU, IVSHMEM = "0000:00:02.0", "0000:00:03.0"
DEVICES = {EDU: ("/dev/vfio/devices/vfio0", {0: 1 << 20}),
           IVSHMEM: ("/dev/vfio/devices/vfio1", {0: 256, 2: 1 << 20})}


def captured(name: str) -> VfioUserRun:
    d = DATA / name
    devices = tuple(
        ServedDevice(bdf, cdev, f"/run/vfio-user/{bdf}.sock", bars,
                     tuple(json.loads(line) for line in (d / f"{bdf}.log").read_text()
                           .splitlines()))
        for bdf, (cdev, bars) in DEVICES.items())
    return VfioUserRun(devices, tuple(parse_trace((d / "l2-trace.log").read_text())),
                       parse_maps((d / "l2-maps.txt").read_text().splitlines()))


def test_maps_lines_parse_with_their_offsets_and_paths():
    maps = {m.path: m for m in captured("memfd-bar2").maps}
    assert maps["/dev/vfio/devices/vfio0"].size == 1 << 20
    assert maps["/memfd:not-bar2 (deleted)"].offset == 0
    honest = [m for m in captured("honest").maps if m.offset == 2 << 40]
    assert [(m.path, m.size) for m in honest] == [("/dev/vfio/devices/vfio1", 1 << 20)]


def test_the_honest_servers_regions_pass():
    verdict = regions(captured("honest"))
    assert verdict.observed == "pass", verdict.reason
    assert verdict.evidence[IVSHMEM][2]["l2_maps"] == [("0x20000000000", 1 << 20)]


def test_a_bar_mapped_from_another_file_fails_naming_the_region_and_the_file():
    verdict = regions(captured("memfd-bar2"))
    assert verdict.observed == "fail"
    assert verdict.reason == (
        f"region 2 of {IVSHMEM}: announced mmappable (flags 0x7) with an fd, but L2 maps none "
        f"of /dev/vfio/devices/vfio1 at the region's offset 0x20000000000 (it mapped "
        f"/memfd:not-bar2 (deleted) at 0x0 instead, of the region's size)")


def test_a_size_announced_unlike_the_devices_bar_is_named():
    run = captured("honest")
    lying = dataclasses.replace(run.devices[0], bars={0: 1 << 21})
    verdict = regions(dataclasses.replace(run, devices=(lying, run.devices[1])))
    assert verdict.reason == (f"region 0 of {EDU}: the server announced 0x100000 bytes, the "
                              f"device's BAR has 0x200000")
    hidden = dataclasses.replace(run.devices[1], bars={0: 256, 2: 1 << 20, 4: 4096})
    verdict = regions(dataclasses.replace(run, devices=(run.devices[0], hidden)))
    assert verdict.reason == (f"region 4 of {IVSHMEM}: the server announced 0x0 bytes, the "
                              f"device's BAR has 0x1000")
    unasked = dataclasses.replace(run.devices[1], bars={0: 256, 2: 1 << 20, 8: 4096})
    verdict = regions(dataclasses.replace(run, devices=(run.devices[0], unasked)))
    assert verdict.reason == f"region 8 of {IVSHMEM}: the server never announced it"


def test_an_empty_trace_is_an_error_not_a_pass():
    assert regions(dataclasses.replace(captured("honest"), trace=())).observed == "error"


@pytest.mark.parametrize("field,value,words", [
    ("bar_access", BarAccess(0x010000ED, 0x5A5AA5A5, 0, 0xFFFF, 0xFFFF),
     f"region 0 of {EDU}: edu's liveness register read 0x00000000"),
    ("bar2_on_l0", bytes(8), f"region 2 of {IVSHMEM}: L2's write at BAR 2 is not in the "
                             f"device's memory"),
    ("dma_back", bytes(8), f"{EDU}: edu's DMA through the server's IOAS did not copy"),
])
def test_what_only_the_device_could_answer_is_held_to_it(field, value, words):
    honest = VfioUserEvidence(captured("honest"),
                              BarAccess(0x010000ED, 0x5A5AA5A5, 0xA5A55A5A, 0xFFFF, 0xFFFF),
                              b"\1" * 8, b"\1" * 8, b"\2" * 8, b"\2" * 8, ())
    assert served(honest).observed == "pass", served(honest).reason
    verdict = served(dataclasses.replace(honest, **{field: value}))
    assert verdict.observed == "fail" and verdict.reason.startswith(words), verdict.reason


#: edu's server's DMA_MAPs as logged with ivshmem on vfio-pci beside it (2026-12-07): L2's
#: RAM with its memfd, the BIOS with none, and ivshmem's BAR 2 with its dma-buf on the
#: dmabuf kernel (with none on no-dmabuf and when ivshmem is served too).
RAM = {"command": "DMA_MAP", "iova": 0x100000, "size": 0xFF00000, "fd": "memfd"}
BAR2 = {"command": "DMA_MAP", "iova": 0xFD000000, "size": 0x100000, "fd": "dma-buf"}


def p2p_evidence(bar_map, arrived=True):
    pattern = b"\3" * 8
    return VfioUserEvidence(captured("honest"), None, b"", b"", b"", b"", (), pattern,
                            pattern if arrived else bytes(8), 0xFD005000, (RAM, bar_map),
                            "legacy")


def test_p2p_into_a_vfio_pci_bar_handed_with_its_dmabuf_passes():
    verdict = p2p(p2p_evidence(BAR2))
    assert verdict.observed == "pass"
    assert "the server was handed the BAR with dma-buf fd" in verdict.reason


def test_p2p_into_a_bar_handed_with_no_fd_fails_with_its_finding():
    verdict = p2p(p2p_evidence({**BAR2, "fd": "none"}, arrived=False))
    assert verdict.findings == {"bytes-missing", "bar-fd-withheld"}
    assert verdict.reason.endswith("edu's server was handed the BAR (0xfd000000, 0x100000 "
                                   "bytes) with no fd, so nothing is mapped there")
    refused = p2p(p2p_evidence({**BAR2, "error": "EINVAL"}, arrived=False))
    assert refused.findings == {"bytes-missing"}
    assert refused.reason.endswith("handed it with a dma-buf fd and could not map it (EINVAL)")
    unmapped = p2p(p2p_evidence({**RAM, "iova": 0}, arrived=False))
    assert unmapped.reason.endswith("edu's server was never handed a DMA_MAP covering it")


def test_a_p2p_never_tried_is_an_error():
    assert p2p(dataclasses.replace(p2p_evidence(BAR2), p2p_pattern=b"")).observed == "error"


def test_a_server_that_died_and_the_l2_it_took_with_it_are_the_story():
    """As measured when edu's server was SIGKILLed after decode on (QEMU 11.1.3 aborted):
    L2's last mappings are not judged, its death and the server's are named."""
    died = VfioUserEvidence(
        dataclasses.replace(captured("honest"), maps=()), None, b"", b"", b"", b"",
        ("L2 qtest: qtest connection closed (L2 QEMU exited?): L2 QEMU (pid 97) was killed "
         "by SIGABRT (6), as L1 saw it",), servers_ended=((EDU, "was killed by SIGKILL (9)"),),
        l2_said=("qemu-system-x86_64: util/error.c:62: error_setv: Assertion `*errp == NULL' "
                 "failed.",), l2_end="was killed by SIGABRT (6)")
    verdict = served(died)
    assert verdict.observed == "fail" and "maps none" not in verdict.reason
    assert verdict.reason.endswith(
        f"the vfio-user server of {EDU} ended while L2 ran: it was killed by SIGKILL (9); L2 "
        f"said: \"qemu-system-x86_64: util/error.c:62: error_setv: Assertion `*errp == NULL' "
        f"failed.\"")


def test_an_unplug_is_held_to_the_server_l2s_mappings_and_the_device():
    honest = VfioUserEvidence(captured("honest"), None, b"", b"", b"", b"", (),
                              unplug=ServedUnplug(0.41, (), ("connected", "disconnected",
                                                             "connected"), True))
    assert unplug(honest).observed == "pass", unplug(honest).reason
    kept = dataclasses.replace(honest, unplug=ServedUnplug(
        0.41, ("7f5968800000-7f5968900000 rw-s 20000000000 00:07 96 /dev/vfio/devices/vfio1",),
        ("connected",), False))
    verdict = unplug(kept)
    assert verdict.reason == (
        f"ivshmem's server saw connected, not its client go and come back; L2 still mapped "
        f"1 range(s) of {IVSHMEM}'s cdev once it was unplugged: 7f5968800000-7f5968900000 "
        f"rw-s 20000000000 00:07 96 /dev/vfio/devices/vfio1; after the replug, L2's write at "
        f"BAR 2 did not reach the device (L0's ivshmem file)")
    assert unplug(dataclasses.replace(honest, unplug=None)).observed == "error"
    # as the keep-bar2-mapped shim left it (tests/vm/test_vfio_user.py): the kept mapping
    # holds the device, its server refuses the replug, and QEMU's abort is the replug's
    refused = dataclasses.replace(kept, unplug=dataclasses.replace(
        kept.unplug, server_events=("connected", "disconnected", "refused")),
        problems=("L2: QMP device_add: the connection to L2 QEMU was lost",))
    verdict = unplug(refused)
    assert "server saw connected, disconnected, refused, not its client" in verdict.reason
    assert ("ivshmem's server could not open the device again for the replug (its log: "
            "refused); L2: QMP device_add: the connection") in verdict.reason, verdict.reason
    assert "did not reach the device" not in verdict.reason  # the replug's failure says why


def test_a_device_served_without_mmap_is_reached_by_messages_or_named():
    run = captured("honest")
    edu = run.devices[0]
    plain = tuple({**e, "flags": 3, "fd": False} for e in edu.announced)
    reads = ({"command": "REGION_READ", "region": 0, "offset": 4, "count": 4},)
    by_message = dataclasses.replace(edu, announced=plain, no_mmap=True, accesses=reads)
    unmapped = tuple(m for m in run.maps if m.path != edu.cdev)
    run = dataclasses.replace(run, trace=tuple(  # as L2 sets up what it was announced
        dataclasses.replace(r, flags=3) if isinstance(r, RegionSetup) else r
        for r in run.trace))
    ok = regions(dataclasses.replace(run, devices=(by_message,), maps=unmapped))
    assert ok.observed == "pass" and ok.reason.endswith(
        ", 1 reached by REGION_READ/WRITE messages (no mmap)"), ok.reason
    silent = regions(dataclasses.replace(run, devices=(dataclasses.replace(
        by_message, accesses=()),), maps=unmapped))
    assert silent.reason == (f"region 0 of {EDU}: announced without mmap, and no "
                             f"REGION_READ/WRITE of it reached the server")
    mapped = regions(dataclasses.replace(run, devices=(by_message,)))
    assert mapped.reason == (f"region 0 of {EDU}: announced without mmap, yet L2 maps "
                             f"/dev/vfio/devices/vfio0")


def test_a_bar_mapped_in_pieces_around_its_msix_table_is_held_to_the_pieces_l2_traced():
    """nvme served over vfio-user (captured 2026-12-07): the server passes no
    MSIX_MAPPABLE capability, so QEMU maps BAR 0 around its MSI-X table, in two pieces."""
    d = DATA / "nvme"
    nvme = ServedDevice("0000:00:04.0", "/dev/vfio/devices/vfio2", "/tmp/vu-nvme.sock",
                        {0: 0x4000}, tuple(json.loads(line) for line in
                                           (d / "0000:00:04.0.log").read_text().splitlines()))
    run = VfioUserRun((nvme,), tuple(parse_trace((d / "l2-trace.log").read_text())),
                      parse_maps((d / "l2-maps.txt").read_text().splitlines()))
    verdict = regions(run)
    assert verdict.observed == "pass", verdict.reason
    assert verdict.evidence["0000:00:04.0"][0]["l2_maps"] == [("0x0", 0x2000),
                                                              ("0x3000", 0x1000)]
    one_piece = dataclasses.replace(run, maps=run.maps[:1])
    assert regions(one_piece).reason == (
        "region 0 of 0000:00:04.0: L2 maps [0x0, 0x2000) of it from /dev/vfio/devices/vfio2, "
        "not [0x0, 0x2000) + [0x3000, 0x4000)")


def _matrix_evidence(run: VfioUserRun, dmabufs: tuple[int, ...], kernel_dmabuf: bool = True):
    """The matrix's vfio-user L2 as the verdict gets it: edu served, ivshmem beside it on
    vfio-pci (legacy)."""
    from harness.evidence.gathered import Evidence
    from harness.evidence.records import L2Run

    edu_only = VfioUserRun(run.devices[:1], run.trace, run.maps)
    ev = VfioUserEvidence(edu_only, None, b"", b"", b"", b"", (), ivshmem_backend="legacy",
                          l2_dmabufs=dmabufs)
    answer = (True, None) if kernel_dmabuf else (False, "ENOTTY")
    return Evidence("vfio-user", {"edu": EDU, "ivshmem": IVSHMEM},
                    {EDU: answer, IVSHMEM: answer}, L2Run(run.trace, (), None, (), True, ()),
                    bars={EDU: DEVICES[EDU][1], IVSHMEM: DEVICES[IVSHMEM][1]}, vfio_user=ev)


def test_a_served_device_has_no_dmabuf_and_the_cell_skips_saying_so():
    from harness.verdicts.vfio_user import dmabuf_per_region_any as dmabuf_per_region

    verdict = dmabuf_per_region(_matrix_evidence(captured("honest"), (1 << 20,)))
    assert verdict.observed == "skip" and verdict.findings == {"served-no-dmabuf"}, verdict
    assert verdict.reason.endswith("L2 holds 1 dma-buf(s), those of the vfio-pci BARs "
                                   "beside it (1)"), verdict.reason
    # without VFIO dma-buf the vfio-pci BAR has none either
    verdict = dmabuf_per_region(_matrix_evidence(captured("honest"), (), kernel_dmabuf=False))
    assert verdict.observed == "skip", verdict.reason


def test_a_dmabuf_of_a_served_region_fails_whether_traced_or_only_held():
    """A client that asks the kernel for a dma-buf of the fd the server passed (a real
    device's) would get one: caught in the trace, and in L2's fds when not traced."""
    from harness.verdicts.vfio_user import dmabuf_per_region_any as dmabuf_per_region

    honest = captured("honest")
    sock = f"vfio-user:/run/vfio-user/{EDU}.sock"
    traced = parse_trace(f'vfio_region_dmabuf Device {sock}, dmabuf fd 31 region 0 "{sock} '
                         f'BAR 0", offset: 0x0, size: 0x100000\n')
    run = VfioUserRun(honest.devices, honest.trace + tuple(traced), honest.maps)
    verdict = dmabuf_per_region(_matrix_evidence(run, (1 << 20, 1 << 20)))
    assert verdict.observed == "fail"
    assert verdict.reason == (
        f"QEMU made a dma-buf for {EDU}'s {sock} BAR 0 (vfio_region_dmabuf, fd 31), a region "
        f"served over vfio-user; L2 holds 2 dma-buf(s) (the L1 kernel's fdinfo: 0x100000, "
        f"0x100000 bytes), its vfio-pci BARs account for 1: the others are of served regions")
    untraced = dmabuf_per_region(_matrix_evidence(honest, (1 << 20, 1 << 20)))
    assert untraced.observed == "fail" and "its vfio-pci BARs account for 1" in untraced.reason
    assert dmabuf_per_region(_matrix_evidence(honest, None)).observed == "error"
