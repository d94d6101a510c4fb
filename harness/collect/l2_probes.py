"""What the harness does through a running L2 to test its devices, and what it reads back.

BAR access, a P2P transfer proven by the bytes L0 reads from the ivshmem file, a DMA
that must not get through, and the L1 kernel's view of the L2 process. The
creation-time collection (scenario.py) and the lifecycle steps (lifecycle.py) use
the same probes, so a lifecycle step's P2P is judged exactly as the creation-time one.
"""

import random
import re
from collections.abc import Callable

from harness.base.errors import HarnessError
from harness.collect.stack import L1Stack
from harness.evidence.records import (
    BarAccess,
    BlockedDma,
    DecodeStep,
    KernelProcess,
    P2PRead,
    P2PTransfer,
)
from harness.l1.vfio import ProcessView
from harness.l2.dma_engine import DmaEngine, EduEngine
from harness.l2.pci import PciConfig
from harness.l2.qemu import L2Qemu

P2P_SIZE = 64
IVSHMEM_INTRMASK = 0x0


def enable_witnessed(stack: L1Stack, l2: L2Qemu, pci: PciConfig,
                     devices: list[tuple[int, str, bool]]) -> tuple[DecodeStep, ...]:
    """Memory decode (and bus mastering, where asked) on for each device in turn, as a
    driver would, with the L1 kernel asked about L2's dma-bufs and the devices' command
    registers before the first and after each: the witness that ties each dma-buf to its
    own device. `devices`: (L2 slot, L1 BDF, bus master). One L1 round trip per view."""
    bdfs = tuple(bdf for _, bdf, _ in devices)
    pid = l2.pid
    if pid is None:
        raise HarnessError("L2 has no pid: no kernel view", stage="L2 decode witness")

    def view() -> DecodeStep:
        answer = stack.vfio.process(pid, devices=bdfs)
        return DecodeStep(kernel_process(answer), dict(answer.commands))

    steps = [view()]
    for slot, _, master in devices:
        pci.enable(slot, master=master)
        steps.append(view())
    return tuple(steps)


def kernel_process(view: ProcessView) -> KernelProcess:
    return KernelProcess(tuple((d.fd, d.size, d.exp_name) for d in view.dmabufs), view.vfio_maps,
                         tuple((d.fd, d.ino) for d in view.dmabufs),
                         tuple((d.fd, d.state) for d in view.dmabufs), view.fd_count,
                         view.vfio_device_fds)


_MTREE_MMAP = re.compile(r"\(prio -?\d+, \w+\): (.+ mmaps\[\d+\])$", re.MULTILINE)


def mtree(l2: L2Qemu) -> tuple[str, ...]:
    """The BAR mmaps mapped in L2's memory tree (`info mtree`, also kept as an artifact)."""
    text = str(l2.qmp.cmd("human-monitor-command", **{"command-line": "info mtree"}))
    text = text.replace("\r\n", "\n")  # HMP answers with CRLF
    (l2.artifacts / "l2-mtree.txt").write_text(text)
    return mtree_mmaps(text)


def mtree_mmaps(text: str) -> tuple[str, ...]:
    """Names of the "... mmaps[N]" regions in `info mtree`: a BAR's mmaps, mapped in L2."""
    return tuple(sorted({m.group(1) for m in _MTREE_MMAP.finditer(text)}))


def bar_access(l2: L2Qemu, edu: EduEngine, ivshmem_bar0: int) -> BarAccess:
    written = 0x5A5AA5A5
    read = edu.liveness(written)
    mask = 0x0000FFFF
    l2.qtest.writel(ivshmem_bar0 + IVSHMEM_INTRMASK, mask)
    return BarAccess(edu_id=edu.identity(), liveness_written=written, liveness_read=read,
                     ivshmem_bar0_written=mask,
                     ivshmem_bar0_read=l2.qtest.readl(ivshmem_bar0 + IVSHMEM_INTRMASK))


def _watched(stack: L1Stack, dst: int,
             dma: Callable[[], str | None]) -> tuple[bytes, bytes, tuple[str, ...], str | None]:
    """Run `dma` with BAR 2 + dst cleared from L0 first: (the destination before, after,
    what L1's kernel logged meanwhile, why no DMA ran if none did)."""
    machine = stack.machine
    machine.write_ivshmem(dst, bytes(P2P_SIZE))     # a clean destination, from L0
    before = machine.read_ivshmem(dst, P2P_SIZE)
    mark = stack.witness.now()
    engine_error = dma()
    after = machine.read_ivshmem(dst, P2P_SIZE)
    return before, after, stack.witness.since(mark), engine_error


