"""Processes in L1 under a shell that keeps their pid and how they ended (L2, and the
vfio-user servers beside it): "killed by SIGKILL" is then a fact L1 states, not a guess
from a closed connection."""

import shlex
import signal


def launch_command(line: str, directory: str, stderr: str, pid: str, status: str
                   ) -> str:
    """A process (L2, a vfio-user server) under a shell of its own that waits for it and
    writes how it ended, so that L1 can say whether it exited (and with what) or was killed
    (and by which signal). The shell writes the process's pid into `pid` (one write: a
    reader that finds a whole line has all of it; no `mv`, a program of its own under L1's
    TCG). The command returns at once: the pid file and the sockets are waited for by a
    program already running in L1 (the helper's wait-started), not by a shell whose polls
    start a `sleep` each on the vCPU the process starts on."""
    d = shlex.quote(directory)
    keeper = (f"{line} </dev/null >{d}/stdout.log 2>{shlex.quote(stderr)} & "
              f"echo $! >{shlex.quote(pid)}; wait $!; echo $? >{shlex.quote(status)}")
    return (f"rm -rf {d} && mkdir -p {d} && cd {d} && "
            f"{{ setsid sh -c {shlex.quote(keeper)} </dev/null >/dev/null 2>&1 & }}")


def stop_ladder(pids: tuple[int, ...], seconds: float, after_quit: bool = False) -> str:
    """A shell command for when the L1 helper (whose polls start no program) cannot be
    asked: SIGTERM, then SIGKILL, to each of `pids`, each step given `seconds` for all of
    them to be gone; first `seconds` with no signal for processes already asked to quit
    (QMP). Prints "alive" if one still runs after the SIGKILL."""
    listed = " ".join(map(str, pids))
    steps = int(seconds * 20)
    ladder = (f"gone() {{ for p in {listed}; do kill -0 $p 2>/dev/null && return 1; done; "
              f"return 0; }}; wait_gone() {{ n=0; until gone || [ $n -ge {steps} ]; do "
              f"sleep 0.05; n=$((n + 1)); done; gone; }}; ")
    if after_quit:
        ladder += "wait_gone || "
    return ladder + (f"{{ kill -TERM {listed} 2>/dev/null; wait_gone; }} || "
                     f"{{ kill -KILL {listed} 2>/dev/null; wait_gone; }} || echo alive")


def listens(port: int) -> str:
    """A shell condition: something in L1 listens on TCP `port`, read from /proc/net/tcp*
    with the shell's own `read` (no process started per poll: each costs L1's TCG a few
    milliseconds, and a poll loop runs many)."""
    want = f"{port:04X}"
    return (f"{{ found=; for f in /proc/net/tcp /proc/net/tcp6; do [ -r $f ] || continue; "
            f"while read -r _ local _ state _; do case \"$local:$state\" in *:{want}:0A) "
            f"found=1; break;; esac; done <$f; done; [ -n \"$found\" ]; }}")


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
