"""The multi-range verdict on captured real runs (intel-iommu, dmabuf kernel, QEMU 11.1.3,
nvme's BAR 0 mmapped around its MSI-X table): legacy passes, iommufd's refusal of a
dma-buf of two ranges is exactly the expected failure, a kernel that maps it would be an
xpass, and each way the evidence can be missing or wrong is an error or a plain failure."""

import dataclasses
import json

import pytest

from harness.checks.matrix import EXPECTATIONS, settle
from harness.collect.l2_probes import mtree_mmaps
from harness.collect.msix_split import withheld
from harness.evidence.records import (
    IommufdMapFile,
    L2Run,
    P2PRead,
    RegionDmabuf,
    RegionMmap,
    SideRun,
    parse_messages,
    parse_trace,
)
from harness.verdicts.creation import multi_range
from tests.unit.test_verdicts import DATA, captured, maps, with_witness, witness

CAPTURE = json.loads((DATA / "intel-iommu-dmabuf-multi-range.json").read_text())
NVME = CAPTURE["devices"]["nvme"]
MTREE = mtree_mmaps((DATA / "intel-iommu-dmabuf-iommufd-multi-range.mtree").read_text())


def split(backend: str, **changes) -> SideRun:
    """The captured multi-range evidence of `backend`; `changes` replace fields."""
    name = f"intel-iommu-dmabuf-{backend}-multi-range"
    stderr = (DATA / f"{name}.stderr").read_text()
    c = CAPTURE[backend]
    (state,) = {state for _, state in c["kernel_dmabuf_states"]}
    steps = witness([CAPTURE["devices"]["edu"], NVME],
                    {fd: (NVME, 1 + i, size) for i, (fd, size, _) in
                     enumerate(c["kernel_dmabuf_fds"])}, maps(0x2000, 0x1000), live=state)
    run = with_witness(L2Run(tuple(parse_trace((DATA / f"{name}.trace").read_text())),
                             tuple(parse_messages(stderr)), None, MTREE, True), steps)
    r = c["read"]
    read = P2PRead(int(r["iova"], 16), bytes.fromhex(r["expected"]), bytes.fromhex(r["got"]),
                   tuple(r["l1_dmesg"]), r["engine_error"])
    mr = SideRun(devices=CAPTURE["devices"],
                    bars={b: {int(i): s for i, s in bars.items()}
                          for b, bars in CAPTURE["bars"].items()},
                    device=NVME, bar=0, iova=CAPTURE["iova"], run=run,
                    withheld=withheld(stderr), read=read)
    return dataclasses.replace(mr, **changes)


def judged(backend: str, **changes):
    return multi_range(captured(backend=backend, side=split(backend, **changes)))


def outcome(backend: str, verdict) -> str:
    return settle(EXPECTATIONS[("multi-range", "dmabuf", backend)], verdict.observed,
                  verdict.reason, verdict.findings)[0]


def test_legacy_maps_both_pieces_and_reads_the_registers_by_dma():
    v = judged("legacy")
    assert v.observed == "pass", v.reason
    assert "2 pieces ([0x0, 0x2000) + [0x3000, 0x4000))" in v.reason
    assert "several ranges" in v.reason and "ff07010f" in v.reason


def test_iommufd_refusing_two_ranges_is_the_expected_failure():
    v = judged("iommufd")
    assert v.observed == "fail"
    assert v.findings == {"multi-range-refused", "read-missing"}
    assert "0x0: [-95]" in v.reason and "fault addr 0xc0100000" in v.reason
    assert outcome("iommufd", v) == "xfail"


def test_a_kernel_mapping_two_ranges_through_iommufd_would_be_an_xpass():
    mr = split("iommufd")
    ok = tuple(dataclasses.replace(r, ret=0) if isinstance(r, IommufdMapFile) else r
               for r in mr.run.trace)
    messages = tuple(m for m in mr.run.messages if "dma_map" not in m.text
                     and "peer-to-peer" not in m.text)
    read = dataclasses.replace(mr.read, got=mr.read.expected, l1_dmesg=())
    v = multi_range(captured(side=dataclasses.replace(
        mr, run=dataclasses.replace(mr.run, trace=ok, messages=messages), read=read)))
    assert v.observed == "pass", v.reason
    assert outcome("iommufd", v) == "xpass"


def test_without_the_fixture_saying_it_acted_nothing_is_judged():
    v = judged("legacy", withheld=())
    assert v.observed == "error" and "never said it withheld" in v.reason


def test_a_bar_mmapped_whole_despite_the_table_fails():
    mr = split("legacy")
    one = tuple(r for r in mr.run.trace
                if not (isinstance(r, RegionMmap) and r.name.startswith(NVME) and r.index == 1)
                and not (isinstance(r, RegionDmabuf) and r.offset == 0x3000))
    v = multi_range(captured(backend="legacy", side=dataclasses.replace(
        mr, run=dataclasses.replace(mr.run, trace=one))))
    assert v.observed == "fail" and "in 1 piece(s)" in v.reason
    assert not v.findings


def test_a_dma_buf_the_kernel_holds_as_one_range_fails():
    mr = split("legacy")
    states = tuple((fd, "live") for fd, _ in mr.run.process.dmabuf_states)
    v = judged("legacy", run=dataclasses.replace(
        mr.run, process=dataclasses.replace(mr.run.process, dmabuf_states=states)))
    assert v.observed == "fail" and "not one of several ranges" in v.reason


def test_a_range_missing_from_the_dma_buf_fails():
    mr = split("legacy")
    trace = tuple(r for r in mr.run.trace
                  if not (isinstance(r, RegionDmabuf) and r.offset == 0x3000))
    v = judged("legacy", run=dataclasses.replace(mr.run, trace=trace))
    assert v.observed == "fail" and "1 vfio_region_dmabuf for 2 mmap(s)" in v.reason


def test_a_dma_read_that_brings_back_other_bytes_fails_without_the_signature():
    mr = split("legacy")
    v = judged("legacy", read=dataclasses.replace(mr.read, got=bytes(16)))
    assert v.observed == "fail" and v.findings == {"read-missing"}
    assert outcome("legacy", v) == "fail"


def test_iommufd_refusing_for_another_reason_is_not_the_expected_failure():
    mr = split("iommufd")
    messages = tuple(dataclasses.replace(m, ret=-14) if hasattr(m, "iova") else m
                     for m in mr.run.messages)
    v = judged("iommufd", run=dataclasses.replace(mr.run, messages=messages))
    assert "multi-range-refused" not in v.findings
    assert outcome("iommufd", v) == "fail"


@pytest.mark.parametrize("change, words", [
    ({"trace": ()}, "trace is missing"),
    ({"process": None}, "no view of the L2 process"),
])
def test_missing_evidence_is_an_error(change, words):
    v = judged("legacy", run=dataclasses.replace(split("legacy").run, **change))
    assert v.observed == "error" and words in v.reason


def test_no_dma_read_is_an_error():
    assert judged("legacy", read=None).observed == "error"
