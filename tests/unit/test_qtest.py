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
