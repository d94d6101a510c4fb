"""The multi-range check's fixture: guest/msix_split.c, built on L0 and put into L1.

Linux's vfio-pci lets every MSI-X BAR be mmapped whole (MSIX_MAPPABLE), so
QEMU never splits a region on x86 and a dma-buf of several ranges never
exists. The fixture hides that capability from one L2, which then mmaps the
BAR around its MSI-X table as on a kernel without it; everything after that
(QEMU's dma-buf request, the kernel's and iommufd's answers) is real. The
shim says on L2's stderr what it withheld, so the evidence shows it acted.
"""

import hashlib
import shutil
import subprocess
from pathlib import Path

from harness.base.errors import HarnessError
from harness.collect.stack import L1Stack
from harness.platforms import X86_64, Platform

SOURCE = Path(__file__).parents[1] / "l1" / "guest" / "msix_split.c"
#: The first words of each line the shim writes to L2's stderr.
TAG = "vfio-harness msix-split: "


def build(directory: Path, platform: Platform = X86_64) -> Path:
    """The shared object for L1's architecture, built once per source version into
    `directory`. L0's glibc is older than L1's (bookworm and sid), so what is built here
    loads there."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    so = directory / f"msix_split-{platform.tag}{digest}.so"
    if so.exists():
        return so
    gcc = shutil.which(f"{platform.cross_compile}gcc")
    if gcc is None:
        raise HarnessError(f"{platform.cross_compile}gcc is not on PATH: the multi-range "
                           f"fixture (an LD_PRELOAD shim for L2) cannot be built",
                           stage="multi-range fixture")
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o",
                           str(so), str(SOURCE), "-ldl"], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise HarnessError("the multi-range fixture does not build", stage="multi-range fixture",
                           details=done.stderr)
    return so


def install(stack: L1Stack) -> str:
    """The fixture's path in L1, uploaded there if this L1 does not have it yet."""
    so = build(stack.run_dir / "fixtures", stack.platform)
    remote = f"/run/{so.name}"
    if not stack.session.run(f"test -s {remote}", check=False, stage="multi-range fixture").ok:
        stack.session.put(so, remote)
    return remote


def withheld(stderr: str) -> tuple[str, ...]:
    """What the fixture says it withheld, from L2's stderr (empty: it never acted)."""
    return tuple(sorted({line.removeprefix(TAG).strip() for line in stderr.splitlines()
                         if line.startswith(TAG)}))
