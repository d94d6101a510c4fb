"""L2: the QEMU under test, started inside L1 with the devices as vfio-pci.

It runs with `-accel qtest`, so no L2 guest OS is needed: the harness plays
the guest through the qtest socket. Its QMP and qtest sockets listen on TCP
inside L1 and L0 forwards them to loopback ports, so qemu.qmp on L0 talks to
it directly. Trace events are on from the start, written to a file in L1
that is fetched, with L2's stderr, into the run's artifacts.

The two VFIO backends differ in two command-line details and in the L1 device
node they need; `backends.Backend` holds that as data.
"""

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.base.deadline import Deadline
from harness.base.errors import HarnessError
from harness.base.progress import say
from harness.base.qmp import TranscribedQmp
from harness.l1.keeper import describe_status, launch_command, listens, stop_ladder
from harness.l1.session import L1Session
from harness.l1.vfio import Started
from harness.l2.backends import Backend
from harness.l2.qtest import Qtest
from harness.platforms import X86_64, Platform

#: L1 ports L2 listens on; L0 forwards each to a loopback port of its own.
L1_QMP_PORT, L1_QTEST_PORT = 4444, 4445
L2_QEMU = X86_64.l2_qemu
#: Trace events on from the start: the evidence the verdicts read.
TRACE_EVENTS = ("vfio_region_*", "vfio_listener_*", "iommufd_*", "vfio_container_*",
                "vfio_legacy_*", "vfio_pci_reset*", "vfio_pci_hot_reset*")


class L2Died(HarnessError):
    """L2 ended on its own while the harness drove it; `end` says how, in L1's words."""

    def __init__(self, message: str, end: str, *, stage: str | None = None,
                 details: str = ""):
        super().__init__(message, stage=stage, details=details)
        self.end = end


@dataclass(frozen=True)
class L2Device:
    bdf: str          # in L1
    extra: str = ""   # more vfio-pci properties, e.g. x-no-mmap=on, id=, bus=
    #: Another backend than the L2's for this device: a vfio-pci device beside vfio-user
    #: ones, whose BAR a vfio-user device reaches by P2P.
    backend: Backend | None = None


@dataclass(frozen=True)
class L2Spec:
    backend: Backend
    devices: tuple[L2Device, ...]
    #: 32 MiB: room for the staging buffer (1 MiB in) and the firmware; measured, the legacy
    #: container pins and maps it at every start (l2-scenario, legacy: 12.4 s with 128 MiB,
    #: 11.5 s with 32; iommufd the same either way)
    memory_mb: int = 32
    traces: tuple[str, ...] = TRACE_EVENTS
    qemu: str = L2_QEMU  # in L1: the packaged QEMU, or a build uploaded for this run
    #: PCIe root ports (ids) on pcie.0, for devices that must be hot-pluggable: q35's root
    #: bus is not.
    root_ports: tuple[str, ...] = ()
    #: Shared objects (paths in L1) preloaded into L2: a fixture the check needs, never
    #: something the other checks' L2 runs with.
    preload: tuple[str, ...] = ()
    platform: Platform = X86_64


@dataclass(frozen=True)
class L2Paths:
    """Where L2 writes inside L1 (a tmpfs: nothing of it survives L1)."""

    directory: str

    @property
    def trace(self) -> str:
        return f"{self.directory}/trace.log"

    @property
    def stderr(self) -> str:
        return f"{self.directory}/stderr.log"

    @property
    def qtest_log(self) -> str:
        return f"{self.directory}/qtest.log"

    @property
    def pid(self) -> str:
        return f"{self.directory}/pid"

    @property
    def status(self) -> str:
        """L2's exit status, written by the shell that waits for it (128+N: signal N)."""
        return f"{self.directory}/exit-status"


def build_command(spec: L2Spec, paths: L2Paths) -> list[str]:
    preload = ["env", f"LD_PRELOAD={':'.join(spec.preload)}"] if spec.preload else []
    cmd = [*preload, spec.qemu, "-M", spec.platform.l2.machine, "-accel", "qtest",
           "-qtest", f"tcp:0.0.0.0:{L1_QTEST_PORT},server=on,wait=off",
           "-qtest-log", paths.qtest_log,  # by default qtest logs to stderr
           "-qmp", f"tcp:0.0.0.0:{L1_QMP_PORT},server=on,wait=off",
           "-m", f"{spec.memory_mb}M", "-nodefaults", "-display", "none",
           *spec.backend.objects()]
    for other in dict.fromkeys(d.backend for d in spec.devices if d.backend is not None):
        if other != spec.backend:
            cmd += other.objects()
    if spec.backend.shares_memory:
        cmd += ["-object", f"memory-backend-memfd,id=l2-ram,size={spec.memory_mb}M,share=on",
                "-machine", "memory-backend=l2-ram"]
    for n, port in enumerate(spec.root_ports, start=1):
        cmd += ["-device", f"pcie-root-port,id={port},bus=pcie.0,chassis={n}"]
    for dev in spec.devices:
        cmd += ["-device", (dev.backend or spec.backend).device(dev.bdf, dev.extra)]
    for pattern in spec.traces:
        cmd += ["-trace", pattern]
    return cmd + ["-D", paths.trace]


