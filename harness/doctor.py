"""`vfio-harness doctor`: what this host can do, one line per fact."""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.base.errors import HarnessError
from harness.images.store import BUILD_HEADERS, BUILD_TOOLS, NEEDED_FREE_GIB, ImageStore
from harness.l0 import accel
from harness.l0.qemu_binary import NEEDED_DEVICES, QemuBinary
from harness.platforms import VIOMMUS


@dataclass(frozen=True)
class Finding:
    ok: bool
    topic: str
    text: str

    def line(self) -> str:
        return f"[{'ok' if self.ok else '!!'}] {self.topic:<13} {self.text}"


def findings(store: ImageStore, qemu_name: str | None) -> list[Finding]:
    out: list[Finding] = []
    qemu = None
    try:
        qemu = QemuBinary.find(qemu_name)
        out.append(Finding(True, "L0 QEMU", f"{qemu.path}: {qemu.version_text}"))
    except HarnessError as e:
        out.append(Finding(False, "L0 QEMU", e.message))
    if qemu:
        missing = [d for d in NEEDED_DEVICES if d not in qemu.devices]
        out.append(Finding(not missing, "L0 devices",
                           "edu, ivshmem-plain, virtio-net-pci present" if not missing
                           else f"missing {', '.join(missing)}"))
        viommus = {name: set(v.drivers) <= qemu.devices for name, v in VIOMMUS.items()}
        out.append(Finding(any(viommus.values()), "vIOMMUs",
                           ", ".join(f"{n} {'yes' if ok else 'missing'}"
                                     for n, ok in viommus.items())))
    states = {s.name: s for s in store.states()}
    kernel = next((s for name, s in states.items() if name.startswith("kernel-") and s.ok), None)
    if qemu and kernel:
        choice = accel.choose(qemu, kernel.directory / "bzImage", store.cache)
        text = ("KVM" if choice.accel == "kvm" else "TCG") + f": {choice.reason}"
        out.append(Finding(True, "accelerator", text))
    elif qemu:
        out.append(Finding(True, "accelerator", "TCG for now: KVM not probed, no L1 kernel "
                                                "built yet (vfio-harness images build)"))
    rootfs = states.get("rootfs")
    if rootfs and rootfs.ok:
        versions = json.loads((rootfs.directory / "manifest.json").read_text())["versions"]
        out.append(Finding(True, "under test", f"qemu-system-x86 {versions['qemu-system-x86']} "
                                               f"in the L1 rootfs (Debian sid)"))
    for s in states.values():
        state = f"ready ({s.directory})" if s.ok else (s.problem or "")
        out.append(Finding(s.ok, "image", f"{s.name}: {state}"))
    missing_tools = [t for t in BUILD_TOOLS if not shutil.which(t)]
    missing_tools += [f"{pkg} headers" for h, pkg in BUILD_HEADERS.items() if not Path(h).exists()]
    out.append(Finding(not missing_tools, "build tools",
                       "all present" if not missing_tools
                       else f"missing {', '.join(missing_tools)}"))
    out.append(Finding(os.geteuid() == 0, "privileges",
                       "root" if os.geteuid() == 0 else "not root: debootstrap cannot run"))
    probe_dir = store.cache if store.cache.exists() else _existing_parent(store.cache)
    free = shutil.disk_usage(probe_dir).free / 2**30
    out.append(Finding(free >= NEEDED_FREE_GIB or all(s.ok for s in states.values()), "disk",
                       f"{free:.1f} GiB free for the cache at {store.cache} "
                       f"(a build needs about {NEEDED_FREE_GIB} GiB)"))
    return out


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path
