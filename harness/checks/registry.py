"""The checks: one record each, and the registry every other part reads.

A check is everything the harness knows about one thing it proves: where it
runs (the main L2 at creation, a lifecycle step on it, or the side L2), which
collection steps it needs, the verdict that judges its evidence, what is
expected of it on each kernel and backend and why, the source files it
exercises, and where its P2P transfer writes. The matrix, the runner, the
scenarios, the pytest markers, the report, compare and the avocado variants all
read this registry; none names a check of its own. A new check is one
`register` call (and its collector and verdict).

Collectors of lifecycle steps are named by dotted path, resolved when a run
needs them: the registry is read by the CLI before anything boots, and must not
pull in the L1-facing modules (paramiko) to be read.
"""

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.evidence.gathered import Evidence
from harness.l2.backends import KERNEL_NAMES, NAMES
from harness.verdicts.creation import mmap_fallback, multi_range
from harness.verdicts.killed import kill_while_mapped
from harness.verdicts.lifecycle import decode_toggle, dmabuf_unplug, reset, reset_while_revoked
from harness.verdicts.p2p import p2p_dma
from harness.verdicts.teardown import (
    dmabuf_closed_before_unmap,
    quit_while_revoked,
    unplug_while_revoked,
)
from harness.verdicts.verdict import FINDINGS, Verdict
from harness.verdicts.vfio_user import dmabuf_per_region_any, vfio_user_p2p, vfio_user_regions

BACKENDS = NAMES
#: Where QEMU opens the device in the L1 kernel itself: most checks' cells are there.
KERNEL = KERNEL_NAMES

#: Where a check's evidence comes from, in the order a backend's L2s run them: END is how
#: the main L2 ends (one such check per L2: it ends the L2); ALONE runs in L1 with no L2
#: at all, between the main L2 and the side one; OWN starts an L2 of its own (with the
#: one device it plays on) once the main L2 has ended: a second way for an L2 to end.
CREATION, LIFECYCLE, LAST, END, ALONE, OWN, SIDE = ("creation", "lifecycle", "last", "end",
                                                    "alone", "own", "side")
PHASES = (CREATION, LIFECYCLE, LAST, END, ALONE, OWN, SIDE)

#: Files every check runs, whatever it is (QEMU's VFIO core and the kernel's VFIO dma-buf).
EVERY_CHECK_RUNS = (
    ("hw/vfio/region.c", "*"), ("hw/vfio/trace-events", "*"), ("hw/vfio/pci.c", "*"),
    ("hw/vfio/device.c", "*"), ("hw/vfio/listener.c", "*"), ("hw/vfio/iommufd.c", "iommufd"),
    ("drivers/vfio/pci/vfio_pci_dmabuf.c", "*"), ("drivers/vfio/pci/vfio_pci_core.c", "*"),
    ("drivers/vfio/device_cdev.c", "iommufd"), ("drivers/vfio/group.c", "legacy"),
    ("drivers/iommu/iommufd/", "iommufd"))


@dataclass(frozen=True)
class Expectation:
    outcome: str                      # pass | xfail | skip
    signature: tuple[str, ...] = ()   # findings the xfail or skip must show
    why: str = ""

    def describe(self) -> str:
        if not self.signature:
            return self.outcome
        return f"{self.outcome} ({'; '.join(FINDINGS[s] for s in self.signature)})"


_ENTRY = re.compile(r"^(?P<outcome>pass|xfail|skip)(?:\[(?P<signature>[a-z0-9,-]+)\])?$")


def expectation(entry: str, why: str = "") -> Expectation:
    """`pass`, `skip[finding,...]` or `xfail[finding,...]`, checked against FINDINGS."""
    m = _ENTRY.match(entry)
    if not m:
        raise ValueError(f"bad expectation {entry!r}")
    signature = tuple(m.group("signature").split(",")) if m.group("signature") else ()
    unknown = [s for s in signature if s not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown} in {entry!r}")
    if (m.group("outcome") == "pass") != (not signature):
        raise ValueError(f"pass takes no signature, xfail and skip need one: {entry!r}")
    return Expectation(m.group("outcome"), signature, why)


