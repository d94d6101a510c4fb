"""The platforms the harness runs on, as data: what differs between architectures.

A platform names the L0 QEMU and its machine, the vIOMMUs it can give L1, the
devices L1 hands to L2, L1's console, the kernel image a build makes and where,
the QEMU under test and its machine: everything an architecture decides. x86_64
is the one filled in today; another architecture is another record, not another
code path.
"""

import shutil
from dataclasses import dataclass
from typing import Protocol

from harness.base.errors import BadInput


class L0Files(Protocol):
    """What a device's L0 arguments may name: the boot's files (l0.RunFiles)."""

    @property
    def ivshmem(self) -> object: ...


@dataclass(frozen=True)
class VIommu:
    """An emulated IOMMU: its L0 device (or the machine property that makes one, as arm64
    virt's SMMUv3 is) and the L1 kernel arguments it needs."""

    name: str
    device: str | None
    kernel_args: tuple[str, ...] = ()
    machine_props: str = ""

    @property
    def drivers(self) -> list[str]:
        """The QEMU device type L0 must have, without its properties (none: the machine's)."""
        return [self.device.split(",")[0]] if self.device else []


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


#: arm64 virt: SMMUv3 is a machine property, not a device. GICv3's ITS isolates MSIs,
#: so neither needs unsafe interrupts.
ARM_VIOMMUS = {
    v.name: v for v in (
        VIommu("smmuv3", None, machine_props="iommu=smmuv3"),
        VIommu("virtio-iommu", "virtio-iommu-pci"),
    )
}


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
class L2Layout:
    """L2's machine as the harness's own driver sees it under qtest (harness/l2/pci.py):
    nothing in L2 runs firmware, so where config space, the BAR window and RAM are is data."""

    machine: str
    #: PCI config space memory-mapped (ECAM) at this address; None: ports 0xcf8/0xcfc.
    ecam: int | None
    mmio_window: tuple[int, int]   # where BARs are put: [start, end)
    staging: int                   # an address in L2's RAM for DMA patterns
    #: How a hot-unplug completes with no guest: True, PCIe native hotplug (the harness
    #: powers the root port's slot off and on, as pciehp would); False, ACPI hotplug
    #: (a system_reset completes it, as in QEMU's own device-plug test).
    native_hotplug: bool = False


@dataclass(frozen=True)
class Platform:
    arch: str
    debian_arch: str                 # the rootfs's Debian architecture
    kernel_arch: str                 # Kbuild's ARCH=
    cross_compile: str               # Kbuild's CROSS_COMPILE= on an x86_64 host ("" native)
    l0_qemu: str                     # the L0 system emulator's binary name
    machine: str                     # L0's machine type
    cpu: str
    viommus: dict[str, VIommu]
    default_viommus: tuple[str, ...]
    devices: tuple[PassthroughDevice, ...]
    console: str                     # L1's serial console device
    #: L1 kernel arguments of the platform's own (after the console, before the vIOMMU's).
    kernel_args: tuple[str, ...]
    kernel_target: str               # what `make` builds
    kernel_built: str                # where the build leaves it, in the object tree
    kernel_image: str                # its name in an image artifact
    kernel_magic: tuple[int, bytes]  # where its boot header's signature is, and what it is
    l2_qemu: str                     # the QEMU under test's binary name in L1
    l2_package: str                  # the Debian package that ships it in the rootfs
    l2: L2Layout
    elf_machine: int                 # e_machine of L1's executables (EM_X86_64, EM_AARCH64)
    #: What goes before the names the platform's things get: cache artifacts and object
    #: trees, cell ids. "" for x86_64, the first platform, so that caches, results and
    #: baselines made before there were two keep their names.
    tag: str
    #: L1's network device (SSH), as -device takes it after its netdev.
    nic: str = "virtio-net-pci"

    def viommu(self, name: str) -> VIommu:
        try:
            return self.viommus[name]
        except KeyError:
            raise BadInput(f"unknown vIOMMU {name!r} on {self.arch}; known: "
                           f"{', '.join(self.viommus)}") from None

    def missing_compiler(self) -> str | None:
        """The cross compiler this platform's kernels need and the host lacks, with the
        package that brings it; None when it is there (or none is needed)."""
        gcc = f"{self.cross_compile}gcc"
        if not self.cross_compile or shutil.which(gcc):
            return None
        return f"{gcc} (apt-get install gcc-{self.cross_compile.rstrip('-')})"

    def make_args(self) -> list[str]:
        """What every `make` of a kernel for this platform is given."""
        return [f"ARCH={self.kernel_arch}",
                *([f"CROSS_COMPILE={self.cross_compile}"] if self.cross_compile else [])]


