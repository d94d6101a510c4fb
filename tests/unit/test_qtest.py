"""qtest's client: an L2 that goes mid-command is a QtestError naming it, whatever the
socket says (closed, or reset by L0's forwarder), never an OSError out of the run."""

import socket
import struct
import threading

import pytest

from harness.l2.qtest import Qtest, QtestError


def _server(behaviour: str) -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(100)  # the command arrives; L2 dies before it answers
        if behaviour == "reset":  # RST, as slirp does when the guest side goes
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("behaviour", ["close", "reset"])
def test_an_l2_that_goes_mid_command_is_a_qtest_error(behaviour):
    listener, port = _server(behaviour)
    qtest = Qtest("127.0.0.1", port)
    qtest.connect(5)
    try:
        with pytest.raises(QtestError, match="qtest connection (closed|lost)") as e:
            for _ in range(50):  # a reset shows on the next send or receive
                qtest.inl(0xCFC)
        assert e.value.stage == "L2 qtest"
    finally:
        qtest.close()
        listener.close()


def test_a_batch_is_answered_in_order_and_a_refusal_raises_after_every_answer(tmp_path):
    """One write for the whole batch; the answers keep their commands' order, an IRQ line
    between them is skipped, and a FAIL raises only once the later answers are read, so
    the next command meets its own."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        data = b""
        while data.count(b"\n") < 3:
            data += conn.recv(100)
        seen.append(data)
        conn.sendall(b"OK 0x1\nIRQ raise 3\nFAIL unknown\nOK 0x3\n")
        conn.recv(100)
        conn.sendall(b"OK 0x4\n")
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    qtest = Qtest("127.0.0.1", listener.getsockname()[1], transcript=tmp_path / "t.txt")
    qtest.connect(5)
    try:
        with pytest.raises(QtestError, match="'bogus' answered 'FAIL unknown'"):
            qtest.batch(["inl 0xcfc", "bogus", "inl 0xcfc"])
        assert seen == [b"inl 0xcfc\nbogus\ninl 0xcfc\n"]
        assert qtest.inl(0xCFC) == 4
        assert (tmp_path / "t.txt").read_text().splitlines() == [
            "> inl 0xcfc", "< OK 0x1", "> bogus", "< FAIL unknown", "> inl 0xcfc", "< OK 0x3",
            "> inl 0xcfc", "< OK 0x4"]
    finally:
        qtest.close()
        listener.close()
