"""A client for QEMU's qtest protocol, after QEMU's python/qemu/machine/qtest.py.

With `-accel qtest` no guest code runs in L2: this socket is how the harness
plays the guest driver (PCI config cycles, BAR reads and writes). edu's DMA
timer runs in L0, so L2's virtual clock never needs stepping. qemu.machine is
not published on PyPI, so its small protocol class is mirrored here, with
deadlines and a transcript added.
"""

import socket
import time
from collections.abc import Sequence
from pathlib import Path

from harness.base.errors import HarnessError


class QtestError(HarnessError):
    pass


class Qtest:
    def __init__(self, host: str, port: int, transcript: Path | None = None,
                 timeout: float = 30.0):
        self.address = (host, port)
        self.timeout = timeout
        self.transcript = transcript
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self, deadline_s: float = 30.0) -> None:
        end = time.monotonic() + deadline_s
        while True:
            try:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
                return
            except OSError as e:
                if time.monotonic() > end:
                    raise QtestError(f"cannot connect to qtest at {self.address}: {e}",
                                     stage="L2 qtest") from None
                time.sleep(0.2)

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None

    def _readline(self) -> str:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(4096)
            except TimeoutError:
                raise QtestError(f"no answer from qtest in {self.timeout:g} s",
                                 stage="L2 qtest") from None
            except OSError as e:  # reset by the forwarder as L2 went
                raise QtestError(f"qtest connection lost: {e.strerror or e} (L2 QEMU "
                                 f"exited?)", stage="L2 qtest") from None
            if not chunk:
                raise QtestError("qtest connection closed (L2 QEMU exited?)", stage="L2 qtest")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def cmd(self, command: str) -> str:
        """Send one command; the text after "OK". Asynchronous IRQ lines are skipped."""
        return self.batch((command,))[0]

    def batch(self, commands: Sequence[str]) -> list[str]:
        """Commands sent together and answered in order (QEMU reads its qtest socket a line
        at a time, so each still runs after the one before): one round trip through L1's
        TCG instead of one each. The text after "OK" of each; the first that was not OK
        raises once every answer is read, so the next command meets its own."""
        if self._sock is None:
            raise QtestError("qtest is not connected", stage="L2 qtest")
        try:
            self._sock.sendall("".join(f"{c}\n" for c in commands).encode())
        except OSError as e:
            raise QtestError(f"qtest connection lost: {e.strerror or e} (L2 QEMU exited?)",
                             stage="L2 qtest") from None
        replies = []
        try:
            for _ in commands:
                while True:
                    reply = self._readline()
                    if not reply.startswith("IRQ"):
                        break
                replies.append(reply)
        finally:
            if self.transcript:
                with self.transcript.open("a") as t:
                    t.write("".join(f"> {c}\n< {r}\n"
                                    for c, r in zip(commands, replies, strict=False)))
        for command, reply in zip(commands, replies, strict=True):
            if not reply.startswith("OK"):
                raise QtestError(f"qtest {command!r} answered {reply!r}", stage="L2 qtest")
        return [reply[2:].strip() for reply in replies]

    # -- the commands the driver uses --------------------------------------------------

    def outl(self, port: int, value: int) -> None:
        self.cmd(f"outl 0x{port:x} 0x{value:x}")

    def inl(self, port: int) -> int:
        return int(self.cmd(f"inl 0x{port:x}"), 16)

    def readl(self, addr: int) -> int:
        return int(self.cmd(f"readl 0x{addr:x}"), 16)

    def writel(self, addr: int, value: int) -> None:
        self.cmd(f"writel 0x{addr:x} 0x{value:x}")

    def readq(self, addr: int) -> int:
        return int(self.cmd(f"readq 0x{addr:x}"), 16)

    def writeq(self, addr: int, value: int) -> None:
        self.cmd(f"writeq 0x{addr:x} 0x{value:x}")

    def read(self, addr: int, size: int) -> bytes:
        return bytes.fromhex(self.cmd(f"read 0x{addr:x} 0x{size:x}")[2:])

    def write(self, addr: int, data: bytes) -> None:
        self.cmd(f"write 0x{addr:x} 0x{len(data):x} 0x{data.hex()}")
