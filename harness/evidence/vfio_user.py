"""What a vfio-user run leaves to judge: per device, what the server announced (its log),
what the device really has (L1's view of its BARs and its cdev), and how L2 took it (its
trace and its mappings). Three witnesses that must agree, each from another process."""

import re
from dataclasses import dataclass

from harness.evidence.records import BarAccess, TraceRecord

_MAPS = re.compile(r"^(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) \S+ (?P<offset>[0-9a-f]+) \S+ \d+"
                   r"\s+(?P<path>\S.*)$")


@dataclass(frozen=True)
class Mapping:
    """One file mapping of L2 (/proc/PID/maps): [start, end) of `path` from `offset`."""

    start: int
    end: int
    offset: int
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start


def parse_maps(lines: tuple[str, ...] | list[str]) -> tuple[Mapping, ...]:
    out = []
    for line in lines:
        m = _MAPS.match(line.strip())
        if m:
            out.append(Mapping(int(m["start"], 16), int(m["end"], 16), int(m["offset"], 16),
                               m["path"]))
    return tuple(out)


@dataclass(frozen=True)
class ServedDevice:
    bdf: str
    cdev: str                      # the device's VFIO cdev in L1: what the server opened
    socket: str                    # where L2's client reached it
    bars: dict[int, int]           # L1's view: memory BAR index -> size
    #: The server's log lines for DEVICE_GET_REGION_INFO: index, flags, size, fd, offset.
    announced: tuple[dict, ...]
    #: L2 was told not to mmap it (x-no-mmap=on): its BARs go by socket messages.
    no_mmap: bool = False
    #: The server's log lines for REGION_READ/WRITE of the BARs (config space excluded).
    accesses: tuple[dict, ...] = ()

    @property
    def name(self) -> str:
        """How QEMU's trace names the device: by its socket."""
        return f"vfio-user:{self.socket}"


@dataclass(frozen=True)
class VfioUserRun:
    devices: tuple[ServedDevice, ...]
    trace: tuple[TraceRecord, ...]
    maps: tuple[Mapping, ...]      # every file mapping of L2 while it ran


@dataclass(frozen=True)
class VfioUserEvidence:
    run: VfioUserRun
    bar_access: BarAccess | None
    bar2_written: bytes          # what L2 wrote at ivshmem BAR 2 + BAR2_PROBE
    bar2_on_l0: bytes            # what L0's ivshmem file held there afterwards
    dma_pattern: bytes           # put in L2 RAM (staging); edu copies it DMA_TO further
    dma_back: bytes              # what L2 RAM held there afterwards
    problems: tuple[str, ...]    # steps that raised, in their words
    #: edu's DMA from L2 RAM into ivshmem BAR 2 (at p2p_iova, L2's address): what was
    #: copied, what L0's file held there afterwards, and the DMA_MAPs edu's server was
    #: handed (the BAR's among them: with the BAR's dma-buf, or with no fd).
    p2p_pattern: bytes = b""
    p2p_on_l0: bytes = b""
    p2p_iova: int = 0
    engine_maps: tuple[dict, ...] = ()
    ivshmem_backend: str = "vfio-user"  # or the kernel backend it was on, beside edu
    #: Servers that ended while L2 still ran (BDF, how, in L1's words), and what L2's
    #: stderr said about its sockets meanwhile.
    servers_ended: tuple[tuple[str, str], ...] = ()
    l2_said: tuple[str, ...] = ()
    l2_end: str = ""             # how L2 ended, if it died before the harness stopped it
    #: ivshmem (served) unplugged and plugged again: how long QOM took to drop it, the
    #: mappings of its cdev L2 kept after, its server's connection events, and whether a
    #: write at BAR 2 after the replug reached L0's file. None: not played.
    unplug: "ServedUnplug | None" = None
    #: The sizes of the dma-buf fds L2 held while it ran, as the L1 kernel shows them
    #: (fdinfo); None: not asked (L2 was gone).
    l2_dmabufs: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ServedUnplug:
    gone_s: float
    maps_after: tuple[str, ...]
    #: "connected" / "disconnected" / "refused" (it could not open the device), in order
    server_events: tuple[str, ...]
    replugged_reached: bool
