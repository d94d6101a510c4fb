"""The matrix run: one L1 boot per (vIOMMU, kernel), all of its cells on that boot.

Shared by the CLI and the test front ends. Per L1: boot, know the QEMU under
test (qemu_under_test.probe: one clear error before any cell if it cannot run
the scenarios), bind the devices, then per backend collect the evidence
(scenario.py) and judge it (verdicts.py against matrix.py). An L1 that cannot
boot, or dies half-way, turns the cells it had not yet produced into `error`,
with the reason, marked `infrastructure` (not the fault of what is under test);
the cells it did produce keep their verdicts. An L2 that fails is an error of
what is under test.
"""

import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from harness.base import files
from harness.base.errors import BadInput, HarnessError, StageTimeout
from harness.base.progress import say
from harness.checks import registry
from harness.checks.matrix import Cell, CellResult, L1Complaints
from harness.collect import scenario, stack
from harness.collect.scenario import PassedThrough, Timer
from harness.evidence.gathered import Evidence, summarize
from harness.evidence.records import PACKAGED
from harness.l0.machine import L1Spec
from harness.l2.backends import Backend
from harness.l2.backends import backend as backend_named
from harness.l2.bundle import Bundle, upload
from harness.l2.capabilities import BuiltBinary, QemuUnderTest, probe
from harness.l2.qemu import L2Died
from harness.run import hold, parallel
from harness.run.plan import Boot, RunPlan, Side
from harness.verdicts import kernel_health, left_behind, teardown

Item = CellResult | L1Complaints


def run(plan: RunPlan) -> Iterator[tuple[Side, Item]]:
    """Every selected cell of every side of the plan, `plan.jobs` L1 boots at a time (one
    at a time with a fixed SSH port: they would share it). Cells come in the order they
    are produced; `plan.in_matrix_order` sorts them back. What an L1 kernel said outside
    every cell comes as `L1Complaints`, for each side of its boot."""
    boots = plan.boots()
    if plan.jobs <= 1 or len(boots) <= 1 or plan.ssh_port is not None:
        for boot in boots:
            yield from run_boot(plan, boot)
        return
    say(f"{len(boots)} L1 boots, {min(plan.jobs, len(boots))} at a time")
    yield from parallel.run(boots, plan.jobs, lambda b: run_boot(plan, b), lambda b: b.name)


#: What an L1 takes on L0 beyond its guest RAM (L0 QEMU itself, the TCG code cache).
L1_OVERHEAD_MB = 1024


def default_jobs() -> int:
    """L1s at once: two per core, as far as memory goes. Each L1 is one TCG vCPU, but it
    spends much of its time waiting (SSH, QMP and qtest round trips, edu's timer): measured
    here (2 cores), the 56-cell matrix took 71 s with two L1s at once and 54 s with four."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available_mb = int(info["MemAvailable"].split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        available_mb = 0
    per_l1 = L1Spec.memory_mb + L1_OVERHEAD_MB
    return max(1, min(2 * len(os.sched_getaffinity(0)), available_mb // per_l1))


def cells_only(items: Iterator[tuple[Side, Item]]) -> Iterator[tuple[Side, CellResult]]:
    """The cells of a run, for those who judge cells alone (a bisect step)."""
    return ((side, item) for side, item in items if isinstance(item, CellResult))


def run_boot(plan: RunPlan, boot: Boot) -> Iterator[tuple[Side, Item]]:
    """All selected cells of one L1 boot, for each of its sides; then, if its kernel
    complained outside every cell, that. An L2 that hangs in the L1 kernel takes that L1
    with it: the cells it left go to a fresh L1 of the same kind, each side's alike."""
    vi, kernel = boot.viommu, boot.kernel
    wanted = [c for c in plan.selection.on_boot(vi, kernel)
              if boot.backend in (None, c.backend)]
    pending = {side.results: list(wanted) for side in boot.sides}
    attempt = 1
    while True:
        left: dict[Path, list[Cell]] = {}
        yield from _run_l1(plan, boot, pending, attempt, left)
        pending = {side: [c for c in pending[side] if c in set(cells)]  # the run's order
                   for side, cells in left.items() if cells}
        if not pending:
            return
        attempt += 1
        say(f"L1 {vi}/{kernel}: discarded; {sum(map(len, pending.values()))} cell(s) it "
            f"could not run go to a fresh L1 (#{attempt})")


