"""L1Session against a real SSH server (paramiko's server side, in this process): commands
and the line helper get their output, status and deadlines without ever asking a channel
for an OS fd. select() on a channel makes paramiko create a pipe that its transport thread
writes to without a lock; a channel closed while output still arrived made that thread
die with EBADF, and with it every channel of the connection (paramiko issues 692, 2271)."""

import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from harness.base.deadline import Deadline
from harness.base.errors import HarnessError, StageTimeout
from harness.l1.session import L1Session


class _Server(paramiko.ServerInterface):
    """Accepts the client key for root and runs each exec request as a local shell."""

    def __init__(self, client_key: paramiko.PKey):
        self.client_key = client_key
        self.commands: list[tuple[paramiko.Channel, str]] = []
        self.ready = threading.Condition()

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        ok = username == "root" and key == self.client_key
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        with self.ready:
            self.commands.append((channel, command.decode()))
            self.ready.notify_all()
        return True


def _serve(channel: paramiko.Channel, command: str) -> None:
    """The command through /bin/sh, its stdin, stdout and stderr carried over the channel;
    a client that closes the channel first ends the command."""
    proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr

    def feed() -> None:
        try:
            while (data := channel.recv(4096)):
                proc.stdin.write(data)
                proc.stdin.flush()
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        if channel.closed:
            proc.kill()

    def pump(stream, send) -> None:
        try:
            while (data := stream.read1(4096)):
                send(data)
        except OSError:  # the client closed the channel
            proc.kill()

    threads = [threading.Thread(target=feed, daemon=True),
               threading.Thread(target=pump, args=(proc.stdout, channel.sendall), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, channel.sendall_stderr),
                                daemon=True)]
    for t in threads:
        t.start()
    status = proc.wait()
    threads[1].join()
    threads[2].join()
    try:
        channel.send_exit_status(status if status >= 0 else 128 - status)
        channel.shutdown_write()
        channel.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


@pytest.fixture
def l1(tmp_path: Path, monkeypatch):
    """An L1Session connected to the server, with Channel.fileno forbidden."""
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / name)], check=True)
    host_key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "host"))
    server = _Server(paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "client")))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    transports: list[paramiko.Transport] = []

    def accept() -> None:
        sock, _ = listener.accept()
        transport = paramiko.Transport(sock)
        transports.append(transport)
        transport.add_server_key(host_key)
        transport.start_server(server=server)
        while transport.is_active():
            with server.ready:
                server.ready.wait_for(lambda: server.commands or not transport.is_active(),
                                      timeout=0.2)
                pending, server.commands[:] = list(server.commands), []
            for channel, command in pending:
                threading.Thread(target=_serve, args=(channel, command), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def no_fd(self):
        raise AssertionError("the harness asked a channel for an OS fd (select on it)")

    monkeypatch.setattr(paramiko.Channel, "fileno", no_fd)
    session = L1Session(listener.getsockname()[1], tmp_path / "client",
                        tmp_path / "host.pub")
    session.wait_ready(Deadline("test SSH", 10))
    yield session
    session.close()
    for transport in transports:
        transport.close()
    listener.close()


def test_a_command_gets_its_output_its_status_and_stdin(l1):
    r = l1.run("read x; echo out $x; echo err >&2; exit 3", check=False, stdin="given\n")
    assert (r.stdout, r.stderr, r.status) == ("out given\n", "err\n", 3)
    with pytest.raises(HarnessError, match="exited with 3"):
        l1.run("exit 3")


def test_output_that_comes_late_and_long_is_all_read(l1):
    r = l1.run("sleep 0.3; head -c 300000 /dev/zero | tr '\\0' a; sleep 0.2; echo; echo done")
    assert r.stdout.count("a") == 300000 and r.stdout.endswith("\ndone\n")


def test_a_command_past_its_deadline_names_it(l1):
    began = time.monotonic()
    with pytest.raises(StageTimeout, match="did not finish in 0.5 s"):
        l1.run("sleep 5", timeout=0.5, stage="test sleep")
    assert time.monotonic() - began < 3


def test_the_line_helper_answers_each_line_and_its_end_is_said(l1):
    helper = l1.open_helper("while read x; do echo got $x; done; echo bye >&2", "test helper")
    assert [helper.ask(w, 5, "test helper") for w in ("a", "b")] == ["got a", "got b"]
    helper.close()
    silent = l1.open_helper("sleep 5", "test helper")
    with pytest.raises(StageTimeout, match="gave no answer in 0.3 s"):
        silent.ask("x", 0.3, "test helper")
    assert silent.closed  # a question left unanswered closes the helper
    ended = l1.open_helper("echo bye >&2", "test helper")
    with pytest.raises(HarnessError, match="in L1 ended"):
        ended.ask("x", 5, "test helper")


def test_channels_closed_while_output_still_streams_leave_the_connection_alive(l1):
    """The shape of the failure: commands ended by their deadline while they still write
    (their channels closed under incoming data), many times; the transport survives."""
    for _ in range(20):
        with pytest.raises(StageTimeout):
            l1.run("while :; do echo " + shlex.quote("x" * 200) + "; done", timeout=0.05)
    assert l1.run("echo alive").stdout == "alive\n"
    assert l1.client.get_transport().is_active()
