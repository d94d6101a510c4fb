"""Debian packages fetched with a private apt state, never the host's sources.

The kernel source only exists here as Debian's binary package linux-source-X;
we download the pinned version with apt-get into the cache and check its sha256.
"""

import os
import shutil
import subprocess
from pathlib import Path

from harness.base.checksum import sha256_file
from harness.base.errors import HarnessError, StageTimeout

_STAGE = "image build: download"


class PrivateApt:
    def __init__(self, root: Path, mirror: str, suite: str):
        self.root = root
        self.mirror = mirror
        self.suite = suite
        self._updated = False

    def _options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::Etc::sourcelist={r / 'sources.list'}",
                "-o", "Dir::Etc::sourceparts=/dev/null",
                "-o", f"Dir::State::lists={r / 'lists'}",
                "-o", f"Dir::Cache={r / 'cache'}",
                "-o", "Dir::State::status=/dev/null",
                "-o", "APT::Sandbox::User=root",
                # Mirrors here can be snapshots whose Release has passed Valid-Until.
                # What we fetch is pinned by sha256 and checked after download, so
                # the Release's freshness adds nothing to its integrity.
                "-o", "Acquire::Check-Valid-Until=false",
                "-o", "Acquire::Check-Date=false",
                "-q"]

    def _update(self) -> None:
        if self._updated:
            return
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text(
            f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            f"{self.mirror} {self.suite} main\n")
        _run(["apt-get", *self._options(), "update"], "apt-get update")
        self._updated = True

    def download(self, package: str, version: str, sha256: str, dest_dir: Path) -> Path:
        """The .deb of package=version in dest_dir, checked against the recipe's sha256."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        for existing in dest_dir.glob(f"{package}_*.deb"):
            if sha256_file(existing) == sha256:
                return existing
            existing.unlink()
        if not shutil.which("apt-get"):
            raise HarnessError("apt-get is not installed: the kernel source comes from "
                               "Debian's linux-source package", stage=_STAGE)
        self._update()
        _run(["apt-get", *self._options(), "download", f"{package}={version}"],
             f"apt-get download {package}={version}", cwd=dest_dir)
        debs = list(dest_dir.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise HarnessError(f"apt-get download left {len(debs)} files for {package}",
                               stage=_STAGE)
        got = sha256_file(debs[0])
        if got != sha256:
            debs[0].unlink()
            raise HarnessError(f"{debs[0].name}: sha256 {got} is not the pinned {sha256}; "
                               f"the mirror serves a different build: update the recipe "
                               f"pin deliberately", stage=_STAGE)
        return debs[0]


def installed_version(rootfs: Path, package: str) -> str | None:
    """A package's version from a rootfs's dpkg status, without chrooting into it."""
    status = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    for block in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields.get("Version")
    return None


def file_record(rootfs: Path, path: str) -> dict | None:
    """A file of the tree as L1 will find it (`path` absolute in L1, a symlink followed
    inside the tree): its path there, sha256, size and mtime (whole seconds, which the ext4
    image keeps), or None if the tree has no such file. What a probe in L1 would otherwise
    recompute, reading it under TCG, every run."""
    for _ in range(40):
        here = rootfs / path.lstrip("/")
        if not here.is_symlink():
            break
        target = os.readlink(here)
        path = os.path.normpath(target if target.startswith("/")
                                else os.path.join(os.path.dirname(path), target))
    if not here.is_file() or here.is_symlink():
        return None
    st = here.stat()
    return {"path": path, "sha256": sha256_file(here), "size": st.st_size,
            "mtime": int(st.st_mtime)}


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 900) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StageTimeout(f"{what} did not finish in {timeout:g} s", stage=_STAGE) from None
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed (exit {proc.returncode})", stage=_STAGE,
                           details=(proc.stdout + proc.stderr)[-3000:])
