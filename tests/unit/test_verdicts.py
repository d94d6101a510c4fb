"""The verdicts on evidence captured from a real run (intel-iommu, dmabuf kernel, iommufd).

Each failure mode is shown to fail, and each kind of missing evidence to be an
error: a verdict that could not fail, or passed on nothing, would be a defect.
"""

import dataclasses
from pathlib import Path

import pytest

from harness.collect.l2_probes import mtree_mmaps
from harness.evidence.gathered import Evidence
from harness.evidence.records import (
    BarAccess,
    DecodeStep,
    KernelProcess,
    L2Run,
    P2PTransfer,
    QemuFacts,
    RegionDmabuf,
    RegionSetup,
    SideRun,
    parse_messages,
    parse_trace,
)
from harness.verdicts.creation import dmabuf_per_region, mmap_fallback
from harness.verdicts.p2p import p2p_dma
from harness.verdicts.verdict import iommu_faults

DATA = Path(__file__).parent.parent / "data" / "qemu-11.1.3"
EDU, IVSHMEM = "0000:00:02.0", "0000:00:03.0"
MIB = 1 << 20
NOT_SUPPORTED = ("qemu-system-x86_64: -device vfio-pci,host=0000:00:03.0,iommufd=iofd0: "
                 "warning: VFIO dma-buf not supported in kernel, using mmap fallback, "
                 "P2P DMA will not work")


def _read(name: str) -> str:
    return (DATA / name).read_text()


def maps(*sizes: int) -> tuple[str, ...]:
    """/proc/PID/maps lines of VFIO device mappings of these sizes."""
    out, start = [], 0x7F0000000000
    for i, size in enumerate(sizes):
        out.append(f"{start:x}-{start + size:x} rw-s 00000000 00:0e {100 + i} "
                   f"/dev/vfio/devices/vfio{i}")
        start += size + 0x100000
    return tuple(out)


#: What the L1 kernel says the captured run's devices have (from sysfs resource).
BARS = {EDU: {0: MIB}, IVSHMEM: {0: 0x100, 2: MIB}}


def witness(order: list[str], dmabufs: dict[int, tuple[str, int, int]],
            vfio_maps: tuple[str, ...] = (), live: str = "live") -> tuple[DecodeStep, ...]:
    """The L1 kernel's views as the devices of `order` started decoding memory one by one,
    as measured on 11.1.3 / 7.2 (2026-11-30, every vIOMMU and backend): each dma-buf
    revoked until its own device decodes, live from then on (edu's [F, T, T, T], ivshmem's
    [F, F, T, T], nvme's [F, F, F, T]). `dmabufs`: fd -> (owner BDF, inode, size)."""
    steps = []
    for n in range(len(order) + 1):
        on = set(order[:n])
        kernel = KernelProcess(
            tuple((fd, size, "vfio_pci_core") for fd, (_, _, size) in dmabufs.items()),
            vfio_maps, tuple((fd, ino) for fd, (_, ino, _) in dmabufs.items()),
            tuple((fd, live if owner in on else "revoked")
                  for fd, (owner, _, _) in dmabufs.items()))
        steps.append(DecodeStep(kernel, {b: 0x6 if b in on else 0x0 for b in order}))
    return tuple(steps)


def with_witness(run: L2Run, steps: tuple[DecodeStep, ...]) -> L2Run:
    return dataclasses.replace(run, decode_steps=steps, process=steps[-1].kernel)