@dataclass(frozen=True)
class Check:
    name: str
    summary: str                       # one line: the marker's description
    phase: str                         # CREATION | LIFECYCLE | LAST | END | ALONE | SIDE
    verdict: Callable[[Evidence], Verdict]
    #: kernel -> backend -> entry, e.g. {"legacy": "pass", "iommufd": "xfail[...]"}: every
    #: backend of `backends` named, so that a backend added to them fails registration
    #: until the check says what is expected of it (none inherits another's expectations)
    expected: dict[str, dict[str, str]]
    why: dict[tuple[str, str], str] = field(default_factory=dict)  # (kernel, backend) -> why
    #: Collection steps of the main L2 it needs besides the L2 itself (bar_access, p2p).
    needs: tuple[str, ...] = ()
    #: The timed collection step whose time is this cell's alone (else only shared time).
    own_step: str | None = None
    #: LIFECYCLE, LAST and END: "module:function" that plays the step on a running L2;
    #: ALONE: one that plays it in L1 on a device no L2 holds; OWN: one that starts the L2
    #: it plays on.
    collector: str | None = None
    #: Which ivshmem BAR 2 slot its P2P transfer writes to (apart from every other's).
    p2p_slot: int | None = None
    #: (path prefix in QEMU or the kernel, "*" | backend) of the code it runs beyond
    #: EVERY_CHECK_RUNS.
    exercises: tuple[tuple[str, str], ...] = ()
    #: The one backend whose cells play its step (the others' are skipped by its verdict):
    #: a check of the kernel alone need not run once per backend.
    only_backend: str | None = None
    #: Its step is played only where the kernel has VFIO dma-buf (elsewhere its verdict
    #: skips on the kernel's own probe): a step that costs an L2 of its own.
    needs_dmabuf: bool = False
    #: The backends it has cells on, each named in `expected`: a check whose meaning does
    #: not carry over to a backend has no cell there (rather than a skip in every run).
    backends: tuple[str, ...] = KERNEL

    @property
    def marker(self) -> str:
        return self.name.replace("-", "_")

    def expectations(self) -> dict[tuple[str, str], Expectation]:
        """(kernel, backend) -> what is expected, with its why."""
        out = {}
        for kernel, entries in self.expected.items():
            if set(entries) != set(self.backends):
                raise ValueError(f"check {self.name}, kernel {kernel}: expectations for "
                                 f"{', '.join(sorted(entries))}, not for every backend "
                                 f"it has cells on ({', '.join(self.backends)})")
            for backend in self.backends:
                out[(kernel, backend)] = expectation(entries[backend],
                                                     self.why.get((kernel, backend), ""))
        return out

    def stands_on(self, step: str) -> bool:
        """Whether this check's cell stood on a collection step: its own step, and every
        step that is no check's own (starting L2, placing the BARs, the decode witness,
        stopping L2: what every cell of the backend shares)."""
        return step == self.own_step or step not in {c.own_step for c in REGISTRY.values()}

    def step(self) -> Callable:
        """The collector, imported now (only a run that plays the step needs it)."""
        if self.collector is None:
            raise ValueError(f"check {self.name} has no collector")
        module, _, function = self.collector.partition(":")
        return getattr(importlib.import_module(module), function)

    def p2p_destination(self, backend: str) -> int:
        """Where in ivshmem BAR 2 its transfer writes (its blocked DMA: + 0x800): a place
        of its own per backend, so that no check is credited with another's bytes."""
        if self.p2p_slot is None:
            raise ValueError(f"check {self.name} makes no P2P transfer")
        per_slot = 0x1000 * len(self.backends)
        return 0x1000 + per_slot * self.p2p_slot + 0x1000 * self.backends.index(backend)


REGISTRY: dict[str, Check] = {}
#: (check, kernel, backend) -> what is expected: every registered check's, kept in step.
EXPECTATIONS: dict[tuple[str, str, str], Expectation] = {}
#: (path prefix, checks, backends): which cells run which source files.
EXERCISES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []


def register(check: Check) -> Check:
    """Add a check: from here on it is in the matrix, the markers, the report and compare."""
    if check.name in REGISTRY:
        raise ValueError(f"check {check.name} is registered twice")
    if check.phase not in PHASES:
        raise ValueError(f"check {check.name}: unknown phase {check.phase!r}")
    expected = check.expectations()  # a bad entry fails here, not at a cell
    REGISTRY[check.name] = check
    EXPECTATIONS.update({(check.name, k, b): e for (k, b), e in expected.items()})
    every = [(p, b) for p, b in EVERY_CHECK_RUNS  # a check with no QEMU runs only the kernel's
             if check.phase != ALONE or p.startswith("drivers/")]
    for prefix, backend in (*every, *check.exercises):
        if backend not in ("*", *check.backends):  # a file of a backend it has no cell on
            continue
        EXERCISES.append((prefix, (check.name,),
                          check.backends if backend == "*" else (backend,)))
    return check


