"""A QEMU built anywhere, made to run in L1: what it needs that L1 lacks is carried along.

`--l2-qemu` takes a binary, a build directory or an install prefix's bin/. A
shell script (a wrapper) is uploaded as is. A binary is first checked on L0
(an ELF of L1's architecture), then put into L1 with what its build needs there:

- its modules (QEMU_MODULE_DIR): `*.so` QEMU modules beside it (a build
  directory) or in its prefix's lib/.../qemu;
- its data directory (-L): pc-bios/ beside it, or its prefix's share/qemu;
- the shared libraries L1's loader cannot find, resolved on L0 (the bundle's
  own lib/ first, then L0's loader, or for an arm64 binary on an x86 L0 its
  RUNPATH and L0's aarch64 multiarch directories). A C library older than the
  binary needs cannot be carried: that is said, before any cell.

When anything is carried, /run/qemu-under-test is a small script that sets the
environment and execs the binary, so the probe and every L2 run it alike.
"""

import io
import os
import re
import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from harness.base.errors import BadInput, HarnessError
from harness.l1.session import L1Session
from harness.platforms import PLATFORMS, X86_64, Platform

STAGE = "QEMU under test"
UPLOADED = "/run/qemu-under-test"   # what L2 and the probe run
BUNDLE = "/run/qemu-under-test.d"   # the binary and what it carries
ELF_MACHINES = {62: "x86-64", 3: "i386", 40: "ARM", 183: "AArch64", 243: "RISC-V",
                21: "PowerPC64", 22: "s390", 8: "MIPS", 258: "LoongArch"}
#: The C library's own objects: never carried (a loader cannot mix two of them).
GLIBC = re.compile(r"^(ld-linux.*|libc|libm|libpthread|libdl|librt|libresolv|libutil)"
                   r"\.so(\.\d+)*$")
_NOT_FOUND = re.compile(r"^\s*(\S+) => not found")
_VERSION = re.compile(r"version `([^']+)' not found \(required by")


@dataclass(frozen=True)
class Bundle:
    binary: Path
    script: bool
    modules: Path | None
    data: Path | None
    lib_dirs: tuple[Path, ...]
    platform: Platform = X86_64

    @classmethod
    def find(cls, path: Path, platform: Platform = X86_64) -> "Bundle":
        name = platform.l2_qemu
        if path.is_dir():
            for candidate in (path / name, path / "bin" / name):
                if candidate.is_file():
                    path = candidate
                    break
            else:
                raise BadInput(f"no {name} in {path} (a build directory or an install "
                               f"prefix)", stage=STAGE)
        if not path.is_file():
            raise BadInput(f"QEMU under test {path} does not exist", stage=STAGE)
        head = path.read_bytes()[:64]
        if head.startswith(b"#!"):
            return cls(path, True, None, None, (), platform)
        check_elf(path, head, platform)
        here = path.parent
        modules = next((d for d in (here, *sorted(here.parent.glob("lib*/**/qemu")))
                        if d.is_dir() and _has_modules(d)), None)
        data = next((d for d in (here / "pc-bios", here.parent / "share" / "qemu",
                                 *sorted(here.glob("qemu-bundle/**/share/qemu")))
                     if (d / "bios-256k.bin").exists()), None)
        lib_dirs = tuple(d for d in (here / "lib", here.parent / "lib",
                                     here.parent / "lib" / f"{platform.arch}-linux-gnu")
                         if d.is_dir())
        return cls(path, False, modules, data, lib_dirs, platform)

    def describe(self) -> str:
        carried = [f"modules from {self.modules}" if self.modules else "",
                   f"data from {self.data}" if self.data else ""]
        return ", ".join(c for c in carried if c) or "the binary alone"


def check_elf(path: Path, head: bytes, platform: Platform = X86_64) -> None:
    if head[:4] != b"\x7fELF":
        raise BadInput(f"{path} is neither an executable (ELF) nor a script", stage=STAGE)
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if head[4] != 2 or machine != platform.elf_machine:
        name = ELF_MACHINES.get(machine, f"machine {machine}")
        other = next((p.arch for p in PLATFORMS.values() if p.elf_machine == machine), None)
        hint = f" (for --arch {other})" if other and head[4] == 2 else ""
        raise BadInput(f"{path} is a {name}{'' if head[4] == 2 else ' 32-bit'} binary{hint}: "
                       f"L1 is {platform.arch}", stage=STAGE)


def _has_modules(d: Path) -> bool:
    return any(d.glob("accel-*.so")) or any(d.glob("hw-*.so"))


def missing_libraries(ldd: str) -> list[str]:
    """Sonames L1's loader cannot find, from its `ldd` output."""
    return sorted({m.group(1) for line in ldd.splitlines() if (m := _NOT_FOUND.match(line))})


def missing_versions(ldd: str) -> list[str]:
    """Symbol versions (GLIBC_2.42, ...) the binary needs and L1's libraries lack."""
    return sorted({m.group(1) for m in _VERSION.finditer(ldd)})


