"""The one function a kernel report is about: its guilty frame, read as syzbot reads it.

A report's frames start in the code that reports (WARN's trap, refcount's
saturation check, lockdep's validator, the scheduler a hung task sleeps in) and
only then reach the code at fault. The guilty frame is the first frame, in the
places its class names (report_classes.SOURCES), that is none of that
machinery. The compiler renames functions it splits or specialises
(`.cold`, `.isra.N`, `.constprop.N`, `.part.N`): the name is read without
those suffixes, so the same bug keeps the same title from build to build.
"""

import re
from collections.abc import Iterator

#: A frame of a call trace: x86 " func+0x1b/0x70", with "? " when unreliable; arm64 adds
#: " (P)"; kmemleak's and older kernels' traces put "[<ffffffff81234567>] " first.
FRAME = re.compile(r"^\s*(?:\[<?[0-9a-fx]+>?\]\s*)?(\? )?([A-Za-z0-9_.$]+)"
                   r"\+0x[0-9a-f]+/0x[0-9a-f]+")
#: The faulting instruction: x86 "RIP: 0010:func+0x..", arm64 "pc : func+0x..", arm
#: "PC is at func+0x..".
RIP = re.compile(r"^\s*(?:RIP: [0-9a-f]{4}:|pc : |PC is at |NIP: |IP: )(?:\[<[0-9a-f]+>\]\s*)?"
                 r"([A-Za-z0-9_.$]+)\+0x")
#: lockdep's lock lines: "ffff888004b2c1a8 (&vdev->memory_lock){++++}-{4:4}, at: func+0x.."
#: (or "at:" at the end of a line, the frame on the next).
AT = re.compile(r"\bat: (?:\[<[0-9a-f]+>\]\s*)?([A-Za-z0-9_.$]+)\+0x")
AT_END = re.compile(r"\bat:\s*$")
CALL_TRACE = re.compile(r"^\s*Call [Tt]race:")
BACKTRACE = re.compile(r"^\s*backtrace(?: \(crc [0-9a-f]+\))?:")
#: What the compiler appends to a function it split, cloned or specialised.
SUFFIX = re.compile(r"(?:\.(?:cold|isra|constprop|part|lto_priv|llvm)(?:\.\d+)?)+$")
#: The reporting and locking machinery every class passes over (matched at the start of
#: a frame's name, its leading underscores left out).
MACHINERY = re.compile(
    r"(?:dump_stack|show_stack|dump_backtrace|warn|report_bug|fixup_bug|handle_bug|exc_|"
    r"asm_exc_|do_error_trap|do_trap|die(?:_\w+)?$|oops_|panic|print_|check_(?:noncircular|"
    r"prev_add|prevs_add|irq_usage|usage|flags|wait_context|unlock)|validate_chain|"
    r"lock_acquire|lock_release|lock_acquired|lock_contended|lockdep|mark_lock|"
    r"reacquire_held_locks|kasan|asan_|kfence|ubsan|debug_object|debug_print_object|"
    r"refcount_warn|might_sleep|might_fault|might_resched|raw_spin|spin_lock|spin_unlock|"
    r"raw_read|raw_write|mutex_lock|mutex_unlock|mutex_trylock|ww_mutex_lock|"
    r"(?:down|up)_(?:read|write)|down$|down_(?:interruptible|killable|trylock|timeout)|"
    r"rwsem_|schedule|io_schedule|(?:do_)?wait_for_common|wait_for_completion|stack_trace_save|arch_stack_walk|bug_handler|"
    r"call_break_hook|brk_handler|do_debug_exception|el1_|el1h_|native_queued_spin|queued_spin|"
    r"memcpy|memset|memmove|strlen|strcmp|strscpy|strncpy|copy_to_user|copy_from_user|"
    r"list_add|list_del|printk|vprintk|dev_printk|dev_warn|dev_err|snprintf|vsnprintf)")


def plain(name: str) -> str:
    """A function's name without the compiler's suffixes."""
    return SUFFIX.sub("", name)


def is_machinery(name: str, skip: re.Pattern | None = None) -> bool:
    bare = plain(name)
    return bool(MACHINERY.match(bare.lstrip("_")) or (skip and skip.search(bare)))


def candidates(source: str, texts: list[str], header_func: str = "") -> Iterator[str]:
    """The frames a source offers, in order (the unreliable '?' frames left out)."""
    if source == "header":
        if header_func:
            yield header_func
    elif source == "rip":
        for text in texts:
            m = RIP.match(text)
            if m:
                yield m.group(1)
                return  # the first RIP is the fault; later ones are userspace's or another's
    elif source == "at":
        for i, text in enumerate(texts):
            m = AT.search(text)
            if m:
                yield m.group(1)
            elif AT_END.search(text) and i + 1 < len(texts):
                f = FRAME.match(texts[i + 1])
                if f:
                    yield f.group(2)
    else:
        start = CALL_TRACE if source == "trace" else BACKTRACE
        inside = False
        for text in texts:
            if start.match(text):
                if inside:
                    return  # a second trace (another task's) is not this report's story
                inside = True
                continue
            if not inside:
                continue
            f = FRAME.match(text)
            if f:
                if not f.group(1):
                    yield f.group(2)
            elif not text.strip().startswith("<") and text.strip() and not _register(text):
                return


def _register(text: str) -> bool:
    """x86 prints a task's user registers inside its trace, after its last frame."""
    return bool(re.match(r"^\s*(?:RIP|RSP|RAX|RDX|RBP|R1[0-3]|Code|FS|CS|CR2|PKRU)[: ]", text))


def guilty(sources: tuple[str, ...], texts: list[str], header_func: str = "",
           skip: str = "") -> str:
    """The first frame of `sources` (in order) that is not reporting machinery: the
    function the report is about, without compiler suffixes; "" if none is found."""
    own = re.compile(skip) if skip else None
    for source in sources:
        for name in candidates(source, texts, header_func):
            if not is_machinery(name, own):
                return plain(name)
    return ""


def top(texts: list[str], count: int) -> tuple[str, ...]:
    """The top `count` frames of the first call trace, machinery and '?' frames left out:
    the context a reason shows after the title."""
    out: list[str] = []
    for name in candidates("trace", texts):
        if not is_machinery(name):
            out.append(plain(name))
            if len(out) == count:
                break
    return tuple(out)
