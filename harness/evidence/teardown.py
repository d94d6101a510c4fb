"""What an L2 left behind when it ended: the evidence of the teardown checks.

A guest that shuts down clears its devices' memory decode before its VMM
quits; the L1 kernel then closes each VFIO device while the device's dma-bufs
are revoked, a path that no check running on a decoding device reaches (the
dma-buf cleanup on close, drivers/vfio/pci/vfio_pci_dmabuf.c). What the kernel
must have done afterwards is seen from L1 alone, never from the QEMU that
ended: debugfs lists every dma-buf still alive, whoever holds it, /proc every
VFIO fd, and opening each device afresh shows it can be used again.
"""

from dataclasses import dataclass, field

from harness.evidence.records import Moment, P2PTransfer, TraceRecord
from harness.evidence.stuck import Stuck


@dataclass(frozen=True)
class Leftover:
    """The L1 kernel's VFIO objects once L2 was gone (waited up to `waited_s` for them to
    go: a process's files are released just after it exits)."""

    #: (exporter, inode, size) of each dma-buf of L2's exporters still alive (debugfs)
    dmabufs: tuple[tuple[str, int, int], ...]
    holders: tuple[tuple[int, str, int, str], ...]  # (pid, comm, fd, target) of VFIO fds
    waited_s: float = 0.0
    error: str = ""                               # why L1 could not say ("": it did)
    alive: int = -1                               # every dma-buf debugfs listed, any exporter

    def record(self) -> dict:
        return {"dmabufs": [list(d) for d in self.dmabufs],
                "holders": [list(h) for h in self.holders], "alive": self.alive,
                "waited_s": self.waited_s, "error": self.error}

    def describe(self) -> str:
        parts = []
        if self.dmabufs:
            parts.append(f"{len(self.dmabufs)} dma-buf(s) of L2's exporter still alive in the "
                         f"L1 kernel (debugfs bufinfo: " + "; ".join(
                             f"{e} inode {i}, {n} bytes" for e, i, n in self.dmabufs[:4]) + ")")
        if self.holders:
            parts.append("VFIO fds still held: " + "; ".join(
                f"{comm} (pid {pid}) fd {fd} -> {target}"
                for pid, comm, fd, target in self.holders[:4]))
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class LeftAfter:
    """What the L1 kernel still had once one L2 had ended on its own terms (the side L2's
    quit, the main L2's plain stop): a dma-buf or VFIO fd that outlives every process
    that could hold it is the trace of a reference leaked on some path of that L2's life,
    which no check of that L2 need have looked at."""

    step: str                      # the timed step that ended that L2 (side_l2, l2_stop)
    leftover: Leftover


@dataclass(frozen=True)
class Teardown:
    """One way an L2 ends, played by a teardown check on the main L2 after every other
    step: the kernel's view before and once the guest's act is done, how L2 ended (within
    its deadline or not), and what L1 had left afterwards."""

    check: str
    devices: dict[str, str]        # name -> L1 BDF of the devices the act touched
    before: Moment
    revoked: Moment                # every device's memory decode off, L2 still running
    ended: str | None              # how L2 ended, in L1's words; None: it did not
    waited_s: float                # from the quit to L2 gone (or to the deadline)
    deadline_s: float
    quit_error: str = ""           # what the quit command itself answered, if not success
    stuck: Stuck | None = None     # where L2's tasks waited, if it did not end in time
    leftover: Leftover | None = None  # None: not asked (a hung L2 still holds the devices)
    #: BDF -> what opening the device afresh gave: "live" (a dma-buf of a BAR, mapped),
    #: "opened (...)" where no dma-buf can be asked for, else what failed.
    reopened: dict[str, str] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """Whether the act came to its end in time (else L2 holds its devices in a task
        that may never end, and the L1 with it)."""
        return self.ended is not None


@dataclass(frozen=True)
class UnplugRevoked:
    """ivshmem unplugged from a running L2 after the guest turned its memory decode off:
    QEMU closes the VFIO device while the device's dma-bufs are revoked (and, QEMU 11.1.3
    keeping them open, while they are still open). Then plugged again and used."""

    check: str
    device: str                    # L1 BDF
    bar: int
    iova: int                      # BAR 2 in L2, before and after
    before: Moment
    revoked: Moment                # ivshmem's memory decode off, still plugged
    unplugged: Moment | None       # once QOM and the L1 kernel show it gone; None: never
    waited_s: float                # from device_del to unplugged (or to giving up)
    deadline_s: float
    not_done: str = ""             # what did not complete in time ("": the unplug did)
    stuck: Stuck | None = None     # L2's tasks then, if it did not
    replugged: Moment | None = None
    after: P2PTransfer | None = None  # P2P through BAR 2 once it is back
    alive: bool = True
    trace_replugging: tuple[TraceRecord, ...] = ()  # between `unplugged` and `replugged`

    @property
    def completed(self) -> bool:
        return self.unplugged is not None




@dataclass(frozen=True)
class ClosedBeforeUnmap:
    """The guest helper in L1, no QEMU: a BAR's dma-buf mapped into an IOAS the device is
    attached to, its fd closed while mapped, then unmapped and the device closed; then the
    device opened afresh."""

    check: str
    device: str                                   # L1 BDF
    steps: tuple[tuple[str, str], ...]            # (step, "ok" or the errno), in order
    alive: dict[str, bool | None]                 # moment -> debugfs lists the dma-buf
    bar: int = -1
    size: int = 0
    close_s: float = -1.0                         # how long the device's close took
    waited_s: float = 0.0                         # the helper's answer, all of it
    deadline_s: float = 0.0
    error: str = ""                               # why it could not be played at all
    not_done: str = ""                            # no answer within the deadline: why
    stuck: Stuck | None = None
    reopened: str = ""

    @property
    def completed(self) -> bool:
        return not self.not_done


@dataclass(frozen=True)
class Killed:
    """An L2 of its own, ivshmem alone, SIGKILLed while its IOAS maps BAR 2 (through the
    BAR's dma-buf where the kernel has them): the process exit closes the IOAS, the
    device and the dma-bufs in whatever order the kernel releases them, with the mapping
    still in place. Then what L1 had left, and the device opened afresh."""

    check: str
    device: str                    # L1 BDF
    iova: int                      # BAR 2 in L2
    mapped: Moment                 # the L1 kernel's view of L2 just before the kill
    ended: str | None              # how L2 ended, in L1's words; None: it did not
    waited_s: float                # from the kill to L2 gone (or to the deadline)
    deadline_s: float
    #: QEMU's IOMMU mappings of BAR 2 as it traced them (by dma-buf, or the refused ones)
    maps: tuple[TraceRecord, ...] = ()
    traced: int = -1               # trace records the L2 wrote in all (0: no evidence)
    stuck: Stuck | None = None
    leftover: Leftover | None = None
    reopened: str = ""
    error: str = ""                # why it could not be played ("": it was)

    @property
    def completed(self) -> bool:
        return self.ended is not None or bool(self.error)


#: What a teardown check records: one of these, by check (Evidence.teardown).
Ending = Teardown | UnplugRevoked | ClosedBeforeUnmap | Killed
