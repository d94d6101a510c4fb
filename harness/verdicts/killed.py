"""The verdict of kill-while-mapped (collect/killed.py), decided from evidence alone.

What the kernel must do when a VMM dies with a BAR's dma-buf mapped (Linux 7.2):
the exiting task's files are released with nothing unmapped first. The IOAS's
area holds its own reference on the dma-buf (iopt_map_file_pages: dma_buf_get),
given back when the IOAS is destroyed with the iommufd context
(iopt_release_pages: dma_buf_put); the device's close cleans its dma-buf list
up (vfio_pci_dma_buf_cleanup), and the last reference frees the dma-buf
(vfio_pci_dma_buf_release). Whatever order the three come in, L2 is gone at
once, L1 holds no VFIO dma-buf or fd, and the device opens again with a live
dma-buf. The kernel's own reports meanwhile are the witness's, as for every
cell. A kernel without VFIO dma-buf maps nothing through one: skipped there.
"""

import dataclasses

from harness.evidence.gathered import Evidence
from harness.evidence.records import IommufdMapFile
from harness.evidence.teardown import Killed
from harness.verdicts.teardown import iommufd_dmabuf_only, left_behind, where
from harness.verdicts.verdict import HUNG, LEFT, Verdict, error_verdict

CHECK = "kill-while-mapped"
KILLED = "was killed by SIGKILL (9)"


def _record(k: Killed) -> dict:
    return {"kill_while_mapped": {
        "device": k.device, "iova": k.iova, "ended": k.ended, "waited_s": k.waited_s,
        "deadline_s": k.deadline_s, "dmabufs_before": [list(s) for s in
                                                       k.mapped.kernel.dmabuf_states],
        "traced": k.traced,
        "maps": [{"event": type(m).__name__, **dataclasses.asdict(m)} for m in k.maps],
        "stuck": k.stuck.record() if k.stuck else None,
        "leftover": k.leftover.record() if k.leftover else None,
        "reopened": k.reopened, "error": k.error}}


def kill_while_mapped(ev: Evidence) -> Verdict:
    skipped = iommufd_dmabuf_only(ev, "nothing is mapped through one")
    if skipped:
        return skipped
    k = ev.teardown.get(CHECK)
    if not isinstance(k, Killed):
        return error_verdict(["no kill of an L2 with a mapped BAR was recorded"])
    evidence = _record(k)
    if k.error:
        return error_verdict([f"kill-while-mapped could not be played: {k.error}"], evidence)
    by_file = [m for m in k.maps if isinstance(m, IommufdMapFile) and m.ret == 0]
    live = sorted(fd for fd, state in k.mapped.kernel.dmabuf_states if state == "live")
    grounds = (f"QEMU's trace: {len(by_file)} IOMMU mapping(s) of BAR 2 at {k.iova:#x} "
               f"through a dma-buf; L1 kernel: {len(live)} live dma-buf(s) in L2 at the kill",)
    if k.ended is None:
        return Verdict("fail", f"L2 did not end within {k.deadline_s:g} s of SIGKILL with "
                               f"BAR 2 of {k.device} mapped: {where(k.stuck)}", evidence,
                       frozenset({HUNG}), grounds)
    if k.traced == 0:
        return error_verdict([f"the L2 of kill-while-mapped wrote no trace: whether BAR 2 of "
                       f"{k.device} was mapped through its dma-buf is unknown"], evidence)
    problems = []
    if not by_file:
        problems.append(f"QEMU traced no successful iommufd_backend_map_file_dma at BAR 2's "
                        f"IOVA {k.iova:#x}: nothing was mapped through a dma-buf when L2 was "
                        f"killed")
    if not live:
        problems.append("the L1 kernel showed no live dma-buf in L2 before the kill")
    if k.ended != KILLED:
        problems.append(f"L2 {k.ended} after SIGKILL")
    left, unknown = left_behind(k.leftover)
    if unknown:
        return error_verdict([f"what L1 held after the kill is unknown: {unknown}"], evidence)
    problems += left
    if k.reopened != "live":
        problems.append(f"{k.device} opened again after the kill: {k.reopened} (expected: "
                        f"live)")
    if problems:
        return Verdict("fail", f"kill-while-mapped on {k.device}: " + "; ".join(problems),
                       evidence, frozenset({LEFT}) if left else frozenset(), grounds)
    return Verdict("pass", f"L2 {KILLED} with BAR 2's dma-buf mapped into its IOAS at "
                           f"{k.iova:#x}: gone {k.waited_s:g} s after the signal; L1 then held "
                           f"no VFIO dma-buf or fd, and {k.device} opened again (a BAR dma-buf "
                           f"live and mapped)", evidence, frozenset(), grounds)
