"""L0: the QEMU on this host that boots L1 with a vIOMMU and the devices to pass through.

The machine is described as data (`L1Spec`); `build_command` turns it into a
command line without side effects (unit-tested); `L0Machine` runs it with the
lifecycle of QEMU's own python/qemu/machine: prepare files, launch, talk QMP,
shut down gracefully and then kill, and never leave a QEMU behind.
"""

import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.base.deadline import Deadline, wait_for
from harness.base.errors import BadInput, HarnessError
from harness.base.progress import say
from harness.base.qmp import TranscribedQmp
from harness.l0 import strays
from harness.l0.qemu_binary import QemuBinary
from harness.platforms import (
    DEFAULT_DEVICES,
    X86_64,
    PassthroughDevice,
    Platform,
    VIommu,
)


@dataclass(frozen=True)
class L1Spec:
    viommu: VIommu
    kernel: Path
    rootfs: Path  # the read-only base image; each run writes to its own overlay
    devices: tuple[PassthroughDevice, ...] = DEFAULT_DEVICES
    platform: Platform = X86_64
    memory_mb: int = 3072
    #: One vCPU: L2 runs under qtest and needs no second one, and with two, an L1
    #: boot once died of "Oops: int3" in sched_clock_idle_wakeup_event, hit on the
    #: second vCPU while the first flipped a static key by int3 text patching (TCG,
    #: multi-threaded). Rare (1 in about 100 boots; 0 in a dedicated run of 30),
    #: impossible with one vCPU; boot time is the same (median 6.1 s either way).
    cpus: int = 1
    kernel_args: tuple[str, ...] = ()
    #: L1 TCP ports reachable from L0 on loopback; 22 is SSH, the others L2's sockets.
    guest_ports: tuple[int, ...] = (22,)

    def append(self) -> str:
        return " ".join((f"console={self.platform.console}", *self.platform.kernel_args,
                         "root=/dev/vda", "rw", "init=/sbin/harness-init", "panic=-1",
                         *self.viommu.kernel_args, *self.kernel_args))


SHM = strays.SHM
#: sun_path's size in struct sockaddr_un (Linux), the terminating NUL included.
UNIX_PATH_MAX = 108


def sweep_stale_shm(shm: Path = SHM) -> list[Path]:
    """Remove the ivshmem files (and QMP sockets) in /dev/shm of harness processes that
    are gone (a SIGKILL leaves them: nothing ran to clean up), and say so."""
    removed: list[Path] = []
    for stray in strays.shm_files(shm):
        stray.remove()
        removed += [stray.path] if stray.path else []
        say(f"removed {stray.path}, left by harness process {stray.owner}, which is gone")
    return removed


@dataclass(frozen=True)
class RunFiles:
    """Everything one L1 boot writes, kept in its run directory."""

    directory: Path
    ivshmem: Path  # in /dev/shm, so that L0 reads what L2's DMA wrote
    #: In the run directory, unless its path is too long for a UNIX socket (108 bytes with
    #: the NUL: a deep results directory, pytest's tmp_path): then beside the ivshmem file.
    short_qmp_socket: Path | None = None

    @property
    def qmp_socket(self) -> Path:
        return self.short_qmp_socket or self.directory / "l0-qmp.sock"

    @classmethod
    def create(cls, directory: Path) -> "RunFiles":
        directory.mkdir(parents=True, exist_ok=True)
        sweep_stale_shm()
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        long = len(str(directory.resolve() / "l0-qmp.sock").encode()) >= UNIX_PATH_MAX
        return cls(directory, SHM / f"vfio-harness-{tag}.ivshmem",
                   SHM / f"vfio-harness-{tag}.qmp" if long else None)

    @property
    def console(self) -> Path:
        return self.directory / "l0-console.log"

    @property
    def stderr(self) -> Path:
        return self.directory / "l0-qemu-stderr.log"

    @property
    def qmp_transcript(self) -> Path:
        return self.directory / "l0-qmp.jsonl"

    @property
    def overlay(self) -> Path:
        return self.directory / "l1-overlay.qcow2"

    @property
    def cmdline(self) -> Path:
        return self.directory / "l0-cmdline.txt"


