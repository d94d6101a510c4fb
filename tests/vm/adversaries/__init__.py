"""QEMUs under test that lie or break the feature the way real bugs would.

Each adversary is the packaged QEMU behind a wrapper script (and, for some,
an LD_PRELOAD shim built from l2_shim.c on L0 and carried inside the script),
given to the harness exactly as a user's build is: through `--l2-qemu`. The
wrapper touches only real L2 runs (those with -qtest); the probe of the QEMU
under test sees the packaged binary, so the lie must be caught by the
verdicts, not by the probe.

`verdicts` says, per (kernel, backend, check), the outcome the lie must get
and a fragment of the reason that points at it ("*" matches any kernel or
backend). Every cell it does not name must behave as with the honest QEMU
(meet its expectation): an adversary breaks one thing, and the harness must
notice that thing and nothing else.
"""

import base64
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.checks.registry import KERNEL

HERE = Path(__file__).parent
REAL_QEMU = "/usr/bin/qemu-system-x86_64"
SHIM_IN_L1 = "/run/vfio-harness-l2-shim.so"

#: bash snippets turning "${args[@]}" into "${new[@]}".
KEEP = 'new=("${args[@]}")'
DROP_TRACES = """new=(); i=0
while [ $i -lt ${#args[@]} ]; do
  if [ "${args[$i]}" = -trace ]; then i=$((i + 2)); continue; fi
  new+=("${args[$i]}"); i=$((i + 1))
done"""
HIDE_DMABUF_EVENT = 'new=("${args[@]}" -trace -vfio_region_dmabuf)'
NO_MMAP = """new=()
for a in "${args[@]}"; do
  case $a in vfio-pci,*x-no-mmap*) ;; vfio-pci,*) a="$a,x-no-mmap=on" ;; esac
  new+=("$a")
done"""
#: A process of its own beside L2 that takes a copy of every dma-buf fd L2 opens
#: (pidfd_getfd) and keeps them until 20 s after L2 is gone: a dma-buf outlives its L2.
HOLD_DMABUFS = KEEP + """
python3 - $$ >/dev/null 2>&1 <<'PY' &
import ctypes, os, sys, time
pid, libc, held, pidfd = int(sys.argv[1]), ctypes.CDLL(None, use_errno=True), {}, -1
while True:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        break
    if pidfd < 0:
        pidfd = libc.syscall(434, pid, 0)
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dmabuf:") and (fd, target) not in held:
            held[(fd, target)] = libc.syscall(438, pidfd, int(fd), 0)
    time.sleep(0.1)
time.sleep(20)
PY"""
#: QEMU's dma-buf warnings in words the harness has never seen.
REWORD = ("sed -u -e 's/VFIO dma-buf not supported in kernel/VFIO dma-buf unsupported by this "
          "kernel/' -e 's/dma-buf unavailable, using mmap fallback/dma-buf could not be "
          "created, mapping the BAR instead/'")

Key = tuple[str, str, str]  # (kernel | *, backend | *, check)


@dataclass(frozen=True)
class Adversary:
    name: str
    lie: str
    args: str = KEEP
    shim: str | None = None
    stderr_filter: str | None = None
    verdicts: dict[Key, tuple[str, str]] = field(default_factory=dict)

    def expected(self, kernel: str, backend: str, check: str) -> tuple[str, str] | None:
        """What the lie must get in that cell; a "*" backend is any kernel backend (what a
        lie does to vfio-user's cells is named backend by backend, as measured)."""
        for (k, b, c), want in self.verdicts.items():
            if k in (kernel, "*") and (b == backend or (b == "*" and backend in KERNEL)) \
                    and c == check:
                return want
        return None

    def wrapper(self, shim_so: Path | None) -> str:
        lines = ["#!/bin/bash", f"# vfio-harness adversary {self.name}: {self.lie}",
                 f"real={REAL_QEMU}",
                 'case " $* " in *" -qtest "*) ;; *) exec "$real" "$@" ;; esac',
                 'args=("$@")', self.args]
        if self.shim:
            assert shim_so is not None
            blob = base64.encodebytes(shim_so.read_bytes()).decode()
            lines += [f"[ -s {SHIM_IN_L1} ] || base64 -d > {SHIM_IN_L1} <<'SHIM'",
                      blob.rstrip(), "SHIM",
                      # after any the harness preloads (the multi-range fixture)
                      f'export LD_PRELOAD="${{LD_PRELOAD:+$LD_PRELOAD:}}{SHIM_IN_L1}" '
                      f"VFIO_HARNESS_SHIM={self.shim}"]
        if self.stderr_filter:  # through a FIFO: L1 has no /dev/fd for >(...)
            lines += ['fifo=/run/vfio-harness-stderr.$$', 'mkfifo "$fifo"',
                      f'{self.stderr_filter} < "$fifo" >&2 &', 'exec 2>"$fifo"', 'rm -f "$fifo"']
        lines.append('exec "$real" "${new[@]}"')
        return "\n".join(lines) + "\n"