def captured(**changes) -> Evidence:
    """The evidence of the real run, as the verdicts saw it; `changes` replace fields."""
    main = with_witness(
        L2Run(tuple(parse_trace(_read("intel-iommu-dmabuf-iommufd.trace"))),
              tuple(parse_messages(_read("intel-iommu-dmabuf-iommufd.stderr"))), None,
              mtree_mmaps(_read("intel-iommu-dmabuf-iommufd.mtree")), True),
        witness([EDU, IVSHMEM], {19: (EDU, 10, MIB), 22: (IVSHMEM, 11, MIB)},
                maps(MIB, 4096, MIB)))
    no_mmap = with_witness(
        L2Run(tuple(parse_trace(_read("intel-iommu-dmabuf-iommufd-x-no-mmap.trace"))),
              (), None, (), True),
        witness([EDU, IVSHMEM], {21: (IVSHMEM, 17, MIB)}, maps(4096, MIB)))
    # Captured when the side L2 had ivshmem beside edu (now nvme): the verdict takes either.
    pattern = bytes(range(64))
    ev = Evidence(
        backend="iommufd", devices={"edu": EDU, "ivshmem": IVSHMEM},
        kernel_probe={EDU: (True, None), IVSHMEM: (True, None)},
        main=main, side=side(no_mmap), bars=BARS,
        qemu=QemuFacts("QEMU emulator version 11.1.3", True, True),
        bar_access=BarAccess(0x010000ED, 0x5A5AA5A5, 0xA5A55A5A, 0xFFFF, 0xFFFF),
        p2p=P2PTransfer(seed=7, size=64, bar2_iova=0xC0200000, src_offset=0, dst_offset=0x2000,
                        pattern=pattern, source_in_file=pattern, before=bytes(64),
                        after=pattern, l1_dmesg=()))
    return dataclasses.replace(ev, **changes)


def side(run: L2Run | None) -> SideRun | None:
    """A side L2 of edu (x-no-mmap=on) and ivshmem, as the dmabuf-per-region check reads it."""
    if run is None:
        return None
    return SideRun(devices={"edu": EDU, "ivshmem": IVSHMEM}, bars=BARS, device=IVSHMEM, bar=2,
                   iova=0, run=run, withheld=(), read=None)


def with_main(ev: Evidence, **changes) -> Evidence:
    return dataclasses.replace(ev, main=dataclasses.replace(ev.main, **changes))


# -- dmabuf-per-region -----------------------------------------------------------------

def test_dmabuf_per_region_passes_on_the_captured_run():
    v = dmabuf_per_region(captured())
    assert v.observed == "pass", v.reason
    assert set(v.evidence["qualifying_regions"]) == {f"{EDU} BAR 0", f"{IVSHMEM} BAR 2"}
    assert v.evidence["sub_page_regions"] == [f"{IVSHMEM} BAR 0"]
    assert "x-no-mmap=on" in v.reason
    assert any("fdinfo" in g for g in v.grounds)


def test_dmabuf_per_region_skips_with_the_probe_answer_when_the_kernel_lacks_it():
    ev = captured(kernel_probe={EDU: (False, "ENOTTY: Inappropriate ioctl for device"),
                                IVSHMEM: (False, "ENOTTY: Inappropriate ioctl for device")})
    v = dmabuf_per_region(ev)
    assert v.observed == "skip"
    assert "VFIO_DEVICE_FEATURE_PROBE(DMA_BUF) answered ENOTTY" in v.reason
    assert v.findings == {"kernel-lacks-dmabuf"}


def test_missing_dmabuf_trace_fails():
    ev = captured()
    trace = tuple(r for r in ev.main.trace
                  if not (isinstance(r, RegionDmabuf) and r.name == f"{EDU} BAR 0"))
    v = dmabuf_per_region(with_main(ev, trace=trace))
    assert v.observed == "fail"
    assert f"{EDU} BAR 0: 0 vfio_region_dmabuf for 1 mmap(s)" in v.reason


# -- attribution: each dma-buf its own region's, in the L1 kernel's words --------------------

def _main_witness(ev: Evidence, dmabufs: dict, order=(EDU, IVSHMEM), **kw) -> Evidence:
    return with_main(ev, **vars(with_witness(ev.main, witness(list(order), dmabufs,
                                                              ev.main.process.vfio_maps,
                                                              **kw))))