def p2p(stack: L1Stack, l2: L2Qemu, edu: DmaEngine, bar2: int, seed: int, key: str,
        dst: int) -> P2PTransfer:
    """edu copies a pattern (seeded by `seed` and `key`) from ivshmem BAR 2 to BAR 2 + dst."""
    machine = stack.machine
    pattern = random.Random(f"{seed}/{key}").randbytes(P2P_SIZE)
    src = 0x0
    # Both ends cleared from L0 first: bytes an earlier L2 left in the file can
    # never stand in for this transfer's (a re-run with the same seed writes the same).
    machine.write_ivshmem(src, bytes(P2P_SIZE))
    l2.qtest.write(bar2 + src, pattern)              # through L2's mmap of the BAR
    source_in_file = machine.read_ivshmem(src, P2P_SIZE)

    def copy() -> str | None:
        try:
            edu.probe()
        except HarnessError as e:  # edu's BAR does not answer: no DMA, and the verdict says so
            return e.message
        edu.read_into_device(bar2 + src, P2P_SIZE)
        edu.write_from_device(bar2 + dst, P2P_SIZE)
        return None

    before, after, dmesg, engine_error = _watched(stack, dst, copy)
    return P2PTransfer(seed=seed, size=P2P_SIZE, bar2_iova=bar2, src_offset=src,
                       dst_offset=dst, pattern=pattern, source_in_file=source_in_file,
                       before=before, after=after, l1_dmesg=dmesg, engine_error=engine_error)


def stage_pattern(l2: L2Qemu, edu: DmaEngine, seed: int, key: str) -> tuple[bytes, str | None]:
    """Load edu's buffer with a pattern from L2's RAM, ready for a DMA that must be blocked;
    with why not, if edu does not answer through its BAR (then nothing is started)."""
    pattern = random.Random(f"{seed}/{key}/blocked").randbytes(P2P_SIZE)
    try:
        edu.probe()
    except HarnessError as e:
        return pattern, e.message
    staging = l2.spec.platform.l2.staging  # in L2's RAM: mapped whatever befalls the BARs
    l2.qtest.write(staging, pattern)
    edu.read_into_device(staging, P2P_SIZE)
    return pattern, None


def blocked_dma(stack: L1Stack, edu: DmaEngine, staged: tuple[bytes, str | None], iova: int,
                dst: int) -> BlockedDma:
    """edu writes its staged pattern to `iova` (BAR 2 + dst while the BAR is away)."""
    pattern, staging_error = staged

    def write() -> str | None:
        if staging_error is not None:
            return staging_error
        try:
            edu.write_from_device(iova, P2P_SIZE)
        except HarnessError as e:
            return e.message
        return None

    before, after, dmesg, engine_error = _watched(stack, dst, write)
    return BlockedDma(iova=iova, dst_offset=dst, pattern=pattern, before=before, after=after,
                      l1_dmesg=dmesg, engine_error=engine_error)


def p2p_read(stack: L1Stack, l2: L2Qemu, edu: DmaEngine, iova: int, size: int,
             expected: bytes | None = None) -> P2PRead:
    """edu reads `size` bytes of a BAR by DMA into its buffer (loaded with other bytes
    first) and writes them to a cleared place in L2's RAM; compared with what L2 reads
    there through the BAR's mmap (or `expected`, read earlier, while the BAR is away).
    Meant for registers that read the same twice."""
    if expected is None:
        expected = l2.qtest.read(iova, size)
    decoy = bytes(b ^ 0xFF for b in expected) if any(expected) else b"\xa5" * size
    staging = l2.spec.platform.l2.staging
    mark = stack.witness.now()
    error = None
    try:
        edu.probe()
        l2.qtest.write(staging, decoy)
        edu.read_into_device(staging, size)        # edu's buffer: not the expected bytes
        l2.qtest.write(staging, bytes(size))       # a clean destination
        edu.read_into_device(iova, size)           # the P2P read
        edu.write_from_device(staging, size)
    except HarnessError as e:  # edu does not answer, or its DMA never ends
        error = e.message
    got = l2.qtest.read(staging, size)
    return P2PRead(iova, expected, got, stack.witness.since(mark), error)
