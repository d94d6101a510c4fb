"""Every kind of report a Linux 7.2 kernel prints, as one table, and the lines known harmless.

Read the way syzbot reads a console (google/syzkaller, pkg/report/linux.go): a
report is known by its header line; its title names the class and the one
function it is about (its guilty frame), so that the same bug gives the same
title on every run and a maintainer sees at once which bug it is. The table is
data: a class is a header pattern, a kind, a title format, where its guilty
frame is looked for and which frames of its own machinery are passed over;
`kernel_log` segments the log and `guilty_frame` reads the frames.

Order matters: the first class whose header matches a line is the line's class
(the specific forms before the general ones). Every class names a sample in
tests/data/kernel, captured from our L1 where we could make the kernel
print it, otherwise written from the format in the kernel's source.

A title format is a str.format() string over the header's named groups, the
`detail` pattern's named groups (searched in the whole report) and {frame}; a
" in {frame}" with no frame found is left out rather than guessed.
"""

import re
from dataclasses import dataclass

#: Where a guilty frame may be read, in the order a class lists them:
#: "header"  the function the header line itself names (KASAN's "in FUNC+0x..")
#: "rip"     the faulting instruction: x86 "RIP: 0010:FUNC+0x..", arm64 "pc : FUNC+0x.."
#: "at"      lockdep's "..., at: FUNC+0x.." (the lock it is trying to take)
#: "trace"   the call trace ("Call Trace:" / "Call trace:")
#: "backtrace"  kmemleak's lowercase "backtrace:"
SOURCES = ("header", "rip", "at", "trace", "backtrace")

#: A hung task's frames to pass over: it is found waiting, and the wait is not the bug
#: (syzkaller's hang-task extractor).
ANY = ("*",)
HANG_SKIP = r"sched|_lock|_slowlock|down|completion|kthread|wait|synchronize|context_switch|" \
            r"__switch_to|cancel_delayed_work"


@dataclass(frozen=True)
class ReportClass:
    kind: str            # warning, refcount, lockdep, bug, oops, kasan, kfence, ubsan, ...
    header: re.Pattern   # matched at the start of a kernel log line
    title: str           # format over the header's and detail's named groups and {frame}
    frames: tuple[str, ...] = ()   # SOURCES, in the order they are tried
    skip: str = ""       # frames of the class's own machinery (searched in a frame's name)
    detail: re.Pattern | None = None  # searched in the report's lines for more title fields
    joins: tuple[str, ...] = ()  # kinds of report it ends when it follows one (ANY: all)
    sample: str = ""     # tests/data/kernel/NAME


def _c(pattern: str) -> re.Pattern:
    return re.compile(pattern)


#: x86's die() prefixes its headline with "Oops: " since Linux 6.10; older kernels did not.
OOPS = r"(?:Oops: )?"


def warn_at(src: str = r"[^\s:]+") -> str:
    """The WARN() line of a warning raised in a file `src` matches: "WARNING: CPU: 0 PID:
    412 at SRC:LINE FUNC+0x.." before Linux 7, "WARNING: SRC:LINE at FUNC+0x.., CPU#0:
    COMM/PID" in 7.2."""
    return rf"WARNING: (?:CPU: \d+ PID: \d+ at {src}:\d+ |{src}:\d+ at )"


#: lockdep's headlines are printed as "WARNING: ..." today and were "INFO: ..." once.
LOCKDEP = r"(?P<level>WARNING|INFO|BUG): "

