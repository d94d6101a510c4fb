"""A rootfs of another architecture: debootstrap's second stage run where its code runs.

`debootstrap --foreign` only downloads and unpacks; configuring the packages runs
their maintainer scripts, which are arm64 code on an x86_64 host. Two ways, the
first where the host allows it:

- In a chroot, the tree's programs run by qemu-user (Debian's qemu-user-static)
  through a binfmt_misc handler registered in a user namespace of our own
  (harness/base/userns.py; Linux 6.7 and later). The host's binfmt_misc is
  global and not ours to change; the namespace's dies with the step. User-mode
  emulation runs only the tree's code under TCG, the system calls natively.
- Otherwise the unpacked tree boots once as the root of an L1 of its own
  architecture, under TCG, with the platform's own kernel (so it waits for the
  first kernel build): PID 1 runs the second stage and streams the finished tree
  as a tar archive onto a second disk, which the host unpacks as root (owners,
  modes, set-id bits and capabilities kept).

Either way: no loop mount, no network, nothing on the host to undo afterwards.
"""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.base import files, userns
from harness.base.errors import HarnessError
from harness.base.progress import say, step
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

#: Where Debian's qemu-user-static says how to register each architecture's handler.
BINFMT_D = Path("/usr/lib/binfmt.d")

#: Run in the namespace: its own /proc and binfmt_misc, the handler, the second stage.
#: container=lxc: debootstrap then makes no device node (a user namespace may not; the
#: first stage, run as the host's root, made them) and does not test for one.
_CHROOT = """set -e
mount --make-rprivate /
mount -t proc proc /proc
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf '%s' "$1" > /proc/sys/fs/binfmt_misc/register
[ -z "$2" ] && exit 0
export container=lxc
chroot "$2" /debootstrap/debootstrap --second-stage
chroot "$2" apt-get clean
"""


def host_arch() -> str:
    """The host's Debian architecture (what debootstrap would bootstrap by default)."""
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def second_stage(first: Path, platform: Platform, work: Path, run: Runner,
                 kernel: Callable[[], Path]) -> tuple[Path, str]:
    """Configure `first` (a `debootstrap --foreign` tree): the configured tree (`first`
    itself, or beside it) and how it was configured, for the manifest. `kernel` gives a
    kernel of the platform to boot, and is called only if the tree must boot."""
    trim_index(first)
    registration, why_not = qemu_user(platform)
    if registration:
        with step(f"rootfs: second stage in a chroot, run by qemu-user "
                  f"(log {work / 'second-stage.log'})"):
            with (work / "second-stage.log").open("w") as out:
                run(userns.command(["sh", "-c", _CHROOT, "sh", registration, str(first)]),
                    out, STAGE, progress=lambda: _progress(first / "debootstrap"
                                                           / "debootstrap.log"),
                    deadline_s=DEADLINE_S)
        return first, f"debootstrap second stage in a chroot, {platform.arch} code run by " \
                      f"qemu-user through a private binfmt_misc"
    say(f"rootfs second stage: {why_not}; booting the tree in an {platform.arch} L1 instead")
    with step(f"rootfs: second stage in a {platform.arch} L1 under TCG "
              f"(console {work / 'second-stage-console.log'})"):
        return _booted(first, kernel(), platform, work, run), \
            f"debootstrap second stage in an {platform.arch} L1 under TCG"


def trim_index(first: Path) -> None:
    """Cut the tree's package index down to the packages the first stage fetched.

    The second stage resolves each pre-dependency with perl passes over the whole
    index (sid's is 64 MB), emulated: most of its time. Nothing outside what the first
    stage fetched can be installed, so the answers are the same; nothing in L1 reads the
    index afterwards (L1 never runs apt)."""
    fetched = {line.split()[0] for line in
               (first / "debootstrap" / "debpaths").read_text().splitlines() if line.strip()}
    for index in (first / "var" / "lib" / "apt" / "lists").glob("*_Packages"):
        stanzas = index.read_text(errors="surrogateescape").split("\n\n")
        kept = [st for st in stanzas if st.startswith("Package: ")
                and st.split("\n", 1)[0][len("Package: "):].strip() in fetched]
        index.write_text("\n\n".join(kept) + "\n\n", errors="surrogateescape")


def qemu_user(platform: Platform) -> tuple[str | None, str]:
    """The binfmt_misc registration that runs `platform`'s code here and None, or None and
    why it cannot: no qemu-user, or a kernel without a binfmt_misc per user namespace."""
    conf = BINFMT_D / f"qemu-{platform.arch}.conf"
    if not conf.is_file():
        return None, f"no qemu-user for {platform.arch} ({conf} missing: apt-get install " \
                     f"qemu-user-static)"
    lines = [ln for ln in conf.read_text().splitlines() if ln and not ln.startswith("#")]
    fields = lines[0].split(":") if lines else []
    if len(fields) < 7 or not Path(fields[6]).exists():
        return None, f"{conf} names no interpreter that exists"
    try:
        tried = subprocess.run(userns.command(["sh", "-c", _CHROOT, "sh", lines[0], ""]),
                               capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, "registering a binfmt_misc handler in a namespace of our own did not " \
                     "finish in 60 s"
    if tried.returncode != 0:
        said = (tried.stderr.strip().splitlines() or [f"exit {tried.returncode}"])[-1]
        return None, f"no binfmt_misc of our own here (Linux 6.7 or later has one per " \
                     f"user namespace): {said}"
    return lines[0], ""


def _booted(first: Path, kernel: Path, platform: Platform, work: Path, run: Runner) -> Path:
    """Boot `first` with `kernel` under the platform's L0 QEMU and return the configured
    tree, unpacked beside it as `<first>.configured`."""
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


def _progress(log: Path) -> None:
    """The second stage's last line ('I: Configuring ...', 'Setting up ...'), as build
    progress."""
    last = files.tail(log, 1).strip() if log.exists() else ""
    if last:
        say(f"rootfs second stage: {last[-120:]}")
