"""The lifecycle verdicts on a captured real run (intel-iommu, dmabuf kernel, iommufd, QEMU
11.1.3): both steps pass on it, and each act of a step, broken alone, fails or errors."""

import dataclasses
import json

import pytest

from harness.checks.matrix import EXPECTATIONS, settle
from harness.evidence.records import (
    BarAccess,
    BlockedDma,
    DeviceReset,
    IommufdMapFile,
    IommufdUnmap,
    KernelProcess,
    LifecycleStep,
    ListenerDel,
    Moment,
    Other,
    P2PRead,
    P2PTransfer,
    parse_trace,
)
from harness.verdicts.lifecycle import decode_toggle, reset
from tests.unit.test_verdicts import DATA, IVSHMEM, MIB, captured, maps, with_main

LINES = (DATA / "intel-iommu-dmabuf-iommufd-lifecycle.trace").read_text().splitlines()
CAPTURE = json.loads((DATA / "intel-iommu-dmabuf-iommufd-lifecycle.json").read_text())
VERDICT = {"decode-toggle": decode_toggle, "reset": reset}


def _trace(a: int, b: int) -> tuple:
    return tuple(parse_trace("\n".join(LINES[a:b])))


def _moment(label: str, m: dict) -> Moment:
    dmabufs = tuple((fd, MIB, "vfio_pci_core") for fd, _ in m["dmabufs"])
    kernel = KernelProcess(dmabufs, maps(MIB, 4096, MIB), tuple(map(tuple, m["dmabufs"])),
                           tuple(map(tuple, m["states"])), m["fd_count"])
    return Moment(label, kernel, m["trace_line"], m["command"])


def step(check: str) -> LifecycleStep:
    c = CAPTURE[check]
    before, disabled, enabled = (_moment(label, m) for label, m in c["moments"].items())
    b, a = c["blocked_dma"], c["after"]
    iova = int(c["iova"], 16)
    pattern = bytes.fromhex(a["pattern"])
    return LifecycleStep(
        check=check, device=c["device"], bar=c["bar"], iova=iova, size=c["size"],
        before=before, disabled=disabled, enabled=enabled,
        trace_disabling=_trace(before.trace_line, disabled.trace_line),
        trace_enabling=_trace(disabled.trace_line, enabled.trace_line),
        blocked=BlockedDma(int(b["iova"], 16), int(b["iova"], 16) - iova,
                           bytes.fromhex(b["pattern"]), bytes(64), bytes.fromhex(b["read_back"]),
                           tuple(b["l1_dmesg"])),
        after=P2PTransfer(seed=a["seed"], size=a["size"], bar2_iova=iova, src_offset=0,
                          dst_offset=a["destination_offset"], pattern=pattern,
                          source_in_file=pattern, before=bytes(64),
                          after=bytes.fromhex(a["read_back"]), l1_dmesg=()),
        bar_access=BarAccess(0x010000ED, 0x5A5AA5A5, 0xA5A55A5A, 0xFFFF, 0xFFFF),
        alive=True, reset_method=c["reset_method"], trace_earlier=_trace(0, before.trace_line))


def judged(check: str, **changes):
    s = dataclasses.replace(step(check), **changes)
    ev = with_main(captured(lifecycle={check: s}), trace=tuple(parse_trace("\n".join(LINES))))
    return VERDICT[check](ev)


def _without(records: tuple, kind: type) -> tuple:
    return tuple(r for r in records if not isinstance(r, kind))


def _states(m: Moment, fd: int, state: str) -> Moment:
    states = tuple((f, state if f == fd else s) for f, s in m.kernel.dmabuf_states)
    return dataclasses.replace(m, kernel=dataclasses.replace(m.kernel, dmabuf_states=states))


BOTH = pytest.mark.parametrize("check", ["decode-toggle", "reset"])


@BOTH
def test_the_captured_step_passes_on_what_each_act_left(check):
    v = judged(check)
    assert v.observed == "pass", v.reason
    assert "dma-buf (fd 22) revoked and live again, the same fd and inode" in v.reason
    assert "mapped through its dma-buf (iommufd_backend_map_file_dma fd 22)" in v.reason
    assert any("IOMMU_IOAS_MAP_FILE" in g for g in v.grounds)


def test_a_reset_pass_says_the_device_itself_was_not_reset():
    assert "L1 reset_method: none, so the device itself was not reset" in judged("reset").reason


@BOTH
def test_a_dma_that_got_through_while_the_bar_was_away_fails(check):
    s = step(check)
    assert s.blocked is not None
    leaked = dataclasses.replace(s.blocked, after=s.blocked.pattern)
    v = judged(check, blocked=leaked)
    assert v.observed == "fail" and "edu's DMA reached BAR 2 while" in v.reason


@BOTH
def test_a_dmabuf_never_revoked_fails_in_the_kernels_words(check):
    s = step(check)
    v = judged(check, disabled=_states(s.disabled, 22, "live"))
    assert v.observed == "fail"
    assert "BAR 2's dma-buf (fd 22) was live at" in v.reason and "not revoked" in v.reason


