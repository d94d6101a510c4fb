"""The L2 command line: the two backends differ in exactly two places."""

import pytest

from harness.base.errors import BadInput
from harness.l2.backends import backend
from harness.l2.qemu import (
    L1_QMP_PORT,
    L1_QTEST_PORT,
    TRACE_EVENTS,
    L2Device,
    L2Paths,
    L2Spec,
    build_command,
)

PATHS = L2Paths("/run/l2/x")
DEVICES = (L2Device("0000:00:02.0"), L2Device("0000:00:03.0", "x-no-mmap=on"))


def _arg(cmd, flag):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_legacy_and_iommufd_differ_only_in_the_object_and_device_property():
    legacy = build_command(L2Spec(backend("legacy"), DEVICES), PATHS)
    iommufd = build_command(L2Spec(backend("iommufd"), DEVICES), PATHS)
    assert _arg(legacy, "-object") == []
    assert _arg(iommufd, "-object") == ["iommufd,id=iofd0"]
    assert _arg(legacy, "-device") == ["vfio-pci,host=0000:00:02.0",
                                       "vfio-pci,host=0000:00:03.0,x-no-mmap=on"]
    assert _arg(iommufd, "-device") == ["vfio-pci,host=0000:00:02.0,iommufd=iofd0",
                                        "vfio-pci,host=0000:00:03.0,iommufd=iofd0,x-no-mmap=on"]
    strip = {"-object", "iommufd,id=iofd0", "-device"}
    rest = [a for a in iommufd if a not in strip and not a.startswith("vfio-pci")]
    assert rest == [a for a in legacy if a != "-device" and not a.startswith("vfio-pci")]


def test_qtest_accelerator_sockets_and_traces():
    cmd = build_command(L2Spec(backend("legacy"), DEVICES), PATHS)
    assert _arg(cmd, "-accel") == ["qtest"]
    assert _arg(cmd, "-qtest") == [f"tcp:0.0.0.0:{L1_QTEST_PORT},server=on,wait=off"]
    assert _arg(cmd, "-qmp") == [f"tcp:0.0.0.0:{L1_QMP_PORT},server=on,wait=off"]
    assert _arg(cmd, "-qtest-log") == [PATHS.qtest_log]  # not stderr, which is evidence
    assert _arg(cmd, "-trace") == list(TRACE_EVENTS)
    assert _arg(cmd, "-D") == [PATHS.trace]


def test_the_qemu_under_test_can_be_another_binary():
    cmd = build_command(L2Spec(backend("legacy"), DEVICES, qemu="/run/qemu-under-test"), PATHS)
    assert cmd[0] == "/run/qemu-under-test"


def test_unknown_backend():
    with pytest.raises(BadInput, match="unknown backend 'vfio-usr'; known: legacy, iommufd, "
                       "vfio-user"):
        backend("vfio-usr")


def test_how_l2_ended_is_said_in_l1s_words():
    from harness.l1.keeper import describe_status

    assert describe_status("") is None  # still running: its shell has not written it
    assert describe_status("0\n") == "exited with status 0"
    assert describe_status("1") == "exited with status 1"
    assert describe_status("137") == "was killed by SIGKILL (9)"
    assert describe_status("139") == "was killed by SIGSEGV (11)"


