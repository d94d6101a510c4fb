"""The L1 kernel's own complaints: its log records read as reports, and its taint.

The kernel test robot and syzbot treat every WARNING, BUG, Oops, lockdep,
KASAN, KFENCE or UBSAN report, hung task and soft lockup as a failure, because
whole classes of bugs (a refcount underflow, a wait never woken, a lock taken
in the wrong order) show nowhere else: the ioctl returns, the fd closes, the
bytes arrive. So the harness reads L1's log (/dev/kmsg records, with their
sequence numbers) around every step and parses here, once, which records make
up a report: where it starts (the "cut here" line, or the report's own
header, as the table of classes in report_classes.py knows them), its title
and guilty frame (syzbot's way: "WARNING: refcount bug in FUNC"), its
headline, the top of its call trace, and every line of it. Only the kernel's
own records count: a line userspace wrote into the log (its facility says so)
never starts or joins a report.

`tainted` is /proc/sys/kernel/tainted: a bit the kernel sets when it warned,
oopsed or locked up stays set, so a bit that was not set before a step and is
after is a complaint of its own, even where the report's text was lost.
"""

import re
from dataclasses import dataclass

from harness.evidence.guilty_frame import BACKTRACE, CALL_TRACE, guilty, top
from harness.evidence.report_classes import ReportClass, classify, warn_at

#: syslog's facility of the kernel's own records (LOG_KERN).
KERNEL = 0
#: Taint bits and their letters (Documentation/admin-guide/tainted-kernels.rst).
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"


@dataclass(frozen=True)
class LogLine:
    seq: int      # the record's sequence number (several lines of one record share it)
    level: int    # 0 emerg .. 7 debug
    usec: int     # since boot
    text: str
    facility: int = KERNEL  # syslog facility: 0 the kernel's own; userspace writes 1 and up

    @property
    def kernel(self) -> bool:
        """Whether the kernel wrote it (a write to /dev/kmsg can choose its level, never
        facility 0: devkmsg_write keeps LOG_USER for it)."""
        return self.facility == KERNEL

    @property
    def stamp(self) -> str:
        """Its time as dmesg prints it: "[   50.033729]"."""
        return f"[{self.usec // 1_000_000:5d}.{self.usec % 1_000_000:06d}]"

    @property
    def printed(self) -> str:
        """The line as dmesg prints it ("[   50.033729] DMAR: ..."): how the verdicts quote
        what the kernel said during a DMA."""
        return f"{self.stamp} {self.text}"


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
    kind: str                 # warning, refcount, lockdep, bug, oops, kasan, hung-task, ...
    title: str                # syzbot's kind of title: "WARNING: refcount bug in FUNC"
    guilty: str               # the function the report is about ("" if none was found)
    headline: str             # the report's first line (a WARN's message, if it has one)
    where: str                # the WARNING/BUG line that says where, if apart from the headline
    frames: tuple[str, ...]   # the top of its call trace, the reporting machinery left out
    lines: tuple[str, ...]    # the whole report
    usec: int

    def summary(self) -> str:
        """One line for a reason: the title, then the kernel's own words (headline, where,
        the top of the call trace)."""
        said = self.headline + (f" ({self.where})" if self.where else "")
        said = f"{self.title}: {said}" if said != self.title else said
        if self.frames:
            said += "; call trace: " + " < ".join(self.frames)
        return said

    def record(self) -> dict:
        return {"kind": self.kind, "title": self.title, "guilty": self.guilty,
                "headline": self.headline, "where": self.where, "frames": list(self.frames),
                "usec": self.usec, "lines": list(self.lines)}


CUT_HERE = re.compile(r"^-+\[ cut here \]-+$")
END = re.compile(r"^-+\[ end (trace|Kernel panic)")
#: A line of a report that says where it was raised, kept apart from a WARN's message.
WHERE = re.compile(rf"{warn_at()}|^kernel BUG at ")
#: Lines that open a list of frames: a call trace, or kmemleak's backtrace.
TRACE_START = re.compile(rf"{CALL_TRACE.pattern}|{BACKTRACE.pattern}")
#: Headlines that say what faulted after a header that said why (they continue its report).
FAULT_LINES = ("Oops: ", "Internal error: ")
FAULT_FIRSTS = ("BUG: ", "Unable to handle", "general protection", "kernel BUG at",
                "Unhandled fault")