def _run_l1(plan: RunPlan, boot: Boot, pending: dict[Path, list[Cell]], attempt: int,
            left: dict[Path, list[Cell]]) -> Iterator[tuple[Side, Item]]:
    """The `pending` cells of each side (by its results directory) on one L1 boot; what an
    L2 stuck in its kernel kept from running goes to `left`."""
    vi, kernel = boot.viommu, boot.kernel
    sides = [side for side in boot.sides if side.results in pending]
    done: set[tuple[Path, str]] = set()
    name = f"{vi}-{kernel}" if attempt == 1 else f"{vi}-{kernel}.l1-{attempt}"
    run_dir = boot.directory / name
    began = time.monotonic()
    try:
        with stack.booted(plan.qemu, boot.images, plan.platform.viommu(vi), kernel, run_dir,
                          accel=plan.accel, ssh_port=plan.ssh_port) as l1:
            unmet: list[CellResult] = []
            for side in sides:
                wanted = pending[side.results]
                if l1.held:  # a side before it took this L1: it runs on a fresh one
                    left[side.results] = list(wanted)
                    continue
                under_test = qemu_under_test(l1, side.l2_qemu)
                not_run: list[Cell] = []
                for result in cells_on_l1(l1, under_test, wanted, side.results / name,
                                          plan.seed, side.traces, not_run):
                    done.add((side.results, result.cell.id))
                    say(f"{result.cell.id}: {result.outcome} ({result.reason[:100]})")
                    if not result.met and not result.infrastructure:
                        unmet.append(result)
                    yield side, result
                if not_run:
                    left[side.results] = not_run
            if plan.keep_failed and unmet and not l1.held:
                hold.hold(l1, boot.images.rootfs, unmet, plan.keep_failed)
            l1.witness.between("the end of L1")
            said = outside_cells(f"{vi}/{kernel}", l1.witness.outside)
            if said:
                say(said.describe())
                for side in sides:
                    yield side, said
    except BadInput:
        raise  # the user's to fix, not a verdict: the whole run stops with exit code 2
    except HarnessError as e:
        say(f"L1 {vi}/{kernel}: {e.message}")
        left.clear()  # every cell not yet produced is this error's, on every side
        for side in sides:
            for cell in pending[side.results]:
                if (side.results, cell.id) not in done:
                    yield side, CellResult(cell, "error", f"L1 {vi}/{kernel}: {e}", {},
                                           time.monotonic() - began, str(run_dir),
                                           error_stage=e.stage,
                                           deadline=isinstance(e, StageTimeout),
                                           infrastructure=True)


def outside_cells(l1: str, windows) -> L1Complaints | None:
    """What the kernel said in windows that were no cell's, or None."""
    said = kernel_health.complaints(windows)
    if not said:
        return None
    return L1Complaints(l1, tuple({**c.record(), "said": c.describe()} for c in said))


def qemu_under_test(l1: stack.L1Stack, l2_qemu: Path | None) -> QemuUnderTest:
    """The packaged QEMU, or `l2_qemu` uploaded into L1; probed before any cell."""
    if l2_qemu:
        bundle = Bundle.find(l2_qemu, l1.platform)
        path, binary = upload(l1.session, bundle)
        say(f"QEMU under test {l2_qemu}: uploaded with {bundle.describe()}")
        found = probe(l1.session, path, str(l2_qemu), binary)
    else:
        found = probe(l1.session, l1.platform.l2_qemu, PACKAGED,
                      built=BuiltBinary.from_record(l1.packaged_qemu))
    say(f"QEMU under test: {found.version} ({found.origin}, sha256 {found.sha256[:16]}..., "
        f"dma-buf event: {'yes' if found.has_dmabuf_event else 'NO'})")
    return found


def cells_on_l1(l1: stack.L1Stack, under_test: QemuUnderTest, cells: list[Cell], out: Path,
                seed: int, traces: tuple[str, ...] = (),
                not_run: list[Cell] | None = None) -> Iterator[CellResult]:
    """`cells` of this booted L1, backend by backend: each backend's L2 collects only what
    its own cells' checks need. Once an L2 hangs in the kernel (`l1.held`), the cells not
    yet run go to `not_run`."""
    by_backend: dict[str, list[Cell]] = {}
    for cell in cells:
        by_backend.setdefault(cell.backend, []).append(cell)
    left = not_run if not_run is not None else []
    with scenario.passed_through(l1) as through:
        for name, group in by_backend.items():
            if l1.held:
                left.extend(group)
                continue
            yield from _run_backend(l1, backend_named(name), group, through, out / name, seed,
                                    under_test, traces, left)


def _environment_gap(be: Backend, through: PassedThrough,
                     under_test: QemuUnderTest | None) -> str | None:
    """Why this backend cannot run on this L1 at all, or None."""
    inventory = through.inventory
    if not getattr(inventory, be.inventory_field):
        return f"L1 kernel {inventory.kernel} has no {be.node}, so no {be.name} backend"
    if be.qemu_object and under_test and not under_test.has_object(be.qemu_object):
        return (f"the QEMU under test ({under_test.version}) has no "
                f"{be.qemu_object.split(',')[0]} object")
    if under_test and not under_test.has_device(be.qemu_device):
        return f"the QEMU under test ({under_test.version}) has no {be.qemu_device} device"
    return None


