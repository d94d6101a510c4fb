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
from harness.l1.session import RECONNECTS, L1Session


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


class _Sshd:
    """The server: every connection L1Session makes is served (a reconnect too), each on
    its own transport, which a test can drop as an L1's sshd or network would."""

    def __init__(self, tmp_path: Path):
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(tmp_path / name)], check=True)
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "host"))
        self.server = _Server(paramiko.Ed25519Key.from_private_key_file(
            str(tmp_path / "client")))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(sock,), daemon=True).start()

    def _connection(self, sock: socket.socket) -> None:
        server = self.server
        transport = paramiko.Transport(sock)
        self.transports.append(transport)
        transport.add_server_key(self.host_key)
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError):
            return  # the client gave up before the handshake ended (its deadline, under load)
        while transport.is_active():
            with server.ready:
                server.ready.wait_for(lambda: server.commands or not transport.is_active(),
                                      timeout=0.2)
                pending, server.commands[:] = list(server.commands), []
            for channel, command in pending:
                threading.Thread(target=_serve, args=(channel, command), daemon=True).start()

    def drop(self) -> None:
        """Close every connection from the server's side; wait till the client sees it."""
        for transport in self.transports:
            transport.close()

    def close(self) -> None:
        self.drop()
        self.listener.close()


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch):
    """The server, with Channel.fileno forbidden to the harness."""
    def no_fd(self):
        raise AssertionError("the harness asked a channel for an OS fd (select on it)")

    monkeypatch.setattr(paramiko.Channel, "fileno", no_fd)
    server = _Sshd(tmp_path)
    yield server
    server.close()


@pytest.fixture
def l1(sshd, tmp_path: Path):
    """An L1Session connected to the server."""
    session = L1Session(sshd.port, tmp_path / "client", tmp_path / "host.pub")
    session.wait_ready(Deadline("test SSH", 10))
    yield session
    session.end()


def _dropped(session: L1Session, sshd: _Sshd) -> None:
    sshd.drop()
    deadline = time.monotonic() + 10
    while session.client.get_transport().is_active():
        assert time.monotonic() < deadline, "the client never saw the connection close"
        time.sleep(0.05)


def test_a_connection_lost_under_a_running_l1_is_made_again_and_its_loss_kept(sshd, tmp_path):
    log = tmp_path / "l1-ssh.log"
    session = L1Session(sshd.port, tmp_path / "client", tmp_path / "host.pub", log=log)
    session.wait_ready(Deadline("test SSH", 10))
    try:
        _dropped(session, sshd)
        assert session.run("echo again").stdout == "again\n"
        assert len(session.reconnects) == 1
        assert session.reconnects[0].startswith("lost before running 'echo again'")
        assert "reconnected: the connection was lost before running 'echo again'" in \
            log.read_text()
    finally:
        session.end()


def test_a_connection_that_keeps_going_is_an_error_naming_the_command(sshd, tmp_path):
    session = L1Session(sshd.port, tmp_path / "client", tmp_path / "host.pub")
    session.wait_ready(Deadline("test SSH", 10))
    try:
        for _ in range(RECONNECTS):
            _dropped(session, sshd)
            session.run("true")
        _dropped(session, sshd)
        with pytest.raises(HarnessError, match=r"SSH connection to L1 is gone .*\(running "
                                               r"'dmesg'\)"):
            session.run("dmesg", stage="L1 dmesg")
    finally:
        session.end()


def test_no_connection_is_made_again_to_an_l1_whose_l0_has_exited(sshd, tmp_path):
    session = L1Session(sshd.port, tmp_path / "client", tmp_path / "host.pub",
                        alive=lambda: False)
    session.wait_ready(Deadline("test SSH", 10))
    try:
        _dropped(session, sshd)
        with pytest.raises(HarnessError, match="SSH connection to L1 is gone"):
            session.run("true")
        assert session.reconnects == []
    finally:
        session.end()


def test_a_command_gets_its_output_its_status_and_no_input(l1):
    """Its stdin is /dev/null: a command that reads it ends at once, with nothing read."""
    r = l1.run("read x; echo out \"$x\"; cat; echo err >&2; exit 3", check=False, timeout=5)
    assert (r.stdout, r.stderr, r.status) == ("out \n", "err\n", 3)
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


def test_a_channel_sshd_is_slower_to_open_than_the_deadline_is_the_deadlines(l1, sshd,
                                                                            monkeypatch):
    """sshd (a busy L1) answers the channel open after the command's deadline: a
    StageTimeout naming the stage, as a command that ran too long gets, not an SSH failure;
    the connection stays usable."""
    slow = sshd.server.check_channel_request

    def late(kind, chanid):
        time.sleep(0.5)
        return slow(kind, chanid)

    monkeypatch.setattr(sshd.server, "check_channel_request", late)
    with pytest.raises(StageTimeout) as e:
        l1.run("echo late", timeout=0.05, stage="a busy L1")
    assert e.value.stage == "a busy L1"
    assert "SSH could not open its channel in that time" in e.value.message
    monkeypatch.setattr(sshd.server, "check_channel_request", slow)
    assert l1.run("echo alive").stdout == "alive\n"


def test_channels_closed_while_output_still_streams_leave_the_connection_alive(l1):
    """The shape of the failure: commands ended by their deadline while they still write
    (their channels closed under incoming data), many times; the transport survives."""
    for _ in range(20):
        with pytest.raises(StageTimeout):
            l1.run("while :; do echo " + shlex.quote("x" * 200) + "; done", timeout=0.05)
    assert l1.run("echo alive").stdout == "alive\n"
    assert l1.client.get_transport().is_active()
