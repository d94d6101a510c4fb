"""The L1 kernel's own complaints: its log records read as reports, and its taint.

The kernel test robot and syzbot treat every WARNING, BUG, Oops, lockdep,
KASAN, KFENCE or UBSAN report, hung task and soft lockup as a failure, because
whole classes of bugs (a refcount underflow, a wait never woken, a lock taken
in the wrong order) show nowhere else: the ioctl returns, the fd closes, the
bytes arrive. So the harness reads L1's log (/dev/kmsg records, with their
sequence numbers) around every step and parses here, once, which records make
up a report: where it starts (the "cut here" line, or the report's own
headline), its headline, the top of its call trace, and every line of it.

`tainted` is /proc/sys/kernel/tainted: a bit the kernel sets when it warned,
oopsed or locked up stays set, so a bit that was not set before a step and is
after is a complaint of its own, even where the report's text was lost.
"""

import re
from dataclasses import dataclass

#: Taint bits and their letters (Documentation/admin-guide/tainted-kernels.rst).
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"


@dataclass(frozen=True)
class LogLine:
    seq: int      # the record's sequence number (several lines of one record share it)
    level: int    # 0 emerg .. 7 debug
    usec: int     # since boot
    text: str


@dataclass(frozen=True)
class KernelWindow:
    """What the kernel logged while one step ran (`step`), and its taint before and after."""

    step: str
    lines: tuple[LogLine, ...]
    tainted_before: int
    tainted_after: int
    unread: str = ""   # why the kernel could not be asked after the step ("": it was)
    read_s: float = 0.0  # what asking cost

    @property
    def new_taint(self) -> int:
        return self.tainted_after & ~self.tainted_before


@dataclass(frozen=True)
class KernelReport:
    kind: str                 # warning, bug, oops, lockdep, kasan, kfence, ubsan, hung-task, ...
    headline: str             # the report's first line (a WARN's message, if it has one)
    where: str                # the WARNING/BUG line that says where, if apart from the headline
    frames: tuple[str, ...]   # the top of its call trace, the reporting machinery left out
    lines: tuple[str, ...]    # the whole report
    usec: int

    def summary(self) -> str:
        """One line for a reason: the headline, where, and the top of the call trace."""
        said = self.headline + (f" ({self.where})" if self.where else "")
        if self.frames:
            said += "; call trace: " + " < ".join(self.frames)
        return said

    def record(self) -> dict:
        return {"kind": self.kind, "headline": self.headline, "where": self.where,
                "frames": list(self.frames), "usec": self.usec, "lines": list(self.lines)}