def unregister(name: str) -> None:
    """Take a check out again (a test's toy check)."""
    REGISTRY.pop(name)
    for key in [k for k in EXPECTATIONS if k[0] == name]:
        del EXPECTATIONS[key]
    EXERCISES[:] = [row for row in EXERCISES if row[1] != (name,)]


def names() -> tuple[str, ...]:
    """Every check, in the order a backend's L2s run them."""
    return tuple(c.name for c in ordered(REGISTRY.values()))


def ordered(checks) -> list[Check]:
    return sorted(checks, key=lambda c: PHASES.index(c.phase))  # stable: registration order


def get(name: str) -> Check:
    return REGISTRY[name]


def in_phase(phase: str, wanted: set[str] | None = None) -> list[Check]:
    return [c for c in ordered(REGISTRY.values())
            if c.phase == phase and (wanted is None or c.name in wanted)]


def needed_steps(wanted: set[str]) -> set[str]:
    """The collection steps the wanted checks need, beyond their own phases."""
    return {s for name in wanted for s in REGISTRY[name].needs}


@dataclass(frozen=True)
class Collection:
    """What one backend's L2s do for a set of wanted checks, and nothing more: the main L2
    always starts, programs the BARs and runs the decode witness; after that only the
    steps the checks need (`creation`), their lifecycle steps in run order, the one that
    leaves a device plugged afresh (`last`), the one that ends the L2 (`end`; else a plain
    quit), and the side L2 if a check reads it."""

    creation: frozenset[str]
    lifecycle: tuple[Check, ...]
    last: tuple[Check, ...]
    side: bool
    end: Check | None = None
    alone: tuple[Check, ...] = ()
    own: tuple[Check, ...] = ()


def collection(wanted: set[str]) -> Collection:
    ending = in_phase(END, wanted)
    if len(ending) > 1:  # an L2 ends once: a second way needs an L2 of its own
        raise ValueError(f"checks {', '.join(c.name for c in ending)} would each end the "
                         f"same L2")
    return Collection(frozenset(needed_steps(wanted)), tuple(in_phase(LIFECYCLE, wanted)),
                      tuple(in_phase(LAST, wanted)), bool(in_phase(SIDE, wanted)),
                      ending[0] if ending else None, tuple(in_phase(ALONE, wanted)),
                      tuple(in_phase(OWN, wanted)))


def still_unmapped(once: str) -> str:
    """Why iommufd's P2P after a step fails on a kernel without VFIO dma-buf, as it did at
    creation: `once` says when the BAR was back."""
    return (f"{once}, iommufd still cannot map BAR 2 without a dma-buf: the P2P after the "
            f"step fails as at creation")


QEMU_KEEPS_DMABUF = (
    "QEMU 11.1.3 hands each BAR's dma-buf fd to the mmap's RAMBlock (ram_block->fd, "
    "hw/vfio/region.c) and nothing closes it: an unplugged device's dma-buf stays open in "
    "L2, one more per unplug (seen: 5 cycles, 5 dma-buf fds left, L2's fds 26 -> 31)")

#: dmabuf-per-region where the regions are served: what it means there, as measured.
SERVED_NO_DMABUF = (
    "a served region is the server's, reached through the fd it passes: no kernel exporter "
    "stands behind it in L2, QEMU 11.1.3 makes no dma-buf for it (no vfio_region_dmabuf), "
    "and L2 holds only the dma-bufs of the vfio-pci BAR beside it; the cell proves that "
    "and skips saying so")

register(Check(
    "dmabuf-per-region", "one dma-buf per mmapped BAR, each its own", SIDE,
    dmabuf_per_region_any,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass", "vfio-user": "skip[served-no-dmabuf]"},
     "no-dmabuf": {"legacy": "skip[kernel-lacks-dmabuf]",
                   "iommufd": "skip[kernel-lacks-dmabuf]",
                   "vfio-user": "skip[served-no-dmabuf]"}},
    {("no-dmabuf", b): "the kernel has no VFIO dma-buf, so there is nothing to check"
     for b in KERNEL} | {(k, "vfio-user"): SERVED_NO_DMABUF for k in ("dmabuf", "no-dmabuf")},
    own_step="side_l2", backends=BACKENDS,
    exercises=(("backends/iommufd.c", "iommufd"), ("drivers/pci/p2pdma.c", "*"),
               ("drivers/dma-buf/", "*"))))