@BOTH
def test_a_dmabuf_left_revoked_fails(check):
    v = judged(check, enabled=_states(step(check).enabled, 22, "revoked"))
    assert v.observed == "fail" and "was revoked at" in v.reason


@BOTH
def test_a_replaced_dmabuf_fails_even_with_the_same_fd_number(check):
    s = step(check)
    kernel = dataclasses.replace(s.enabled.kernel, dmabuf_inodes=((19, 1), (22, 99)))
    v = judged(check, enabled=dataclasses.replace(s.enabled, kernel=kernel))
    assert v.observed == "fail" and "dma-bufs changed across the step" in v.reason


@BOTH
def test_a_device_that_kept_decoding_fails(check):
    s = step(check)
    v = judged(check, disabled=dataclasses.replace(s.disabled, command=0x0106))
    assert v.observed == "fail" and "the device still decodes memory" in v.reason


@BOTH
def test_a_bar_left_in_the_dma_map_fails(check):
    s = step(check)
    v = judged(check, trace_disabling=_without(s.trace_disabling, ListenerDel))
    assert v.observed == "fail" and "it stayed in L2's DMA map" in v.reason


@BOTH
def test_a_bar_iommufd_did_not_unmap_fails(check):
    s = step(check)
    v = judged(check, trace_disabling=_without(s.trace_disabling, IommufdUnmap))
    assert v.observed == "fail" and "iommufd did not unmap BAR 2" in v.reason


@BOTH
def test_a_bar_not_mapped_again_through_its_dmabuf_fails(check):
    s = step(check)
    again = tuple(dataclasses.replace(r, fd=99) if isinstance(r, IommufdMapFile) else r
                  for r in s.trace_enabling)
    v = judged(check, trace_enabling=again)
    assert v.observed == "fail" and "did not map BAR 2's dma-buf (fd 22)" in v.reason


def test_a_reset_without_vfio_pci_reset_fails():
    s = step("reset")
    kept = tuple(r for r in s.trace_disabling
                 if not (isinstance(r, Other) and r.event == "vfio_pci_reset"))
    v = judged("reset", trace_disabling=kept)
    assert v.observed == "fail" and f"no vfio_pci_reset of {IVSHMEM}" in v.reason


@BOTH
def test_l2_dying_fails(check):
    v = judged(check, alive=False)
    assert v.observed == "fail" and f"L2 died during the {check} step" in v.reason


@BOTH
def test_missing_positions_or_kernel_answers_are_errors(check):
    s = step(check)
    assert judged(check, enabled=dataclasses.replace(s.enabled, trace_line=-1)).observed == \
        "error"
    unknown = judged(check, disabled=_states(s.disabled, 22, "pidfd_getfd: Operation not "
                                                            "permitted"))
    assert unknown.observed == "error" and "could not be asked" in unknown.reason
    assert judged(check, disabled=dataclasses.replace(s.disabled, command=None)).observed == \
        "error"


def test_a_step_that_was_not_run_is_an_error():
    v = decode_toggle(captured())
    assert v.observed == "error" and "the decode-toggle step was not run" in v.reason


@BOTH
def test_a_failed_transfer_after_the_step_carries_its_findings(check):
    s = step(check)
    assert s.after is not None
    v = judged(check, after=dataclasses.replace(s.after, after=bytes(64)))
    assert v.observed == "fail" and v.reason.startswith("once ")
    assert "bytes-missing" in v.findings


@BOTH
def test_a_failure_of_the_step_itself_cannot_pass_for_the_expected_one(check):
    """The iommufd/no-dmabuf xfail wants the transfer's findings; a step that also broke
    something else must not show them, or a new bug would hide behind the old xfail."""
    s = step(check)
    assert s.after is not None and s.blocked is not None
    v = judged(check, after=dataclasses.replace(s.after, after=bytes(64)),
               blocked=dataclasses.replace(s.blocked, after=s.blocked.pattern))
    assert v.observed == "fail" and not v.findings
    expectation = EXPECTATIONS[(check, "no-dmabuf", "iommufd")]
    assert expectation.outcome == "xfail"
    outcome, met, reason = settle(expectation, v.observed, v.reason, v.findings)
    assert outcome == "fail" and not met and "not the expected failure" in reason


@BOTH
def test_the_trace_is_cut_at_the_moments_the_step_recorded(check):
    """lifecycle.with_traces gives each act the lines between its moments, and nothing
    when a position is unknown."""
    from harness.collect.lifecycle import with_traces

    s = step(check)
    bare = dataclasses.replace(s, trace_disabling=(), trace_enabling=(), trace_earlier=())
    cut = with_traces(bare, LINES)
    assert (cut.trace_disabling, cut.trace_enabling, cut.trace_earlier) == \
        (s.trace_disabling, s.trace_enabling, s.trace_earlier)
    assert any(isinstance(r, ListenerDel) for r in cut.trace_disabling)
    unknown = with_traces(dataclasses.replace(bare, disabled=dataclasses.replace(
        s.disabled, trace_line=-1)), LINES)
    assert unknown.trace_disabling == () and unknown.trace_enabling == ()