CUT_HERE = re.compile(r"^-+\[ cut here \]-+$")
END = re.compile(r"^-+\[ end (trace|Kernel panic)")
#: A WARN's own line: "WARNING: CPU: 0 PID: 412 at lib/refcount.c:28 FUNC" before Linux 7,
#: "WARNING: lib/refcount.c:28 at FUNC, CPU#0: COMM/PID" in 7.2.
WARN_AT = re.compile(r"^WARNING: (CPU: \d+ PID: \d+ at |\S+:\d+ at )")
#: Headlines that start a report, in the order they are tried: (kind, pattern).
HEADLINES = (
    ("kasan", re.compile(r"^BUG: KASAN: ")),
    ("kfence", re.compile(r"^BUG: KFENCE: ")),
    ("soft-lockup", re.compile(r"^(watchdog: )?BUG: soft lockup")),
    ("hung-task", re.compile(r"^INFO: task \S.* blocked for more than \d+ seconds")),
    ("rcu-stall", re.compile(r"^(rcu: )?INFO: rcu_\w+ (self-)?detected (stalls|stall)")),
    ("warning", WARN_AT),
    ("lockdep", re.compile(r"^WARNING: (possible |inconsistent |bad unlock|suspicious RCU|"
                           r"lock held|held lock|Nested lock|.*lock order|.*locking)")),
    ("lockdep", re.compile(r"^INFO: trying to register non-static key")),
    ("warning", re.compile(r"^WARNING: ")),
    ("bug", re.compile(r"^(kernel BUG at |BUG: )")),
    ("oops", re.compile(r"^(Oops: |Internal error: |general protection fault|"
                        r"Unable to handle kernel )")),
    ("ubsan", re.compile(r"^UBSAN: ")),
    ("panic", re.compile(r"^Kernel panic - not syncing")),
)
#: A line of a report that says where it was raised, kept apart from a WARN's message.
WHERE = re.compile(rf"{WARN_AT.pattern}|^kernel BUG at ")
CALL_TRACE = re.compile(r"^\s*Call [Tt]race:")
FRAME = re.compile(r"^\s+(\? )?([A-Za-z0-9_.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
#: Frames of the reporting machinery itself (and of a sleeping task), not of the code at fault.
MACHINERY = re.compile(
    r"^(dump_stack\w*|show_stack|__warn\w*|warn_\w+|report_bug|handle_bug|exc_\w+|asm_exc_\w+|"
    r"do_error_trap|do_trap|die|refcount_warn_saturate|__refcount_\w+|refcount_\w+|"
    r"print_\w+|check_\w+|validate_chain|__lock_acquire|lock_acquire|lock_release|"
    r"__might_\w+|__schedule|schedule\w*|io_schedule\w*|__wait_for_common|"
    r"wait_for_completion\w*|do_wait_for_common|kasan_\w+|__kasan_\w+|kfence_\w+|"
    r"ubsan_\w+|__ubsan_\w+|panic|debug_print_object|debug_object_\w+|"
    r"bug_handler|call_break_hook|brk_handler|do_debug_exception|el1_\w+|el1h_\w+|"
    r"arch_stack_walk|stack_trace_save\w*|dump_backtrace|__dump_stack|lockdep_\w+|"
    r"_raw_spin_\w+|__mutex_lock\w*|mutex_lock\w*|down_\w+|rwsem_\w+)$")
REFCOUNT = re.compile(r"refcount_t: |lib/refcount\.c")
MAX_LINES = 300
TOP_FRAMES = 4


def headline_kind(text: str) -> str | None:
    for kind, pattern in HEADLINES:
        if pattern.match(text):
            return kind
    return None


def reports(lines: tuple[LogLine, ...] | list[LogLine]) -> list[KernelReport]:
    """The reports among `lines`, in the order they were logged. A report runs from its
    "cut here" line or headline to its "end trace" line, the end of its call trace (x86's
    `</TASK>`; on arm64 the first line that is not a frame), the next report, or MAX_LINES.
    Lines outside any report are left out (the window's artifact keeps them all)."""
    out: list[KernelReport] = []
    current: list[LogLine] | None = None
    # None, "pending" (after "Call trace:"), "task" (x86, up to </TASK>), "closed" (after
    # it) or "frames" (arm64: indented lines)
    trace: str | None = None

    def finish() -> None:
        nonlocal current, trace
        if current:
            report = _report(current)
            if report:
                out.append(report)
        current, trace = None, None

    for line in lines:
        text = line.text.rstrip()
        if trace == "closed":  # after x86's </TASK>: only a WARN's end line is still its
            if END.match(text):
                current.append(line)  # type: ignore[union-attr]
                finish()
                continue
            finish()
        if CUT_HERE.match(text):
            finish()
            current = []
            continue
        if headline_kind(text) and not (current is not None and _continues(current, text)):
            finish()
            current = [line]
            continue
        if current is None:
            continue
        stripped = text.strip()
        if trace == "frames" and not text[:1].isspace() and not END.match(text):
            finish()  # the arm64 call trace ended; this line is not the report's
            continue
        current.append(line)
        if END.match(text) or len(current) >= MAX_LINES:
            finish()
        elif CALL_TRACE.match(text):
            trace = "pending"
        elif trace == "pending":
            trace = "task" if stripped == "<TASK>" else "frames"
        elif trace == "task" and stripped == "</TASK>":
            trace = "closed"
    finish()
    return out


def _continues(current: list[LogLine], text: str) -> bool:
    """A headline that belongs to the report it follows: a WARN's WARNING line after its
    message, the Oops line after a BUG that says what faulted."""
    if any(CALL_TRACE.match(x.text) for x in current):
        return False
    if WHERE.match(text):
        return not any(WHERE.match(x.text) for x in current)
    first = current[0].text if current else ""
    return text.startswith(("Oops: ", "Internal error: ")) and first.startswith(
        ("BUG: ", "Unable to handle", "general protection"))


def _report(lines: list[LogLine]) -> KernelReport | None:
    texts = [x.text.rstrip() for x in lines]
    kinds = [(i, headline_kind(t)) for i, t in enumerate(texts)]
    found = [(i, k) for i, k in kinds if k]
    if not found:
        # a "cut here" block with no WARNING/BUG line: the report was cut off; its first
        # line is all there is
        if not texts:
            return None
        return KernelReport("warning", texts[0], "", _frames(texts), tuple(texts),
                            lines[0].usec)
    index, kind = found[0]
    headline = texts[0] if index > 0 and texts[0] else texts[index]
    where = texts[index] if headline != texts[index] else ""
    if kind == "warning" and REFCOUNT.search("\n".join(texts[:index + 1])):
        kind = "refcount"
    return KernelReport(kind, headline, where, _frames(texts), tuple(texts), lines[0].usec)


def _frames(texts: list[str]) -> tuple[str, ...]:
    """The top of the first call trace: the function names, unreliable ('?') frames and the
    reporting machinery left out."""
    out: list[str] = []
    seen = False
    for text in texts:
        if CALL_TRACE.match(text):
            if seen and out:
                break
            seen = True
            continue
        if not seen:
            continue
        m = FRAME.match(text)
        if not m:
            if out and not text.strip().startswith("<"):
                break
            continue
        if m.group(1) or MACHINERY.match(m.group(2)):
            continue
        out.append(m.group(2))
        if len(out) == TOP_FRAMES:
            break
    return tuple(out)


def taint_letters(bits: int) -> str:
    """The letters of a taint value, as the kernel prints them after "Tainted: "."""
    return "".join(letter for i, letter in enumerate(TAINT_LETTERS) if bits & (1 << i))


def parse_kmsg(answer: dict) -> tuple[tuple[LogLine, ...], int]:
    """The guest helper's answer to `kmsg` (records as [seq, level, usec, text])."""
    lines = []
    for seq, level, usec, text in answer.get("records", ()):
        for part in str(text).split("\n"):
            lines.append(LogLine(int(seq), int(level), int(usec), part))
    return tuple(lines), int(answer.get("tainted", 0))