def test_l2_runs_under_a_shell_that_writes_its_exit_status(tmp_path):
    """The launch command, run here by a real shell on a command that kills itself: it
    returns at once, the pid file holds the process's pid and the status file says which
    signal ended it."""
    import subprocess
    import time

    from harness.l1.keeper import describe_status, launch_command

    paths = L2Paths(str(tmp_path / "l2"))
    line = launch_command("sh -c 'sleep 0.2; kill -9 $$'", paths.directory, paths.stderr,
                          paths.pid, paths.status)
    out = subprocess.run(["sh", "-c", line],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == ""
    end = time.monotonic() + 10
    while not (tmp_path / "l2" / "exit-status").exists():
        assert time.monotonic() < end, "no exit status written"
        time.sleep(0.05)
    status = (tmp_path / "l2" / "exit-status").read_text()
    assert int((tmp_path / "l2" / "pid").read_text()) > 1
    assert describe_status(status) == "was killed by SIGKILL (9)"


def test_a_listener_is_seen_by_the_shell_alone():
    """The condition L2's stale-port check asks, run by a real shell on
    this host's /proc/net/tcp: true while a socket listens on the port, false after."""
    import socket
    import subprocess

    from harness.l1.keeper import listens

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    assert subprocess.run(["sh", "-c", listens(port)]).returncode == 1  # bound, not listening
    s.listen()
    assert subprocess.run(["sh", "-c", listens(port)]).returncode == 0
    s.close()
    assert subprocess.run(["sh", "-c", listens(port)]).returncode == 1


def _late_listener(tmp_path):
    """(a free port, L2's paths under tmp_path, a command that listens on the port 0.5 s
    after it starts)."""
    import socket
    import sys

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = (f"{sys.executable} -c 'import socket, time; time.sleep(0.5); s = socket.socket(); "
              f"s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(5)'")
    return port, L2Paths(str(tmp_path / "l2")), server


def _pid_file(path, pid: int):
    path.write_text(f"{pid}\n")
    return str(path)


def test_the_helper_waits_for_listeners_and_for_nothing_once_its_process_is_gone(tmp_path):
    """The L1 helper's wait-started, on this host's /proc/net/tcp: ready once the pid file
    is written (0.2 s in) and every port listens (a socket that starts to listen 0.3 s in),
    at once for a process that is gone, after its seconds for a port nothing listens on or
    a pid file nobody writes."""
    import os
    import socket
    import threading
    import time

    from harness.l1.guest import vfio_l1

    a, b = socket.socket(), socket.socket()
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in (a, b)]
    a.listen()
    threading.Timer(0.3, b.listen).start()
    mine = tmp_path / "pid"
    threading.Timer(0.2, _pid_file, (mine, os.getpid())).start()
    began = time.monotonic()
    got = vfio_l1.wait_started(["10", str(mine), *ports])
    assert got["listening"] and not got["gone"] and 0.25 < time.monotonic() - began < 5
    assert got["pids"] == [os.getpid()]
    gone = vfio_l1.wait_started(["10", _pid_file(tmp_path / "gone", 999999999), "1"])
    assert gone["gone"] and not gone["listening"] and gone["waited_s"] < 1
    b.close()
    late = vfio_l1.wait_started(["0.2", str(mine), ports[1]])
    assert not late["listening"] and not late["gone"] and late["missing"] == [ports[1]]
    never = vfio_l1.wait_started(["0.2", f"{mine},{tmp_path / 'never'}", ports[0]])
    assert never["pids"] == [os.getpid(), None] and not never["listening"]
    a.close()


