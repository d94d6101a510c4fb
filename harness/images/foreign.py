"""A rootfs of another architecture: debootstrap's second stage run where its code runs.

`debootstrap --foreign` only downloads and unpacks; configuring the packages runs
their maintainer scripts, which are arm64 code on an x86_64 host. Without
binfmt_misc (not mounted here, and not ours to register on a host) the host
cannot run them, so the unpacked tree boots once as the root of an L1 of its own
architecture, under TCG, with the platform's own kernel: PID 1 runs the second
stage and streams the finished tree as a tar archive onto a second disk, which
the host unpacks as root (owners, modes, set-id bits and capabilities kept).
No loop mount, no network, nothing on the host to undo afterwards.
"""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.base import files
from harness.base.errors import HarnessError
from harness.base.progress import say
from harness.platforms import Platform

STAGE = "image build: rootfs second stage"
#: PID 1's last words on the console, which the host looks for.
DONE = "vfio-harness: second stage done"
FAILED = "vfio-harness: second stage failed"
#: Where the script sits in the tree while it runs (left out of the archive).
SCRIPT = "harness-second-stage"
#: TCG runs maintainer scripts slowly; seen to take minutes, not tens of them.
DEADLINE_S = 2400.0

_INIT = f"""#!/bin/sh
# PID 1 of the one boot that configures a foreign debootstrap (harness/images/foreign.py).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
if /debootstrap/debootstrap --second-stage; then
  apt-get clean 2>/dev/null
  if tar -C / --one-file-system --numeric-owner --xattrs --acls \\
       --exclude=./{SCRIPT} --exclude=./lost+found -cf /dev/vdb .; then
    sync
    echo "{DONE}" > /dev/console
  else
    echo "{FAILED}: tar to /dev/vdb" > /dev/console
  fi
else
  echo "{FAILED}: debootstrap --second-stage; its log ends:" > /dev/console
  tail -n 40 /debootstrap/debootstrap.log > /dev/console 2>&1
fi
sync
busybox poweroff -f 2>/dev/null || echo o > /proc/sysrq-trigger
sleep 30
"""

Runner = Callable[..., None]


def host_arch() -> str:
    """The host's Debian architecture (what debootstrap would bootstrap by default)."""
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def second_stage(first: Path, kernel: Path, platform: Platform, work: Path,
                 run: Runner) -> Path:
    """Boot `first` (a `debootstrap --foreign` tree) with `kernel` under the platform's L0
    QEMU and return the configured tree, unpacked beside it as `<first>.configured`."""
    qemu = shutil.which(platform.l0_qemu)
    if not qemu:
        raise HarnessError(f"{platform.l0_qemu} is not installed: the {platform.arch} rootfs "
                           f"is configured by booting it (apt-get install "
                           f"{platform.l2_package})", stage=STAGE)
    work.mkdir(parents=True, exist_ok=True)
    disk, archive, console = work / "first-stage.ext4", work / "second-stage.tar", \
        work / "second-stage-console.log"
    log = work / "second-stage.log"
    script = first / SCRIPT
    script.write_text(_INIT)
    script.chmod(0o755)
    used = _du(first)
    try:
        with log.open("w") as out:
            # Room for what the second stage installs from the .debs it finds in the tree.
            run(["mkfs.ext4", "-q", "-F", "-d", str(first), str(disk),
                 f"{used // 2**20 * 2 + 2048}M"], out, STAGE)
            archive.unlink(missing_ok=True)
            with archive.open("wb") as a:
                a.truncate(used * 3 + 2**31)  # sparse: what the tar needs is written
            console.unlink(missing_ok=True)
            run([qemu, "-accel", "tcg,thread=multi", "-M", platform.machine,
                 "-cpu", platform.cpu, "-smp", "2", "-m", "2048M", "-nodefaults",
                 "-display", "none", "-no-reboot", "-kernel", str(kernel),
                 "-append", f"console={platform.console} root=/dev/vda rw panic=-1 "
                            f"init=/{SCRIPT}",
                 "-drive", f"file={disk},if=virtio,format=raw,cache=unsafe",
                 "-drive", f"file={archive},if=virtio,format=raw,cache=unsafe",
                 "-serial", f"file:{console}"], out, STAGE,
                progress=lambda: _progress(console), deadline_s=DEADLINE_S)
        said = console.read_text(errors="replace") if console.exists() else ""
        if DONE not in said:
            raise HarnessError(f"the {platform.arch} rootfs's second stage did not finish "
                               f"(console: {console})", stage=STAGE,
                               details=files.tail(console, 40))
        configured = first.with_name(first.name + ".configured")
        shutil.rmtree(configured, ignore_errors=True)
        configured.mkdir()
        with log.open("a") as out:
            run(["tar", "-xpf", str(archive), "--numeric-owner", "--xattrs", "--acls",
                 "-C", str(configured)], out, STAGE)
        return configured
    finally:
        script.unlink(missing_ok=True)
        for big in (disk, archive):
            big.unlink(missing_ok=True)


def _du(tree: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(tree)], capture_output=True, text=True,
                              check=True, timeout=300).stdout.split()[0])


def _progress(console: Path) -> None:
    """The second stage's last console line ('I: Configuring ...'), as build progress."""
    last = files.tail(console, 1).strip() if console.exists() else ""
    if last:
        say(f"rootfs second stage: {last[-120:]}")
