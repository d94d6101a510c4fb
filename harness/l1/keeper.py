"""Processes in L1 under a shell that keeps their pid and how they ended (L2, and the
vfio-user servers beside it): "killed by SIGKILL" is then a fact L1 states, not a guess
from a closed connection."""

import shlex
import signal


def launch_command(line: str, directory: str, stderr: str, pid: str, status: str) -> str:
    """A process (L2) under a shell of its own that waits for it and writes how it ended,
    so that L1 can say whether it exited (and with what) or was killed (and by which
    signal); the command prints its pid once it is known."""
    d = shlex.quote(directory)
    keeper = (f"{line} </dev/null >{d}/stdout.log 2>{shlex.quote(stderr)} & "
              f"echo $! >{d}/pid.new && mv {d}/pid.new {shlex.quote(pid)}; wait $!; "
              f"echo $? >{d}/status.new && mv {d}/status.new {shlex.quote(status)}")
    return (f"rm -rf {d} && mkdir -p {d} && cd {d} && "
            f"{{ setsid sh -c {shlex.quote(keeper)} </dev/null >/dev/null 2>&1 & }} && "
            f"n=0; until [ -s {shlex.quote(pid)} ] || [ $n -ge 500 ]; do sleep 0.01; "
            f"n=$((n + 1)); done; cat {shlex.quote(pid)}")


def describe_status(text: str) -> str | None:
    """How a process ended, from the status its shell wrote: None if it has not ended."""
    text = text.strip()
    if not text.isdigit():
        return None
    code = int(text)
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"was killed by {name} ({code - 128})"
    return f"exited with status {code}"
