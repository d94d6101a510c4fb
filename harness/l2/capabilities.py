"""The QEMU under test, known before any L2 runs.

A verdict about dma-buf means little unless we know what was tested: which
binary (its sha256), which version, and whether it can do what the scenarios
ask. So the binary is asked in L1, once per boot and in one SSH round trip,
before any cell: whether it starts with the qtest accelerator (the only one L2
uses; `-accel help` does not list it, so it is started); and, through QMP on
that same start, its version (the greeting), its iommufd object, its trace
events (vfio_region_dmabuf exists only where the dma-buf code is) and the
vfio-pci properties the scenarios set. What it lacks shapes the verdicts (a
QEMU without the dma-buf code fails dmabuf-per-region saying so); a QEMU that
cannot run the scenarios at all is one error before any cell, its --version
asked then, for the message.

Every QEMU start and every file read costs L1's one TCG vCPU: a second start
for --version was 0.22 s, and sha256sum of the packaged 31.6 MB binary 0.7 to
0.84 s, every L1 run. So the packaged binary's sha256 comes from the rootfs
build (`BuiltBinary`), and L1 only confirms with `stat` that the file it runs
is that one (path, size, mtime); any other file is hashed in L1 as before.
"""

import json
import shlex
from dataclasses import asdict, dataclass

from harness.base.errors import BadInput
from harness.evidence.records import QemuFacts
from harness.l1.session import L1Session

STAGE = "QEMU under test"
DMABUF_EVENT = "vfio_region_dmabuf"
#: vfio-pci properties the scenarios set, and what for.
NEEDED_PROPERTIES = {"host": "naming the device in L1", "x-no-mmap": "the x-no-mmap=on L2"}
#: QMP asked of a qtest-accelerated QEMU with no machine; answers are matched by id.
QUESTIONS = (
    ("objects", "qom-list-types", {"implements": "user-creatable"}),
    ("vfio-pci", "device-list-properties", {"typename": "vfio-pci"}),
    ("dmabuf-event", "trace-event-get-state", {"name": DMABUF_EVENT}),
    ("vfio-user-pci", "device-list-properties", {"typename": "vfio-user-pci"}),
)
SECTION = "=== vfio-harness:"


@dataclass(frozen=True)
class BuiltBinary:
    """A binary as the rootfs build recorded it (the image's manifest, `qemu_binary`)."""

    path: str      # absolute in L1, symlinks resolved
    sha256: str
    size: int
    mtime: int     # seconds, as `stat -c %Y` prints it

    @classmethod
    def from_record(cls, record: dict | None) -> "BuiltBinary | None":
        """None for an image built before the record was made, or without the binary."""
        if not record:
            return None
        return cls(str(record["path"]), str(record["sha256"]), int(record["size"]),
                   int(record["mtime"]))


@dataclass(frozen=True)
class QemuUnderTest:
    path: str                  # in L1, resolved
    origin: str                # "packaged in the rootfs" or the local path it was uploaded from
    sha256: str
    version: str
    has_iommufd_object: bool
    has_dmabuf_event: bool
    vfio_pci_properties: tuple[str, ...]
    #: The vfio-user client (a build may leave it out: the vfio-user backend then skips).
    has_vfio_user_pci: bool = False

    def has_device(self, name: str) -> bool:
        """Whether it has the device a backend gives L2 (vfio-pci: it must, or `parse`
        refuses it)."""
        return name == "vfio-pci" or (name == "vfio-user-pci" and self.has_vfio_user_pci)

    def has_object(self, spec: str) -> bool:
        """Whether it can create the object `spec` names ("iommufd,id=..."): the probe asked
        for the iommufd object, the one object a backend needs."""
        kind = spec.split(",")[0]
        return self.has_iommufd_object if kind == "iommufd" else False

    def facts(self) -> QemuFacts:
        return QemuFacts(self.version, self.has_dmabuf_event, self.has_iommufd_object)

    def record(self) -> dict:
        return asdict(self)


def qmp_script() -> str:
    lines: list[dict[str, object]] = [{"execute": "qmp_capabilities"}]
    lines += [{"execute": cmd, "arguments": args, "id": key} for key, cmd, args in QUESTIONS]
    lines.append({"execute": "quit"})
    return "".join(json.dumps(x) + "\n" for x in lines)


def probe_command(path: str, binary: str | None = None, built: BuiltBinary | None = None) -> str:
    """One shell command printing each answer under a section marker. `binary`: the ELF
    behind `path` when `path` is a script that carries things (its sha256 is recorded).
    `built`: the packaged binary as the image recorded it (its sha256 is not recomputed if
    the file L1 resolves is that one)."""
    q = shlex.quote(path)
    resolved = shlex.quote(binary) if binary else f"\"$(readlink -f \"$(command -v {q})\")\""
    digest = "sha256sum \"$r\" 2>&1"
    if built:
        same = (f"[ \"$r\" = {shlex.quote(built.path)} ] && "
                f"[ \"$(stat -L -c '%s %Y' \"$r\" 2>/dev/null)\" = '{built.size} {built.mtime}' ]")
        digest = f"if {same}; then echo \"{built.sha256}  $r\"; else {digest}; fi"
    return "; ".join([
        f"r={resolved}",
        f"echo '{SECTION} qmp'",
        f"printf %s {shlex.quote(qmp_script())} | {q} -machine none -accel qtest -display none "
        f"-nodefaults -S -qmp stdio 2>&1",
        f"rc=$?; echo '{SECTION} qmp-status'; echo $rc",
        f"echo '{SECTION} resolved'", "echo \"$r\"",
        f"echo '{SECTION} sha256'", digest,
    ])


