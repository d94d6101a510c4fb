"""QMP through qemu.qmp, with every exchange written to a transcript.

L0 and L2 both speak QMP; the transcript (one JSON object per line) is an
artifact of every run, so a failure can be read back command by command.
"""

import json
import time
from pathlib import Path

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.base.deadline import Deadline
from harness.base.errors import HarnessError


class QmpRefused(HarnessError):
    """QEMU answered a command with an error. Often an answer the caller wants (qom-get of
    a device that is gone), so it is raised for the caller to judge; being a HarnessError,
    a refusal nobody expected still ends a cell or a run in one line naming the command,
    never as a library's traceback."""

    def __init__(self, command: str, who: str, error: ExecuteError):
        super().__init__(f"QMP {command}: {who} QEMU refused it: {error}", stage=who)
        self.command = command


class TranscribedQmp:
    def __init__(self, address: str | tuple[str, int], transcript: Path, who: str):
        self.address = address
        self.transcript = transcript
        self.who = who
        self._qmp: QEMUMonitorProtocol | None = None
        self._timeout = 30.0  # each answer's, unless a command asks for less

    def connect(self, deadline: Deadline, alive=lambda: True, details=lambda: "") -> None:
        """Connect, retrying until the deadline: the listener may not be up yet. Whether
        the process still lives is asked after an attempt failed, not before each (the
        question costs a round trip to L1)."""
        last: Exception | None = None
        while True:
            qmp = QEMUMonitorProtocol(self.address)
            try:
                qmp.connect()
                self._timeout = max(deadline.seconds, 30.0)
                qmp.settimeout(self._timeout)
                self._qmp = qmp
                self._log({"event": "connected", "address": str(self.address)})
                return
            except Exception as e:  # refused, reset by slirp, greeting not yet sent...
                last = e
            finally:
                if self._qmp is not qmp:  # failed, or interrupted: never left to __del__
                    _close(qmp)
            if not alive():
                raise HarnessError(f"{self.who} exited before QMP answered", stage=deadline.stage,
                                   details=details())
            if deadline.expired:
                raise deadline.timeout(f"{self.who} QMP at {self.address} never answered "
                                       f"({last})", details=details())
            time.sleep(0.2)

    @property
    def connected(self) -> bool:
        return self._qmp is not None

    def cmd(self, command: str, **args: object) -> object:
        return self._cmd(command, None, args)

    def cmd_within(self, seconds: float, command: str, **args: object) -> object:
        """One command whose answer is waited for `seconds` at most (not the connection's
        own timeout); after that the connection is lost for good: a QEMU whose main loop is
        stuck answers nothing more."""
        return self._cmd(command, seconds, args)

    def _cmd(self, command: str, timeout: float | None, args: dict) -> object:
        if self._qmp is None:
            raise HarnessError(f"QMP {command}: {self.who} is not connected", stage=self.who)
        entry: dict = {"execute": command, "arguments": args}
        try:
            if timeout is not None:
                self._qmp.settimeout(max(timeout, 0.1))
            entry["return"] = self._qmp.cmd(command, **args)
            return entry["return"]
        except ExecuteError as e:  # QEMU answered with an error: the caller's to judge
            entry["error"] = str(e)
            raise QmpRefused(command, self.who, e) from None
        except TimeoutError:  # the peer is there but its main loop does not answer
            waited = timeout if timeout is not None else self._timeout
            entry["error"] = f"no answer within {waited:g} s"
            raise HarnessError(f"QMP {command}: no answer from {self.who} QEMU within "
                               f"{waited:g} s (its main loop is stuck?)", stage=self.who
                               ) from None
        except Exception as e:  # no answer at all: the connection went (QEMU exited?)
            entry["error"] = repr(e)
            raise HarnessError(f"QMP {command}: the connection to {self.who} QEMU was lost "
                               f"({e!r}; {self.who} QEMU exited?)", stage=self.who) from None
        finally:
            if timeout is not None and self._qmp is not None:
                self._qmp.settimeout(self._timeout)
            self._log(entry)

    def events(self) -> list[dict]:
        if self._qmp is None:
            return []
        events = self._qmp.get_events(wait=False)
        self._qmp.clear_events()
        for e in events:
            self._log({"event": e})
        return events

    def close(self) -> None:
        if self._qmp is not None:
            try:
                self.events()
            except Exception:  # the peer is gone: its last events with it
                pass
            finally:
                qmp, self._qmp = self._qmp, None
                _close(qmp)

    def _log(self, entry: dict) -> None:
        with self.transcript.open("a") as t:
            t.write(json.dumps({"t": round(time.time(), 3), **entry}, default=str) + "\n")


def _close(qmp: QEMUMonitorProtocol) -> None:
    """Close a client whatever state its peer is in (qemu.qmp raises the bottom half's
    EOFError from close when the peer went first). An interrupt in the middle of closing
    would leave it half closed, for __del__ to close with a traceback at exit: finish
    closing, then let the interrupt go on."""
    try:
        qmp.close()
    except Exception:
        pass
    except BaseException:
        try:
            qmp.close()
        except Exception:
            pass
        raise