def build_shim(out: Path) -> Path:
    """l2_shim.c built on L0 (bookworm's glibc is older than sid's, so it loads in L1)."""
    so = out / "l2_shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(so),
                    str(HERE / "l2_shim.c"), "-ldl"], check=True, capture_output=True,
                   timeout=120)
    return so


TRACE_GONE = "trace is missing"
LIFECYCLE = ("decode-toggle", "reset", "reset-while-revoked")
UNPLUG = "dmabuf-unplug"
MULTI = "multi-range"
QUIT = "quit-while-revoked"
UNPLUG_REVOKED = "unplug-while-revoked"
NOTHING_REVOKED = "no dma-buf of L2 went from live to revoked"
KILL = "kill-while-mapped"
NOTHING_MAPPED = "nothing was mapped through a dma-buf when L2 was killed"
LEFT_BY_SIDE = "once its L2 had ended (side_l2"


def lifecycle(kernel: str, backend: str, outcome: str, fragment: str) -> dict:
    """The same want for both lifecycle steps: a lie about a BAR shows in both."""
    return {(kernel, backend, check): (outcome, fragment) for check in LIFECYCLE}


CATALOGUE = (
    Adversary(
        "no-trace", "drops every -trace option: L2 runs and works, and writes no evidence",
        args=DROP_TRACES,
        verdicts={("dmabuf", "*", "dmabuf-per-region"): ("error", TRACE_GONE),
                  ("*", "*", "mmap-fallback"): ("error", TRACE_GONE),
                  ("*", "*", "p2p-dma"): ("error", TRACE_GONE),
                  **lifecycle("*", "*", "error", TRACE_GONE),
                  ("*", "*", UNPLUG): ("error", TRACE_GONE),
                  ("*", "*", UNPLUG_REVOKED): ("error", TRACE_GONE),
                  ("*", "*", MULTI): ("error", TRACE_GONE),
                  ("dmabuf", "iommufd", KILL): ("error", "wrote no trace")}),
    Adversary(
        "hide-dmabuf-event", "creates its dma-bufs but never traces vfio_region_dmabuf",
        args=HIDE_DMABUF_EVENT,
        verdicts={("dmabuf", "*", "dmabuf-per-region"):
                  ("fail", "0 vfio_region_dmabuf for 1 mmap(s)"),
                  # the dma-bufs are there, but which one is BAR 2's is not said
                  **lifecycle("dmabuf", "*", "error", "which dma-buf to follow is unknown"),
                  ("dmabuf", "*", UNPLUG): ("error", "to follow is unknown"),
                  ("dmabuf", "*", MULTI): ("fail", "0 vfio_region_dmabuf for 2 mmap(s)")}),
    Adversary(
        "refuse-dmabuf", "gets ENOTTY from VFIO_DEVICE_FEATURE(DMA_BUF) on a kernel that has it",
        shim="refuse-dmabuf",
        verdicts={("dmabuf", "*", "dmabuf-per-region"):
                  ("fail", "QEMU said VFIO dma-buf is not supported in kernel, on a kernel "
                           "whose probe says it is"),
                  ("dmabuf", "*", "mmap-fallback"):
                  ("fail", "QEMU said dma-buf is not supported in kernel, on a kernel that has "
                           "it"),
                  ("dmabuf", "iommufd", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  **lifecycle("dmabuf", "*", "fail", "L2 holds no dma-buf"),
                  ("dmabuf", "*", UNPLUG): ("fail", "L2 holds no dma-buf"),
                  ("dmabuf", "*", UNPLUG_REVOKED): ("fail", NOTHING_REVOKED),
                  ("dmabuf", "*", QUIT): ("fail", "L2 holds no dma-buf"),
                  ("dmabuf", "*", MULTI): ("fail", "0 vfio_region_dmabuf for"),
                  ("dmabuf", "iommufd", KILL): ("fail", NOTHING_MAPPED),
                  # a relation across backends: the served edu's P2P into ivshmem on
                  # vfio-pci goes through that BAR's dma-buf, which QEMU no longer has
                  ("dmabuf", "vfio-user", "vfio-user-p2p"): ("fail", "with no fd")}),
    Adversary(
        "shrink-dmabuf", "asks the kernel for a dma-buf of one page per range, not the BAR",
        shim="shrink-dmabuf",
        verdicts={("dmabuf", "*", "dmabuf-per-region"): ("fail", "is 4096 bytes"),
                  ("dmabuf", "iommufd", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  # legacy maps BAR 2 by address: the short dma-buf is not on its path
                  **lifecycle("dmabuf", "iommufd", "fail", "iommufd did not map BAR 2's "
                                                           "dma-buf"),
                  # the leak is still there, and the replugged BAR is not mapped either
                  ("dmabuf", "iommufd", UNPLUG): ("fail", "once the device was plugged "
                                                         "again: the bytes did not arrive"),
                  ("dmabuf", "iommufd", UNPLUG_REVOKED): ("fail", "the bytes did not arrive"),
                  # two ranges of a page each, for pieces of two pages and one
                  ("dmabuf", "*", MULTI): ("fail", "is 8192 bytes, the region's mmaps are "
                                                   "12288"),
                  ("dmabuf", "iommufd", KILL): ("fail", NOTHING_MAPPED)}),
    Adversary(
        "forge-dmabuf", "hands out a memfd of the right size as each BAR's dma-buf",
        shim="forge-dmabuf",
        verdicts={("dmabuf", "*", "dmabuf-per-region"):
                  ("fail", "from the trace is not a dma-buf in the L1 kernel's view"),
                  ("dmabuf", "*", "mmap-fallback"): ("fail", "fell back and yet has a dma-buf"),
                  ("no-dmabuf", "*", "mmap-fallback"):
                  ("fail", "vfio_region_dmabuf traced on a kernel without VFIO dma-buf"),
                  ("dmabuf", "iommufd", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  ("no-dmabuf", "iommufd", "p2p-dma"): ("fail", "not the expected failure"),
                  **lifecycle("dmabuf", "*", "fail", "the L1 kernel shows no dma-buf fd"),
                  **lifecycle("no-dmabuf", "iommufd", "fail", "not the expected failure"),
                  ("dmabuf", "*", UNPLUG): ("fail", "L2 holds no dma-buf"),
                  ("dmabuf", "*", UNPLUG_REVOKED): ("fail", NOTHING_REVOKED),
                  ("no-dmabuf", "iommufd", UNPLUG_REVOKED): ("fail", "not the expected failure"),
                  ("dmabuf", "*", QUIT): ("fail", "L2 holds no dma-buf"),
                  # its memfds are never closed either: one more per plug
                  ("no-dmabuf", "*", UNPLUG): ("fail", "L2's fds grew"),
                  ("dmabuf", "*", MULTI):
                  ("fail", "from the trace is not a dma-buf in the L1 kernel's view"),
                  ("no-dmabuf", "*", MULTI):
                  ("fail", "a dma-buf on a kernel without VFIO dma-buf"),
                  # iommufd maps the memfd by file, but the kernel knows no dma-buf of L2's
                  ("dmabuf", "iommufd", KILL): ("fail", "no live dma-buf in L2 before the "
                                                        "kill")}),
    Adversary(
        "drop-mmaps", "never mmaps a BAR (x-no-mmap=on on every device)",
        args=NO_MMAP,
        verdicts={("dmabuf", "*", "dmabuf-per-region"): ("fail", "was not mmapped"),
                  ("*", "*", "mmap-fallback"): ("fail", "was not mmapped"),
                  ("*", "legacy", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  ("dmabuf", "iommufd", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  ("no-dmabuf", "iommufd", "p2p-dma"): ("fail", "not the expected failure"),
                  **lifecycle("dmabuf", "*", "fail", "L2 holds no dma-buf"),
                  **lifecycle("no-dmabuf", "legacy", "fail", "the bytes did not arrive"),
                  **lifecycle("no-dmabuf", "iommufd", "fail", "not the expected failure"),
                  # device_add goes around the wrapper: the replugged device is honest
                  ("dmabuf", "*", UNPLUG): ("fail", "L2 holds no dma-buf"),
                  ("*", "*", MULTI): ("fail", "in 0 piece(s)"),
                  ("dmabuf", "iommufd", KILL): ("fail", NOTHING_MAPPED)}),
    Adversary(
        "anon-bar-mmap", "maps anonymous memory where each BAR's mmap of the device should be",
        shim="anon-bar-mmap",
        verdicts={("dmabuf", "*", "dmabuf-per-region"): ("fail", "the mmap is not of the device"),
                  ("*", "*", "mmap-fallback"): ("fail", "the mmap is not of the device"),
                  ("*", "*", "p2p-dma"): ("fail", "never reached the ivshmem file"),
                  **lifecycle("*", "*", "fail", "no DMA could be tried"),
                  ("*", "*", UNPLUG): ("fail", "never reached the ivshmem file"),
                  ("*", "*", UNPLUG_REVOKED): ("fail", "never reached the ivshmem file"),
                  # (not the kill: iommufd maps BAR 2 by the dma-buf's fd, not by its mmap)
                  ("*", "*", MULTI): ("fail", "the mmap is not of the device")}),
    Adversary(
        "keep-decode", "never lets the device see memory decode turned off (nor the reset's "
                       "command write): only L2's copy of the command register changes",
        shim="keep-decode",
        verdicts={**lifecycle("*", "*", "fail", "the device still decodes memory"),
                  # the guest's shutdown never reaches the devices either
                  ("*", "*", QUIT): ("fail", "memory decode still on"),
                  ("*", "*", UNPLUG_REVOKED): ("fail", "memory decode still on"),
                  # every device decodes from the start: whose dma-buf is whose cannot be
                  # told by the kernel's revoke answers
                  ("dmabuf", "*", "dmabuf-per-region"): ("error", "the decode witness "
                                                                  "cannot tell"),
                  ("dmabuf", "*", MULTI): ("error", "the decode witness cannot tell")}),
    # Attribution: a dma-buf that is not its region's own.
    Adversary(
        "borrow-dmabuf", "gives ivshmem's BAR 2 a dup of edu's BAR 0 dma-buf (both 1 MiB)",
        shim="borrow-dmabuf",
        verdicts={("dmabuf", "*", "dmabuf-per-region"): ("fail", "hold one and the same "
                                                                 "dma-buf"),
                  # decode off on ivshmem leaves edu's dma-buf, which BAR 2 holds, live
                  ("dmabuf", "*", "decode-toggle"): ("fail", "was live at 'memory decode "
                                                             "off', not revoked"),
                  ("dmabuf", "iommufd", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  # the reset revokes every device's dma-bufs, edu's too: only iommufd's
                  # mapping of the wrong BAR shows
                  ("dmabuf", "iommufd", "reset"): ("fail", "the bytes did not arrive"),
                  ("dmabuf", "iommufd", "reset-while-revoked"): ("fail", "the bytes did not "
                                                                         "arrive"),
                  # the replugged device borrows edu's again
                  ("dmabuf", "*", UNPLUG): ("fail", "not a new live dma-buf"),
                  # ivshmem has no dma-buf of its own for its decode to revoke
                  ("dmabuf", "*", UNPLUG_REVOKED): ("fail", NOTHING_REVOKED)}),
    Adversary(
        "foreign-dmabuf", "gives ivshmem's BAR 2 a new dma-buf of its own, made from edu's "
                          "BAR 0: right size, exporter and fd count, wrong device",
        shim="foreign-dmabuf",
        verdicts={("dmabuf", "*", "dmabuf-per-region"):
                  ("fail", "is not its own BAR's: the L1 kernel kept it live exactly while"),
                  ("dmabuf", "*", "decode-toggle"): ("fail", "was live at 'memory decode "
                                                             "off', not revoked"),
                  ("dmabuf", "iommufd", "p2p-dma"): ("fail", "the bytes did not arrive"),
                  ("dmabuf", "iommufd", "reset"): ("fail", "the bytes did not arrive"),
                  ("dmabuf", "iommufd", "reset-while-revoked"): ("fail", "the bytes did not "
                                                                         "arrive"),
                  # the replugged device gets one of edu's again: live while edu decodes
                  # and ivshmem, back, does not yet
                  ("dmabuf", "*", UNPLUG): ("fail", "was live while the other devices "
                                                    "decoded memory again"),
                  ("dmabuf", "*", UNPLUG_REVOKED): ("fail", NOTHING_REVOKED)}),
    Adversary(
        "stale-dmabuf", "gives a device plugged again the dma-buf its unplugged predecessor "
                        "left open (revoked), not a new one",
        shim="stale-dmabuf",
        verdicts={("dmabuf", "*", UNPLUG): ("fail", "as revoked, inode"),
                  # the device dmabuf-unplug plugged again holds no dma-buf of its own
                  ("dmabuf", "*", UNPLUG_REVOKED): ("fail", NOTHING_REVOKED)}),
    # Relations between processes: what an L2 leaves behind once it is gone.
    Adversary(
        "hold-dmabufs", "a process beside L2 keeps a copy of each of its dma-bufs until 20 s "
                        "after L2 has quit",
        args=HOLD_DMABUFS,
        verdicts={("dmabuf", "*", QUIT): ("fail", "of L2's exporter still alive in the L1 "
                                                  "kernel"),
                  ("dmabuf", "iommufd", KILL): ("fail", "of L2's exporter still alive in the "
                                                        "L1 kernel"),
                  # the side L2's, which no teardown check judges: what it left behind
                  ("dmabuf", "*", "dmabuf-per-region"): ("fail", LEFT_BY_SIDE),
                  ("dmabuf", "*", MULTI): ("fail", LEFT_BY_SIDE)}),
    Adversary(
        "reword-warnings", "words its dma-buf warnings differently from any known QEMU",
        stderr_filter=REWORD,
        verdicts={("*", "*", "mmap-fallback"):
                  ("error", "wording this harness does not know"),
                  ("no-dmabuf", "*", MULTI): ("error", "wording this harness does not know")}),
)
