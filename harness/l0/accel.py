"""Which accelerator L0 can use: KVM only where a real boot gets through.

/dev/kvm existing proves nothing here: on a paravirtual KVM a stock kernel
dies in its decompressor with "emulation failure". So the probe boots the L1
kernel itself under KVM, with no root disk, and calls KVM usable only if the
kernel runs to its root-mount panic. The answer is cached per L0 QEMU, kernel
and host boot, since a probe where KVM gets nowhere waits out its whole deadline: the
record keeps the last few kernels' answers, so that runs alternating between kernels
(the debug kernel's, the default ones) do not probe again at each switch.
"""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.base import files
from harness.base.checksum import sha256_file
from harness.l0.qemu_binary import QemuBinary
from harness.platforms import X86_64, Platform

#: What the kernel prints once it has booted far enough to look for its root disk.
REACHED = ("VFS: Unable to mount root", "Kernel panic - not syncing")
#: TCG boots the L1 kernel to its root panic in about 2 s here: a KVM that needs five
#: times that would not make L1 faster, and where KVM gets nowhere (this host's
#: paravirtual one spins without a line of output) every second of it is waited out.
PROBE_SECONDS = 10.0


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def probe_kvm(qemu: QemuBinary, kernel: Path, timeout: float = PROBE_SECONDS,
              platform: Platform = X86_64) -> AccelChoice:
    if not os.path.exists("/dev/kvm"):
        return AccelChoice("tcg", "no /dev/kvm")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "/dev/kvm is not accessible to this user")
    cmd = [str(qemu.path), "-accel", "kvm", "-M", platform.machine, "-cpu", platform.cpu,
           "-m", "256M", "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
           "-kernel", str(kernel), "-append",
           f"console={platform.console} panic=-1 root=/dev/nonexistent"]
    began = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, errors="replace")
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        output = _text(e.stdout) + _text(e.stderr)
        if any(marker in output for marker in REACHED):
            return AccelChoice("kvm", "a kernel booted under KVM")
        return AccelChoice("tcg", f"KVM boot probe got nowhere in {timeout:g} s: "
                                  f"{_summary(output)}")
    if any(marker in output for marker in REACHED):
        return AccelChoice("kvm", f"a kernel booted under KVM in {time.monotonic() - began:.1f} s")
    return AccelChoice("tcg", f"KVM boot probe failed: {_summary(output)}")


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _summary(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    telling = [line for line in lines if "KVM" in line or "error" in line.lower()]
    return (telling or lines or ["no output"])[0][:200]


def choose(qemu: QemuBinary, kernel: Path, cache: Path, force: str | None = None,
           platform: Platform = X86_64) -> AccelChoice:
    """The accelerator to use: forced by the user, else the cached or fresh probe result."""
    if force == "tcg":
        return AccelChoice("tcg", "chosen by --accel")
    host = os.uname().machine
    if platform.arch != host:
        return _forced(AccelChoice("tcg", f"an {platform.arch} L1 on an {host} host: KVM "
                                          f"runs only the host's own architecture"), force)
    key = {"qemu": str(qemu.path), "qemu_version": qemu.version_text,
           "kernel": sha256_file(kernel), "boot_id": _boot_id()}
    record = cache / "accel-probe.json"
    saved = recalled(record, key)
    if saved:
        return _forced(AccelChoice(saved.accel, saved.reason + " (cached probe)"), force)
    choice = probe_kvm(qemu, kernel, platform=platform)
    remember(record, key, choice)
    return _forced(choice, force)


#: Probe answers the record keeps, the newest first: a run's kernels and a few more.
REMEMBERED = 8


def _entries(record: Path) -> list[dict]:
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(saved, dict) and "key" in saved:  # one answer, as records were first
        saved = {"probes": [saved]}
    probes = saved.get("probes") if isinstance(saved, dict) else None
    return [e for e in probes or [] if isinstance(e, dict)
            and {"key", "accel", "reason"} <= e.keys()]


def recalled(record: Path, key: dict) -> AccelChoice | None:
    """The answer an earlier probe gave for exactly this key, if the record holds it."""
    for entry in _entries(record):
        if entry["key"] == key:
            return AccelChoice(entry["accel"], entry["reason"])
    return None


def remember(record: Path, key: dict, choice: AccelChoice) -> None:
    """Put this answer first, dropping an older one for the same key and the oldest beyond
    REMEMBERED; written by rename, so a reader beside never sees half of it."""
    kept = [e for e in _entries(record) if e["key"] != key]
    entries = [{"key": key, "accel": choice.accel, "reason": choice.reason}, *kept]
    files.write_atomic(record, json.dumps({"probes": entries[:REMEMBERED]}, indent=1))


def _forced(choice: AccelChoice, force: str | None) -> AccelChoice:
    if force == "kvm" and choice.accel != "kvm":
        from harness.base.errors import BadInput
        raise BadInput(f"--accel kvm asked for, but KVM does not work here: {choice.reason}")
    return choice


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"
