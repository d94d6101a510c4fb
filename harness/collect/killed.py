"""kill-while-mapped: an L2 SIGKILLed while its IOAS maps a BAR through the BAR's dma-buf.

A VMM that crashes or is killed does not unmap anything: the kernel releases
its files as the task exits, the IOAS (whose area holds its own reference on
the dma-buf, IOMMU_IOAS_MAP_FILE), the device (whose close cleans its dma-buf
list up) and the dma-buf fds, in an order the process does not choose. The
main L2 ends by quitting (quit-while-revoked), so this needs an L2 of its own:
ivshmem alone, BAR 2 placed and decoding, which QEMU's memory listener maps
into the IOAS as it does for P2P. Nothing here judges.
"""

import time
from pathlib import Path

from harness.base import files
from harness.base.errors import HarnessError
from harness.collect.lifecycle import IVSHMEM_ID, moment_of
from harness.collect.stack import L1Stack
from harness.collect.teardown import ended_status
from harness.evidence.records import IommufdMap, IommufdMapFile, parse_trace
from harness.evidence.teardown import Killed
from harness.l2.pci import PciConfig
from harness.l2.qemu import L2Device, L2Qemu, L2Spec
from harness.platforms import IvshmemDevice

#: From SIGKILL to L2 gone: well under a second here; a release that blocks is a hang.
KILL_DEADLINE_S = 30.0
BAR = 2


def kill_while_mapped(stack: L1Stack, base: L2Spec, bdf: str, out: Path,
                      ports: tuple[int, int], deadline_s: float = KILL_DEADLINE_S) -> Killed:
    """`base`: the backend's main L2 spec (its QEMU, backend, trace events); `bdf`: ivshmem
    in L1, which no L2 holds now."""
    spec = L2Spec(base.backend, (L2Device(bdf, f"id={IVSHMEM_ID}"),), qemu=base.qemu,
                  traces=base.traces, platform=base.platform)
    l2 = L2Qemu(stack.session, spec, out, *ports, watch=stack.vfio)
    l2.start()
    assert l2.pid is not None
    gone = False
    try:
        pci = PciConfig(l2.qtest, spec.platform.l2)
        slot = pci.find(IvshmemDevice().vendor_device)
        iova = pci.place(slot)[BAR][1]
        pci.set_memory(slot, True)  # the listener maps the BAR into the IOAS, now
        mapped = moment_of(stack, l2, (bdf,), "BAR 2 mapped, before the kill")
        exporters = mapped.kernel.exporters
        began = time.monotonic()
        stack.session.run(f"kill -KILL {l2.pid}", stage="kill-while-mapped")
        gone, _ = stack.vfio.wait_gone(l2.pid, deadline_s)
        waited = round(time.monotonic() - began, 3)
        if not gone:  # a task that no signal ends holds the device: asking it would hang
            return Killed("kill-while-mapped", bdf, iova, mapped, None, waited, deadline_s,
                          stuck=stack.vfio.stuck(l2.pid))
        ended = ended_status(l2)
    except HarnessError as e:
        raise l2.explain(e) from None
    finally:
        l2.stop(timeout=1.0, graceful=False) if not gone else l2.stop()
    trace = parse_trace(files.read(out / "l2-trace.log"))
    maps = tuple(r for r in trace
                 if isinstance(r, IommufdMapFile | IommufdMap) and r.iova == iova)
    return Killed("kill-while-mapped", bdf, iova, mapped, ended, waited, deadline_s, maps,
                  traced=len(trace), leftover=stack.vfio.leftover(exporters),
                  reopened=stack.vfio.reopen([bdf])[bdf])
