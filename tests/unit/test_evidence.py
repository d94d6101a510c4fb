"""Parsing L2's trace lines and messages, on lines captured from QEMU 11.1.3 in L1."""

from pathlib import Path

from harness.evidence.records import (
    ContainerDmaMapFailed,
    DmabufNotSupported,
    DmabufUnavailable,
    IoasMapFailed,
    IommufdMap,
    IommufdMapFile,
    ListenerAddRam,
    ListenerNoDmaMap,
    Other,
    OtherMessage,
    P2PNotSupported,
    RegionDmabuf,
    RegionMmap,
    RegionSetup,
    of_type,
    parse_message,
    parse_messages,
    parse_trace,
    parse_trace_line,
)

DATA = Path(__file__).parent.parent / "data" / "qemu-11.1.3"


def test_region_dmabuf_line():
    r = parse_trace_line('vfio_region_dmabuf Device 0000:00:03.0, dmabuf fd 20 region 2 '
                         '"0000:00:03.0 BAR 2", offset: 0x0, size: 0x100000')
    assert r == RegionDmabuf("0000:00:03.0", 20, 2, "0000:00:03.0 BAR 2", 0, 0x100000)


def test_region_mmap_and_setup_lines():
    assert parse_trace_line("vfio_region_mmap Region 0000:00:03.0 BAR 0 mmaps[0] [0x0 - 0xff]") \
        == RegionMmap("0000:00:03.0 BAR 0", 0, 0, 0xFF)
    setup = parse_trace_line('vfio_region_setup Device 0000:00:02.0, region 0 '
                             '"0000:00:02.0 BAR 0", flags: 0x7, offset: 0x0, size: 0x100000')
    assert setup == RegionSetup("0000:00:02.0", 0, "0000:00:02.0 BAR 0", 7, 0, 0x100000)


def test_trace_with_pid_and_timestamp_prefix():
    r = parse_trace_line("1234@1700000000.123456:iommufd_backend_map_file_dma  iommufd=15 "
                         "ioas=2 iova=0xfd000000 size=0x100000 fd=20 start=0 readonly=0 (0)")
    assert r == IommufdMapFile(0xFD000000, 0x100000, 20, 0)


def test_failed_iommufd_map_keeps_its_return_code():
    r = parse_trace_line("iommufd_backend_map_dma  iommufd=16 ioas=2 iova=0xc0100000 "
                         "size=0x1000 addr=0x7f4657f82000 readonly=0 (-1)")
    assert r == IommufdMap(0xC0100000, 0x1000, 0x7F4657F82000, -1)


def test_unknown_events_are_kept():
    r = parse_trace_line("vfio_region_mmaps_set_enabled Region 0000:00:02.0 BAR 0 mmaps enabled: 1")
    assert r == Other("vfio_region_mmaps_set_enabled", "Region 0000:00:02.0 BAR 0 mmaps enabled: 1")


def test_captured_iommufd_trace():
    records = parse_trace((DATA / "intel-iommu-dmabuf-iommufd.trace").read_text())
    dmabufs = of_type(records, RegionDmabuf)
    assert [(d.name, d.size) for d in dmabufs] == [("0000:00:02.0 BAR 0", 0x100000),
                                                   ("0000:00:03.0 BAR 2", 0x100000)]
    mmaps = of_type(records, RegionMmap)
    assert {m.name for m in mmaps} == {"0000:00:02.0 BAR 0", "0000:00:03.0 BAR 0",
                                       "0000:00:03.0 BAR 2"}
    files = of_type(records, IommufdMapFile)
    assert {f.fd for f in files} == {d.fd for d in dmabufs}
    assert all(f.ret == 0 for f in files)
    assert of_type(records, ListenerNoDmaMap)[0].size == 0x100  # the sub-page BAR
    assert len(of_type(records, RegionSetup)) == 12


def test_captured_legacy_trace_maps_bars_by_address():
    records = parse_trace((DATA / "intel-iommu-dmabuf-legacy.trace").read_text())
    assert not of_type(records, IommufdMapFile)
    assert ListenerAddRam(0xC0200000, 0xC02FFFFF, 0x7F0E74000000) in records


def test_captured_iommufd_messages():
    msgs = parse_messages((DATA / "intel-iommu-dmabuf-iommufd.stderr").read_text())
    (unavailable,) = of_type(msgs, DmabufUnavailable)
    assert (unavailable.region, unavailable.error) == ("0000:00:03.0 BAR 0", "Invalid argument")
    assert of_type(msgs, IoasMapFailed)[0].error == "Bad address"
    (failed,) = of_type(msgs, ContainerDmaMapFailed)
    assert (failed.iova, failed.size, failed.ret) == (0xC0100000, 0x1000, -14)
    assert of_type(msgs, P2PNotSupported)[0].device == "0000:00:03.0"
    assert not of_type(msgs, DmabufNotSupported)


def test_not_supported_in_both_wordings():
    v111 = ("qemu-system-x86_64: -device vfio-pci,host=0000:00:03.0,iommufd=iofd0: warning: "
            "VFIO dma-buf not supported in kernel, using mmap fallback, P2P DMA will not work")
    v110 = ("qemu-system-x86_64: warning: VFIO dma-buf not supported in kernel, "
            "using mmap fallback, PCI BAR IOMMU mappings may fail")
    assert isinstance(parse_message(v111), DmabufNotSupported)
    assert isinstance(parse_message(v110), DmabufNotSupported)


def test_region_unavailable_in_the_11_0_wording():
    m = parse_message("qemu-system-x86_64: warning: 0000:00:04.0 BAR 0: dma-buf unavailable, "
                      "using mmap fallback, PCI BAR IOMMU mappings may fail: Invalid argument")
    assert m == DmabufUnavailable("0000:00:04.0 BAR 0", "Invalid argument", m.text)


def test_other_messages_are_kept():
    m = parse_message("qemu-system-x86_64: vfio: Cannot reset device 0000:00:03.0, "
                      "no available reset mechanism.")
    assert isinstance(m, OtherMessage)
    assert parse_message("   ") is None


def test_a_trace_event_the_qemu_lacks_is_its_own_message_not_a_dmabuf_warning():
    from harness.evidence.records import TraceEventUnknown

    m = parse_message("qemu-system-x86_64: -trace vfio_region_dmabuf_revoke: warning: trace "
                      "event 'vfio_region_dmabuf_revoke' does not exist")
    assert isinstance(m, TraceEventUnknown) and m.event == "vfio_region_dmabuf_revoke"


def test_a_reworded_dmabuf_warning_is_an_unknown_wording():
    from harness.evidence.records import UnknownDmabufWarning

    m = parse_message("qemu-system-x86_64: warning: VFIO dma-buf unsupported by this kernel")
    assert isinstance(m, UnknownDmabufWarning)
