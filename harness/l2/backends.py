"""The VFIO device backends L2 can use, as data: what differs between them and nothing else.

Scenarios and verdicts ask a backend what it does (how a BAR reaches the
IOMMU, which L1 node it opens, what QEMU needs for it) instead of comparing
its name, in the spirit of the kernel's vfio selftests' table of iommu modes.
"""

import json
from dataclasses import dataclass

from harness.base.errors import BadInput

#: How a BAR reaches the IOMMU: through its dma-buf (IOMMU_IOAS_MAP_FILE), by the
#: address of its mmap (type1 follows the VMA to the device's pages), or as a vfio-user
#: server maps what its client hands it (the fd of the RAMBlock QEMU maps, if it has one).
BY_DMABUF, BY_ADDRESS, BY_SERVER = "dma-buf", "address", "server"


@dataclass(frozen=True)
class Backend:
    name: str
    node: str                      # the L1 device node it opens
    bars_reach_iommu_by: str       # BY_DMABUF | BY_ADDRESS
    #: The QEMU object it needs (a QEMU under test without it cannot run this backend).
    qemu_object: str | None = None
    #: The vfio-pci property naming that object.
    device_property: str | None = None
    #: The Inventory field that says whether L1 has `node`.
    inventory_field: str = ""
    #: vfio-user: where the servers' sockets are, one per device named for its BDF (the
    #: device is then vfio-user-pci on that socket, not vfio-pci on the host device).
    sockets: str | None = None

    @property
    def qemu_device(self) -> str:
        """The device L2 takes it as (a QEMU under test without it cannot run this backend)."""
        return "vfio-pci" if self.sockets is None else "vfio-user-pci"

    @property
    def shares_memory(self) -> bool:
        """Whether L2's RAM must be a shared memfd: a vfio-user server (another process)
        reaches it only through the fd QEMU sends with each DMA_MAP."""
        return self.sockets is not None

    @property
    def maps_bars_by_dmabuf(self) -> bool:
        return self.bars_reach_iommu_by == BY_DMABUF

    def objects(self) -> list[str]:
        return ["-object", self.qemu_object] if self.qemu_object else []

    def device(self, bdf: str, extra: str = "") -> str:
        if self.sockets is not None:  # a struct property: only -device's JSON form sets it
            more = dict(p.split("=", 1) for p in extra.split(",") if p)
            return json.dumps({"driver": "vfio-user-pci", "socket": {
                "type": "unix", "path": f"{self.sockets}/{bdf}.sock"}, **more})
        props = [f"vfio-pci,host={bdf}"]
        if self.device_property:
            props.append(self.device_property)
        if extra:
            props.append(extra)
        return ",".join(props)

    def device_add(self, device: "object") -> dict:
        """The same device as QMP device_add arguments (a replug); `device`: an L2Device."""
        bdf, extra = device.bdf, device.extra  # type: ignore[attr-defined]
        if self.sockets is not None:
            return json.loads(self.device(bdf, extra))
        args = dict(p.split("=", 1) for p in self.device(bdf, extra).split(",")[1:])
        return {"driver": "vfio-pci", **args}


#: QEMU's vfio-user client on the harness's own servers in L1 (l1/vfio_user.py), which
#: open each device's cdev and bind it to an iommufd: L1 needs /dev/iommu for them.
VFIO_USER_SOCKETS = "/run/vfio-user"
VFIO_USER = Backend("vfio-user", VFIO_USER_SOCKETS, BY_SERVER, inventory_field="dev_iommu",
                    sockets=VFIO_USER_SOCKETS)
BACKENDS = {b.name: b for b in (
    Backend("legacy", "/dev/vfio/vfio", BY_ADDRESS, inventory_field="dev_vfio_container"),
    Backend("iommufd", "/dev/iommu", BY_DMABUF, qemu_object="iommufd,id=iofd0",
            device_property="iommufd=iofd0", inventory_field="dev_iommu"),
    VFIO_USER,
)}
NAMES = tuple(BACKENDS)
#: The backends on which QEMU itself opens the device in the L1 kernel (vfio-pci): the
#: checks of what QEMU does with a kernel device have their cells on these.
KERNEL_NAMES = tuple(n for n, b in BACKENDS.items() if b.sockets is None)


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInput(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