register(Check(
    "mmap-fallback", "the plain mmap where there is no dma-buf", CREATION, mmap_fallback,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "pass"}},
    needs=("bar_access",),
    exercises=(("hw/vfio/container", "legacy"), ("system/memory.c", "*"),
               ("drivers/vfio/pci/vfio_pci_rdwr.c", "*"))))
register(Check(
    "p2p-dma", "edu copies between ivshmem BAR 2 and itself by DMA", CREATION, p2p_dma,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,bytes-missing]"}},
    {("no-dmabuf", "iommufd"): "iommufd maps a BAR only through its dma-buf: without one "
                               "IOMMU_IOAS_MAP fails and the DMA to the BAR's IOVA faults"},
    needs=("bar_access", "p2p"), own_step="p2p", p2p_slot=0,
    exercises=(("backends/iommufd.c", "iommufd"), ("hw/vfio/container", "legacy"),
               ("system/memory.c", "*"), ("drivers/vfio/vfio_iommu_type1.c", "legacy"),
               ("drivers/pci/p2pdma.c", "*"), ("drivers/dma-buf/", "*"),
               ("drivers/iommu/intel/", "*"), ("drivers/iommu/virtio-iommu.c", "*"))))
register(Check(
    "decode-toggle", "BAR 2 away (memory decode off) and back", LIFECYCLE, decode_toggle,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,bytes-missing]"}},
    {("no-dmabuf", "iommufd"): "once the BAR is back, iommufd still cannot map it without a "
                               "dma-buf: the P2P after the step fails as at creation"},
    own_step="decode-toggle", collector="harness.collect.lifecycle:toggle_decode", p2p_slot=1,
    exercises=(("hw/pci/pci.c", "*"), ("drivers/vfio/pci/vfio_pci_config.c", "*"))))
register(Check(
    "reset", "L2 reset: BARs cleared and programmed again, nvme reset by FLR", LIFECYCLE,
    reset,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,bytes-missing]"}},
    {("no-dmabuf", "iommufd"): still_unmapped("once the BARs are programmed again")},
    own_step="reset", collector="harness.collect.lifecycle:reset_l2", p2p_slot=2,
    exercises=(("hw/pci/pci.c", "*"), ("drivers/vfio/pci/vfio_pci_config.c", "*"))))
register(Check(
    "reset-while-revoked", "every device's memory decode off, then L2 reset: nvme's FLR meets "
    "its dma-buf revoked", LIFECYCLE, reset_while_revoked,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,bytes-missing]"}},
    {("dmabuf", b): "VFIO_DEVICE_RESET revokes through vfio_pci_dma_buf_move, a no-op for a "
                    "dma-buf already revoked, and un-revokes after the FLR only if the device "
                    "decodes memory: the dma-bufs stay revoked until the guest turns decode "
                    "on again, then live, the same fd and inode" for b in KERNEL} |
    {("no-dmabuf", "legacy"): "no dma-buf: the reset and the BARs' return work as in reset",
     ("no-dmabuf", "iommufd"): still_unmapped("once the BARs are programmed again")},
    own_step="reset-while-revoked", collector="harness.collect.lifecycle:reset_while_revoked",
    p2p_slot=5,
    exercises=(("hw/pci/pci.c", "*"), ("drivers/vfio/pci/vfio_pci_config.c", "*"),
               ("drivers/pci/pci.c", "*"))))