class ProcessWatch(Protocol):
    """L1's processes watched by a program that is already running (the L1 helper)."""

    def alive(self, pid: int) -> bool: ...

    def wait_started(self, pid_files: tuple[str, ...], endpoints: tuple[int | str, ...],
                     seconds: float) -> Started: ...

    def wait_gone(self, pid: int, seconds: float) -> tuple[bool, float]: ...

    def ended(self, pid: int, seconds: float, status: str, tail: str) -> tuple[str, list[str]]: ...


@dataclass
class L2Qemu:
    """One L2 process in L1. A context manager: stopped, and its files fetched, on exit."""

    session: L1Session
    spec: L2Spec
    artifacts: Path           # on L0
    host_qmp_port: int        # L0 loopback ports forwarded to L1_QMP_PORT / L1_QTEST_PORT
    host_qtest_port: int
    #: How L2's process is watched without a program started per poll (the L1 helper, whose
    #: questions are not SSH commands of their own either): a shell loop of `sleep` costs
    #: L1's TCG the very vCPU L2 starts on (an `ended` of 3 s took 14 s so).
    watch: ProcessWatch
    start_timeout: float = 30.0
    paths: L2Paths = field(init=False)
    pid: int | None = field(default=None, init=False)
    qmp: TranscribedQmp = field(init=False)
    qtest: Qtest = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.paths = L2Paths(f"/run/l2/{self.artifacts.name}")
        self.qmp = TranscribedQmp(("127.0.0.1", self.host_qmp_port),
                                  self.artifacts / "l2-qmp.jsonl", "L2")
        self.qtest = Qtest("127.0.0.1", self.host_qtest_port,
                           transcript=self.artifacts / "l2-qtest.txt")

    def __enter__(self) -> "L2Qemu":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        cmd = build_command(self.spec, self.paths)
        line = " ".join(shlex.quote(c) for c in cmd)
        (self.artifacts / "l2-cmdline.txt").write_text(line + "\n")
        p = self.paths
        deadline = Deadline("L2 start", self.start_timeout)
        ports = (listens(L1_QMP_PORT), listens(L1_QTEST_PORT))
        launch = launch_command(line, p.directory, p.stderr, p.pid, p.status)
        # An L2 that outlived its run (it could not be stopped) still holds the ports: the
        # next one would fail to bind, or its QMP client reach the old process. Asked in
        # the launch's own round trip; ss names the holder only when there is one.
        started = self.session.run(
            f"if {' || '.join(ports)}; then echo stale; ss -Hltnp '( sport = :{L1_QMP_PORT} "
            f"or sport = :{L1_QTEST_PORT} )'; else {launch}; fi",
            timeout=deadline.remaining() + 15, stage="L2 start")
        said, _, holders = started.stdout.partition("\n")
        if said.strip() == "stale":
            raise HarnessError(f"a stale process still listens on L2's ports in L1 "
                               f"({L1_QMP_PORT}/{L1_QTEST_PORT}); no new L2 is started beside it",
                               stage="L2 start", details=holders.strip())
        # its pid, and QMP's first attempt finds it listening
        self.pid = self.watch.wait_started((p.pid,), (L1_QMP_PORT, L1_QTEST_PORT),
                                           deadline.remaining()).pids[0]
        if self.pid is None:
            raise HarnessError("L2 did not start: its shell never said its pid",
                               stage="L2 start", details=started.stderr[-2000:])
        try:
            self.qmp.connect(deadline, alive=self.running, details=self.stderr)
            self.qtest.connect(deadline.remaining())
        except HarnessError as e:
            explained = self.explain(e)
            self.stop()
            raise explained from None
        except BaseException:  # an interrupt: never leave L2 or a client behind
            self.stop()
            raise

    def set_trace(self, pattern: str, enable: bool = True) -> None:
        """Switch trace events at run time, for evidence only one step needs."""
        self.qmp.cmd("trace-event-set-state", name=pattern, enable=enable)

    def running(self) -> bool:
        if self.pid is None:
            return False
        return self.watch.alive(self.pid)

    def ended(self) -> str | None:
        """How L2 ended, in L1's words ("was killed by SIGKILL (9)"), with the tail of its
        stderr; None while it runs (or if L1 cannot say)."""
        if self.pid is None:
            return None
        # Asked because a socket closed or a command failed: an L2 that is dying may still
        # show a running state for a moment (its sockets close before it is a zombie, the
        # longer the busier L1 is), so it gets up to 3 s to be gone or a zombie; then its
        # shell gets up to 3 s to write its status. An L2 that still runs is left as is.
        status, tail = self.watch.ended(self.pid, 3.0, self.paths.status, self.paths.stderr)
        how = describe_status(status)
        if how is None:
            return None
        said = " | ".join(line.strip() for line in tail if line.strip())
        return (f"L2 QEMU (pid {self.pid}) {how}, as L1 saw it; its stderr ended: "
                f"{said[-600:] or '(nothing)'}")

    def status(self) -> str | None:
        """How L2 ended ("exited with status 0"), from the status its shell wrote; None
        while it runs or if its shell has not written it yet."""
        if self.pid is None:
            return None
        return describe_status(self.session.run(
            f"cat {shlex.quote(self.paths.status)} 2>/dev/null", check=False,
            stage="L2 status").stdout)

    def explain(self, error: HarnessError) -> HarnessError:
        """`error`, with how L2 ended if it did: a dead L2 is the story, not the closed
        socket that showed it."""
        try:
            how = self.ended()
        except HarnessError:  # L1 itself is gone: the error says enough
            return error
        if how is None:
            return error
        return L2Died(f"{error.message}: {how}", how, stage=error.stage, details=error.details)

    def stderr(self) -> str:
        return self.session.run(f"cat {shlex.quote(self.paths.stderr)}", check=False,
                                stage="L2 stderr").stdout

    def stop(self, timeout: float = 10.0, graceful: bool = True) -> None:
        """QMP quit (unless not `graceful`: an L2 stuck in the kernel answers nothing), then
        SIGTERM, then SIGKILL; then fetch stderr and the trace.

        Called on the way out of failures too, so it never raises: if L1 itself
        is gone, L2 went with it and L0's shutdown finishes the job.
        """
        try:
            self._terminate(timeout, graceful)
        except HarnessError as e:
            say(f"L2 {self.paths.directory}: not stopped cleanly: {e.message}")
        self.qmp.close()
        self.qtest.close()
        files = ((self.paths.stderr, self.artifacts / "l2-stderr.log"),
                 (self.paths.trace, self.artifacts / "l2-trace.log"),
                 (self.paths.qtest_log, self.artifacts / "l2-qtest-log.txt"))
        for _, local in files:  # an earlier L2's, in the same directory, is not this one's
            local.unlink(missing_ok=True)
        try:
            self.session.get_all(files)
        except HarnessError:  # L1 is gone
            pass
        for _, local in files:
            if not local.exists():
                local.write_text("")  # L2 never wrote it, or L1 is gone

    def _terminate(self, timeout: float, graceful: bool = True) -> None:
        """The quit, then one round trip to L1 that waits for L2 to be gone and climbs to
        SIGTERM and SIGKILL, `timeout` seconds each, as long as it is not (a poll from L0
        costs a round trip each)."""
        if self.pid is None:
            return
        unwaited_quit = False
        if graceful and self.qmp.connected:
            try:  # an L2 already gone refuses at once; a stuck one is signalled below
                self.qmp.cmd_within(timeout, "quit")
            except Exception:
                pass
            try:  # the usual end: gone after the quit, seen without a poll loop of sleeps
                if self.watch.wait_gone(self.pid, timeout)[0]:
                    return
            except HarnessError:  # the helper is gone: the ladder below waits for the quit
                unwaited_quit = True
        ladder = stop_ladder((self.pid,), timeout, after_quit=unwaited_quit)
        left = self.session.run(ladder, timeout=3 * timeout + 15, check=False,
                                stage="L2 stop").stdout.strip()
        if left == "alive":
            raise HarnessError(f"L2 QEMU (pid {self.pid}) still runs after QMP quit, SIGTERM "
                               f"and SIGKILL, {timeout:g} s each", stage="L2 stop")
