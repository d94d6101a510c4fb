"""The vfio-user servers in L1: one per device, started before the L2 that takes the
devices as vfio-user-pci and stopped after it, their logs kept as evidence.

The server is guest/vfio_user_server.py (the Debian QEMU in the rootfs has the client
but not QEMU's own server). Each runs under a shell that writes how it ended, as L2
does, so that a server that died mid-run is named with its status and its stderr.
"""

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from harness.base.deadline import Deadline
from harness.base.errors import HarnessError
from harness.l1.keeper import describe_status, launch_command, stop_ladder
from harness.l1.session import L1Session
from harness.l1.vfio import L1Vfio

GUEST_SERVER = Path(__file__).parent / "guest" / "vfio_user_server.py"
REMOTE_SERVER = "/run/vfio_user_server.py"
#: Before each server file `stop` brings back (no log or stderr line starts so).
MARK = "=== vfio-harness file of "
#: How long a server has to end after SIGTERM before it is killed.
STOP_GRACE_S = 5.0


def read_log(text: str) -> list[dict]:
    """A server's log: one JSON object per line (a line cut short by a kill is dropped)."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@dataclass
class VfioUserServers:
    """The servers of `bdfs`, for as long as the context lasts."""

    session: L1Session
    #: L1's helper: it waits for the sockets and for the servers' end, polling in its own
    #: process (a shell's `sleep 0.05` per poll cost L1's one TCG vCPU about 33 ms each,
    #: taken from the python3 servers being waited for).
    vfio: L1Vfio
    bdfs: tuple[str, ...]
    #: In L1 (a tmpfs): each device's socket, BDF.sock (where the client looks: the
    #: backend's `sockets`), its log and its stderr.
    directory: str
    artifacts: Path          # on L0: each server's log and stderr land here
    #: A script to run in place of the server (an adversary: it may import the server,
    #: which is uploaded beside it as vfio_user_server).
    server: Path | None = None
    #: Devices whose server announces no region mmappable (--no-mmap).
    no_mmap: tuple[str, ...] = ()
    #: A hang's deadline, as L2's start has in the same L1 (20 to 30 s): two python3 starts
    #: take 2.5 s alone, but beside another CI worker's debug-kernel L1s (five TCG vCPUs on
    #: two cores) they were not listening after 10 s. A server that ends first is named at once.
    start_timeout: float = 30.0
    pids: dict[str, int] = field(default_factory=dict, init=False)
    #: What each server logged, as `stop` brought it back (the whole run's log).
    final_logs: dict[str, list[dict]] = field(default_factory=dict, init=False)

    def socket(self, bdf: str) -> str:
        return f"{self.directory}/{bdf}.sock"

    def path(self, bdf: str, name: str) -> str:
        """A file of the server of `bdf` (its keeper's directory: log, stderr, pid, status)."""
        return f"{self.directory}/{bdf}/{name}"

    def file(self, bdf: str, name: str) -> str:
        return shlex.quote(self.path(bdf, name))

    def __enter__(self) -> "VfioUserServers":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Every server launched in one round trip to L1 (each costs a shell in a TCG
        guest: a tenth of a second and more), then listened for by the helper."""
        self.session.put(GUEST_SERVER, REMOTE_SERVER, mode=0o755)
        program = REMOTE_SERVER
        if self.server is not None:
            program = f"/run/{self.server.name}"
            self.session.put(self.server, program, mode=0o755)
        d = shlex.quote(self.directory)
        steps = [f"rm -rf {d} && mkdir -p {d}"]
        for bdf in self.bdfs:
            line = " ".join(shlex.quote(a) for a in (
                "python3", program, self.socket(bdf), bdf, self.path(bdf, "log"),
                *(("--no-mmap",) if bdf in self.no_mmap else ())))
            steps.append(launch_command(line, f"{self.directory}/{bdf}",
                                        self.path(bdf, "stderr"), self.path(bdf, "pid"),
                                        self.path(bdf, "status")))
        deadline = Deadline("vfio-user server start", self.start_timeout)
        launched = self.session.run("; ".join(steps), timeout=deadline.remaining() + 15,
                                    stage="vfio-user server start")
        seen = self.vfio.wait_started(tuple(self.path(b, "pid") for b in self.bdfs),
                                      tuple(self.socket(b) for b in self.bdfs),
                                      max(0.0, deadline.remaining()))
        self.pids = {b: pid for b, pid in zip(self.bdfs, seen.pids, strict=True)
                     if pid is not None}
        silent = [b for b in self.bdfs if b not in self.pids]
        if silent:
            raise HarnessError(f"the vfio-user server of {silent[0]} did not start: its shell "
                               f"never said its pid", stage="vfio-user server start",
                               details=launched.stderr[-2000:])
        missing = seen.missing
        if missing:  # the time ran out, or a server ended first (the helper stops then)
            why = "; ".join(f"the server of {b} {how}" for b, how in self.ended().items())
            raise HarnessError(
                f"vfio-user server(s) did not listen on {', '.join(missing)}: "
                f"{why or f'not within {self.start_timeout:g} s'}",
                stage="vfio-user server start",
                details=self.session.run(f"cat {d}/*/stderr", check=False).stdout)

    def logs(self) -> dict[str, list[dict]]:
        """What each server logged so far."""
        return {bdf: read_log(self.session.run(f"cat {self.file(bdf, 'log')}",
                                               check=False).stdout)
                for bdf in self.bdfs}

    def ended(self) -> dict[str, str]:
        """The servers that are no longer running: BDF -> how each ended, in L1's words."""
        if not self.pids:
            return {}
        status = self.session.run(
            "; ".join(f"echo {shlex.quote(b)} $(cat {self.file(b, 'status')} 2>/dev/null)"
                      for b in self.pids), check=False, stage="vfio-user server status")
        out = {}
        for line in status.stdout.splitlines():
            bdf, _, code = line.partition(" ")
            how = describe_status(code)
            if how is not None:
                out[bdf] = how
        return out

    def stop(self) -> None:
        """SIGTERM each server, then SIGKILL what is left after 5 s; keep their files (one
        round trip: the files come back behind a marker line each)."""
        kill = ""
        if self.pids:
            pids = tuple(self.pids.values())
            try:
                left = self.vfio.terminate(pids, STOP_GRACE_S)
                if left:
                    kill = f"kill -9 {' '.join(map(str, left))} 2>/dev/null; "
            except HarnessError:  # the helper is gone: the shell's ladder instead
                kill = stop_ladder(pids, STOP_GRACE_S) + "; "
            self.pids.clear()
        files = [(bdf, suffix) for bdf in self.bdfs for suffix in ("log", "stderr")]
        shown = self.session.run(kill + "; ".join(
            f"echo {shlex.quote(MARK + bdf + ' ' + suffix)}; cat {self.file(bdf, suffix)} "
            f"2>/dev/null; echo" for bdf, suffix in files), check=False,
            stage="vfio-user server stop").stdout
        kept = {key: "" for key in files}
        current = None
        for line in shown.splitlines(keepends=True):
            if line.startswith(MARK):
                bdf, _, suffix = line[len(MARK):].strip().partition(" ")
                current = (bdf, suffix)
            elif current in kept:
                kept[current] += line
        self.final_logs = {bdf: read_log(kept[(bdf, "log")]) for bdf in self.bdfs}
        self.artifacts.mkdir(parents=True, exist_ok=True)
        for (bdf, suffix), text in kept.items():  # less the newline echoed after each:
            # a file cut short by a kill ends mid-line, and the marker must start one
            (self.artifacts / f"vfio-user-{bdf}.{suffix}").write_text(text[:-1])
