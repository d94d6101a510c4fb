"""A process that did not return, as the L1 kernel shows it: its tasks' states and stacks.

A close, quit or ioctl that never returns leaves no log line until the hung-task
detector fires (120 s on a stock kernel, if it is built in at all): by then the
harness has long given up on its deadline. What says where it hangs is the
task itself: a thread in D state (uninterruptible: a kill cannot end it) and
the kernel functions it waits in, from /proc/PID/task/TID/stack. Parsed here
once, from the guest helper's `stuck` answer; the verdicts read `Stuck`.
"""

import re
from dataclasses import dataclass

#: A /proc/PID/stack line: "[<0>] wait_for_completion+0x8c/0x130"
FRAME = re.compile(r"^\[<[0-9a-fx]+>\]\s+([\w.]+)")
#: The scheduler's own frames: where every wait ends, never the story.
MACHINERY = re.compile(r"^(__schedule|schedule|schedule_timeout|io_schedule|"
                       r"__wait_for_common|wait_for_common|do_wait_for_common|"
                       r"entry_SYSCALL_64_after_hwframe|do_syscall_64|x64_sys_call|"
                       r"el0_svc|el0t_64_sync_handler|el0t_64_sync|invoke_syscall|"
                       r"el0_svc_common|do_el0_svc)$")
#: Kernel code whose wait is this harness's business (a task sleeping there is stuck in
#: what is under test, even if its sleep is interruptible).
UNDER_TEST = re.compile(r"vfio|iommufd|dma_buf|dmabuf|pci_")
TOP_FRAMES = 6


@dataclass(frozen=True)
class Task:
    tid: int
    comm: str
    state: str              # /proc's State: "D (disk sleep)", "S (sleeping)", ...
    wchan: str
    stack: tuple[str, ...]  # the function names, innermost first

    @property
    def blocked(self) -> bool:
        """Uninterruptible: no signal ends it, only the wait it is in."""
        return self.state.startswith("D")

    @property
    def in_code_under_test(self) -> bool:
        return any(UNDER_TEST.search(f) for f in self.stack)

    def top(self) -> tuple[str, ...]:
        """The top of its stack, the scheduler's frames left out."""
        return tuple(f for f in self.stack if not MACHINERY.match(f))[:TOP_FRAMES]

    def describe(self) -> str:
        where = " < ".join(self.top()) or self.wchan or "no kernel stack"
        return f"{self.comm} (tid {self.tid}) in {self.state or 'an unknown state'}: {where}"


@dataclass(frozen=True)
class Stuck:
    pid: int
    tasks: tuple[Task, ...]
    error: str = ""  # why L1 could not say ("": it did)

    def culprit(self) -> Task | None:
        """The task that hangs: one in D state (in the code under test first), else one
        sleeping in the code under test; None if every task just waits as QEMU does."""
        blocked = [t for t in self.tasks if t.blocked]
        for candidates in ([t for t in blocked if t.in_code_under_test], blocked,
                           [t for t in self.tasks if t.in_code_under_test]):
            if candidates:
                return candidates[0]
        return None

    def describe(self) -> str:
        task = self.culprit()
        if task is None:
            return (f"no task of pid {self.pid} is stuck in the kernel"
                    + (f" ({self.error})" if self.error else ""))
        return task.describe()

    def record(self) -> dict:
        return {"pid": self.pid, "error": self.error,
                "tasks": [{"tid": t.tid, "comm": t.comm, "state": t.state, "wchan": t.wchan,
                           "stack": list(t.stack)} for t in self.tasks]}


def frames(lines: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for line in lines:
        m = FRAME.match(line.strip())
        if m:
            out.append(m.group(1))
    return tuple(out)


def parse(answer: dict) -> Stuck:
    """The guest helper's `stuck` answer (or a record written by `Stuck.record`)."""
    tasks = tuple(Task(int(t["tid"]), t.get("comm", ""), t.get("state", ""),
                       t.get("wchan", ""),
                       frames(t.get("stack", ())) or tuple(
                           s for s in t.get("stack", ()) if FRAME.match(s) is None
                           and re.fullmatch(r"[\w.]+", s)))
                  for t in answer.get("tasks", ()))
    return Stuck(int(answer.get("pid", -1)), tasks, answer.get("error", ""))


@dataclass(frozen=True)
class Hang:
    """A step of L2 that did not return within its deadline, with L2 stuck in the kernel:
    which step, what gave up waiting, and where L2's tasks wait."""

    step: str
    error: str
    stuck: Stuck

    def describe(self) -> str:
        return f"L2 hung in {self.step} ({self.error}): {self.stuck.describe()}"