MAX_LINES = 300
TOP_FRAMES = 4
#: Addresses and offsets vary from boot to boot; a title must not.
VOLATILE = ((re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+"), ""),
            (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b"), "ADDR"),
            (re.compile(r"\s+"), " "))


def reports(lines: tuple[LogLine, ...] | list[LogLine]) -> list[KernelReport]:
    """The reports among the kernel's own `lines`, in the order they were logged. A
    report runs from its "cut here" line or header to its "end trace" line, the end of
    its call trace (x86's `</TASK>`; on arm64 and in kmemleak's backtrace the first line
    that is not a frame), the next report, or MAX_LINES; a report that ends another (a
    panic after a WARNING) is part of it. Lines userspace wrote and lines outside any
    report are left out (the window's artifact keeps them all)."""
    segments: list[tuple[list[LogLine], ReportClass | None]] = []  # (lines, its class)
    current: list[LogLine] | None = None
    began: ReportClass | None = None
    # None, "pending" (after "Call trace:"), "task" (x86, up to </TASK>), "closed" (after
    # it) or "frames" (arm64, kmemleak: indented lines)
    trace: str | None = None

    def finish() -> None:
        nonlocal current, trace, began
        if current:
            segments.append((current, began))
        current, trace, began = None, None, None

    for line in lines:
        if not line.kernel:
            continue
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
        found = classify(text)
        if found and not (current is not None and _continues(current, text)):
            finish()
            current, began = [line], found[0]
            continue
        if current is None:
            continue
        stripped = text.strip()
        if trace == "frames" and not text[:1].isspace() and not END.match(text):
            finish()  # the arm64 call trace ended; this line is not the report's
            continue
        current.append(line)
        if found and began is None:
            began = found[0]
        if END.match(text) or len(current) >= MAX_LINES:
            finish()
        elif TRACE_START.match(text):
            trace = "pending"
        elif trace == "pending":
            trace = "task" if stripped == "<TASK>" else "frames"
        elif trace == "task" and stripped == "</TASK>":
            trace = "closed"
    finish()
    merged: list[list[LogLine]] = []
    kinds: list[str] = []
    for seg, cls in segments:
        joins = cls.joins if cls else ()
        if merged and ("*" in joins or kinds[-1] in joins):
            merged[-1] = merged[-1] + seg
            continue
        merged.append(seg)
        kinds.append(cls.kind if cls else "warning")
    return [r for r in (_report(seg) for seg in merged) if r]


def _continues(current: list[LogLine], text: str) -> bool:
    """A header that belongs to the report it follows: a WARN's WARNING line after its
    message, the Oops line after a BUG that says what faulted."""
    if any(TRACE_START.match(x.text) for x in current):
        return False
    if WHERE.match(text):
        return not any(WHERE.match(x.text) for x in current)
    first = current[0].text if current else ""
    return text.startswith(FAULT_LINES) and first.startswith(FAULT_FIRSTS)


def _report(lines: list[LogLine]) -> KernelReport | None:
    texts = [x.text.rstrip() for x in lines]
    if not texts:
        return None
    first = next(((i, c) for i, t in enumerate(texts) if (c := classify(t))), None)
    if first is None:
        # a "cut here" block with no WARNING/BUG line: the report was cut off; its first
        # line is all there is
        return KernelReport("warning", normalise(f"WARNING (cut off): {texts[0]}"), "",
                            texts[0], "", top(texts, TOP_FRAMES), tuple(texts), lines[0].usec)
    index, found = first
    cls, match = found
    headline = texts[0] if index > 0 and texts[0] else texts[index]
    where = texts[index] if headline != texts[index] else ""
    fields = {k: v or "" for k, v in match.groupdict().items()}
    if cls.detail:
        for text in texts:
            m = cls.detail.search(text)
            if m:
                fields.update({k: v or "" for k, v in m.groupdict().items()})
                break
    frame = guilty(cls.frames, texts, fields.get("func", ""), cls.skip)
    fmt = cls.title if frame or "{frame}" not in cls.title else cls.title.replace(
        " in {frame}", "")
    title = normalise(fmt.format_map(_Blank(fields, frame=frame)))
    return KernelReport(cls.kind, title, frame, headline, where, top(texts, TOP_FRAMES),
                        tuple(texts), lines[0].usec)


class _Blank(dict):
    """Title fields: a group the header did not fill is empty, never a KeyError."""

    def __missing__(self, key: str) -> str:
        return ""


def normalise(title: str) -> str:
    for pattern, by in VOLATILE:
        title = pattern.sub(by, title)
    return title.strip(" .,:;!")


def taint_letters(bits: int) -> str:
    """The letters of a taint value, as the kernel prints them after "Tainted: "."""
    return "".join(letter for i, letter in enumerate(TAINT_LETTERS) if bits & (1 << i))


def parse_kmsg(answer: dict) -> tuple[tuple[LogLine, ...], int]:
    """The guest helper's answer to `kmsg` (records as [seq, level, usec, text, facility];
    a helper of before the facility was read sends four fields: the kernel's)."""
    lines = []
    for seq, level, usec, text, *facility in answer.get("records", ()):
        for part in str(text).split("\n"):
            lines.append(LogLine(int(seq), int(level), int(usec), part,
                                 int(facility[0]) if facility else KERNEL))
    return tuple(lines), int(answer.get("tainted", 0))


#: Report kinds after which the kernel's memory or locks are not to be trusted: a double
#: free corrupts the allocator's lists, an Oops kills its task wherever it was. The steps
#: after one on the same L1 would fail or pass by what the damage did (measured: the
#: double-free adversary's later cells failed in one run and passed in the next), so the
#: checks whose steps come after one are not run but failed naming it, and the next
#: backend gets a fresh L1 (scenario.collect, runner._run_backend).
UNTRUSTED = frozenset({"slub", "kasan", "kfence", "bug", "oops"})


def untrusted(windows: "tuple[KernelWindow, ...] | list[KernelWindow]") -> str:
    """Why the kernel whose log these windows hold is no longer to be trusted ("": it is)."""
    for window in windows:
        for report in reports(window.lines):
            if report.kind in UNTRUSTED:
                return f"its kernel reported {report.title} during {window.step}"
    return ""