def test_a_dup_of_another_devices_dmabuf_fails_naming_both_regions():
    """The borrow-dmabuf lie: ivshmem's BAR 2 holds a dup of edu's (one inode, two fds);
    every count, size and exporter still agrees."""
    ev = _main_witness(captured(), {19: (EDU, 10, MIB), 22: (EDU, 10, MIB)})
    v = dmabuf_per_region(ev)
    assert v.observed == "fail", v.reason
    assert (f"{EDU} BAR 0 and {IVSHMEM} BAR 2 hold one and the same dma-buf (the L1 kernel's "
            f"inode 10: {EDU} BAR 0 fd 19, {IVSHMEM} BAR 2 fd 22)") in v.reason


def test_a_dmabuf_of_another_devices_bar_fails_naming_whose_it_is():
    """The foreign-dmabuf lie: a dma-buf of its own (another inode) for ivshmem's BAR 2,
    made from edu's BAR 0: it goes live when edu starts decoding, not ivshmem."""
    ev = _main_witness(captured(), {19: (EDU, 10, MIB), 22: (EDU, 11, MIB)})
    v = dmabuf_per_region(ev)
    assert v.observed == "fail", v.reason
    assert (f"{IVSHMEM} BAR 2's dma-buf (fd 22, inode 11) is not its own BAR's: the L1 kernel "
            f"kept it live exactly while {EDU} decoded memory, so it exports {EDU} BAR 0"
            ) in v.reason
    assert v.evidence["attribution"][f"{IVSHMEM} BAR 2"]["owner"] == [EDU]


def test_two_regions_swapping_dmabufs_both_fail():
    ev = _main_witness(captured(), {19: (IVSHMEM, 10, MIB), 22: (EDU, 11, MIB)})
    v = dmabuf_per_region(ev)
    assert v.observed == "fail"
    assert f"{EDU} BAR 0's dma-buf (fd 19, inode 10) is not its own BAR's" in v.reason
    assert f"{IVSHMEM} BAR 2's dma-buf (fd 22, inode 11) is not its own BAR's" in v.reason


def test_a_dmabuf_live_before_any_device_decodes_follows_no_device():
    ev = captured()
    steps = list(ev.main.decode_steps)
    first = steps[0]
    steps[0] = DecodeStep(dataclasses.replace(first.kernel, dmabuf_states=((19, "live"),
                                                                           (22, "revoked"))),
                          first.commands)
    v = dmabuf_per_region(with_main(ev, decode_steps=tuple(steps)))
    assert v.observed == "fail"
    assert (f"{EDU} BAR 0's dma-buf (fd 19, inode 10) follows no device's memory decode (live, "
            f"live, live as the devices started decoding one by one)") in v.reason


@pytest.mark.parametrize("damage, says", [
    (lambda steps: (), "no decode witness"),
    (lambda steps: (steps[0], DecodeStep(dataclasses.replace(
        steps[1].kernel, dmabuf_states=((19, "pidfd_getfd: Operation not permitted"),
                                        (22, "revoked"))), steps[1].commands), steps[2]),
     "gave no revoke answer for fd 19 at step 1 of the decode witness"),
    (lambda steps: (steps[0], DecodeStep(steps[1].kernel, {EDU: None, IVSHMEM: 0}), steps[2]),
     f"could not read {EDU}'s command register"),
    (lambda steps: (steps[0], steps[2]), f"cannot tell {EDU} from {IVSHMEM} apart"),
])
def test_a_witness_that_cannot_answer_is_an_error(damage, says):
    ev = captured()
    v = dmabuf_per_region(with_main(ev, decode_steps=damage(ev.main.decode_steps)))
    assert v.observed == "error", v.reason
    assert says in v.reason


def test_the_side_l2_holding_the_main_l2s_dmabuf_fails():
    ev = captured()
    side_run = with_witness(ev.side.run, witness([EDU, IVSHMEM], {21: (IVSHMEM, 11, MIB)},
                                                 ev.side.run.process.vfio_maps))
    v = dmabuf_per_region(dataclasses.replace(ev, side=side(side_run)))
    assert v.observed == "fail"
    assert (f"the side L2's {IVSHMEM} BAR 2 and the main L2's {IVSHMEM} BAR 2 hold one and the "
            f"same dma-buf (inode 11): each L2 needs its own") in v.reason