register(Check(
    "dmabuf-unplug", "ivshmem unplugged and plugged again, five times", LAST, dmabuf_unplug,
    {"dmabuf": {"legacy": "xfail[dmabuf-outlives-device]",
                "iommufd": "xfail[dmabuf-outlives-device]"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,bytes-missing]"}},
    {("dmabuf", "legacy"): QEMU_KEEPS_DMABUF, ("dmabuf", "iommufd"): QEMU_KEEPS_DMABUF,
     ("no-dmabuf", "iommufd"): "once the device is plugged again, iommufd still cannot map "
                               "BAR 2 without a dma-buf: the P2P after the cycle fails as at "
                               "creation"},
    own_step="dmabuf-unplug", collector="harness.collect.lifecycle:unplug", p2p_slot=3,
    exercises=(("hw/pci/pci.c", "*"), ("hw/pci/pcie.c", "*"), ("system/physmem.c", "*"))))
register(Check(
    "unplug-while-revoked", "ivshmem unplugged with its memory decode off (its dma-bufs "
    "revoked), then plugged again", LAST, unplug_while_revoked,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,bytes-missing]"}},
    {("dmabuf", b): "QEMU closes the device while its dma-bufs are revoked and, keeping them "
                    "open (its 11.1.3 leak), still referenced: vfio_pci_dma_buf_cleanup "
                    "drains them through the revoke path, a no-op for a revoked one, and "
                    "detaches them; the close returns, they stay revoked, and the device "
                    "plugged again gets a new live dma-buf" for b in KERNEL} |
    {("no-dmabuf", "legacy"): "no dma-buf: the device is closed with decode off and plugged "
                              "again, and P2P works by address",
     ("no-dmabuf", "iommufd"): still_unmapped("once the device is plugged again")},
    own_step="unplug-while-revoked", collector="harness.collect.teardown:unplug_while_revoked",
    p2p_slot=4,
    exercises=(("hw/pci/pci.c", "*"), ("hw/pci/pcie.c", "*"), ("system/physmem.c", "*"),
               ("drivers/vfio/pci/vfio_pci_config.c", "*"), ("drivers/vfio/vfio_main.c", "*"))))
register(Check(
    "quit-while-revoked", "L2 quits with every device's memory decode off (its dma-bufs "
    "revoked)", END, quit_while_revoked,
    {"dmabuf": {"legacy": "pass", "iommufd": "pass"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "pass"}},
    {("dmabuf", b): "vfio_pci_core_close_device drains a revoked dma-buf through the revoke "
                    "path, which leaves it as it is, and detaches it: L2 ends at once, L1 "
                    "keeps no VFIO dma-buf or fd, and each device opens again with a live "
                    "dma-buf" for b in KERNEL} |
    {("no-dmabuf", b): "no dma-buf to revoke: the devices are closed with decode off, and "
                       "each opens again" for b in KERNEL},
    own_step="quit-while-revoked", collector="harness.collect.teardown:quit_while_revoked",
    exercises=(("drivers/vfio/vfio_main.c", "*"), ("drivers/dma-buf/", "*"),
               ("drivers/vfio/pci/vfio_pci_config.c", "*"), ("system/runstate.c", "*"))))
def iommufd_only(why: str, without_dmabuf: str) -> tuple[dict, dict]:
    """(expected, why) of a check of the kernel's iommufd dma-buf path, played once per L1
    in the iommufd cell: it passes there on the dmabuf kernel, and skips elsewhere."""
    legacy = "a check of the kernel's iommufd path, played once per L1, in the iommufd cell"
    return ({"dmabuf": {"legacy": "skip[iommufd-only]", "iommufd": "pass"},
             "no-dmabuf": {"legacy": "skip[iommufd-only]",
                           "iommufd": "skip[kernel-lacks-dmabuf]"}},
            {("dmabuf", "iommufd"): why, ("no-dmabuf", "iommufd"): without_dmabuf,
             ("dmabuf", "legacy"): legacy, ("no-dmabuf", "legacy"): legacy})


register(Check(
    "dmabuf-closed-before-unmap", "in L1, no QEMU: a BAR's dma-buf mapped into an IOAS, its "
    "fd closed while mapped, then unmapped", ALONE, dmabuf_closed_before_unmap,
    *iommufd_only("IOMMU_IOAS_MAP_FILE takes a reference of its own on the dma-buf "
                  "(iopt_map_file_pages: dma_buf_get), so closing the fd leaves it alive and "
                  "mapped; the unmap releases the area's pages (iopt_release_pages: "
                  "dma_buf_put), and with the last reference vfio_pci_dma_buf_release takes "
                  "it off its device's list: the device then closes without waiting, and "
                  "opens again",
                  "the kernel has no VFIO dma-buf, so there is nothing to map"),
    own_step="dmabuf-closed-before-unmap",
    collector="harness.collect.teardown:closed_before_unmap", only_backend="iommufd",
    exercises=(("drivers/iommu/iommufd/", "iommufd"), ("drivers/dma-buf/", "iommufd"),
               ("drivers/vfio/pci/vfio_pci_config.c", "iommufd"),
               ("drivers/vfio/device_cdev.c", "iommufd"))))
