"""Collect a vfio-user run on one booted L1: the harness's servers for edu and ivshmem (or
ivshmem on vfio-pci beside edu), an L2 that takes the served ones as vfio-user-pci, and
what each witness saw.

The device side is read where QEMU cannot reach it: L0's ivshmem file for what L2 wrote
at BAR 2, edu's liveness register (the device answers the inverse: no file or memory in
between would), the servers' logs for what they announced, the L1 kernel's view of L2's
mappings.
"""

import os
import time
from pathlib import Path

from harness.base.errors import HarnessError
from harness.collect import lifecycle
from harness.collect.stack import L1Stack
from harness.evidence.records import BarAccess, parse_trace
from harness.evidence.vfio_user import (
    ServedDevice,
    ServedUnplug,
    VfioUserEvidence,
    VfioUserRun,
    parse_maps,
)
from harness.l1.vfio import L1Device
from harness.l1.vfio_user import VfioUserServers
from harness.l2.backends import VFIO_USER, VFIO_USER_SOCKETS, Backend
from harness.l2.dma_engine import EduEngine
from harness.l2.pci import PciConfig
from harness.l2.qemu import (
    L1_QMP_PORT,
    L1_QTEST_PORT,
    TRACE_EVENTS,
    L2Device,
    L2Died,
    L2Qemu,
    L2Spec,
)

BAR2_PROBE = 0x3000     # where in ivshmem BAR 2 L2's write lands (read back on L0)
P2P_PROBE = 0x5000      # where in ivshmem BAR 2 edu's DMA writes
REPLUG_PROBE = 0x7000   # where L2 writes once ivshmem is plugged again
DMA_TO = 0x1000        # past the platform's staging address in L2's RAM: edu writes there
PROBE_SIZE = 64
CONFIG_REGION = 7       # VFIO_PCI_CONFIG_REGION_INDEX: config space, always by message


def served_spec(stack: L1Stack, edu: str, ivshmem: str, qemu: str | None = None,
                ivshmem_on: Backend | None = None) -> L2Spec:
    """The L2 of a vfio-user run (and of `shell` in a vfio-user cell): edu on its server's
    socket, ivshmem on its own or, with `ivshmem_on`, as vfio-pci on that kernel backend,
    behind the root port it is unplugged from."""
    return L2Spec(VFIO_USER, (L2Device(edu), L2Device(
        ivshmem, f"id={lifecycle.IVSHMEM_ID},bus={lifecycle.ROOT_PORT}", backend=ivshmem_on)),
                  root_ports=(lifecycle.ROOT_PORT,), qemu=qemu or stack.platform.l2_qemu,
                  traces=TRACE_EVENTS + ("vfio_user_*",), platform=stack.platform)