def test_the_pass_names_the_witness():
    v = dmabuf_per_region(captured())
    assert "each its own device's and no other region's" in v.reason
    assert any("the revoke state of L2's dma-bufs in 3 views" in g for g in v.grounds)


def test_kernel_disagreeing_on_size_fails():
    ev = with_main(captured(), process=KernelProcess(((19, MIB, "vfio_pci_core"),
                                                      (22, 4096, "vfio_pci_core")),
                                                     maps(MIB, 4096, MIB)))
    v = dmabuf_per_region(ev)
    assert v.observed == "fail" and "the kernel says fd 22 is 4096 bytes" in v.reason


def test_kernel_missing_an_fd_fails():
    ev = with_main(captured(), process=KernelProcess(((19, MIB, "vfio_pci_core"),),
                                                     maps(MIB, 4096, MIB)))
    v = dmabuf_per_region(ev)
    assert v.observed == "fail" and "shows 1 dma-buf fd(s)" in v.reason


def test_mtree_without_mmaps_fails():
    v = dmabuf_per_region(with_main(captured(), mtree_mmaps=()))
    assert v.observed == "fail" and "info mtree shows no mmaps" in v.reason


def test_x_no_mmap_that_still_mmaps_fails():
    ev = captured()
    v = dmabuf_per_region(captured(side=side(ev.main)))  # the main run does mmap edu
    assert v.observed == "fail" and "x-no-mmap=on: edu still has mmaps" in v.reason


# -- mmap-fallback -----------------------------------------------------------------------

def test_sub_page_fallback_passes_on_the_captured_run():
    v = mmap_fallback(captured())
    assert v.observed == "pass", v.reason
    assert v.evidence["fallback_regions"] == [f"{IVSHMEM} BAR 0"]
    assert v.evidence["bar_iommu_mapping_failures"]  # recorded, not judged


def test_fallback_without_its_warning_fails():
    ev = captured()
    messages = tuple(m for m in ev.main.messages if "dma-buf unavailable" not in m.text)
    v = mmap_fallback(with_main(ev, messages=messages))
    assert v.observed == "fail" and "'dma-buf unavailable' warnings for []" in v.reason


def test_no_dmabuf_kernel_path_needs_one_warning_and_no_dmabuf():
    ev = captured(kernel_probe={EDU: (False, "ENOTTY"), IVSHMEM: (False, "ENOTTY")})
    v = mmap_fallback(ev)  # the captured run had dma-bufs and no 'not supported' warning
    assert v.observed == "fail"
    assert "0 'VFIO dma-buf not supported in kernel' warnings" in v.reason
    assert "vfio_region_dmabuf traced on a kernel without VFIO dma-buf" in v.reason
    trace = tuple(r for r in ev.main.trace if not isinstance(r, RegionDmabuf))
    messages = ev.main.messages + tuple(parse_messages(NOT_SUPPORTED))
    fixed = with_main(ev, trace=trace, messages=messages,
                      process=KernelProcess((), maps(MIB, 4096, MIB)))
    v = mmap_fallback(fixed)
    assert v.observed == "pass", v.reason
    assert v.evidence["path"] == "dma-buf not supported in kernel"


def test_broken_bar_access_fails():
    v = mmap_fallback(captured(bar_access=BarAccess(0xFFFFFFFF, 0x5A5AA5A5, 0xFFFFFFFF)))
    assert v.observed == "fail"
    assert "edu id reads 0xffffffff" in v.reason and "liveness" in v.reason


def test_dead_qemu_fails():
    v = mmap_fallback(with_main(captured(), alive_at_end=False))
    assert v.observed == "fail" and "L2 QEMU did not survive" in v.reason


# -- p2p-dma -----------------------------------------------------------------------------

def test_p2p_passes_when_the_bytes_arrive():
    v = p2p_dma(captured())
    assert v.observed == "pass", v.reason
    assert "iommufd_backend_map_file_dma fd 22" in v.reason
    assert any(m["event"] == "IommufdMapFile" and m["fd"] == 22
               for m in v.evidence["bar2_mapping"])


