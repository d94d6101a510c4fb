"""L1-side VFIO: bind the passed-through devices to vfio-pci and ask the kernel about them.

The work happens in guest/vfio_l1.py, run inside L1; this module uploads it,
calls it over the L1 session and turns its JSON into typed records.
"""

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from harness.base.errors import HarnessError
from harness.evidence import stuck as stuck_tasks
from harness.evidence.kernel_log import LogLine, parse_kmsg
from harness.evidence.teardown import Leftover
from harness.l1.session import L1Session, LineHelper

GUEST_SCRIPT = Path(__file__).parent / "guest" / "vfio_l1.py"
REMOTE_SCRIPT = "/run/vfio_l1.py"


@dataclass(frozen=True)
class Bar:
    index: int
    start: int
    size: int
    mem: bool


@dataclass(frozen=True)
class L1Device:
    bdf: str
    vendor_device: str
    driver: str | None
    iommu_group: str | None
    group_members: tuple[str, ...]
    group_dev: str | None
    cdev: str | None
    bars: tuple[Bar, ...]
    reset_method: str = ""  # sysfs reset_method: empty when the kernel cannot reset it alone

    @property
    def alone_in_group(self) -> bool:
        return self.group_members == (self.bdf,)

    @classmethod
    def from_json(cls, d: dict) -> "L1Device":
        return cls(bdf=d["bdf"], vendor_device=d["vendor_device"], driver=d["driver"],
                   iommu_group=d["iommu_group"], group_members=tuple(d["group_members"]),
                   group_dev=d["group_dev"], cdev=d["cdev"],
                   bars=tuple(Bar(b["index"], b["start"], b["size"], b["mem"])
                              for b in d["bars"]), reset_method=d.get("reset_method") or "")


@dataclass(frozen=True)
class Inventory:
    kernel: str
    cmdline: str
    iommus: tuple[str, ...]
    dev_iommu: bool
    dev_vfio_container: bool
    devices: tuple[L1Device, ...]

    @classmethod
    def from_json(cls, d: dict) -> "Inventory":
        return cls(kernel=d["kernel"], cmdline=d["cmdline"], iommus=tuple(d["iommus"]),
                   dev_iommu=d["dev_iommu"], dev_vfio_container=d["dev_vfio_container"],
                   devices=tuple(L1Device.from_json(x) for x in d["devices"]))

    def find(self, vendor_device: str) -> L1Device:
        for dev in self.devices:
            if dev.vendor_device == vendor_device:
                return dev
        raise HarnessError(f"no PCI device {vendor_device} in L1 (L0 did not add it, or the "
                           f"L1 kernel does not see it)", stage="L1 devices")


@dataclass(frozen=True)
class DmabufProbe:
    """The L1 kernel's answer to VFIO_DEVICE_FEATURE_PROBE for DMA_BUF on one device."""

    bdf: str
    supported: bool
    errno: int | None
    error: str | None


@dataclass(frozen=True)
class DmabufFd:
    """A dma-buf fd as the L1 kernel reports it in /proc/PID/fdinfo."""

    fd: int
    size: int
    exp_name: str | None
    ino: int = -1
    #: live | revoked | several-ranges, as the kernel answers a private IOMMU_IOAS_MAP_FILE
    #: of a copy of the fd; or why it could not be asked.
    state: str = ""


@dataclass(frozen=True)
class ProcessView:
    pid: int
    dmabufs: tuple[DmabufFd, ...]
    vfio_maps: tuple[str, ...]
    fd_count: int = -1
    vfio_device_fds: tuple[int, ...] = ()
    trace_lines: int | None = None  # where L2's trace stood, when asked with the process
    stderr_lines: int | None = None  # and its stderr
    commands: dict[str, int | None] = field(default_factory=dict)  # BDF -> PCI command register

    @classmethod
    def from_json(cls, d: dict) -> "ProcessView":
        return cls(d["pid"], tuple(DmabufFd(x["fd"], x["size"], x["exp_name"], x.get("ino", -1),
                                            x.get("state", "")) for x in d["dmabufs"]),
                   tuple(d["vfio_maps"]), d.get("fd_count", -1),
                   tuple(d.get("vfio_device_fds", ())), d.get("trace_lines"),
                   d.get("stderr_lines"), d.get("commands", {}))


