"""The platforms the harness runs on, as data: what differs between architectures.

A platform names the L0 QEMU and its machine, the vIOMMUs it can give L1, the
devices L1 hands to L2, L1's console, the kernel image a build makes and where,
the QEMU under test and its machine: everything an architecture decides. x86_64
is the one filled in today; another architecture is another record, not another
code path.
"""

from dataclasses import dataclass
from typing import Protocol

from harness.base.errors import BadInput


class L0Files(Protocol):
    """What a device's L0 arguments may name: the boot's files (l0.RunFiles)."""

    @property
    def ivshmem(self) -> object: ...


@dataclass(frozen=True)
class VIommu:
    """An emulated IOMMU: its L0 device and the L1 kernel arguments it needs."""

    name: str
    device: str
    kernel_args: tuple[str, ...] = ()

    @property
    def driver(self) -> str:
        """The QEMU device type, without its properties."""
        return self.device.split(",")[0]


#: The vIOMMUs L0 can give L1. virtio-iommu on x86 has no MSI isolation, so
#: iommufd and type1 refuse to attach without allow_unsafe_interrupts.
VIOMMUS = {
    v.name: v for v in (
        VIommu("intel-iommu", "intel-iommu,intremap=on,aw-bits=48", ("intel_iommu=on",)),
        VIommu("virtio-iommu", "virtio-iommu-pci",
               ("iommufd.allow_unsafe_interrupts=1",
                "vfio_iommu_type1.allow_unsafe_interrupts=1")),
        VIommu("amd-iommu", "amd-iommu,intremap=on"),  # on by default in Linux
    )
}


def viommu(name: str) -> VIommu:
    try:
        return VIOMMUS[name]
    except KeyError:
        raise BadInput(f"unknown vIOMMU {name!r}; known: {', '.join(VIOMMUS)}") from None


@dataclass(frozen=True)
class PassthroughDevice:
    """An emulated PCI device L1 hands to vfio-pci, found in L1 by vendor:device."""

    name: str
    vendor_device: str
    device: str  # QEMU -device driver

    def args(self, files: "L0Files") -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class EduDevice(PassthroughDevice):
    name: str = "edu"
    vendor_device: str = "1234:11e8"
    device: str = "edu"

    def args(self, files: "L0Files") -> list[str]:
        # edu clamps DMA addresses to 28 bits by default: BAR addresses would not fit.
        return ["-device", "edu,dma_mask=0xffffffffffffffff"]


@dataclass(frozen=True)
class IvshmemDevice(PassthroughDevice):
    name: str = "ivshmem"
    vendor_device: str = "1af4:1110"
    device: str = "ivshmem-plain"
    size: str = "1M"

    def args(self, files: "L0Files") -> list[str]:
        return ["-object", f"memory-backend-file,id=ivmem,share=on,"
                           f"mem-path={files.ivshmem},size={self.size}",
                "-device", "ivshmem-plain,memdev=ivmem"]


@dataclass(frozen=True)
class NvmeDevice(PassthroughDevice):
    """A device whose MSI-X table sits inside BAR 0, between registers and PBA: a BAR that
    QEMU mmaps in two pieces when it may not map the table (the multi-range check)."""

    name: str = "nvme"
    vendor_device: str = "1b36:0010"
    device: str = "nvme"

    def args(self, files: "L0Files") -> list[str]:
        return ["-device", "nvme,serial=vfio-harness"]  # no drive: no namespace is needed


DEFAULT_DEVICES: tuple[PassthroughDevice, ...] = (EduDevice(), IvshmemDevice(), NvmeDevice())


@dataclass(frozen=True)
class Platform:
    arch: str
    l0_qemu: str                     # the L0 system emulator's binary name
    machine: str                     # L0's machine type
    cpu: str
    viommus: dict[str, VIommu]
    default_viommus: tuple[str, ...]
    devices: tuple[PassthroughDevice, ...]
    console: str                     # L1's serial console device
    kernel_target: str               # what `make` builds
    kernel_built: str                # where the build leaves it, in the object tree
    kernel_image: str                # its name in an image artifact
    kernel_magic: tuple[int, bytes]  # where its boot header's signature is, and what it is
    l2_qemu: str                     # the QEMU under test's binary name in L1
    l2_machine: str
    l2_package: str                  # the Debian package that ships it in the rootfs


X86_64 = Platform(
    arch="x86_64", l0_qemu="qemu-system-x86_64", machine="q35", cpu="max",
    viommus=VIOMMUS, default_viommus=("intel-iommu", "virtio-iommu"),
    devices=DEFAULT_DEVICES, console="ttyS0", kernel_target="bzImage",
    kernel_built="arch/x86/boot/bzImage", kernel_image="bzImage",
    kernel_magic=(0x202, b"HdrS"),  # the boot protocol header (Documentation/arch/x86/boot.rst)
    l2_qemu="qemu-system-x86_64", l2_machine="q35", l2_package="qemu-system-x86")

PLATFORMS = {p.arch: p for p in (X86_64,)}
