"""vfio-user for real: QEMU's vfio-user-pci client (the QEMU under test) on the harness's
server in L1, which serves the real devices bound to vfio-pci there."""

import os

import pytest

from harness.collect.stack import booted
from harness.l1.vfio_user import VfioUserServers
from harness.l2.backends import VFIO_USER
from harness.l2.dma_engine import EduEngine
from harness.l2.pci import PciConfig
from harness.l2.qemu import L1_QMP_PORT, L1_QTEST_PORT, L2Device, L2Qemu, L2Spec
from harness.platforms import X86_64, EduDevice, IvshmemDevice


@pytest.fixture(scope="module")
def l1(qemu, images, accelerator, artifacts):
    with booted(qemu, images, X86_64.viommu("intel-iommu"), "dmabuf",
                artifacts / "vfio-user-tests", accel=accelerator) as stack:
        inventory = stack.vfio.inventory([EduDevice().vendor_device,
                                          IvshmemDevice().vendor_device])
        bound = stack.vfio.bind([d.bdf for d in inventory.devices])
        yield stack, {d.vendor_device: d for d in bound}


def test_a_real_device_served_over_vfio_user_is_mmapped_and_does_dma_into_l2(l1, tmp_path):
    """Both devices on sockets: their BARs come mmapped from the device fd the server
    passes (not through socket messages), edu answers through it, and edu's DMA reaches
    L2's memory through the memfd QEMU hands the server with DMA_MAP."""
    stack, devices = l1
    edu, ivshmem = (devices[d.vendor_device] for d in (EduDevice(), IvshmemDevice()))
    spec = L2Spec(VFIO_USER, (L2Device(edu.bdf), L2Device(ivshmem.bdf)),
                  traces=("vfio_user_*", "vfio_region_*"))
    m = stack.machine
    with VfioUserServers(stack.session, (edu.bdf, ivshmem.bdf), VFIO_USER.sockets,
                         tmp_path / "servers") as servers:
        with L2Qemu(stack.session, spec, tmp_path, m.host_ports[L1_QMP_PORT],
                    m.host_ports[L1_QTEST_PORT], start_timeout=20) as q:
            pci = PciConfig(q.qtest, spec.platform.l2)
            edu_slot, ivs_slot = pci.find(edu.vendor_device), pci.find(ivshmem.vendor_device)
            bar0 = pci.place(edu_slot)[0][1]
            bar2 = pci.place(ivs_slot)[2][1]
            pci.enable(edu_slot)
            pci.enable(ivs_slot, master=False)
            engine = EduEngine(q.qtest, bar0)
            engine.probe()
            assert engine.liveness(0x12345678) == 0xEDCBA987
            q.qtest.writel(bar2 + 0x10, 0xCAFEF00D)
            assert q.qtest.readl(bar2 + 0x10) == 0xCAFEF00D
            pattern = os.urandom(64)
            q.qtest.write(0x100000, pattern)
            engine.read_into_device(0x100000, len(pattern))
            engine.write_from_device(0x200000, len(pattern))
            assert q.qtest.read(0x200000, len(pattern)) == pattern
            view = stack.vfio.process(q.pid)
        logs = servers.logs()
    mapped = {line.split()[-1] for line in view.vfio_maps}
    assert {edu.cdev, ivshmem.cdev} <= mapped, view.vfio_maps
    announced = {bdf: {e["index"]: e["size"] for e in log
                       if e.get("command") == "DEVICE_GET_REGION_INFO" and e.get("fd")}
                 for bdf, log in logs.items()}
    assert announced == {edu.bdf: {b.index: b.size for b in edu.bars},
                         ivshmem.bdf: {b.index: b.size for b in ivshmem.bars}}
    for bdf, log in logs.items():
        assert any(e.get("command") == "DMA_MAP" and e["fd"] == "memfd" and e["iova"] == 0
                   for e in log), log
        assert not [e for e in log if e.get("error") and e["command"] != "DEVICE_GET_IRQ_INFO"]
        assert log[-1] == {"event": "disconnected", "bdf": bdf}  # L2's quit closed it
    assert not stack.session.run("pgrep -f 'qemu-system|vfio_user_server'",
                                 check=False).stdout.strip()