@dataclass(frozen=True)
class Started:
    """What the helper saw of processes being started: each one's pid (None: its keeper
    never wrote it), and the endpoints nothing listened on (the time ran out, or one of
    the processes ended first)."""

    pids: tuple[int | None, ...]
    missing: tuple[str, ...]


class L1Vfio:
    """The guest helper, started once per L1 session and asked one question per line."""

    def __init__(self, session: L1Session):
        self.session = session
        session.put(GUEST_SCRIPT, REMOTE_SCRIPT, mode=0o755)
        self._helper: LineHelper | None = None

    def _call(self, action: str, *args: str, timeout: float = 30.0) -> dict:
        stage = f"L1 vfio {action}"
        if self._helper is None or self._helper.closed:  # first question, or one cut short
            self._helper = self.session.open_helper(f"python3 {REMOTE_SCRIPT} serve", stage)
        line = self._helper.ask(json.dumps({"action": action, "args": list(args)}), timeout,
                                stage)
        try:
            answer = json.loads(line)
        except ValueError:
            raise HarnessError(f"{action} {' '.join(map(shlex.quote, args))} did not answer "
                               f"JSON", stage=stage, details=line[-2000:]) from None
        if isinstance(answer, dict) and "helper_error" in answer:
            raise HarnessError(f"{action} failed in L1: {answer['helper_error']}", stage=stage)
        return answer

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    def inventory(self, vendor_devices: list[str]) -> Inventory:
        return Inventory.from_json(self._call("inventory", *vendor_devices))

    def bind(self, bdfs: list[str]) -> list[L1Device]:
        answer = self._call("bind", *bdfs)
        devices = [L1Device.from_json(d) for d in answer["devices"]]
        if "error" in answer:
            raise HarnessError(answer["error"], stage="L1 vfio bind",
                               details="\n".join(f"{d.bdf}: driver={d.driver} cdev={d.cdev}"
                                                 for d in devices))
        return devices

    def restore(self, bdfs: list[str]) -> list[L1Device]:
        return [L1Device.from_json(d) for d in self._call("restore", *bdfs)["devices"]]

    def probe_dmabuf(self, bdfs: list[str]) -> dict[str, DmabufProbe]:
        return parse_probes(self._call("probe", *bdfs))

    def wait_closed(self, pid: int, fewer_than: int, seconds: float) -> tuple[bool, float]:
        """(whether PID came to hold fewer than `fewer_than` VFIO device fds with every
        release of one returned, how long it took): one round trip, the waiting in L1."""
        answer = self._call("wait-closed", str(pid), str(fewer_than), str(seconds),
                            timeout=seconds + 30)
        return bool(answer["closed"]), float(answer["waited_s"])

    def process(self, pid: int, trace: str | None = None,
                devices: tuple[str, ...] = (), stderr: str | None = None) -> ProcessView:
        counted = ",".join(p for p in (trace or "/dev/null", stderr) if p)
        extra = [counted, *devices] if trace or devices or stderr else []
        return ProcessView.from_json(self._call("process", str(pid), *extra))

    def kernel_log(self, since: int, timeout: float = 15.0) -> tuple[tuple[LogLine, ...], int]:
        """(the kernel's log lines after record `since`, its taint now): one round trip."""
        return parse_kmsg(self._call("kmsg", str(since), timeout=timeout))

    def stuck(self, pid: int) -> stuck_tasks.Stuck:
        """PID's tasks, their states and kernel stacks: where a call that did not return
        waits. Never raises: an L1 that cannot say is part of the answer."""
        try:
            return stuck_tasks.parse(self._call("stuck", str(pid), timeout=15.0))
        except HarnessError as e:
            return stuck_tasks.Stuck(pid, (), e.message)

    def wait_gone(self, pid: int, seconds: float) -> tuple[bool, float]:
        """(whether PID exited within `seconds`, how long it took): waited for in L1."""
        answer = self._call("wait-gone", str(pid), str(seconds), timeout=seconds + 30)
        return bool(answer["gone"]), float(answer["waited_s"])

    def wait_started(self, pid_files: tuple[str, ...], endpoints: tuple[int | str, ...],
                     seconds: float) -> Started:
        """Processes launched without waiting (keeper.launch_command): their
        pids once their keeper shells wrote them, and the endpoints (TCP ports, UNIX socket
        paths) nothing listens on after `seconds` or once one of them is gone. Waited for
        by the helper, whose polls start no program."""
        answer = self._call("wait-started", str(seconds), ",".join(pid_files),
                            *map(str, endpoints), timeout=seconds + 30)
        return Started(tuple(answer["pids"]), tuple(answer["missing"]))

    def ended(self, pid: int, seconds: float, status: str, tail: str) -> tuple[str, list[str]]:
        """(what PID's keeper wrote as its status, "" while it runs; the last lines of the
        file `tail`), PID given up to `seconds` to be gone and its keeper as long to write:
        one helper round trip, its polls starting no program."""
        answer = self._call("ended", str(pid), str(seconds), status, tail,
                            timeout=2 * seconds + 30)
        return str(answer["status"]), list(answer["tail"])

    def terminate(self, pids: tuple[int, ...], seconds: float) -> tuple[int, ...]:
        """SIGTERM each of `pids` and wait up to `seconds` for them to exit, in L1: the pids
        still running then (for the caller's SIGKILL)."""
        answer = self._call("terminate", str(seconds), *map(str, pids), timeout=seconds + 30)
        return tuple(answer["left"])

    def alive(self, pid: int) -> bool:
        """Whether PID still runs (neither gone nor a zombie): one helper round trip, not an
        SSH command of its own."""
        return not self._call("wait-gone", str(pid), "0")["gone"]

    def leftover(self, exporters: tuple[str, ...], seconds: float = 2.0) -> Leftover:
        """The dma-bufs of `exporters` the kernel still has (debugfs) and every VFIO fd still
        held in L1, waited up to `seconds` to be none. Never raises."""
        try:
            answer = self._call("leftover", str(seconds), *exporters, timeout=seconds + 30)
        except HarnessError as e:
            return Leftover((), (), 0.0, e.message)
        return Leftover(tuple((str(e), int(i), int(n)) for e, i, n in answer.get("dmabufs", ())),
                        tuple((int(p), str(c), int(f), str(t))
                              for p, c, f, t in answer.get("holders", ())),
                        float(answer.get("waited_s", 0.0)), answer.get("error", ""),
                        int(answer.get("alive", -1)))

    def reopen(self, bdfs: list[str], seconds: float = 10.0) -> dict[str, str]:
        """BDF -> what opening the device afresh gave: "live" (a dma-buf of its first BAR,
        mapped), "opened (...)" where no dma-buf can be asked for, else what failed; one
        question per device, each within `seconds` (an open that blocks behind a close
        that never returned is an answer too). Never raises."""
        out = {}
        for bdf in bdfs:
            try:
                out[bdf] = str(self._call("reopen", bdf, timeout=seconds)["reopened"][bdf])
            except HarnessError as e:
                out[bdf] = f"no answer: {e.message}"
        return out


    def helper_pid(self) -> int:
        """The helper's own pid: where to look if a question to it never comes back."""
        return int(self._call("pid")["pid"])

    def closed_before_unmap(self, bdf: str, seconds: float) -> dict:
        """The helper's `closed-before-unmap` answer for one device, within `seconds`."""
        return self._call("closed-before-unmap", bdf, timeout=seconds)


def parse_probes(answer: dict) -> dict[str, DmabufProbe]:
    return {bdf: DmabufProbe(bdf, a["supported"], a["errno"], a["error"])
            for bdf, a in answer["probe"].items()}