def test_p2p_fails_when_the_bytes_do_not_arrive_and_says_where():
    ev = captured()
    fault = ("DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0xc0200000 "
             "[fault reason 0x06] PTE Read access is not set")
    p2p = dataclasses.replace(ev.p2p, after=bytes(64), l1_dmesg=(fault,))
    v = p2p_dma(captured(p2p=p2p))
    assert v.observed == "fail"
    assert "the bytes did not arrive" in v.reason and "fault addr 0xc0200000" in v.reason


def test_p2p_fails_when_the_source_never_reached_the_file():
    ev = captured()
    v = p2p_dma(captured(p2p=dataclasses.replace(ev.p2p, source_in_file=bytes(64))))
    assert v.observed == "fail" and "never reached the ivshmem file" in v.reason


@pytest.mark.parametrize("stale", [bytes(range(64))], ids=["stale-pattern"])
def test_p2p_refuses_a_dirty_destination(stale):
    ev = captured()
    v = p2p_dma(captured(p2p=dataclasses.replace(ev.p2p, before=stale)))
    assert v.observed == "fail" and "not clean" in v.reason


def test_real_no_dmabuf_capture_takes_the_not_supported_path():
    ev = no_dmabuf_iommufd()
    v = mmap_fallback(ev)
    assert v.observed == "pass", v.reason
    assert v.evidence["path"] == "dma-buf not supported in kernel"
    assert len(v.evidence["warnings"]) == 1
    assert any("IOMMU_IOAS_MAP failed: Bad address" in f
               for f in v.evidence["bar_iommu_mapping_failures"])
    assert dmabuf_per_region(ev).observed == "skip"


def test_fault_naming_the_address_is_quoted_first():
    dmesg = ("[ 13.55] DMAR: DRHD: handling fault status reg 2",
             "[ 13.56] DMAR: [DMA Read NO_PASID] Request device [0000:00:02.0] fault addr "
             "0xc0200000 [fault reason 0x06] PTE Read access is not set")
    assert "fault addr 0xc0200000" in iommu_faults(dmesg)[0]
    assert iommu_faults(("[ 1.0] virtio_iommu virtio0: page fault from EP 24 at 0xc0200000 []",
                         "[ 1.0] unrelated"))[0].endswith("at 0xc0200000 []")


def test_judge_applies_expectations_and_contains_a_crashing_verdict(monkeypatch):
    from harness.checks.matrix import Cell
    from harness.collect.scenario import Timer
    from harness.run import runner

    cells = [Cell("intel-iommu", "iommufd", "no-dmabuf", "p2p-dma"),
             Cell("intel-iommu", "iommufd", "no-dmabuf", "mmap-fallback")]
    ev = no_dmabuf_iommufd()
    results = runner.judge(cells, ev, Timer(), 1.0, "")
    assert results[0].outcome == "xfail" and results[0].met, results[0].reason

    def boom(evidence):
        raise KeyError("no such region")

    from harness.checks import registry

    monkeypatch.setitem(registry.REGISTRY, "mmap-fallback",
                        dataclasses.replace(registry.get("mmap-fallback"), verdict=boom))
    results = runner.judge(cells, ev, Timer(), 1.0, "")
    assert results[0].outcome == "xfail"                 # the other cell stands
    assert results[1].outcome == "error" and not results[1].met
    assert "verdict mmap-fallback crashed: KeyError" in results[1].reason


# -- evidence that is missing is never a pass ----------------------------------------------

ALL = (dmabuf_per_region, mmap_fallback, p2p_dma)


@pytest.mark.parametrize("verdict", ALL, ids=lambda f: f.__name__)
def test_no_trace_is_an_error_saying_so(verdict):
    v = verdict(with_main(captured(), trace=()))
    assert v.observed == "error" and "trace is missing" in v.reason


