"""The L0 QEMU binary: found, recent enough, and with the devices the chain needs."""

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.base.errors import BadInput
from harness.platforms import X86_64, Platform

#: virtio-iommu on x86 needs the ACPI VIOT table (QEMU 7.0); 7.2 was seen to run the chain.
MIN_VERSION = (7, 0)
#: Devices L0 must have, and what each is for.
NEEDED_DEVICES = {
    "edu": "the DMA engine passed through to L2",
    "ivshmem-plain": "the BAR backed by a file L0 can read",
    "virtio-net-pci": "L1's network (SSH)",
}


@dataclass(frozen=True)
class QemuBinary:
    path: Path
    version: tuple[int, int, int]
    version_text: str

    @classmethod
    def find(cls, name: str | None = None, platform: Platform = X86_64) -> "QemuBinary":
        """`name` (--qemu), else the platform's L0 emulator on PATH."""
        name = name or platform.l0_qemu
        found = shutil.which(name)
        if not found:
            # Debian packages L0's emulator where it packages the one under test.
            raise BadInput(f"L0 QEMU {name!r} not found (apt-get install {platform.l2_package}, "
                           f"or pass --qemu PATH)", stage="L0")
        try:
            out = subprocess.run([found, "--version"], capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BadInput(f"L0 QEMU {found} does not run: {e}", stage="L0") from None
        version = parse_version(out)
        if version is None:
            raise BadInput(f"{found} does not look like QEMU: --version said {out[:200]!r}",
                           stage="L0")
        if version[:2] < MIN_VERSION:
            raise BadInput(f"L0 QEMU {found} is {'.'.join(map(str, version))}, too old: "
                           f"need {'.'.join(map(str, MIN_VERSION))} or newer", stage="L0")
        return cls(Path(found), version, out.splitlines()[0].strip())

    @functools.cached_property
    def devices(self) -> frozenset[str]:
        out = subprocess.run([str(self.path), "-machine", "none", "-device", "help"],
                             capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
        return frozenset(re.findall(r'^name "([^"]+)"', out, re.M))

    def require_devices(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.devices]
        if missing:
            raise BadInput(f"L0 QEMU {self.path} lacks the device(s) {', '.join(missing)}",
                           stage="L0")


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None