def _run_backend(l1: stack.L1Stack, be: Backend, cells: list[Cell], through: PassedThrough,
                 out: Path, seed: int, under_test: QemuUnderTest,
                 traces: tuple[str, ...] = (), not_run: list[Cell] | None = None
                 ) -> list[CellResult]:
    began = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"qemu_under_test": under_test.record()}
    gap = _environment_gap(be, through, under_test)
    if gap:
        return [CellResult.settled(c, "skip", gap, record, 0.0, str(out)) for c in cells]
    timer = Timer(witness=l1.witness)
    try:
        evidence = scenario.collect(l1, be, through, {c.check for c in cells}, out, seed, timer,
                                    under_test.path, under_test.facts(), traces)
    except HarnessError as e:
        say(f"{cells[0].viommu}/{cells[0].kernel}/{be.name}: error: {e.message}")
        stderr = files.tail(out / "l2-stderr.log")
        reason = str(e)
        said = kernel_health.complaints(l1.witness.take())
        if said:  # the kernel's word may be the story of the failure
            reason += f"; the L1 kernel complained {said[0].describe()}"
            write_reports(out, said)
        extra = {"kernel_reports": [c.record() for c in said]} if said else {}
        return [CellResult(c, "error", reason, {**record, **extra, "l2_stderr_tail": stderr},
                           time.monotonic() - began, str(out), error_stage=e.stage,
                           deadline=isinstance(e, StageTimeout),
                           l2_end=e.end if isinstance(e, L2Died) else None) for c in cells]
    if evidence.held or evidence.untrusted:
        l1.held = evidence.held or evidence.untrusted
        say(f"{cells[0].viommu}/{cells[0].kernel}/{be.name}: {l1.held}")
    if not_run is not None:
        not_run.extend(c for c in cells if c.check in evidence.not_run)
    unjudged = [CellResult(c, "error", f"not run: {evidence.untrusted}, before this check's "
                           f"steps; on a kernel that corrupted its memory what they do is not "
                           f"evidence", record, 0.0, str(out), error_stage="kernel")
                for c in cells if c.check in evidence.unjudged]
    cells = [c for c in cells if c.check not in evidence.not_run + evidence.unjudged]
    own = {c.own_step for c in registry.REGISTRY.values() if c.own_step}
    shared = ((time.monotonic() - began - sum(timer.steps.get(s, 0) for s in own))
              / max(1, len(cells)))
    record["summary"] = summarize(evidence, traces)
    # what the kernel witness cost this backend, per cell (ci/benchmark.py witness)
    record["kernel_witness_s"] = round(sum(w.read_s for w in evidence.kernel)
                                       / max(1, len(cells)), 4)
    write_reports(out, kernel_health.complaints(evidence.kernel), evidence.kernel)
    return judge(cells, evidence, timer, shared, str(out), record) + unjudged


def write_reports(out: Path, said: list, windows=()) -> None:
    """The kernel's reports whole, and each step's log, beside the backend's L2 logs (what
    userspace wrote into the log is marked: it is never a report)."""
    text = ["# reports" + ("" if said else ": none"),
            *(f"\n## {c.describe()}\n" + "\n".join(c.report.lines if c.report else ())
              for c in said)]
    for window in windows:
        text.append(f"\n# L1 kernel log during {window.step} (taint {window.tainted_before:#x} "
                    f"-> {window.tainted_after:#x})")
        text.extend(f"{line.stamp} "
                    + ("" if line.kernel else f"(userspace, facility {line.facility}) ")
                    + line.text for line in window.lines)
    (out / "l1-kernel-reports.txt").write_text("\n".join(text) + "\n")


def judge(cells: list[Cell], evidence: Evidence, timer: Timer, shared_seconds: float,
          artifacts: str, record: dict | None = None) -> list[CellResult]:
    """Each cell's verdict on the evidence, held against its expectation."""
    results = []
    for cell in cells:
        check = registry.get(cell.check)
        duration = shared_seconds + timer.steps.get(check.own_step or "", 0.0)
        try:
            verdict = kernel_health.judge(left_behind.judge(
                teardown.hung(evidence) or check.verdict(evidence),
                [a for a in evidence.left if check.stands_on(a.step)]),
                [w for w in evidence.kernel if check.stands_on(w.step)])
        except Exception as e:  # a bug in a verdict: this cell errs, the others stand
            results.append(CellResult(cell, "error", f"verdict {cell.check} crashed: {e!r}",
                                      {"traceback": traceback.format_exc()}, duration,
                                      artifacts))
            continue
        results.append(CellResult.settled(
            cell, verdict.observed, verdict.reason,
            {**(record or {}), **verdict.evidence, "timing_s": timer.steps}, duration,
            artifacts, verdict.findings, verdict.grounds))
    return results