@pytest.mark.parametrize("verdict", ALL, ids=lambda f: f.__name__)
def test_no_region_setup_for_a_device_is_an_error(verdict):
    ev = captured()
    trace = tuple(r for r in ev.main.trace
                  if not (isinstance(r, RegionSetup) and r.device == IVSHMEM))
    v = verdict(with_main(ev, trace=trace))
    assert v.observed == "error"
    assert f"no vfio_region_setup for ivshmem ({IVSHMEM})" in v.reason


@pytest.mark.parametrize("verdict", ALL, ids=lambda f: f.__name__)
def test_a_known_event_that_no_longer_parses_is_reported(verdict):
    ev = captured()
    changed = "vfio_region_dmabuf Device 0000:00:02.0 fd=19 BAR 0 size 1 MiB"
    v = verdict(with_main(ev, trace=ev.main.trace + tuple(parse_trace(changed))))
    assert v.observed == "error"
    assert "a vfio_region_dmabuf line no longer parses" in v.reason


@pytest.mark.parametrize("verdict", (dmabuf_per_region, mmap_fallback), ids=lambda f: f.__name__)
def test_an_empty_kernel_probe_does_not_mean_dmabuf(verdict):
    v = verdict(captured(kernel_probe={}))
    assert v.observed == "error" and "probe gave no usable answer" in v.reason


@pytest.mark.parametrize("verdict", ALL, ids=lambda f: f.__name__)
def test_no_kernel_view_of_the_bars_is_an_error(verdict):
    v = verdict(captured(bars={}))
    assert v.observed == "error" and "no L1 kernel view of the devices' BARs" in v.reason


def test_mmap_fallback_with_no_mmapped_region_does_not_pass():
    """The regression of issue 7: 'regions [] stay mmapped and usable' passed."""
    ev = no_dmabuf_iommufd()
    trace = tuple(r for r in ev.main.trace if type(r).__name__ != "RegionMmap")
    v = mmap_fallback(with_main(ev, trace=trace))
    assert v.observed == "fail"
    assert f"{EDU} BAR 0 was not mmapped" in v.reason


def test_a_warning_in_an_unknown_wording_is_reported_as_such():
    ev = no_dmabuf_iommufd()
    reworded = tuple(parse_messages(NOT_SUPPORTED.replace("not supported in kernel",
                                                          "unsupported by this kernel")))
    messages = tuple(m for m in ev.main.messages if "not supported in kernel" not in m.text)
    v = mmap_fallback(with_main(ev, messages=messages + reworded))
    assert v.observed == "error"
    assert "wording this harness does not know" in v.reason and "unsupported by" in v.reason


def test_a_qemu_without_the_dmabuf_code_fails_dmabuf_per_region_saying_so():
    v = dmabuf_per_region(captured(qemu=QemuFacts("QEMU emulator version 10.0.3", False, True)))
    assert v.observed == "fail"
    assert "(QEMU emulator version 10.0.3) has no vfio_region_dmabuf trace event" in v.reason


def test_the_pass_reason_claims_no_x_no_mmap_check_that_did_not_run():
    v = dmabuf_per_region(captured(side=None))
    assert v.observed == "pass" and "x-no-mmap" not in v.reason


def test_a_mmap_the_kernel_does_not_see_fails():
    """QEMU's trace says BAR 2 is mmapped; the kernel has no such mapping of the device."""
    v = dmabuf_per_region(with_main(captured(), process=dataclasses.replace(
        captured().main.process, vfio_maps=maps(MIB, 4096))))
    assert v.observed == "fail"
    assert "the L1 kernel shows no VFIO device mapping of 0x100000 bytes" in v.reason


def test_a_dmabuf_fd_the_kernel_does_not_hold_fails():
    """A forged dma-buf: the trace names fd 22, the kernel says fd 22 is no dma-buf."""
    v = dmabuf_per_region(with_main(captured(), process=KernelProcess(
        ((19, MIB, "vfio_pci_core"), (30, MIB, "vfio_pci_core")), maps(MIB, 4096, MIB))))
    assert v.observed == "fail" and "fd 22 from the trace is not a dma-buf" in v.reason