register(Check(
    "kill-while-mapped", "an L2 of its own SIGKILLed while its IOAS maps ivshmem's BAR 2 "
    "through the BAR's dma-buf", OWN, kill_while_mapped,
    *iommufd_only("the exit releases L2's files with nothing unmapped: the IOAS area's own "
                  "reference (iopt_map_file_pages: dma_buf_get) goes with the iommufd context "
                  "(iopt_release_pages: dma_buf_put), the device's close cleans its dma-bufs "
                  "up (vfio_pci_dma_buf_cleanup), the last reference frees each: L2 is gone "
                  "at once, L1 keeps no VFIO dma-buf or fd, and the device opens again live",
                  "the kernel has no VFIO dma-buf, so nothing is mapped through one (the L2 "
                  "of its own is not started)"),
    own_step="kill-while-mapped", collector="harness.collect.killed:kill_while_mapped",
    only_backend="iommufd", needs_dmabuf=True,
    exercises=(("drivers/iommu/iommufd/", "iommufd"), ("drivers/dma-buf/", "iommufd"),
               ("drivers/vfio/vfio_main.c", "iommufd"), ("backends/iommufd.c", "iommufd"),
               ("kernel/exit.c", "iommufd"))))
register(Check(
    "multi-range", "a BAR mmapped in pieces around its MSI-X table", SIDE, multi_range,
    {"dmabuf": {"legacy": "pass", "iommufd": "xfail[multi-range-refused,read-missing]"},
     "no-dmabuf": {"legacy": "pass", "iommufd": "xfail[bar-map-refused,read-missing]"}},
    {("dmabuf", "iommufd"):
     "iommufd maps a VFIO dma-buf of one range only (vfio_pci_dma_buf_iommufd_map: \"More "
     "than one range to iommufd will require proper DMABUF support\", EOPNOTSUPP): a BAR "
     "mmapped around its MSI-X table is not mapped, and a DMA to it faults",
     ("no-dmabuf", "iommufd"): "without a dma-buf iommufd cannot map the BAR's pieces at all "
                               "(IOMMU_IOAS_MAP of the mmap: Bad address), as for any BAR at "
                               "creation"},
    own_step="side_l2", exercises=(("backends/iommufd.c", "iommufd"),)))
register(Check(
    "vfio-user-regions", "edu served over vfio-user: its regions as announced, mmapped from "
    "the device, answering, and its DMA into L2's RAM", CREATION, vfio_user_regions,
    {"dmabuf": {"vfio-user": "pass"}, "no-dmabuf": {"vfio-user": "pass"}},
    {(k, "vfio-user"): "the server announces each BAR as the L1 kernel has it and passes the "
                       "device fd with the kernel's region offset (VFIO_DEVICE_GET_REGION_"
                       "INFO's own): QEMU mmaps the device itself, no dma-buf involved; edu's "
                       "DMA reaches L2's RAM through the memfd QEMU hands the server with "
                       "DMA_MAP, which the server maps into the device's IOAS"
     for k in ("dmabuf", "no-dmabuf")},
    backends=("vfio-user",),
    exercises=(("hw/vfio-user/", "vfio-user"), ("drivers/iommu/iommufd/", "vfio-user"),
               ("drivers/vfio/device_cdev.c", "vfio-user"), ("system/memory.c", "*"))))
register(Check(
    "vfio-user-p2p", "edu served over vfio-user copies by DMA into ivshmem's BAR 2 on vfio-pci "
    "in the same L2", CREATION, vfio_user_p2p,
    {"dmabuf": {"vfio-user": "pass"},
     "no-dmabuf": {"vfio-user": "xfail[bar-fd-withheld,bytes-missing]"}},
    {("dmabuf", "vfio-user"): "QEMU 11 hands the server the vfio-pci BAR with its RAMBlock's "
                              "fd, the BAR's dma-buf, in DMA_MAP; the server maps it into the "
                              "device's IOAS (IOMMU_IOAS_MAP_FILE): P2P across two processes "
                              "through the dma-buf",
     ("no-dmabuf", "vfio-user"): "without VFIO dma-buf the BAR's RAMBlock has no fd: the "
                                 "server is handed its range with none, maps nothing there, "
                                 "and the DMA does not arrive"},
    backends=("vfio-user",),
    exercises=(("hw/vfio-user/", "vfio-user"), ("drivers/iommu/iommufd/", "vfio-user"),
               ("drivers/dma-buf/", "vfio-user"), ("hw/vfio/container", "vfio-user"),
               ("drivers/vfio/group.c", "vfio-user"), ("system/memory.c", "*"))))
