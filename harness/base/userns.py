"""Run a command as root of private user, mount, network and PID namespaces.

Why: some build steps need kernel state that is global on the host, a binfmt_misc
handler above all (Linux 6.7 and later give each user namespace a binfmt_misc of
its own). In a namespace of ours, what the step registers or mounts is gone when
its last process ends, however it ends: nothing on the host to undo, nothing
left behind by an interrupt.

The host's user and group ids 0-65535 are mapped one to one, so that files the
step creates or chowns keep their owners (an unprivileged helper could map only
its own id). Writing such a map takes root in the host's namespace, which is why
this runs as a small process of its own: it forks the child that unshares, writes
the child's maps from outside, and lets it go on. The command is PID 1 of the new
PID namespace (its own /proc can be mounted; if it dies, everything under it dies).

    python -m harness.base.userns -- COMMAND [ARG...]
"""

import ctypes
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
#: Ids mapped one to one: every id a Debian tree's packages use.
IDS = 65536


def command(argv: list[str]) -> list[str]:
    """`argv` as a command line that runs it in a namespace of its own."""
    return [sys.executable, "-m", __name__, "--", *argv]


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _child(ready_w: int, go_r: int, argv: list[str]) -> int:
    _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET)
    os.write(ready_w, b"u")
    os.close(ready_w)
    if os.read(go_r, 1) != b"g":  # the parent could not write the maps
        return 125
    _unshare(CLONE_NEWPID)
    init = os.fork()
    if init == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    # A signal for us is one for the command (the harness stops a step by its group).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(init, signal.SIGKILL))
    _, status = os.waitpid(init, 0)
    return os.waitstatus_to_exitcode(status) & 0xFF


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m harness.base.userns -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        try:
            code = _child(ready_w, go_r, argv)
        except OSError as e:
            print(f"vfio-harness: no private namespace: {e}", file=sys.stderr)
            code = 126
        os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) == b"u":
        try:
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(f"0 0 {IDS}\n")
            os.write(go_w, b"g")
        except OSError as e:
            print(f"vfio-harness: cannot map ids into the namespace: {e}", file=sys.stderr)
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