def test_the_helper_waits_for_unix_sockets_that_listen_not_for_their_files(tmp_path):
    """wait-started on a UNIX socket's path (the vfio-user servers'): a socket that is bound
    (its file exists) but listens only 0.3 s later is waited for; a path nothing listens on
    is named as missing after its seconds."""
    import os
    import socket
    import threading
    import time

    from harness.l1.guest import vfio_l1

    path = str(tmp_path / "0000:00:03.0.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    threading.Timer(0.3, s.listen).start()
    mine = _pid_file(tmp_path / "pid", os.getpid())
    began = time.monotonic()
    got = vfio_l1.wait_started(["10", f"{mine},{mine}", path])
    assert got["listening"] and got["missing"] == [] and 0.25 < time.monotonic() - began < 5
    none = vfio_l1.wait_started(["0.2", mine, path + ".other", "1"])
    assert not none["listening"] and none["missing"] == sorted(["1", path + ".other"])
    s.close()


def test_a_launch_returns_at_once_and_the_helper_finds_its_process(tmp_path):
    """The shell returns before the process has its pid written or listens (here after
    0.5 s); the helper's wait-started then has both."""
    import subprocess
    import time

    from harness.l1.guest import vfio_l1
    from harness.l1.keeper import launch_command

    port, paths, server = _late_listener(tmp_path)
    began = time.monotonic()
    out = subprocess.run(["sh", "-c", launch_command(server, paths.directory, paths.stderr,
                                                     paths.pid, paths.status)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "" and time.monotonic() - began < 0.5
    got = vfio_l1.wait_started(["20", paths.pid, str(port)])
    assert got["listening"] and time.monotonic() - began >= 0.5
    subprocess.run(["kill", str(got["pids"][0])])


def test_the_helper_terminates_and_names_what_outlived_its_grace():
    """terminate: SIGTERM to each pid, the ones still running after the seconds returned
    (a process that ignores SIGTERM), a pid already gone is no error."""
    import subprocess
    import sys

    from harness.l1.guest import vfio_l1

    polite = subprocess.Popen(["sleep", "30"])
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(30)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout and stubborn.stdout.readline() == "ready\n"
        got = vfio_l1.terminate(["0.5", str(polite.pid), str(stubborn.pid), "999999999"])
        assert got["left"] == [stubborn.pid] and got["waited_s"] >= 0.5
        assert polite.wait(timeout=5) == -15
    finally:
        stubborn.kill()
        stubborn.wait(timeout=5)
        polite.kill()


def test_the_helper_says_how_a_process_ended_once_its_keeper_wrote_it(tmp_path):
    """ended: a process still running has no status after its seconds; one that is gone
    gets its keeper's status as soon as it is written (0.3 s later here), with the last
    five lines of its stderr."""
    import subprocess
    import threading
    import time

    from harness.l1.guest import vfio_l1

    status, stderr = tmp_path / "exit-status", tmp_path / "stderr"
    stderr.write_text("".join(f"line {i}\n" for i in range(8)))
    running = subprocess.Popen(["sleep", "30"])
    try:
        began = time.monotonic()
        got = vfio_l1.ended([str(running.pid), "0.3", str(status), str(stderr)])
        assert got["status"] == "" and not got["gone"] and time.monotonic() - began >= 0.3
    finally:
        running.kill()
        running.wait(timeout=5)
    threading.Timer(0.3, status.write_text, ("137\n",)).start()
    began = time.monotonic()
    got = vfio_l1.ended([str(running.pid), "5", str(status), str(stderr)])
    assert got["gone"] and got["status"] == "137" and 0.25 < time.monotonic() - began < 4
    assert got["tail"] == [f"line {i}" for i in range(3, 8)]


def test_the_shell_ladder_signals_only_as_far_as_it_must(tmp_path):
    """keeper.stop_ladder, run by sh on this host's processes (the fallback when L1's helper
    cannot be asked): a process already asked to quit gets its seconds with no signal; then
    SIGTERM, then SIGKILL for one that ignores SIGTERM; a process that stays (here a zombie
    nobody reaps, which `kill -0` still finds) is said "alive"."""
    import subprocess
    import sys
    import threading

    from harness.l1.keeper import stop_ladder

    def started(*argv):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert p.stdout and p.stdout.readline() == "ready\n"
        threading.Thread(target=p.wait, daemon=True).start()  # reaped as it ends
        return p

    quitting = started("sh", "-c", "echo ready; sleep 0.3")
    polite = started("sh", "-c", "echo ready; exec sleep 30")
    stubborn = started(sys.executable, "-c", "import signal, time; "
                       "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       "print('ready', flush=True); time.sleep(30)")

    def ladder(pids, after_quit=False, seconds=0.5):
        return subprocess.run(["sh", "-c", stop_ladder(pids, seconds, after_quit)],
                              capture_output=True, text=True, timeout=30).stdout.strip()

    assert ladder((quitting.pid,), after_quit=True, seconds=5) == ""
    assert quitting.wait(timeout=5) == 0  # ended by itself, not signalled
    assert ladder((polite.pid, stubborn.pid)) == ""
    assert polite.wait(timeout=5) == -15 and stubborn.wait(timeout=5) == -9
    zombie = subprocess.Popen(["true"])
    try:
        assert ladder((zombie.pid,)) == "alive"
    finally:
        zombie.wait(timeout=5)