def greeting_version(text: str) -> str | None:
    """The version line --version prints, from the QMP greeting ("QEMU emulator version
    11.1.3 (Debian 1:11.1.3+ds-1)": QEMU_VERSION, then the package version in brackets)."""
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or not isinstance(message.get("QMP"), dict):
            continue
        version = message["QMP"].get("version", {})
        number = version.get("qemu", {})
        try:
            name = f"QEMU emulator version {number['major']}.{number['minor']}.{number['micro']}"
        except (KeyError, TypeError):
            return None
        package = str(version.get("package", "")).strip()
        return f"{name} ({package})" if package else name
    return None


def sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(SECTION):
            current = line[len(SECTION):].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def qmp_answers(text: str) -> dict[str, dict]:
    """QMP responses by id; lines that are not JSON (warnings, errors) are left out."""
    answers = {}
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and "id" in message:
            answers[message["id"]] = message
    return answers


def version_line(s: dict[str, str], origin: str) -> str:
    lines = [line for line in s.get("version", "").splitlines() if line.strip()]
    if not lines:
        raise BadInput(f"the QEMU under test {origin} does not run in L1", stage=STAGE,
                       details=s.get("version", "")[-2000:])
    if "QEMU emulator version" not in lines[0]:
        raise BadInput(f"the QEMU under test {origin} does not look like QEMU: in L1 its "
                       f"--version printed {lines[0].strip()[:120]!r}", stage=STAGE)
    return lines[0].strip()


def parse(s: dict[str, str], origin: str) -> QemuUnderTest:
    """The probe's sections as a QemuUnderTest; BadInput if it cannot run the scenarios.
    (Whether it started with qtest at all is `probe`'s to tell: it can ask L1 why not.)"""
    name = greeting_version(s.get("qmp", "")) or version_line(s, origin)
    replies = qmp_answers(s.get("qmp", ""))
    props = replies.get("vfio-pci", {})
    if "return" not in props:
        raise BadInput(f"the QEMU under test ({name}, {origin}) has no vfio-pci device",
                       stage=STAGE, details=json.dumps(props))
    properties = tuple(sorted(p["name"] for p in props["return"]))
    lacking = [f"{p} ({why})" for p, why in NEEDED_PROPERTIES.items() if p not in properties]
    if lacking:
        raise BadInput(f"the QEMU under test ({name}, {origin}) has a vfio-pci without "
                       f"the properties {', '.join(lacking)}", stage=STAGE)
    objects = {t["name"] for t in replies.get("objects", {}).get("return", [])}
    events = replies.get("dmabuf-event", {}).get("return", [])
    sha = s.get("sha256", "").split()
    return QemuUnderTest(path=s.get("resolved", ""), origin=origin,
                         sha256=sha[0] if len(sha) == 2 else "", version=name,
                         has_iommufd_object="iommufd" in objects,
                         has_dmabuf_event=any(e.get("name") == DMABUF_EVENT for e in events),
                         vfio_pci_properties=properties,
                         has_vfio_user_pci="return" in replies.get("vfio-user-pci", {}))


def probe(session: L1Session, path: str, origin: str, binary: str | None = None,
          built: BuiltBinary | None = None) -> QemuUnderTest:
    """Ask the binary in L1 what it is and can do; BadInput if it cannot run the scenarios."""
    s = sections(session.run(probe_command(path, binary, built), check=False, timeout=120,
                             stage=STAGE).stdout)
    if not qmp_answers(s.get("qmp", "")) or not greeting_version(s.get("qmp", "")):
        # it did not start as a QEMU with qtest: what it is, in its own --version's words
        s["version"] = session.run(f"{shlex.quote(path)} --version </dev/null 2>&1",
                                   check=False, timeout=60, stage=STAGE).stdout
        version = version_line(s, origin)
        if not qmp_answers(s.get("qmp", "")):
            raise BadInput(_no_qtest(session, binary or path, origin, version), stage=STAGE,
                           details=s.get("qmp", "")[-2000:])
    return parse(s, origin)


def _no_qtest(session: L1Session, path: str, origin: str, version: str) -> str:
    """Why there is no qtest accelerator: a modular build lacking the module says so."""
    head = (f"the QEMU under test ({version}, {origin}) does not start with the qtest "
            f"accelerator, which L2 needs")
    modular = session.run(f"grep -c accel-qtest {shlex.quote(path)}", check=False,
                          stage=STAGE).stdout.strip()
    if modular not in ("", "0"):
        return (f"{head}: it is a modular build and its accel-qtest module is not where it "
                f"looks (its module directory, or QEMU_MODULE_DIR)")
    return f"{head}: it was built without it"