X86_64 = Platform(
    arch="x86_64", debian_arch="amd64", kernel_arch="x86", cross_compile="",
    l0_qemu="qemu-system-x86_64", machine="q35", cpu="max",
    viommus=VIOMMUS, default_viommus=("intel-iommu", "virtio-iommu"),
    devices=DEFAULT_DEVICES, console="ttyS0", kernel_target="bzImage",
    # The IO-APIC timer check at boot waits a fixed few ticks; TCG on a loaded host can
    # miss them, and with interrupt remapping Linux then panics ("timer doesn't work
    # through Interrupt-remapped IO-APIC": one L1 of a CI run). Virtual machines skip it.
    kernel_args=("no_timer_check",),
    kernel_built="arch/x86/boot/bzImage", kernel_image="bzImage",
    kernel_magic=(0x202, b"HdrS"),  # the boot protocol header (Documentation/arch/x86/boot.rst)
    l2_qemu="qemu-system-x86_64", l2_package="qemu-system-x86", elf_machine=62,
    # BARs inside q35's 32-bit PCI hole, above MMCONFIG (0xb0000000 + 256 MiB).
    l2=L2Layout(machine="q35", ecam=None, mmio_window=(0xC0000000, 0xFEC00000),
                staging=0x100000),
    tag="")

AARCH64 = Platform(
    arch="aarch64", debian_arch="arm64", kernel_arch="arm64",
    cross_compile="aarch64-linux-gnu-",
    # GICv3 for its ITS (MSI isolation). pauth-impdef: TCG emulates the architected
    # pointer-authentication cipher (QARMA) slowly; the implementation-defined one is cheap.
    l0_qemu="qemu-system-aarch64", machine="virt,gic-version=3", cpu="max,pauth-impdef=on",
    viommus=ARM_VIOMMUS, default_viommus=("smmuv3", "virtio-iommu"),
    devices=DEFAULT_DEVICES, console="ttyAMA0", kernel_args=(), kernel_target="Image",
    kernel_built="arch/arm64/boot/Image", kernel_image="Image",
    kernel_magic=(0x38, b"ARM\x64"),  # the Image header (Documentation/arch/arm64/booting.rst)
    l2_qemu="qemu-system-aarch64", l2_package="qemu-system-arm", elf_machine=183,
    # hw/arm/virt.c's memory map without highmem: ECAM at 0x3f000000, the 32-bit PCI
    # MMIO window below it, RAM from 1 GiB.
    # No ACPI in L2 under qtest: its root ports hot-plug natively.
    l2=L2Layout(machine="virt,highmem=off", ecam=0x3F000000,
                mmio_window=(0x10000000, 0x3EFF0000), staging=0x40100000,
                native_hotplug=True),
    tag="aarch64-",
    # No MSI-X for the NIC: virtio-net sets its queues' IRQ affinity (msi_domain_get_virq)
    # with the CPU hotplug lock held, which with the GICv3 ITS's MSI domain is a lock
    # order Linux 7.2.13's lockdep reports at every boot ("possible circular locking
    # dependency", outside any VFIO code); lockdep then switches itself off, and the debug
    # kernel would be blind for every cell after. An INTx NIC never takes that path.
    nic="virtio-net-pci,vectors=0")

PLATFORMS = {p.arch: p for p in (X86_64, AARCH64)}
#: Every platform's vIOMMUs: the CLI offers them all, a selection checks its platform's.
ALL_VIOMMUS = sorted({name for p in PLATFORMS.values() for name in p.viommus})


def platform(arch: str) -> Platform:
    try:
        return PLATFORMS[arch]
    except KeyError:
        raise BadInput(f"unknown architecture {arch!r}; known: {', '.join(PLATFORMS)}") from None
