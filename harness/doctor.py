"""`vfio-harness doctor`: what this host can do, one line per fact."""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.base.errors import HarnessError
from harness.base.sizes import human
from harness.images import cache_book, foreign
from harness.images.store import BUILD_HEADERS, BUILD_TOOLS, NEEDED_FREE_GIB, ImageStore
from harness.l0 import accel, strays
from harness.l0.qemu_binary import NEEDED_DEVICES, QemuBinary


@dataclass(frozen=True)
class Finding:
    ok: bool
    topic: str
    text: str

    def line(self) -> str:
        return f"[{'ok' if self.ok else '!!'}] {self.topic:<17} {self.text}"


def findings(stores: list[ImageStore], qemu_name: str | None) -> list[Finding]:
    """The host's facts, then each platform's: what it needs and what it has."""
    out: list[Finding] = []
    missing_tools = [t for t in BUILD_TOOLS if not shutil.which(t)]
    missing_tools += [f"{pkg} headers" for h, pkg in BUILD_HEADERS.items() if not Path(h).exists()]
    out.append(Finding(not missing_tools, "build tools",
                       "all present" if not missing_tools
                       else f"missing {', '.join(missing_tools)}"))
    out.append(Finding(os.geteuid() == 0, "privileges",
                       "root" if os.geteuid() == 0 else "not root: debootstrap cannot run"))
    cache = stores[0].cache
    probe_dir = cache if cache.exists() else _existing_parent(cache)
    free = shutil.disk_usage(probe_dir).free / 2**30
    built = all(s.ok for store in stores for s in store.states())
    out.append(Finding(free >= NEEDED_FREE_GIB or built, "disk",
                       f"{free:.1f} GiB free for the cache at {cache} "
                       f"(a build needs about {NEEDED_FREE_GIB} GiB per platform)"))
    out += _cache(stores[0])
    out += [Finding(False, "stray", s.describe()) for s in strays.find()]
    for store in stores:
        out += _platform(store, qemu_name)
    return out


def _cache(store: ImageStore) -> list[Finding]:
    """The cache by kind, against its budget, and what `images prune` could take."""
    if not store.cache.is_dir():
        return [Finding(True, "cache", f"{store.cache}: empty")]
    book = cache_book.survey(store.cache, store.everyones_images())
    kinds = ", ".join(f"{kind} {human(size)}" for kind, size in sorted(
        book.by_kind().items(), key=lambda kv: -kv[1]))
    within = store.budget is None or book.total <= store.budget
    budget = f" of a budget of {human(store.budget)}" if store.budget is not None else ""
    evictable = sum(e.size for g in book.groups() for e in g)
    return [Finding(within, "cache", f"{human(book.total)}{budget} at {store.cache}: {kinds}"),
            Finding(True, "cache", f"{human(evictable)} of it is series trees and kernels "
                                   f"that `vfio-harness images prune` may remove "
                                   f"(--max-size SIZE, --older-than DAYS)")]


def clean() -> list[str]:
    """`doctor --clean`: remove the strays, and say what went."""
    gone = []
    for stray in strays.find():
        stray.remove()
        gone.append(f"removed {stray.kind} {stray.pid or stray.path} (harness process "
                    f"{stray.owner} is gone)")
    return gone


def _platform(store: ImageStore, qemu_name: str | None) -> list[Finding]:
    p = store.platform
    out: list[Finding] = []
    qemu = None
    try:
        qemu = QemuBinary.find(qemu_name, p)
        out.append(Finding(True, f"{p.arch} L0", f"{qemu.path}: {qemu.version_text}"))
    except HarnessError as e:
        out.append(Finding(False, f"{p.arch} L0", e.message))
    if qemu:
        missing = [d for d in NEEDED_DEVICES if d not in qemu.devices]
        out.append(Finding(not missing, f"{p.arch} devices",
                           "edu, ivshmem-plain, virtio-net-pci present" if not missing
                           else f"missing {', '.join(missing)}"))
        viommus = {name: set(v.drivers) <= qemu.devices for name, v in p.viommus.items()}
        out.append(Finding(any(viommus.values()), f"{p.arch} vIOMMUs",
                           ", ".join(f"{n} {'yes' if ok else 'missing'}"
                                     for n, ok in viommus.items())))
    if p.cross_compile:
        lacking = p.missing_compiler()
        out.append(Finding(lacking is None, f"{p.arch} compiler",
                           f"{lacking} missing" if lacking else f"{p.cross_compile}gcc present"))
    if p.debian_arch != foreign.host_arch():
        registration, why_not = foreign.qemu_user(p)
        out.append(Finding(True, f"{p.arch} rootfs",
                           "second stage in a chroot, run by qemu-user in a private "
                           "binfmt_misc" if registration else
                           f"second stage in an {p.arch} L1 under TCG (slower): {why_not}"))
    states = {s.name: s for s in store.states()}
    kernel = next((s for name, s in states.items() if name.startswith("kernel-") and s.ok), None)
    if qemu and kernel:
        choice = accel.choose(qemu, kernel.directory / p.kernel_image, store.cache,
                              platform=p)
        text = ("KVM" if choice.accel == "kvm" else "TCG") + f": {choice.reason}"
        out.append(Finding(True, f"{p.arch} accel", text))
    elif qemu:
        out.append(Finding(True, f"{p.arch} accel", f"TCG for now: KVM not probed, no L1 "
                                                    f"kernel built yet (vfio-harness images "
                                                    f"build --arch {p.arch})"))
    rootfs = states.get("rootfs")
    if rootfs and rootfs.ok:
        versions = json.loads((rootfs.directory / "manifest.json").read_text())["versions"]
        out.append(Finding(True, f"{p.arch} L2", f"{p.l2_package} {versions[p.l2_package]} in "
                                                 f"the L1 rootfs (Debian sid {p.debian_arch})"))
    for s in states.values():
        state = f"ready ({s.directory})" if s.ok else (s.problem or "")
        out.append(Finding(s.ok, f"{p.arch} image", f"{s.name}: {state}"))
    return out


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path
