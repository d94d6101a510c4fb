"""What a booted L1 offers for device assignment, and how that differs from what it should.

The survey binds the passed-through devices to vfio-pci, looks at /dev/iommu,
the groups and cdevs, and asks the kernel whether it offers VFIO dma-buf. The
comparison with the expectation is a pure function, so it is tested without
a VM, and the same function decides `vfio-harness run` and the VM tests.
"""

from dataclasses import dataclass

from harness.collect.stack import L1Stack
from harness.l1.vfio import DmabufProbe, Inventory, L1Device
from harness.platforms import PassthroughDevice


@dataclass(frozen=True)
class Survey:
    viommu: str
    kernel: str
    boot_seconds: float
    inventory: Inventory
    bound: tuple[L1Device, ...]
    probes: dict[str, DmabufProbe]
    expect_dmabuf: bool


def survey(stack: L1Stack, devices: tuple[PassthroughDevice, ...],
           expect_dmabuf: bool) -> Survey:
    inventory = stack.vfio.inventory([d.vendor_device for d in devices])
    bdfs = [inventory.find(d.vendor_device).bdf for d in devices]
    bound = stack.vfio.bind(bdfs)
    probes = stack.vfio.probe_dmabuf(bdfs)
    return Survey(stack.viommu.name, stack.kernel, stack.boot_seconds, inventory,
                  tuple(bound), probes, expect_dmabuf)


#: The errno of a kernel without VFIO dma-buf: the stub returns -ENOTTY.
ENOTTY = 25


def problems(s: Survey) -> list[str]:
    """Everything about this L1 that stands in the way of the scenarios, in words."""
    out = []
    if not s.inventory.iommus:
        out.append("no IOMMU registered in /sys/class/iommu")
    if not s.inventory.dev_iommu:
        out.append("/dev/iommu is missing (kernel without IOMMUFD?)")
    if not s.inventory.dev_vfio_container:
        out.append("/dev/vfio/vfio is missing (kernel without VFIO_CONTAINER?)")
    for dev in s.bound:
        if dev.driver != "vfio-pci":
            out.append(f"{dev.bdf} ({dev.vendor_device}) is bound to {dev.driver}, not vfio-pci")
        if not dev.cdev:
            out.append(f"{dev.bdf} has no VFIO cdev in /dev/vfio/devices")
        if not dev.alone_in_group:
            out.append(f"{dev.bdf} shares IOMMU group {dev.iommu_group} with "
                       f"{', '.join(m for m in dev.group_members if m != dev.bdf)}")
        probe = s.probes.get(dev.bdf)
        if probe is None:
            out.append(f"{dev.bdf}: the kernel was not asked about dma-buf")
        elif s.expect_dmabuf and not probe.supported:
            out.append(f"{dev.bdf}: kernel {s.kernel} should offer VFIO dma-buf, "
                       f"probe said {probe.error}")
        elif not s.expect_dmabuf and (probe.supported or probe.errno != ENOTTY):
            said = "supported" if probe.supported else probe.error
            out.append(f"{dev.bdf}: kernel {s.kernel} should answer ENOTTY for VFIO dma-buf, "
                       f"probe said {said}")
    return out