CLASSES: tuple[ReportClass, ...] = (
    # memory-safety tools: the header names the access's function
    ReportClass("kasan", _c(r"BUG: KASAN: double-free or invalid-free in (?P<func>[\w.]+)"),
                "KASAN: invalid-free in {frame}", ("header", "trace"),
                skip=r"kmem_|slab_|kfree|vunmap|vfree", sample="kasan-invalid-free.txt"),
    ReportClass("kasan", _c(r"BUG: KASAN: (?P<what>[a-z-]+) in (?P<func>[\w.]+)"),
                "KASAN: {what} {access} in {frame}", ("header", "trace"),
                detail=_c(r"^(?P<access>Read|Write) of size \d+"),
                sample="kasan-slab-use-after-free.txt"),
    ReportClass("kfence", _c(r"BUG: KFENCE: (?P<what>[a-z -]+?) in (?P<func>[\w.]+)"),
                "KFENCE: {what} in {frame}", ("header", "trace"),
                sample="kfence-use-after-free.txt"),
    # page faults in kernel mode
    ReportClass("bug", _c(r"BUG: (?:unable to handle kernel NULL pointer dereference|"
                          r"kernel NULL pointer dereference)"),
                "BUG: unable to handle kernel NULL pointer dereference in {frame}",
                ("rip", "trace"), sample="x86-null-deref.txt"),
    ReportClass("bug", _c(r"BUG: (?:unable to handle page fault for address|"
                          r"unable to handle kernel paging request)"),
                "BUG: unable to handle kernel paging request in {frame}", ("rip", "trace"),
                sample="x86-paging-request.txt"),
    ReportClass("bug", _c(r"Unable to handle kernel (?P<what>[\w -]+?) at virtual address"),
                "unable to handle kernel {what} in {frame}", ("rip", "trace"),
                sample="arm64-null-deref.txt"),
    ReportClass("oops", _c(r"Unhandled fault: (?P<what>[\w -]+?) \(0x[0-9a-f]+\) at 0x"),
                "Unhandled fault: {what} in {frame}", ("rip", "trace"),
                sample="arm-unhandled-fault.txt"),
    # lockups and stalls: where the CPU is found looping
    ReportClass("soft-lockup", _c(r"(?:NMI )?(?:watchdog: )?BUG: soft lockup"),
                "BUG: soft lockup in {frame}", ("rip", "trace"),
                sample="x86-soft-lockup.txt"),
    ReportClass("hard-lockup", _c(r"(?:NMI )?watchdog: (?:Watchdog detected hard LOCKUP|"
                                  r"BUG: hard lockup)"),
                "watchdog: hard lockup in {frame}", ("rip", "trace"),
                sample="x86-hard-lockup.txt"),
    ReportClass("rcu-stall", _c(r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected (?:expedited )?"
                                r"stalls?"),
                "INFO: rcu detected stall in {frame}", ("rip", "trace"),
                skip=r"rcu|apic_timer|sysvec_|irq_exit|hrtimer|tick_|update_process_times",
                sample="x86-rcu-expedited-stall.txt"),
    ReportClass("hung-task", _c(r"INFO: task \S+:\d+ blocked for more than \d+ seconds"),
                "INFO: task hung in {frame}", ("trace",), skip=HANG_SKIP,
                sample="x86-hung-task.txt"),
    ReportClass("hung-task", _c(r"INFO: task \S+:\d+ blocked in I/O wait for more than "
                                r"\d+ seconds"),
                "INFO: task hung in {frame}", ("trace",), skip=HANG_SKIP + r"|io_schedule",
                sample="x86-hung-task-io-wait.txt"),
    ReportClass("hung-task", _c(r"INFO: task \S+:\d+ can't die for more than \d+ seconds"),
                "INFO: task can't die in {frame}", ("trace",), skip=HANG_SKIP,
                sample="x86-task-cant-die.txt"),
    # lockdep: the lock being taken names the function
    ReportClass("lockdep", _c(r"(?:\[ )?BUG: Invalid wait context"),
                "BUG: Invalid wait context in {frame}", ("at", "trace"),
                sample="x86-invalid-wait-context.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"possible (?:circular locking dependency|"
                              r"irq lock inversion dependency|recursive locking) detected"),
                "possible deadlock in {frame}", ("at",),
                sample="captured-x86-7.2.13-lockdep-iommufd-map-under-resv.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"(?:SOFT|HARD)IRQ-safe -> (?:SOFT|HARD)IRQ-unsafe "
                              r"lock order detected"),
                "possible deadlock in {frame}", ("at",), sample="x86-lockdep-irq-unsafe.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"inconsistent lock state"),
                "inconsistent lock state in {frame}", ("at",),
                sample="x86-lockdep-inconsistent.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"suspicious RCU usage"),
                "WARNING: suspicious RCU usage in {frame}", ("trace",),
                skip=r"rcu|kmem|slab|kmalloc|vmalloc|kcalloc|kzalloc",
                sample="x86-suspicious-rcu.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"bad unlock balance detected"),
                "{level}: bad unlock balance in {frame}", ("at", "trace"),
                sample="x86-bad-unlock-balance.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"held lock freed"),
                "{level}: held lock freed in {frame}", ("at", "trace"),
                sample="x86-held-lock-freed.txt"),
    ReportClass("lockdep", _c(LOCKDEP + r"lock held when returning to user space"),
                "{level}: lock held when returning to user space in {frame}", ("at",),
                sample="x86-lock-held-returning.txt"),
    ReportClass("lockdep", _c(r"BUG: .*still has locks held"),
                "BUG: still has locks held in {frame}", ("at", "trace"),
                sample="x86-still-has-locks-held.txt"),
    ReportClass("lockdep", _c(r"INFO: trying to register non-static key"),
                "INFO: trying to register non-static key in {frame}", ("trace",),
                skip=r"stack|lock|IRQ", sample="x86-non-static-key.txt"),
    # WARN(): the file that warned says which kind of bug it is
    ReportClass("refcount", _c(warn_at(r"lib/refcount\.c")),
                "WARNING: refcount bug in {frame}", ("rip", "trace"), skip=r"refcount",
                sample="captured-x86-7.2.13-double-put-at-l2-stop.txt"),
    ReportClass("warning", _c(warn_at(r"lib/debugobjects\.c")),
                "WARNING: ODEBUG bug in {frame}", ("rip", "trace"),
                skip=r"debug_|rcu|hrtimer_|timer_|work_|percpu_|kmem_|slab_|kfree|vunmap|"
                     r"vfree|__free_|kobject_",
                sample="x86-odebug.txt"),
    ReportClass("lockdep", _c(warn_at(r"kernel/locking/lockdep\.c")),
                "WARNING: locking bug in {frame}", ("rip", "trace"),
                sample="x86-locking-bug.txt"),
    # Linux 7.2's SLUB WARNs right after its consistency report (object_err): the call
    # trace of the report before it, which names the function that freed (the build's
    # relative path before mm/ when it was built out of tree)
    ReportClass("slub", _c(warn_at(r"(?:\S*/)?mm/slub\.c")), "WARNING in {frame}",
                ("rip", "trace"), skip=r"kfree|kmem_cache|slab|free_|__slab|object_err",
                joins=("slub",), sample="captured-x86-7.2.13-slub-double-free-at-l2-exit.txt"),
    ReportClass("warning", _c(warn_at()), "WARNING in {frame}", ("rip", "trace"),
                sample="arm64-warning.txt"),
    # BUG() and the traps that end in die()
    ReportClass("bug", _c(r"kernel BUG at lib/list_debug\.c"), "BUG: corrupted list in {frame}",
                ("rip", "trace"), skip=r"list_", sample="x86-list-corruption.txt"),
    ReportClass("bug", _c(r"kernel BUG at (?P<src>[^:\s]+)"), "kernel BUG in {frame}",
                ("rip", "trace"), sample="x86-kernel-bug.txt"),
    ReportClass("oops", _c(OOPS + r"general protection fault"),
                "general protection fault in {frame}", ("rip", "trace"),
                sample="x86-general-protection-fault.txt"),
    ReportClass("oops", _c(OOPS + r"stack segment: "), "stack segment fault in {frame}",
                ("rip", "trace"), sample="x86-stack-segment.txt"),
    ReportClass("oops", _c(OOPS + r"divide error: "), "divide error in {frame}",
                ("rip", "trace"), sample="x86-divide-error.txt"),
    ReportClass("oops", _c(OOPS + r"invalid opcode: "), "invalid opcode in {frame}",
                ("rip", "trace"), sample="x86-invalid-opcode.txt"),
    ReportClass("oops", _c(r"PANIC: double fault"), "PANIC: double fault in {frame}",
                ("rip",), sample="x86-double-fault.txt"),
    ReportClass("oops", _c(r"Internal error: (?P<what>[^:]+?)(?::| \[)"),
                "Internal error: {what} in {frame}", ("rip", "trace"),
                sample="arm64-internal-error.txt"),
    ReportClass("oops", _c(r"Oops(?: - (?P<what>[^:\[]+?))?[:\[ ]"), "Oops in {frame}",
                ("rip", "trace"), sample="x86-oops.txt"),
    # the other BUG: lines
    ReportClass("bug", _c(r"BUG: sleeping function called from invalid context"),
                "BUG: sleeping function called from invalid context in {frame}", ("trace",),
                skip=r"might_sleep|might_fault|might_resched", sample="x86-sleeping-in-atomic.txt"),
    ReportClass("bug", _c(r"BUG: scheduling while atomic"),
                "BUG: scheduling while atomic in {frame}", ("trace",), skip=r"sched",
                sample="x86-scheduling-while-atomic.txt"),
    ReportClass("bug", _c(r"BUG: spinlock (?P<what>lockup suspected|already unlocked|recursion|"
                          r"bad magic|wrong owner|wrong CPU)"),
                "BUG: spinlock {what} in {frame}", ("trace",), skip=r"spin_",
                sample="x86-spinlock-bad-magic.txt"),
    ReportClass("bug", _c(r"BUG: workqueue leaked (?:lock or atomic|atomic, lock or RCU)"),
                "BUG: workqueue leaked lock or atomic in {lastfn}",
                detail=_c(r"last function: (?P<lastfn>[\w.]+)"),
                sample="x86-workqueue-leaked-lock.txt"),
    ReportClass("bug", _c(r"BUG: workqueue lockup"), "BUG: workqueue lockup",
                sample="x86-workqueue-lockup.txt"),
    ReportClass("bug", _c(r"BUG: Bad page (?P<what>state|map)"), "BUG: Bad page {what}",
                sample="x86-bad-page-state.txt"),
    ReportClass("bug", _c(r"BUG: Bad rss-counter state"), "BUG: Bad rss-counter state",
                sample="x86-bad-rss-counter.txt"),
    ReportClass("bug", _c(r"BUG: (?P<what>[^,:!(]+)"), "BUG: {what} in {frame}",
                ("rip", "trace"), sample="x86-bug-other.txt"),
    # SLUB's own consistency checks: "BUG CACHE (Tainted: ...): what", then its "Allocated
    # in" / "Freed in" lines (with an "INFO: " prefix before Linux 5.13)
    ReportClass("slub", _c(r"BUG (?P<cache>[\w.:-]+) \((?:Not tainted|Tainted: [^)]*)\): "
                           r"(?P<what>[A-Za-z ]+)"),
                "SLUB: {what} in {frame}", ("trace",),
                skip=r"kfree|kmem_cache|slab|free_|__slab|check_|object_err|print_trailer",
                sample="x86-slub-double-free.txt"),
    ReportClass("ubsan", _c(r"UBSAN: Undefined behaviour in"),
                "UBSAN: undefined-behaviour in {frame}", ("trace",), skip=r"ubsan|overflow",
                sample="x86-ubsan-old.txt"),
    ReportClass("ubsan", _c(r"UBSAN: (?P<what>[\w-]+) in "), "UBSAN: {what} in {frame}",
                ("trace",), skip=r"ubsan|overflow", sample="x86-ubsan-array-index.txt"),
    ReportClass("kmemleak", _c(r"unreferenced object 0x[0-9a-f]+ \(size \d+\):"),
                "memory leak in {frame}", ("backtrace",),
                skip=r"kmemleak|kmalloc|kcalloc|kzalloc|krealloc|vmalloc|vzalloc|kvmalloc|"
                     r"kvzalloc|mmap|kmem|slab|alloc|create_object|idr_get|kasprintf|"
                     r"kvasprintf|pcpu_create|strdup|strndup|memdup",
                sample="x86-kmemleak.txt"),
    ReportClass("kmemleak", _c(r"kmemleak: \d+ new suspected memory leaks"),
                "memory leak (kmemleak found it; its objects are in "
                "/sys/kernel/debug/kmemleak)", joins=("kmemleak",),
                sample="x86-kmemleak-summary.txt"),
    ReportClass("netdev", _c(r"unregister_netdevice: waiting for \S+ to become free"),
                "unregister_netdevice: waiting for DEV to become free",
                sample="x86-unregister-netdevice.txt"),
    # a panic that a report before it brought (panic_on_warn, a fatal exception, hung tasks)
    # is the end of that report; any other panic is a report of its own
    ReportClass("panic", _c(r"Kernel panic - not syncing: (?:kernel: )?(?P<what>Fatal "
                            r"exception(?: in interrupt)?|panic_on_warn set|panic_on_oops|"
                            r"hung_task: blocked tasks|softlockup: hung tasks|hardlockup: .*|"
                            r"RCU Stall)"),
                "kernel panic: {what}", joins=ANY, sample="x86-panic-after-warning.txt"),
    ReportClass("panic", _c(r"Kernel panic - not syncing: (?P<what>[^:]+)"),
                "kernel panic: {what}", sample="x86-panic.txt"),
    ReportClass("warning", _c(r"WARNING: (?P<what>.+)"), "WARNING: {what}",
                sample="x86-warning-other.txt"),
)


