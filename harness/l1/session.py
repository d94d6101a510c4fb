"""L1: the guest, reached over SSH with paramiko.

The host key was made when the rootfs was built and is pinned here: a key
that does not match is refused, never added. A failed command raises with its
output, L1's dmesg tail and L0's console tail, because the cause of a failure
in L1 is usually in one of those.
"""

import base64
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.base.deadline import Deadline
from harness.base.errors import HarnessError, StageTimeout
from harness.base.progress import say

# While L1 boots, slirp accepts connections before sshd runs, and paramiko's
# transport thread logs each refused banner as a traceback. wait_ready reports
# the last error itself when it gives up.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
logging.getLogger("paramiko").propagate = False


#: Times one session connects again after losing its connection, before a loss is an
#: error: enough for a connection closed under a healthy L1, not for one that keeps going.
RECONNECTS = 2


def _transport_log(path: Path, port: int) -> logging.Logger:
    """A logger of its own for one L1's connection, into `path` (INFO: connects,
    disconnects with sshd's reason, rekeys; not the packets)."""
    log = logging.getLogger(f"paramiko.l1.{port}.{id(path)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    logging.getLogger(f"{log.name}.sftp").setLevel(logging.WARNING)  # a line per upload
    return log


#: What in paramiko's INFO log tells how a connection ended (not its connects and logins).
_ENDED = ("isconnect", "rror", "xception", "EOF")


def _last_lines(log: logging.Logger, n: int) -> list[str]:
    """The last `n` lines of the connection's log that tell how it ended."""
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.flush()
            try:
                lines = Path(handler.baseFilename).read_text().splitlines()
            except OSError:
                return []
            ended = [line.split(" ", 3)[-1] for line in lines if any(w in line for w in _ENDED)]
            return ended[-n:]
    return []


@dataclass(frozen=True)
class Result:
    command: str
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


class L1Session:
    """An SSH connection to L1. `context` supplies L0's console tail for errors."""

    def __init__(self, port: int, client_key: Path, host_key_pub: Path,
                 context: Callable[[], str] = lambda: "", host: str = "127.0.0.1",
                 log: Path | None = None, alive: Callable[[], bool] = lambda: True):
        self.host = host
        self.port = port
        self.key = paramiko.Ed25519Key.from_private_key_file(str(client_key))
        kind, blob = host_key_pub.read_text().split()[:2]
        self.host_key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        self.context = context
        self._client: paramiko.SSHClient | None = None
        #: paramiko's own account of the connection once L1 is up (a disconnect's reason
        #: and code, a rekey), for when the connection goes: it says why.
        self._log = _transport_log(log, port) if log else None
        self._alive = alive  # whether L0 still runs: a reconnect is worth trying
        self.reconnects: list[str] = []  # why each lost connection was made again

    # -- connecting -------------------------------------------------------------------

    def _client_once(self, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        client.get_host_keys().add(name, self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.host, self.port, username="root", pkey=self.key, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, allow_agent=False,
                       look_for_keys=False)
        return client

    def wait_ready(self, deadline: Deadline, alive: Callable[[], bool] = lambda: True) -> float:
        """Connect as soon as sshd answers; the seconds it took. Fails fast if L0 died."""
        began = time.monotonic()
        last_error: Exception | None = None
        while True:
            if not alive():
                raise HarnessError("L0 QEMU exited while L1 was booting", stage=deadline.stage,
                                   details=self.context())
            try:
                self._client = self._client_once(timeout=min(5.0, max(deadline.remaining(), 1)))
                self._logged()
                return time.monotonic() - began
            except paramiko.BadHostKeyException as e:
                raise HarnessError(f"L1 presented a host key other than the pinned one ({e}); "
                                   f"rebuild the images", stage=deadline.stage) from None
            except (OSError, paramiko.SSHException, EOFError) as e:
                last_error = e
            if deadline.expired:
                raise deadline.timeout(f"SSH on 127.0.0.1:{self.port} never answered "
                                       f"(last error: {last_error})",
                                       details="L0 console tail:\n" + self.context())
            time.sleep(0.3)

    def close(self) -> None:
        if self._client:
            self._client.close()
            self._client = None

    def end(self) -> None:
        """Close, and let go of the connection's log file."""
        self.close()
        if self._log:
            for handler in list(self._log.handlers):
                handler.close()
                self._log.removeHandler(handler)

    def __enter__(self) -> "L1Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise HarnessError("not connected to L1", stage="L1")
        return self._client

    # -- running things ----------------------------------------------------------------

    def run(self, command: str, timeout: float = 60.0, check: bool = True,
            stage: str = "L1 command") -> Result:
        """Run a shell command in L1 with a deadline; raise with context when it fails.

        Its stdin is /dev/null, not a channel the client ends with EOF: paramiko builds
        that EOF under the channel's lock but sends it after, so when the command has
        already ended, the CLOSE paramiko sends in reply to sshd's can go out first, and
        OpenSSH, which frees the channel on that CLOSE, ends the whole connection on the
        late EOF ("ieof packet referred to nonexistent channel 0": sshd's -E log of a CI
        run, whose line helper died with the connection)."""
        deadline = Deadline(stage, timeout)
        transport = self._transport(f"running {command!r}", stage)
        try:
            chan = transport.open_session(timeout=timeout)
        except (OSError, paramiko.SSHException) as e:  # the transport died, or sshd refused
            if deadline.expired and transport.is_active():  # or sshd was slower than the
                # deadline (a busy L1): that is the deadline's, as a command's own would be
                raise StageTimeout(f"{command!r} did not finish in {timeout:g} s: SSH could "
                                   f"not open its channel in that time", stage=stage,
                                   details=self._failure_context()) from None
            raise HarnessError(f"SSH could not open a channel to run {command!r}: {e}"
                               f"{self._why_gone(transport)}",
                               stage=stage, details=self.context()) from None
        out, err = io.BytesIO(), io.BytesIO()
        readable = _readable(chan)
        try:
            chan.exec_command(f"exec </dev/null; {command}")
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                elif chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(65536))
                elif chan.exit_status_ready() and (chan.eof_received or chan.closed) \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break  # not at the exit status alone: sshd sends it when the command
                    # exits, before the output still queued behind a full window
                else:
                    if deadline.expired:
                        raise StageTimeout(
                            f"{command!r} did not finish in {timeout:g} s", stage=stage,
                            details=_fmt(out, err) + self._failure_context())
                    _wait(chan, readable, min(0.2, deadline.remaining() + 0.01))
            status = chan.recv_exit_status()
        except (OSError, paramiko.SSHException) as e:
            raise HarnessError(f"SSH failed while running {command!r}: {e}", stage=stage,
                               details=self.context()) from None
        finally:
            chan.close()
        result = Result(command, status, out.getvalue().decode(errors="replace"),
                        err.getvalue().decode(errors="replace"))
        if check and not result.ok:
            raise HarnessError(f"{command!r} exited with {status}", stage=stage,
                               details=_fmt(out, err) + self._failure_context())
        return result

    def open_helper(self, command: str, stage: str) -> "LineHelper":
        """A long-lived command in L1 that answers one line per line asked: what would
        otherwise start a process in L1 per question (an interpreter under TCG takes
        longer to start than to answer) is started once."""
        transport = self._transport(f"starting {command!r}", stage)
        try:
            chan = transport.open_session(timeout=30)
            chan.exec_command(command)
        except (OSError, paramiko.SSHException) as e:
            raise HarnessError(f"SSH failed while starting {command!r}: {e}", stage=stage,
                               details=self.context()) from None
        return LineHelper(command, chan)

    def _transport(self, doing: str, stage: str) -> paramiko.Transport:
        """The live connection; a lost one made again while L0 runs, RECONNECTS times at
        most (its L1 may be well: a connection closed under it is not a verdict on it), and
        the reason kept. Channels opened on the lost one (line helpers) stay lost and fail
        on their own."""
        transport = self.client.get_transport()
        if transport is not None and transport.is_active():
            return transport
        why = self._why_gone(transport)
        if self._alive() and len(self.reconnects) < RECONNECTS:
            try:
                self.close()
                self._client = self._client_once(timeout=10)
                self._logged()
                self.reconnects.append(f"lost before {doing}{why}")
                say(f"L1 SSH (port {self.port}): the connection was lost before {doing}{why}; "
                    f"connected again")
                if self._log:
                    self._log.warning("reconnected: the connection was lost before %s%s",
                                      doing, why)
                new = self.client.get_transport()
                if new is not None:
                    return new
            except (OSError, paramiko.SSHException, EOFError) as e:
                why += f"; connecting again failed: {e}"
        raise HarnessError(f"SSH connection to L1 is gone{why} ({doing})", stage=stage,
                           details=self.context())

    def _logged(self) -> None:
        transport = self._client.get_transport() if self._client else None
        if transport is not None and self._log:
            transport.set_log_channel(self._log.name)

    def _why_gone(self, transport: paramiko.Transport | None) -> str:
        """What ended the connection, as paramiko's transport thread recorded it (an
        exception), or as it logged it (a disconnect sshd sent has no exception)."""
        e = transport.get_exception() if transport is not None else None
        said = [] if e is None else [f"{type(e).__name__}: {e}"]
        if self._log and not said:
            said = _last_lines(self._log, 2)
        return f" ({'; '.join(said)})" if said else ""

    def _failure_context(self) -> str:
        dmesg = ""
        try:
            transport = self.client.get_transport()
            if transport and transport.is_active():
                _, so, _ = self.client.exec_command("dmesg | tail -n 30", timeout=10)
                dmesg = so.read().decode(errors="replace")
        except Exception as e:  # the context must never hide the original failure
            dmesg = f"(dmesg unavailable: {e})"
        return f"\n--- L1 dmesg tail ---\n{dmesg}\n--- L0 console tail ---\n{self.context()}"

    def put(self, local: Path | bytes, remote: str, mode: int = 0o644,
            timeout: float = 120.0) -> None:
        def send(sftp: paramiko.SFTPClient) -> None:
            if isinstance(local, bytes):
                with sftp.open(remote, "wb") as f:
                    f.write(local)
            else:
                sftp.put(str(local), remote)
            sftp.chmod(remote, mode)
        self._sftp(send, f"upload to {remote}", timeout)

    def get(self, remote: str, local: Path, timeout: float = 120.0) -> None:
        self._sftp(lambda sftp: sftp.get(remote, str(local)), f"download of {remote}", timeout)

    def get_all(self, files: Sequence[tuple[str, Path]], timeout: float = 120.0) -> None:
        """Several files in one SFTP session (each session starts sftp-server in L1); a
        remote path that does not exist leaves no local file, and the others are fetched."""
        def fetch(sftp: paramiko.SFTPClient) -> None:
            for remote, local in files:
                try:
                    sftp.get(remote, str(local))
                except FileNotFoundError:
                    local.unlink(missing_ok=True)
        self._sftp(fetch, "download of " + ", ".join(r for r, _ in files), timeout)

    def _sftp(self, action: Callable[[paramiko.SFTPClient], object], what: str,
              timeout: float) -> None:
        """An SFTP transfer with a deadline; a stalled or failed one raises, naming itself."""
        try:
            with self.client.open_sftp() as sftp:
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(timeout)
                action(sftp)
        except (OSError, paramiko.SSHException) as e:
            raise HarnessError(f"{what} failed: {e or type(e).__name__}",
                               stage="L1 file transfer") from None

def _readable(chan: paramiko.Channel) -> threading.Event:
    """An event set when the channel has output, on either stream, or is at its end.
    Not select() on the channel: its fileno() is an OS pipe that paramiko's transport
    thread writes to without a lock, so a channel closed while output still arrives makes
    that thread write to a closed fd and die with EBADF, taking every channel of the
    connection with it (paramiko issues 692 and 2271)."""
    event = threading.Event()
    chan.in_buffer.set_event(event)
    chan.in_stderr_buffer.set_event(event)
    return event


def _wait(chan: paramiko.Channel, readable: threading.Event, seconds: float) -> None:
    """Until output comes or, once the output has ended (then `readable` stays set), until
    the exit status does."""
    if chan.eof_received:
        chan.status_event.wait(seconds)
    else:
        readable.wait(seconds)


def _fmt(out: io.BytesIO, err: io.BytesIO) -> str:
    return (f"--- stdout ---\n{out.getvalue().decode(errors='replace')[-3000:]}"
            f"\n--- stderr ---\n{err.getvalue().decode(errors='replace')[-3000:]}")


class LineHelper:
    """One line out, one line back, each answer with a deadline that names its stage."""

    def __init__(self, command: str, chan: paramiko.Channel):
        self.command = command
        self._chan = chan
        self._readable = _readable(chan)
        self._pending = b""

    @property
    def closed(self) -> bool:
        return self._chan.closed

    def ask(self, line: str, timeout: float, stage: str) -> str:
        """One answer. A question left unanswered (an interrupt, a deadline, a failure)
        closes the helper: its late answer must never be taken for the next one's."""
        try:
            return self._ask(line, timeout, stage)
        except BaseException:
            self.close()
            raise

    def _ask(self, line: str, timeout: float, stage: str) -> str:
        deadline = Deadline(stage, timeout)
        try:
            self._chan.sendall(line.encode() + b"\n")
            while b"\n" not in self._pending:
                if self._chan.recv_ready():
                    self._pending += self._chan.recv(65536)
                    continue
                if self._chan.exit_status_ready() or self._chan.closed:
                    err = self._chan.recv_stderr(65536).decode(errors="replace") \
                        if self._chan.recv_stderr_ready() else ""
                    raise HarnessError(f"{self.command!r} in L1 ended", stage=stage,
                                       details=err)
                if deadline.expired:
                    raise StageTimeout(f"{self.command!r} gave no answer in {timeout:g} s",
                                       stage=stage)
                _wait(self._chan, self._readable, min(0.2, deadline.remaining() + 0.01))
        except (OSError, paramiko.SSHException) as e:
            raise HarnessError(f"SSH failed while asking {self.command!r}: {e}",
                               stage=stage) from None
        answer, _, self._pending = self._pending.partition(b"\n")
        return answer.decode(errors="replace")

    def close(self) -> None:
        try:
            self._chan.close()
        except (OSError, paramiko.SSHException):
            pass