def resolve_on_l0(soname: str, bundle: Bundle, root: Path = Path("/")) -> Path | None:
    """Where L0 has `soname` for the binary: the bundle's own lib/ first; then, for a
    binary of L0's own architecture, L0's loader (ldd); for another architecture's, which
    L0's ldd cannot read, the binary's RUNPATH and L0's multiarch directories for that
    architecture (where a cross build's libraries are: libglib2.0-dev:arm64 and the like)."""
    found = _first(soname, bundle.lib_dirs)
    if found is not None:
        return found
    if bundle.platform.arch != os.uname().machine:
        triplet = f"{bundle.platform.arch}-linux-gnu"
        return _first(soname, (*runpath(bundle.binary), root / "usr/lib" / triplet,
                               root / "lib" / triplet, root / "usr" / triplet / "lib"))
    out = subprocess.run(["ldd", str(bundle.binary)], capture_output=True, text=True,
                         timeout=60).stdout
    m = re.search(rf"^\s*{re.escape(soname)} => (\S+)", out, re.M)
    return Path(m.group(1)).resolve() if m and Path(m.group(1)).exists() else None


def _first(soname: str, dirs: tuple[Path, ...]) -> Path | None:
    return next(((d / soname).resolve() for d in dirs if (d / soname).exists()), None)


def runpath(binary: Path) -> list[Path]:
    """The binary's RUNPATH (or RPATH) directories, $ORIGIN made its own directory."""
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                         timeout=60).stdout
    m = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^]]*)\]", out)
    if not m:
        return []
    origin = str(binary.resolve().parent)
    return [Path(d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
            for d in m.group(1).split(":") if d]


def _tar(directory: Path, names: list[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(directory.iterdir()):
            if names is None or p.name in names:
                tar.add(p.resolve() if p.is_symlink() else p, arcname=p.name)
    return buf.getvalue()


def upload(session: L1Session, bundle: Bundle) -> tuple[str, str]:
    """(what to run, the binary itself) in L1; BadInput if it cannot run there."""
    q = shlex.quote
    session.run(f"rm -rf {BUNDLE} {UPLOADED} && mkdir -p {BUNDLE}/lib", stage=STAGE)
    if bundle.script:
        session.put(bundle.binary, UPLOADED, mode=0o755)
        return UPLOADED, UPLOADED
    binary = f"{BUNDLE}/{bundle.platform.l2_qemu}"
    session.put(bundle.binary, binary, mode=0o755)
    env, args = [], []
    for what, directory, names in (("modules", bundle.modules, None), ("data", bundle.data, None)):
        if directory is None:
            continue
        mods = [p.name for p in directory.glob("*.so")] if what == "modules" else names
        session.put(_tar(directory, mods), f"{BUNDLE}/{what}.tar.gz")
        session.run(f"mkdir -p {BUNDLE}/{what} && tar -xzf {BUNDLE}/{what}.tar.gz -C "
                    f"{BUNDLE}/{what} && rm {BUNDLE}/{what}.tar.gz", stage=STAGE)
        if what == "modules":
            env.append(f"QEMU_MODULE_DIR={BUNDLE}/modules")
        else:
            args += ["-L", f"{BUNDLE}/data"]
    ldd = session.run(f"ldd {binary} 2>&1", check=False, stage=STAGE).stdout
    carried = []
    for soname in missing_libraries(ldd):
        if GLIBC.match(soname):
            continue
        found = resolve_on_l0(soname, bundle)
        if found is None:
            raise BadInput(f"the QEMU under test {bundle.binary} needs {soname}, which neither "
                           f"L1 nor L0 has", stage=STAGE, details=ldd)
        session.put(found, f"{BUNDLE}/lib/{soname}")
        carried.append(soname)
    if carried:
        env.append(f"LD_LIBRARY_PATH={BUNDLE}/lib")
        ldd = session.run(f"LD_LIBRARY_PATH={BUNDLE}/lib ldd {binary} 2>&1", check=False,
                          stage=STAGE).stdout
    still = missing_libraries(ldd)
    versions = missing_versions(ldd)
    if versions:
        raise BadInput(f"the QEMU under test {bundle.binary} was built against a newer C "
                       f"library (or other library) than L1 has: it needs "
                       f"{', '.join(versions)}", stage=STAGE, details=ldd)
    if still:
        raise BadInput(f"the QEMU under test {bundle.binary} needs {', '.join(still)}, which "
                       f"L1 lacks and cannot be carried", stage=STAGE, details=ldd)
    if not env and not args:
        session.run(f"mv {binary} {UPLOADED}", stage=STAGE)
        return UPLOADED, UPLOADED
    script = "#!/bin/sh\n# the QEMU under test and what it carries (vfio-harness)\n" + \
        "".join(f"export {e}\n" for e in env) + \
        f"exec {binary} {' '.join(q(a) for a in args)} \"$@\"\n"
    session.put(script.encode(), UPLOADED, mode=0o755)
    session.run(f"test -x {UPLOADED}", stage=STAGE)
    if not session.run(f"{UPLOADED} --version", check=False, stage=STAGE).ok:
        raise HarnessError(f"the QEMU under test {bundle.binary} does not start in L1 even with "
                           f"what was carried", stage=STAGE)
    return UPLOADED, binary