@dataclass(frozen=True)
class Harmless:
    pattern: re.Pattern
    why: str
    example: str  # a line the kernel prints that it matches


#: Kernel lines that look like a report's header and are not one. Userspace's lines
#: never get this far: they carry a facility other than the kernel's (`kernel_log`).
HARMLESS: tuple[Harmless, ...] = (
    Harmless(_c(r"WARNING: workqueue cpumask: online intersect > possible intersect"),
             "kernel/workqueue.c's pr_warn at boot when the online and possible CPU masks "
             "differ; no WARN(), no trace (syzkaller suppresses it too)",
             "WARNING: workqueue cpumask: online intersect > possible intersect"),
    Harmless(_c(r"WARNING: The mand mount option has been deprecated"),
             "fs/namespace.c's pr_warn_once for an old mount option, a user's choice",
             "WARNING: The mand mount option has been deprecated and"),
    Harmless(_c(r"INFO: lockdep is turned off"),
             "a line inside another report (hung task), not a report",
             "INFO: lockdep is turned off."),
    Harmless(_c(r"INFO: NMI handler \(\w+\) took too long to run"),
             "perf's NMI handler under TCG, whose virtual time jumps; no bug",
             "INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.234 msecs"),
    Harmless(_c(r"INFO: (?:Allocated|Freed) in "),
             "SLUB's allocation and free tracks: lines of the SLUB report before them",
             "INFO: Freed in kfree+0xd1/0x3a0 age=2 cpu=0 pid=93"),
)

#: Where a report can start: one test per log line before the class table is consulted
#: (most lines are not headers). Every class's header starts with one of these.
STARTS = re.compile(r"(?:\[ )?(?:BUG|WARNING|INFO|Oops|general protection|stack segment|"
                    r"divide error|invalid opcode|PANIC|kernel BUG|Kernel panic|"
                    r"Unable to handle|Internal error|Unhandled fault|UBSAN|"
                    r"unreferenced object|kmemleak: |unregister_netdevice|(?:NMI )?watchdog|"
                    r"rcu: INFO)")


def classify(text: str) -> tuple[ReportClass, re.Match] | None:
    """The class whose header `text` is, with the header's match; None for any other line
    (a line of no report, or a harmless one)."""
    if not STARTS.match(text):
        return None
    if any(h.pattern.match(text) for h in HARMLESS):
        return None
    for cls in CLASSES:
        m = cls.header.match(text)
        if m:
            return cls, m
    return None