def test_p2p_without_a_dma_engine_fails_saying_why():
    ev = captured()
    p2p = dataclasses.replace(ev.p2p, after=bytes(64), engine_error="edu BAR0 id reads 0x0")
    v = p2p_dma(captured(p2p=p2p))
    assert v.observed == "fail" and "the DMA never started: edu BAR0 id reads 0x0" in v.reason
    assert "bytes-missing" not in v.findings


def test_p2p_pass_on_iommufd_needs_the_dmabuf_mapping():
    ev = captured()
    trace = tuple(r for r in ev.main.trace if type(r).__name__ != "IommufdMapFile")
    v = p2p_dma(with_main(ev, trace=trace))
    assert v.observed == "fail" and "the route is unproven" in v.reason


# -- expected failures fail for their stated reason ------------------------------------------

def no_dmabuf_iommufd(**changes) -> Evidence:
    """The captured iommufd run on the kernel without dma-buf, the P2P bytes refused."""
    main = L2Run(tuple(parse_trace(_read("intel-iommu-no-dmabuf-iommufd.trace"))),
                 tuple(parse_messages(_read("intel-iommu-no-dmabuf-iommufd.stderr"))),
                 KernelProcess((), maps(MIB, 4096, MIB)), tuple(f"{n} mmaps[0]" for n in (
                     f"{EDU} BAR 0", f"{IVSHMEM} BAR 0", f"{IVSHMEM} BAR 2")), True)
    ev = captured(main=main, side=None,
                  kernel_probe={EDU: (False, "ENOTTY"), IVSHMEM: (False, "ENOTTY")})
    fault = ("DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr 0xc0200000 "
             "[fault reason 0x06] PTE Read access is not set")
    p2p = dataclasses.replace(ev.p2p, after=bytes(64), l1_dmesg=(fault,))
    return dataclasses.replace(ev, p2p=p2p, **changes)


def test_the_expected_p2p_failure_has_its_signature():
    v = p2p_dma(no_dmabuf_iommufd())
    assert v.observed == "fail"
    assert {"bar-map-refused", "bytes-missing", "dma-faulted"} <= v.findings


def test_a_p2p_failure_without_the_refused_mapping_is_not_the_expected_one():
    """The regression of issue 7: BARs never mapped at all still read xfail."""
    from harness.checks import matrix

    ev = no_dmabuf_iommufd()
    trace = tuple(r for r in ev.main.trace if type(r).__name__ not in ("IommufdMap",))
    messages = tuple(m for m in ev.main.messages if "IOMMU_IOAS_MAP" not in m.text
                     and "vfio_container_dma_map" not in m.text)
    v = p2p_dma(with_main(ev, trace=trace, messages=messages))
    assert v.observed == "fail" and "bar-map-refused" not in v.findings
    cell = matrix.Cell("intel-iommu", "iommufd", "no-dmabuf", "p2p-dma")
    result = matrix.CellResult.settled(cell, v.observed, v.reason, {}, 0.0,
                                       findings=v.findings)
    assert result.outcome == "fail" and not result.met
    assert "not the expected failure" in result.reason


def test_bar_access_not_tried_is_an_error_not_a_pass():
    v = mmap_fallback(captured(bar_access=None))
    assert v.observed == "error" and "BAR access through L2 was not tried" in v.reason


def test_p2p_not_run_is_an_error_not_a_pass():
    v = p2p_dma(captured(p2p=None))
    assert v.observed == "error" and "the P2P transfer was not run" in v.reason


@pytest.mark.parametrize("verdict", ALL, ids=lambda f: f.__name__)
def test_no_kernel_view_of_l2_is_an_error(verdict):
    v = verdict(with_main(captured(), process=None))
    assert v.observed == "error" and "no view of the L2 process from the L1 kernel" in v.reason


def test_a_probe_with_another_error_is_not_a_kernel_without_dmabuf():
    ev = captured(kernel_probe={EDU: (False, "EINVAL: Invalid argument"),
                                IVSHMEM: (False, "ENOTTY: Inappropriate ioctl for device")})
    v = dmabuf_per_region(ev)
    assert v.observed == "error" and "kernel-lacks-dmabuf" not in v.findings