def collect(stack: L1Stack, devices: dict[str, L1Device], out: Path,
            server: Path | None = None, qemu: str | None = None,
            ivshmem_on: Backend | None = None, edu_no_mmap: bool = False
            ) -> VfioUserEvidence:
    """`devices`: "edu" and "ivshmem", bound to vfio-pci in L1; `server`: a script to run
    in place of the harness's server (an adversary), which may import it; `ivshmem_on`: a
    kernel backend to give ivshmem to as vfio-pci (edu's P2P then reaches a vfio-pci BAR)
    instead of serving it too; `edu_no_mmap`: edu's server announces no region
    mmappable, so its BAR is reached by REGION_READ/WRITE messages (the mmap fallback of
    this path)."""
    edu, ivshmem = devices["edu"], devices["ivshmem"]
    served_devices = (edu,) if ivshmem_on else (edu, ivshmem)
    bdfs = tuple(d.bdf for d in served_devices)
    spec = served_spec(stack, edu.bdf, ivshmem.bdf, qemu, ivshmem_on)
    m = stack.machine
    problems: list[str] = []
    access = None
    written, pattern, p2p = (os.urandom(PROBE_SIZE) for _ in range(3))
    on_l0 = back = p2p_on_l0 = b""
    p2p_iova = 0
    maps: list[str] = []
    ended: dict[str, str] = {}
    died = ""
    unplugged = None
    dmabufs: tuple[int, ...] | None = None
    m.write_ivshmem(BAR2_PROBE, bytes(PROBE_SIZE))
    m.write_ivshmem(P2P_PROBE, bytes(PROBE_SIZE))
    ram = spec.platform.l2.staging  # edu reads from here and writes to ram + DMA_TO
    with VfioUserServers(stack.session, stack.vfio, bdfs, VFIO_USER_SOCKETS, out / "servers",
                         server=server, no_mmap=(edu.bdf,) if edu_no_mmap else ()
                         ) as servers:
        with L2Qemu(stack.session, spec, out, m.host_ports[L1_QMP_PORT],
                    m.host_ports[L1_QTEST_PORT], start_timeout=20,
                    watch=stack.vfio) as l2:
            try:
                pci = PciConfig(l2.qtest, spec.platform.l2)
                edu_slot = pci.find(edu.vendor_device)
                iv_slot = pci.find(ivshmem.vendor_device)
                edu_placed = pci.place(edu_slot)
                bar0 = edu_placed[0][1]
                iv_placed = pci.place(iv_slot)
                iv = {i: address for i, (_, address) in iv_placed.items()}
                pci.enable(edu_slot)
                pci.enable(iv_slot, master=False)
                engine = EduEngine(l2.qtest, bar0)
                read = engine.liveness(0x5A5AA5A5)
                l2.qtest.writel(iv[0], 0xFFFF)
                access = BarAccess(engine.identity(), 0x5A5AA5A5, read, 0xFFFF,
                                   l2.qtest.readl(iv[0]))
                l2.qtest.write(iv[2] + BAR2_PROBE, written)
                on_l0 = m.read_ivshmem(BAR2_PROBE, PROBE_SIZE)
                l2.qtest.write(ram, pattern)
                engine.read_into_device(ram, PROBE_SIZE)
                engine.write_from_device(ram + DMA_TO, PROBE_SIZE)
                back = l2.qtest.read(ram + DMA_TO, PROBE_SIZE)
                p2p_iova = iv[2] + P2P_PROBE
                l2.qtest.write(ram, p2p)
                engine.read_into_device(ram, PROBE_SIZE)
                engine.write_from_device(p2p_iova, PROBE_SIZE)
                p2p_on_l0 = m.read_ivshmem(P2P_PROBE, PROBE_SIZE)
                if ivshmem_on is None:
                    unplugged, failed = _unplug(stack, l2, servers, lifecycle.Programmed(
                        pci, edu_slot, edu_placed[0][0], bar0, iv_slot, iv_placed,
                        ivshmem.bdf, spec.devices[1]), ivshmem)
                    if failed is not None:  # what the unplug showed is kept all the same
                        raise failed
            except HarnessError as e:  # a dead L2 is named with how it ended
                explained = l2.explain(e)
                problems.append(f"{explained.stage}: {explained.message}")
                died = explained.end if isinstance(explained, L2Died) else ""
            ended = servers.ended()  # while L2 runs: a server gone now died under it
            if not died and l2.pid is not None:
                dmabufs = tuple(d.size for d in stack.vfio.process(l2.pid).dmabufs)
            maps = stack.session.run(f"cat /proc/{l2.pid}/maps", check=False,
                                     stage="L2 mappings").stdout.splitlines()
            (out / "l2-maps.txt").write_text("".join(f"{line}\n" for line in maps))
    logs = servers.final_logs
    trace = tuple(parse_trace((out / "l2-trace.log").read_text()))
    served = tuple(
        ServedDevice(d.bdf, d.cdev or "", f"{VFIO_USER_SOCKETS}/{d.bdf}.sock",
                     {b.index: b.size for b in d.bars if b.mem},
                     tuple(e for e in logs[d.bdf]
                           if e.get("command") == "DEVICE_GET_REGION_INFO"),
                     edu_no_mmap and d is edu,
                     tuple(e for e in logs[d.bdf] if e.get("command") in (
                         "REGION_READ", "REGION_WRITE") and e.get("region") != CONFIG_REGION))
        for d in served_devices)
    engine_maps = tuple(e for e in logs[edu.bdf] if e.get("command") == "DMA_MAP")
    stderr = (out / "l2-stderr.log").read_text().splitlines()
    said = tuple(line for line in stderr if "vfio_user" in line or "vfio-user" in line
                 or "socket" in line or "read header" in line) + (
        tuple(stderr[-3:]) if died else ())  # how a dead L2 ended, in its own words
    return VfioUserEvidence(VfioUserRun(served, trace, parse_maps(maps)), access, written,
                            on_l0, pattern, back, tuple(problems), p2p, p2p_on_l0, p2p_iova,
                            engine_maps, ivshmem_on.name if ivshmem_on else VFIO_USER.name,
                            tuple(sorted(ended.items())), said, died, unplugged, dmabufs)


def _unplug(stack: L1Stack, l2: L2Qemu, servers: VfioUserServers,
            programmed: lifecycle.Programmed, ivshmem: L1Device
            ) -> tuple[ServedUnplug, HarnessError | None]:
    """ivshmem unplugged (device_del, completed as a guest would) and plugged again on
    the same socket: its server must see the client go and come back, L2 must drop every
    mapping of the device, and BAR 2 must reach the device again. A replug that fails
    comes back beside what the unplug showed (the mappings L2 kept are why, at times)."""
    assert l2.pid is not None
    held = len(stack.vfio.process(l2.pid).vfio_device_fds)
    began = time.monotonic()
    lifecycle.unplug_ivshmem(stack, l2, programmed, held)
    gone = time.monotonic() - began
    after = tuple(line for line in stack.vfio.process(l2.pid).vfio_maps
                  if ivshmem.cdev and line.endswith(ivshmem.cdev))
    failed, reached = None, False
    try:
        lifecycle.replug(l2, programmed)
        pattern = os.urandom(PROBE_SIZE)
        stack.machine.write_ivshmem(REPLUG_PROBE, bytes(PROBE_SIZE))
        l2.qtest.write(programmed.ivshmem_bars[2][1] + REPLUG_PROBE, pattern)
        reached = stack.machine.read_ivshmem(REPLUG_PROBE, PROBE_SIZE) == pattern
    except HarnessError as e:
        failed = e
    events = tuple(e["event"] for e in servers.logs()[ivshmem.bdf]
                   if e.get("event") in ("connected", "disconnected", "refused"))
    return ServedUnplug(round(gone, 3), after, events, reached), failed