# -- the reset of a device that has a reset method (nvme: FLR) --------------------------------

NVME, NVME_FD = "0000:00:04.0", 40
#: Lines of a real run (intel-iommu, dmabuf, iommufd, 11.1.3) with nvme in L2.
NVME_DMABUF = ('vfio_region_dmabuf Device 0000:00:04.0, dmabuf fd 40 region 0 "0000:00:04.0 '
               'BAR 0", offset: 0x0, size: 0x4000')
FLR = "vfio_pci_reset_flr 0000:00:04.0 FLR/VFIO_DEVICE_RESET"
REGISTERS = bytes.fromhex("ff07010f201840000004010000000000")


def _with_nvme(m: Moment, state: str, command: int) -> Moment:
    kernel = dataclasses.replace(
        m.kernel, dmabuf_states=(*m.kernel.dmabuf_states, (NVME_FD, state)),
        dmabuf_inodes=(*m.kernel.dmabuf_inodes, (NVME_FD, 9)))
    return dataclasses.replace(m, kernel=kernel, commands={NVME: command})


def device_reset(**changes) -> DeviceReset:
    dr = DeviceReset(NVME, "flr", 0, 0xC0300000, 0x14, 0x00460000, 0x00460000, 0,
                     P2PRead(0xC0300000, REGISTERS, bytes(16), ()),
                     P2PRead(0xC0300000, REGISTERS, REGISTERS, ()))
    return dataclasses.replace(dr, **changes)


def judged_reset(states=("live", "revoked", "live"), trace=(FLR,), **changes):
    s = step("reset")
    before, disabled, enabled = (_with_nvme(m, st, cmd) for m, st, cmd in
                                 zip((s.before, s.disabled, s.enabled), states,
                                     (0x0106, 0x0100, 0x0106), strict=True))
    s = dataclasses.replace(s, before=before, disabled=disabled, enabled=enabled,
                            trace_disabling=s.trace_disabling + tuple(parse_trace(
                                "\n".join(trace))),
                            device_reset=device_reset(**changes))
    ev = with_main(captured(lifecycle={"reset": s}),
                   trace=tuple(parse_trace("\n".join([*LINES, NVME_DMABUF]))))
    return reset(ev)


def test_a_device_reset_by_flr_passes_on_what_it_left():
    v = judged_reset()
    assert v.observed == "pass", v.reason
    assert "0000:00:04.0 (reset_method flr) reset by QEMU (vfio_pci_reset_flr)" in v.reason
    assert "its dma-buf (fd 40) revoked and live again" in v.reason


def test_a_device_that_kept_its_register_was_not_reset():
    v = judged_reset(after=0x00460000)
    assert v.observed == "fail" and "0000:00:04.0 was not reset" in v.reason


def test_a_device_reset_qemu_did_not_trace_fails():
    v = judged_reset(trace=())
    assert v.observed == "fail" and "no vfio_pci_reset_flr" in v.reason


def test_a_reset_device_whose_dmabuf_stayed_live_fails():
    v = judged_reset(states=("live", "live", "live"))
    assert v.observed == "fail" and "live -> live -> live" in v.reason


def test_a_dma_read_through_a_reset_device_while_away_fails():
    v = judged_reset(blocked=P2PRead(0xC0300000, REGISTERS, REGISTERS, ()))
    assert v.observed == "fail" and "while its BAR was away" in v.reason


def test_a_reset_device_unreadable_by_dma_once_back_fails():
    v = judged_reset(read=P2PRead(0xC0300000, REGISTERS, bytes(16), ()))
    assert v.observed == "fail" and "once its BAR was back" in v.reason
    assert not v.findings


def test_a_register_that_never_took_the_value_is_an_error():
    assert judged_reset(before=0).observed == "error"


def test_a_reset_device_without_any_dmabuf_leaves_the_verdict_to_the_step():
    """A QEMU that made no dma-buf at all: the step says so; the device reset adds no error."""
    s = step("reset")
    empty = [dataclasses.replace(m, kernel=dataclasses.replace(
        m.kernel, dmabuf_fds=(), dmabuf_inodes=(), dmabuf_states=()), commands={NVME: c})
        for m, c in zip((s.before, s.disabled, s.enabled), (0x0106, 0x0100, 0x0106),
                        strict=True)]
    s = dataclasses.replace(s, before=empty[0], disabled=empty[1], enabled=empty[2],
                            trace_disabling=s.trace_disabling + tuple(parse_trace(FLR)),
                            device_reset=device_reset())
    trace = tuple(r for r in parse_trace("\n".join(LINES)) if type(r).__name__ != "RegionDmabuf")
    v = reset(with_main(captured(lifecycle={"reset": s}), trace=trace))
    assert v.observed == "fail" and "L2 holds no dma-buf" in v.reason


def test_a_device_the_kernel_cannot_reset_is_an_error_not_a_pass():
    v = judged_reset(reset_method="")
    assert v.observed == "error" and "no reset method" in v.reason