def build_command(qemu: Path, spec: L1Spec, files: RunFiles, host_ports: dict[int, int],
                  accel: str) -> list[str]:
    """The L0 command line for `spec`, with host_ports = {guest port: host port}."""
    accel_arg = "kvm" if accel == "kvm" else "tcg,thread=multi"
    forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                       for guest, host in sorted(host_ports.items()))
    machine = ",".join(filter(None, (spec.platform.machine, spec.viommu.machine_props)))
    viommu = ["-device", spec.viommu.device] if spec.viommu.device else []
    cmd = [str(qemu), "-accel", accel_arg, "-M", machine, "-cpu", spec.platform.cpu,
           "-smp", str(spec.cpus), "-m", f"{spec.memory_mb}M",
           "-nodefaults", "-display", "none", "-no-reboot", *viommu,
           "-kernel", str(spec.kernel), "-append", spec.append(),
           "-drive", f"file={files.overlay},if=virtio,format=qcow2,cache=unsafe",
           "-netdev", f"user,id=n0,restrict=on{forwards}",
           "-device", f"{spec.platform.nic},netdev=n0",
           "-serial", f"file:{files.console}",
           "-qmp", f"unix:{files.qmp_socket},server=on,wait=off"]
    for dev in spec.devices:
        cmd += dev.args(files)
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise BadInput(f"port {port} on 127.0.0.1 is busy ({e.strerror}): choose another "
                           f"with --ssh-port, or leave it out to take a free one",
                           stage="L0") from None
    return port


