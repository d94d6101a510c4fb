"""The second L2 of a backend: the devices as the main L2 must not have them.

- edu with x-no-mmap=on: the dmabuf-per-region check's proof that a region
  QEMU does not mmap gets no dma-buf;
- nvme, whose MSI-X table sits inside BAR 0 between the registers and the PBA,
  with the msix-split fixture preloaded (this L2 only), so that QEMU, not
  allowed to map the table, mmaps BAR 0 in two pieces and asks for one dma-buf
  of two ranges: the multi-range check. edu reads the first piece (nvme's CAP
  and VS registers: never zero) by DMA, through the IOMMU mapping of that
  dma-buf, or of the address on the legacy container.

One L2 for both, because an L2 start and stop is the dearest thing a backend
repeats. Nothing here judges; see verdicts.dmabuf_per_region and
verdicts.multi_range.
"""

from pathlib import Path

from harness.base import files
from harness.base.errors import HarnessError
from harness.collect import l2_probes, msix_split
from harness.collect.stack import L1Stack
from harness.evidence.records import L2Run, SideRun, parse_messages, parse_trace
from harness.l2.dma_engine import EduEngine
from harness.l2.pci import PciConfig
from harness.l2.qemu import L2Device, L2Qemu, L2Spec
from harness.platforms import EduDevice, NvmeDevice

#: The checks that read this L2.
CHECKS = ("dmabuf-per-region", "multi-range")
BAR = 0
#: nvme's CAP (8 bytes) and VS (4) registers and 4 reserved bytes: read-only, never all zero.
READ_SIZE = 16


def collect(stack: L1Stack, base: L2Spec, devices: dict[str, str],
            bars: dict[str, dict[int, int]], out: Path, ports: tuple[int, int]) -> SideRun:
    """`devices`: edu and nvme (BDFs in L1); `base`: the backend's main L2 spec, whose QEMU,
    backend and trace events this L2 shares."""
    fixture = msix_split.install(stack)
    spec = L2Spec(base.backend, (L2Device(devices["edu"], "id=edu,x-no-mmap=on"),
                                 L2Device(devices["nvme"], "id=nvme")),
                  qemu=base.qemu, traces=base.traces, preload=(fixture,),
                  platform=base.platform)
    with L2Qemu(stack.session, spec, out, *ports, watch=stack.vfio) as l2:
        try:
            pci = PciConfig(l2.qtest, l2.spec.platform.l2)
            edu_slot = pci.find(EduDevice().vendor_device)
            nvme_slot = pci.find(NvmeDevice().vendor_device)
            edu_bar0 = pci.place(edu_slot)[0][1]
            iova = pci.place(nvme_slot)[BAR][1]
            steps = l2_probes.enable_witnessed(
                stack, l2, pci, [(edu_slot, devices["edu"], True),
                                 (nvme_slot, devices["nvme"], False)])
            process = steps[-1].kernel
            mtree = l2_probes.mtree(l2)
            read = l2_probes.p2p_read(stack, l2, EduEngine(l2.qtest, edu_bar0), iova,
                                      READ_SIZE)
            alive = l2.running()
        except HarnessError as e:
            raise l2.explain(e) from None
    stderr = files.read(out / "l2-stderr.log")
    run = L2Run(tuple(parse_trace(files.read(out / "l2-trace.log"))),
                tuple(parse_messages(stderr)), process, mtree, alive, steps)
    return SideRun(devices=devices, bars={b: bars.get(b, {}) for b in devices.values()},
                      device=devices["nvme"], bar=BAR, iova=iova, run=run,
                      withheld=msix_split.withheld(stderr), read=read)
