"""The QEMU under test, known before any L2 runs.

A verdict about dma-buf means little unless we know what was tested: which
binary (its sha256), which version, and whether it can do what the scenarios
ask. So the binary is asked in L1, once per boot, before any cell: its
version, its accelerators (qtest is the only one L2 uses), its iommufd object,
its trace events (vfio_region_dmabuf exists only where the dma-buf code is) and
the vfio-pci properties the scenarios set. What it lacks shapes the verdicts
(a QEMU without the dma-buf code fails dmabuf-per-region saying so); a QEMU
that cannot run the scenarios at all is one error before any cell.
"""

import re
import shlex
from dataclasses import asdict, dataclass

from harness.errors import BadInput
from harness.evidence import QemuFacts
from harness.l1 import L1Session

STAGE = "QEMU under test"
DMABUF_EVENT = "vfio_region_dmabuf"
#: vfio-pci properties the scenarios set, and what for.
NEEDED_PROPERTIES = {"host": "naming the device in L1", "x-no-mmap": "the x-no-mmap=on L2"}


@dataclass(frozen=True)
class QemuUnderTest:
    path: str                  # in L1, resolved
    origin: str                # "packaged in the rootfs" or the local path it was uploaded from
    sha256: str
    version: str
    accelerators: tuple[str, ...]
    has_iommufd_object: bool
    has_dmabuf_event: bool
    vfio_pci_properties: tuple[str, ...]

    def facts(self) -> QemuFacts:
        return QemuFacts(self.version, self.has_dmabuf_event, self.has_iommufd_object)

    def record(self) -> dict:
        return asdict(self)


def parse_accelerators(text: str) -> tuple[str, ...]:
    """`-accel help`: a heading line, then one accelerator per line."""
    return tuple(line.strip() for line in text.splitlines()
                 if line.strip() and not line.rstrip().endswith(":"))


def parse_properties(text: str) -> tuple[str, ...]:
    """`-device vfio-pci,help`: lines like '  host=<str>' or '  x-no-mmap=<bool> ...'."""
    return tuple(sorted({m.group(1) for m in re.finditer(r"^\s+([\w-]+)=", text, re.M)}))


def probe(session: L1Session, path: str, origin: str) -> QemuUnderTest:
    """Ask the binary in L1 what it is and can do; BadInput if it cannot run the scenarios."""
    q = shlex.quote(path)

    def ask(args: str) -> tuple[bool, str]:
        r = session.run(f"{q} {args} </dev/null 2>&1", check=False, timeout=60, stage=STAGE)
        return r.ok, r.stdout

    ok, version_text = ask("--version")
    if not ok or "QEMU emulator version" not in version_text:
        raise BadInput(f"the QEMU under test {origin} does not run in L1", stage=STAGE,
                       details=version_text[-2000:])
    version = version_text.splitlines()[0].strip()
    _, accel_text = ask("-accel help")
    accelerators = parse_accelerators(accel_text)
    # `-accel help` leaves qtest out even where it is built in: start it and quit.
    r = session.run(f"printf 'quit\\n' | {q} -machine none -accel qtest -display none "
                    f"-nodefaults -S -monitor stdio 2>&1", check=False, timeout=60, stage=STAGE)
    if not r.ok:
        raise BadInput(_no_qtest(session, path, origin, version), stage=STAGE,
                       details=r.stdout[-2000:])
    accelerators = tuple(sorted({*accelerators, "qtest"}))
    _, devices = ask("-machine none -device help")
    if '"vfio-pci"' not in devices:
        raise BadInput(f"the QEMU under test ({version}, {origin}) has no vfio-pci device",
                       stage=STAGE)
    _, props_text = ask("-machine none -device vfio-pci,help")
    properties = parse_properties(props_text)
    lacking = [f"{p} ({why})" for p, why in NEEDED_PROPERTIES.items() if p not in properties]
    if lacking:
        raise BadInput(f"the QEMU under test ({version}, {origin}) has a vfio-pci without "
                       f"the properties {', '.join(lacking)}", stage=STAGE, details=props_text)
    _, objects = ask("-object help")
    _, events = ask("-trace help")
    resolved = session.run(f"readlink -f \"$(command -v {q})\"", timeout=30,
                           stage=STAGE).stdout.strip()
    sha = session.run(f"sha256sum {shlex.quote(resolved)}", timeout=60,
                      stage=STAGE).stdout.split()[0]
    return QemuUnderTest(path=resolved, origin=origin, sha256=sha, version=version,
                         accelerators=accelerators,
                         has_iommufd_object="iommufd" in objects.split(),
                         has_dmabuf_event=DMABUF_EVENT in events.split(),
                         vfio_pci_properties=properties)


def _no_qtest(session: L1Session, path: str, origin: str, version: str) -> str:
    """Why there is no qtest accelerator: a modular build lacking the module says so."""
    head = f"the QEMU under test ({version}, {origin}) has no qtest accelerator, which L2 needs"
    modular = session.run(f"grep -c accel-qtest {shlex.quote(path)}", check=False,
                          stage=STAGE).stdout.strip()
    if modular not in ("", "0"):
        return (f"{head}: it is a modular build and its accel-qtest module is not where it "
                f"looks (its module directory, or QEMU_MODULE_DIR); QEMU says \"invalid "
                f"accelerator qtest\"")
    return f"{head}: it was built without it"