def _die_with_parent() -> None:
    """In the child: if the harness dies, even by SIGKILL, the kernel kills QEMU too."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


_FORWARD_FAILED = re.compile(r"Could not set up host forwarding rule "
                             r"'tcp:127\.0\.0\.1:(\d+)-:(\d+)'")
_FORWARD_NAMES = {22: "SSH", 4444: "L2's QMP", 4445: "L2's qtest"}


class PortTaken(BadInput):
    """A host port for a forward was taken before QEMU could bind it."""

    def __init__(self, message: str, host: int, guest: int, details: str):
        super().__init__(message, stage="L0 start", details=details)
        self.host, self.guest = host, guest


@dataclass
class L0Machine:
    """One L1 boot. Use as a context manager: QEMU is gone when the block exits."""

    qemu: QemuBinary
    spec: L1Spec
    run_dir: Path
    accel: str = "tcg"
    ssh_port: int | None = None
    launch_timeout: float = 30.0
    files: RunFiles = field(init=False)
    host_ports: dict[int, int] = field(init=False, default_factory=dict)
    _proc: subprocess.Popen | None = field(default=None, init=False)
    _qmp: TranscribedQmp | None = field(default=None, init=False)
    _fixed_ssh_port: int | None = field(default=None, init=False)

    #: Free ports are found by binding and letting go; another process can take one before
    #: QEMU binds it. QEMU then fails at start, naming the rule: choose again, this often.
    PORT_ATTEMPTS = 3

    def __post_init__(self) -> None:
        self.files = RunFiles.create(self.run_dir)
        self._fixed_ssh_port = self.ssh_port

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> "L0Machine":
        self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def launch(self) -> None:
        for attempt in range(1, self.PORT_ATTEMPTS + 1):
            self._pre_launch()
            try:
                self._launch()
                return
            except PortTaken as e:
                self.shutdown()
                if (e.guest == 22 and self._fixed_ssh_port) or attempt == self.PORT_ATTEMPTS:
                    raise
                say(f"L0: {e.message}; choosing other ports (attempt {attempt + 1})")
            except BaseException:
                self.shutdown()
                raise

    def _pre_launch(self) -> None:
        self.qemu.require_devices([*self.spec.viommu.drivers,
                                   *(d.device for d in self.spec.devices), "virtio-net-pci"])
        for path, what in ((self.spec.kernel, "L1 kernel"), (self.spec.rootfs, "L1 rootfs")):
            if not path.is_file():
                raise BadInput(f"{what} {path} does not exist (vfio-harness images build)",
                               stage="L0")
        self.ssh_port = check_port(self._fixed_ssh_port) if self._fixed_ssh_port \
            else free_port()
        self.host_ports = {22: self.ssh_port}
        for guest in self.spec.guest_ports:
            self.host_ports.setdefault(guest, free_port())
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                               "-b", str(self.spec.rootfs), str(self.files.overlay)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise HarnessError("cannot create the L1 disk overlay", stage="L0",
                               details=proc.stderr)
        for stale in (self.files.qmp_socket, self.files.console):
            stale.unlink(missing_ok=True)

    def _launch(self) -> None:
        cmd = build_command(self.qemu.path, self.spec, self.files, self.host_ports, self.accel)
        self.files.cmdline.write_text(" ".join(cmd) + "\n")
        with self.files.stderr.open("w") as err:
            proc = self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        deadline = Deadline("L0 start", self.launch_timeout)
        wait_for(lambda: self.files.qmp_socket.exists() or proc.poll() is not None,
                 deadline, "QEMU did not open its QMP socket", details=self.stderr_text)
        if proc.poll() is not None:
            raise self._start_failure(proc.returncode)
        self._qmp = TranscribedQmp(str(self.files.qmp_socket), self.files.qmp_transcript, "L0")
        self._qmp.connect(deadline, alive=lambda: self.running, details=self.stderr_text)

    def _start_failure(self, status: int) -> HarnessError:
        stderr = self.stderr_text()
        m = _FORWARD_FAILED.search(stderr)
        if m:
            host, guest = int(m.group(1)), int(m.group(2))
            return PortTaken(f"L0 QEMU could not listen on 127.0.0.1:{host} for L1's port "
                             f"{guest} ({_FORWARD_NAMES.get(guest, 'forward')}; port busy?)",
                             host, guest, stderr)
        return HarnessError(f"L0 QEMU exited at start with status {status}",
                            stage="L0 start",
                            details=f"command: {self.files.cmdline.read_text()}{stderr}")

    def shutdown(self, timeout: float = 10.0) -> None:
        """QMP quit, then SIGTERM, then SIGKILL; keeps every file the run wrote."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._qmp is not None:
                try:
                    self.qmp("quit")
                except Exception:  # a wedged QMP still gets the signals below
                    pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    try:
                        proc.send_signal(sig)
                    except ProcessLookupError:
                        break
                try:
                    proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        self._post_shutdown()

    def _post_shutdown(self) -> None:
        self.files.qmp_socket.unlink(missing_ok=True)
        self.files.ivshmem.unlink(missing_ok=True)
        self.files.overlay.unlink(missing_ok=True)  # L1's scratch writes, not evidence

    # -- talking to it ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def qmp(self, command: str, **args: object) -> object:
        if self._qmp is None:
            raise HarnessError(f"QMP {command}: L0 QEMU is not running", stage="L0")
        return self._qmp.cmd(command, **args)

    def console_text(self) -> str:
        try:
            return self.files.console.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 30) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def stderr_text(self) -> str:
        try:
            return self.files.stderr.read_text(errors="replace")
        except OSError:
            return ""

    def read_ivshmem(self, offset: int, length: int) -> bytes:
        """The bytes of the ivshmem BAR as L0 sees them, straight from its file."""
        with self.files.ivshmem.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def write_ivshmem(self, offset: int, data: bytes) -> None:
        """Write into the BAR's backing file (a shared mapping: the device sees it at once)."""
        with self.files.ivshmem.open("r+b") as f:
            f.seek(offset)
            f.write(data)
