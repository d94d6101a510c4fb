"""vfio-harness: the one entry point.

  images build|list|clean   the L1 kernels and rootfs in the cache
  doctor                    what this host can do
  run                       the verdict matrix: vIOMMU x backend x kernel x check
  matrix                    the cells and their expectations (or avocado variants)
  report html|merge         an HTML page of a run; one result from CI shards

Errors print one clear message and exit non-zero: 2 bad input, 3 a deadline
passed, 1 anything else, 130 interrupted. QEMU never outlives the command.
"""

import argparse
import dataclasses
import functools
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness import arguments, doctor
from harness.base import paths, reaper
from harness.base.errors import BadInput, HarnessError
from harness.base.progress import say
from harness.checks import matrix, registry
from harness.images import command as images_command
from harness.images.recipe import Recipe
from harness.images.series import Series
from harness.images.store import Images, ImageStore, KernelImage
from harness.l0 import accel
from harness.l0.machine import check_port
from harness.l0.qemu_binary import QemuBinary
from harness.l2.bundle import Bundle
from harness.platforms import PLATFORMS, X86_64, Platform, platform
from harness.results import kcidb, patchwork, report
from harness.run.plan import RunPlan, Selection, Side


def _results_dir(out: Path, what: str = "results") -> Path:
    """The results directory, made now and known to be writable: a run must not find out
    after minutes of work that it cannot write its verdicts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".vfio-harness-writable"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BadInput(f"cannot write {what} to {out}: {e.strerror}") from None
    return out


def _publish(args: argparse.Namespace, make, report_page: Path, *results_dirs: Path) -> None:
    """What goes to other systems, if asked for: the Patchwork check (`make` builds it for
    a target URL) and the KCIDB file of `results_dirs`."""
    from harness.results import results_file

    if args.patchwork_check:
        record = make(args.patchwork_target_url or report_page.resolve().as_uri())
        patchwork.write(args.patchwork_check, record)
        print(f"Patchwork check ({record['state']}): {args.patchwork_check.resolve()}")
    if args.kcidb:
        kcidb.write(args.kcidb, *(results_file.load(d) for d in results_dirs))
        print(f"KCIDB: {args.kcidb.resolve()}")


def _under_test_series(args: argparse.Namespace) -> Series | None:
    return _series(args.kernel_patches, args.kernel_patches_first)


def _series(path: Path | None, first: int | None = None) -> Series | None:
    if first is not None and path is None:
        raise BadInput("--kernel-patches-first N takes the first N patches of "
                       "--kernel-patches, which was not given")
    series = Series.load(path) if path else None
    if series and first is not None:
        if first > len(series.patches):
            raise BadInput(f"--kernel-patches-first {first}: {path} has "
                           f"{len(series.patches)} patch(es)")
        series = series.prefix(first)
    return series


def _user_kernel(store: ImageStore, args: argparse.Namespace, bzimage: Path,
                 config: Path | None) -> tuple[str, "KernelImage"]:
    if args.kernel and len(args.kernel) > 1:
        raise BadInput("a kernel image plays one kernel variant: give at most one --kernel")
    role, image = store.user_kernel(bzimage, config, args.kernel[0] if args.kernel else None)
    say(f"kernel under test: {bzimage} ({image.manifest['versions']['kernel']}) as the "
        f"{role!r} variant")
    return role, image


def _quiet_libraries() -> None:
    """qemu.qmp logs a connection that ends (an L2 or L0 QEMU going away on an interrupt)
    with its traceback; the harness says what happened itself, in one line, and keeps
    the QMP transcripts among the artifacts."""
    # asyncio is only qemu.qmp's event loop here: an interrupt that lands inside it leaves
    # a task whose end asyncio reports ("Task exception was never retrieved", a traceback).
    for name in ("qemu.qmp", "asyncio"):
        library_log = logging.getLogger(name)
        library_log.addHandler(logging.NullHandler())
        library_log.propagate = False

    def one_line(unraisable: "sys.UnraisableHookArgs") -> None:
        """An error in a finalizer at exit (a library's __del__) is one line, not a
        traceback after the run's last words."""
        print(f"vfio-harness: note: ignored at exit: {unraisable.exc_type.__name__} in "
              f"{getattr(unraisable.object, '__qualname__', unraisable.object)!s:.80}",
              file=sys.stderr)
    sys.unraisablehook = one_line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `shell CELL -- COMMAND`: argparse's subparsers do not keep what follows "--"
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = arguments.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if command and args.action != "shell":
        arguments.parser().error(f"only shell takes a command after --: {' '.join(command)}")
    if args.action == "shell":
        args.command = command
    _quiet_libraries()
    reaper.unwind_on_signals()
    reaper.adopt_orphans()
    try:
        return _dispatch(args)
    except HarnessError as e:
        last, code = f"vfio-harness: error: {e}", e.exit_code
    except KeyboardInterrupt:
        last, code = "vfio-harness: interrupted; QEMU processes were stopped", 130
    except BrokenPipeError:  # the reader went away (`| head`): stop, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _reap()
        return 141
    gc.collect()  # finalizers of what the failure left behind run now, not after the last line
    _reap()
    print(last, file=sys.stderr)
    return code


def _reap() -> None:
    """Every child ended and waited for, before the last line."""
    killed = reaper.reap_all()
    if killed:
        say(f"killed {len(killed)} process(es) that had not ended: {killed}")


def _store(args: argparse.Namespace, jobs: int | None = None) -> ImageStore:
    return ImageStore(Recipe.load(platform=_platform(args)), paths.cache_dir(args.cache_dir),
                      jobs=jobs, budget=paths.cache_max(args.cache_max))


def _platform(args: argparse.Namespace) -> Platform:
    return platform(getattr(args, "arch", None) or X86_64.arch)


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "patchwork_check", None):
        _results_dir(args.patchwork_check.parent, f"the Patchwork check {args.patchwork_check}")
    if getattr(args, "kcidb", None):
        _results_dir(args.kcidb.parent, f"the KCIDB file {args.kcidb}")
    if args.action == "images":
        return images_command.run(args, _store(args, jobs=getattr(args, "jobs", None)))
    if args.action == "doctor":
        cache = paths.cache_dir(args.cache_dir)
        if args.clean:
            for line in doctor.clean():
                print(line)
        found = doctor.findings([ImageStore(Recipe.load(platform=p), cache,
                                            budget=paths.cache_max(args.cache_max))
                                 for p in PLATFORMS.values()], args.qemu)
        for f in found:
            print(f.line())
        return 0 if all(f.ok for f in found) else 1
    if args.action == "run":
        return _run(args)
    if args.action == "report":
        return _report(args)
    if args.action == "matrix":
        return _matrix(args)
    if args.action == "ab":
        return _ab(args)
    if args.action == "compare":
        return _compare(args)
    if args.action == "shell":
        return _shell(args)
    raise BadInput(f"unknown action {args.action}")


@dataclass
class _Prepared:
    """What a run and an A/B set up the same way before any L1 boots."""

    selection: Selection
    qemu: QemuBinary
    store: ImageStore
    images: Images
    choice: accel.AccelChoice
    seed: int
    out: Path
    series: Series | None = None  # --series: the series being validated
    stamp: dict = dataclasses.field(default_factory=dict)  # the run's identity, from its start
    platform: Platform = X86_64

    @property
    def traces(self) -> tuple[str, ...]:
        return tuple(self.series.trace_events()) if self.series else ()

    def plan(self, args: argparse.Namespace, sides: tuple, l1_dir: Path) -> RunPlan:
        """The run's plan, built once here and passed down whole."""
        from harness.run import runner

        keep = getattr(args, "keep_failed", None) or 0.0
        return RunPlan(self.selection, self.qemu, self.images, self.choice.accel, self.seed,
                       l1_dir, sides, args.ssh_port,
                       1 if keep else args.jobs or runner.default_jobs(), self.platform, keep)

    def info(self, cells: list, began: float, **extra: object) -> dict:
        from harness.results import results_file

        return {**self.stamp, "arch": self.platform.arch, "seed": self.seed,
                "accel": self.choice.accel,
                "accel_reason": self.choice.reason, "l0_qemu": self.qemu.version_text,
                "l2_qemu": results_file.qemu_under_test(cells),
                **results_file.kernels_info(self.images),
                "selection": self.selection.record(),
                "duration_s": round(time.monotonic() - began, 1),
                "series": self.series.record() if self.series else None,
                "complete": len(cells) == len(self.selection.cells()), **extra}


def _prepare(args: argparse.Namespace, l2_qemus: list[Path | None], name: str,
             series: Series | None = None) -> _Prepared:
    """Everything checked before minutes of work: binaries, ports, images, accelerator."""
    from harness.results import results_file

    selection = _selection(args)
    plat = _platform(args)
    qemu = QemuBinary.find(args.qemu, plat)
    for vi in selection.viommus:
        qemu.require_devices(plat.viommu(vi).drivers)
    if args.ssh_port:
        check_port(args.ssh_port)
    for path in l2_qemus:
        if path:  # what L0 can tell (missing, not a binary, another architecture) before a boot
            Bundle.find(path, plat)
    chosen = [f"--{o.replace('_', '-')}" for o in ("kernel_image", "kernel_tree",
                                                    "kernel_patches") if getattr(args, o, None)]
    if len(chosen) > 1:
        raise BadInput(f"one kernel under test at a time: {' and '.join(chosen)} were given")
    validated = _series(args.series)
    store = _store(args)
    # Before the image build, which may take minutes, and the accelerator's boot probe.
    seed = args.seed if args.seed is not None else matrix.new_seed()
    out = _results_dir(args.results or Path("results")
                       / datetime.now().strftime(f"{name}-%Y%m%d-%H%M%S"))
    stamp = results_file.stamp(name, selection.record())
    records = [out / "baseline", out / "candidate"] if name == "ab" else [out]
    if getattr(args, "baseline_results", None):
        records = records[1:]  # the baseline is an earlier run's, not begun here
    for directory in records:
        results_file.begin(directory, {**stamp, "run_id": stamp["run_id"] + (
            f"/{directory.name}" if directory != out else ""), "seed": seed})
    say(f"results and artifacts: {out.resolve()} (run {stamp['run_id']}, seed {seed})")
    try:
        return _build(args, selection, qemu, store, seed, out, validated, stamp, series)
    except BadInput:
        for directory in [*records, out]:
            results_file.abandon(directory)
        raise


def _build(args: argparse.Namespace, selection: Selection, qemu: QemuBinary,
           store: ImageStore, seed: int, out: Path, validated: Series | None, stamp: dict,
           series: Series | None) -> _Prepared:
    """The images and the accelerator: what the run needs before any L1 boots."""
    kernel_image = getattr(args, "kernel_image", None)
    if kernel_image:
        role, image = _user_kernel(store, args, kernel_image, args.kernel_config)
        selection = dataclasses.replace(selection, kernels=(role,))
        images = dataclasses.replace(store.build([role], kernels=False), kernels={role: image})
    elif getattr(args, "kernel_tree", None):
        images = store.build_tree(args.kernel_tree, list(selection.kernels))
    else:
        images = store.build(list(selection.kernels))  # a no-op when the cache is intact
    # Probed before any series: its kernel would cost a probe (10 s where KVM gets nowhere)
    # and, were it to break the boot, turn the run to TCG instead of failing as a boot.
    any_kernel = next(iter(images.kernels.values())).bzimage
    if series:
        images = store.build_series(series, images)
    choice = accel.choose(qemu, any_kernel, store.cache,
                          force=None if args.accel == "auto" else args.accel,
                          platform=store.platform)
    say(f"accelerator: {choice.accel.upper()} ({choice.reason})")
    if validated:
        say(f"series under test: {validated.title!r}, {len(validated.patches)} patch(es); "
            f"trace events it adds or changes: {', '.join(validated.trace_events()) or 'none'}")
    return _Prepared(selection, qemu, store, images, choice, seed, out, validated, stamp,
                     store.platform)


def _run(args: argparse.Namespace) -> int:
    from harness.results import results_file  # L1-facing modules import paramiko: only when needed
    from harness.run import runner

    if args.bisect and not args.kernel_patches:
        raise BadInput("--bisect bisects the kernel series under test: give --kernel-patches")
    if args.keep_failed and args.jobs and args.jobs > 1:
        raise BadInput(f"--keep-failed holds each failing L1 in turn, one L1 at a time: "
                       f"--jobs {args.jobs} cannot be")
    series = _under_test_series(args)
    p = _prepare(args, [args.l2_qemu], "run", series)
    side = Side(p.out, args.l2_qemu, traces=p.traces)
    plan = p.plan(args, (side,), p.out)
    began = time.monotonic()
    cells: list = []
    outside: list = []  # what L1 kernels said outside every cell
    done = False
    try:
        for _, item in runner.run(plan):
            (cells if isinstance(item, matrix.CellResult) else outside).append(item)
        done = True
    finally:
        cells = plan.in_matrix_order(cells)
        finished = len(cells) == len(p.selection.cells())
        # An interrupted or broken run keeps everything: its last L1 and L2 are the story.
        kept = [] if args.keep_artifacts or not finished else results_file.prune(p.out, cells)
        info = p.info(cells, began, **results_file.outside_cells(outside))
        results_file.write(p.out, cells, info)
        if not done:
            _run_outputs(args, p, cells, info, finished, kept, None)
    record = None
    broken = [c for c in cells if not c.met and not c.infrastructure]
    try:
        if args.bisect and series and finished and broken:
            record = _bisect_run(args, plan, p, series, side, [c.cell.id for c in broken])
        elif args.bisect:
            say("bisect: every cell met its expectation (or could not be judged): nothing "
                "to bisect")
    finally:
        _run_outputs(args, p, cells, info, finished, kept, record)
    _reap()
    print(results_file.last_line(cells, finished, outside))
    return results_file.exit_code(cells, outside)


def _run_outputs(args: argparse.Namespace, p: _Prepared, cells: list, info: dict,
                 finished: bool, kept: list, bisected: dict | None) -> None:
    """A run's report, JUnit, table, reproduce lines and checks, with what a bisect said."""
    from harness.results import bisection, results_file

    page = report.write_html(p.out, extra=bisection.html_section(bisected) if bisected else "")
    culprit = functools.partial(bisection.culprit, bisected)
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_text(results_file.junit(cells, run=info, culprit=culprit))
    if cells:
        print("\n" + results_file.table(cells))
    by_id = {c.cell.id: c for c in cells}
    if bisected:
        print("\n" + "\n".join(bisection.lines(bisected, lambda cell_id: results_file.reproduce(
            by_id[cell_id].record(), info))))
    for cell in cells:
        if not cell.met:
            print(f"reproduce {cell.cell.id}: {results_file.reproduce(cell.record(), info)}")
    print(f"\nresults: {(p.out / 'results.json').resolve()}\nreport:  {page.resolve()}")
    _publish(args, lambda url: patchwork.for_run(cells, url, culprit), page, p.out)
    if args.keep_artifacts or not finished:
        why = "" if args.keep_artifacts else ", the run did not finish"
        print(f"artifacts (all kept{why}): {p.out.resolve()}")
    for directory in kept:
        print(f"artifacts kept: {directory.resolve()}")


def _bisect_run(args: argparse.Namespace, plan: RunPlan, p: _Prepared, series: Series,
                side: Side, broken: list[str]) -> dict:
    """Which patch of `series` made each cell miss its expectation: bad at a prefix where
    it misses it; the pinned kernel is run too when an answer hangs on it."""
    from harness.results import bisection
    from harness.run import bisect

    say(f"bisect: {len(broken)} cell(s) not as expected, over the {len(series.patches)} "
        f"patches of {series.title!r}")
    step = bisect.steps(plan, p.store, series, side, p.out / "bisect", _step_info(p),
                        lambda r: None if r.infrastructure else not r.met)
    record = bisect.bisect(series, broken, step, good_known=False)
    bisection.write(p.out, record)
    return record


def _ab(args: argparse.Namespace) -> int:
    """Both sides on the same L1 boots, images, seed and cells; then the comparison."""
    from harness.results import compare, reused_baseline
    from harness.run import ab

    if not (args.candidate_l2_qemu or args.candidate_kernel_patches
            or args.candidate_kernel_image):
        raise BadInput("ab needs something under test: --candidate-l2-qemu, "
                       "--candidate-kernel-patches or --candidate-kernel-image")
    if args.bisect and not args.candidate_kernel_patches:
        raise BadInput("--bisect bisects the candidate's kernel series: give "
                       "--candidate-kernel-patches")
    if args.bisect and (args.baseline_kernel_patches or args.candidate_kernel_image):
        other = "--baseline-kernel-patches" if args.baseline_kernel_patches else \
            "--candidate-kernel-image"
        raise BadInput(f"--bisect bisects the candidate's series against the pinned kernel; "
                       f"{other} would make the baseline another kernel")
    reused = reused_baseline.offered(args, lambda: {"arch": _platform(args).arch,
                                                    "selection": _selection(args).record()})
    series = {side: _series(getattr(args, f"{side}_kernel_patches"))
              for side in ("baseline", "candidate")}
    p = _prepare(args, [args.baseline_l2_qemu, args.candidate_l2_qemu], "ab")
    kernels = list(p.selection.kernels)
    images = {side: p.store.build_series(s, p.images) if s else p.images
              for side, s in series.items()}
    if args.candidate_kernel_image:
        role, image = _user_kernel(p.store, args, args.candidate_kernel_image,
                                   args.candidate_kernel_config)
        if role not in kernels:
            raise BadInput(f"the candidate kernel plays {role!r}, which is not among the "
                           f"selected variants ({', '.join(kernels)}): choose it with --kernel")
        images["candidate"] = dataclasses.replace(
            images["candidate"], kernels={**images["candidate"].kernels, role: image})
    sides = (Side(p.out / "baseline", args.baseline_l2_qemu, images["baseline"], p.traces),
             Side(p.out / "candidate", args.candidate_l2_qemu, images["candidate"], p.traces))
    if reused:
        reused_baseline.taken(args.baseline_results, reused, dataclasses.replace(
            p, images=images["baseline"]).info([], time.monotonic()), (sides[1].results, p.out))
        sides = (dataclasses.replace(sides[0], results=args.baseline_results), sides[1])

    def record(cells: list, side: Side, began: float) -> dict:
        return dataclasses.replace(p, images=side.images or p.images).info(
            cells, began, ab_side=side.results.name,
            run_id=f"{p.stamp['run_id']}/{side.results.name}")

    c, written = ab.run(p.plan(args, sides[1:] if reused else sides, p.out / "l1"), record,
                        p.out, baseline=sides[0].results)
    if args.bisect and c.regressions and series["candidate"]:
        c = _bisect(args, p, c, series["candidate"], sides[1])
    elif args.bisect:
        say("bisect: no new failure to bisect")
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_text(compare.junit(c))
    print("\n" + compare.text(c))
    print(f"A/B report: {written['text'].resolve()} (and compare.json, compare.xml, "
          f"compare.html); candidate's report: {(sides[1].results / 'report.html').resolve()}")
    _publish(args, lambda url: patchwork.for_comparison(c, url),
             sides[1].results / "report.html", sides[0].results, sides[1].results)
    return c.exit_code()


def _bisect(args: argparse.Namespace, p: _Prepared, c, series: Series, candidate: Side):
    """Which patch of `series` brought each new failure of `c`, judged against the
    baseline: a cell is bad at a prefix where it is a new failure."""
    from harness.results import bisection, compare
    from harness.run import bisect

    baseline = {change.id: change.baseline for change in c.regressions}
    say(f"bisect: {len(baseline)} new failure(s) over the {len(series.patches)} patches of "
        f"{series.title!r}")

    def judge(r) -> bool | None:
        status = compare.classify(baseline[r.cell.id], r.record())
        return None if status == compare.INFRASTRUCTURE else status == compare.NEW_FAILURE

    step = bisect.steps(p.plan(args, (candidate,), p.out), p.store, series, candidate,
                        p.out / "bisect", _step_info(p), judge)
    record = bisect.bisect(series, list(baseline), step,
                           good_known=args.baseline_l2_qemu == args.candidate_l2_qemu)
    bisection.write(candidate.results, record)
    c = dataclasses.replace(c, bisect=record)
    compare.write(c, p.out)
    report.write_html(candidate.results, extra=compare.html_section(c))
    return c


def _step_info(p: _Prepared):
    """A step's run record: its own cells and kernels (the prefix's), the run's stamp."""
    def info(cells: list, began: float, k: int, at: RunPlan) -> dict:
        return dataclasses.replace(p, selection=at.selection, images=at.images).info(
            cells, began, bisect_patches=k, run_id=f"{p.stamp['run_id']}/bisect-{k}")
    return info


def _compare(args: argparse.Namespace) -> int:
    from harness.results import compare

    c = compare.compare(args.baseline, args.candidate)
    out = args.out or args.candidate / "compare"
    written = compare.write(c, out)
    if args.junit:
        args.junit.write_text(compare.junit(c))
    print(json.dumps(c.record(), indent=2) if args.json else compare.text(c))
    print(f"A/B report: {written['text'].resolve()}", file=sys.stderr)
    _publish(args, lambda url: patchwork.for_comparison(c, url), written["html"],
             args.baseline, args.candidate)
    return c.exit_code()


def _cell_named(name: str) -> matrix.Cell:
    every = [c for p in PLATFORMS.values() for c in
             matrix.cells(tuple(p.viommus), matrix.BACKENDS, tuple(Recipe.load().kernels),
                          arch=p.arch)]
    for cell in every:
        if cell.id == name:
            return cell
    raise BadInput(f"no cell {name!r}: a cell is VIOMMU-BACKEND-KERNEL-CHECK, e.g. "
                   f"{every[0].id} (`vfio-harness matrix` lists them)")


def _shell(args: argparse.Namespace) -> int:
    """The cell's L1 and L2 as a run would start them, a shell in L1, then all torn down."""
    from harness.results import results_file
    from harness.run import shell

    cell = _cell_named(args.cell)
    args.arch = cell.arch
    args.viommu, args.backend = [cell.viommu], [cell.backend]
    args.kernel, args.check = [cell.kernel], [cell.check]
    args.seed, args.jobs = None, 1
    p = _prepare(args, [args.l2_qemu], "shell", _under_test_series(args))
    try:
        if cell.kernel not in p.selection.kernels:
            raise BadInput(f"the kernel image plays {p.selection.kernels[0]!r}, not the cell's "
                           f"{cell.kernel!r}")
        plan = p.plan(args, (Side(p.out, args.l2_qemu, traces=p.traces),), p.out)
        code = shell.open_shell(plan, cell, args.command, start_l2=not args.no_l2)
    finally:
        results_file.abandon(p.out)  # a shell judges nothing: no record of a run
    _reap()
    say(f"{cell.id}: L2 and L1 stopped; artifacts in {p.out.resolve()}")
    return code


def _selection(args: argparse.Namespace):
    plat = _platform(args)
    viommus = tuple(args.viommu or plat.default_viommus)
    for name in viommus:
        plat.viommu(name)  # one of this platform's, or bad input naming the platform
    return Selection(
        viommus=viommus,
        backends=tuple(args.backend or matrix.BACKENDS),
        kernels=tuple(args.kernel or _default_kernels(args, Recipe.load(platform=plat))),
        checks=tuple(args.check or registry.names()), arch=plat.arch)


def _default_kernels(args: argparse.Namespace, recipe: Recipe) -> tuple[str, ...]:
    """A kernel series is judged on the recipe's series variants (the debug kernel where it
    can report what the series brings); anything else on the default matrix's."""
    series = getattr(args, "kernel_patches", None) or getattr(args, "candidate_kernel_patches",
                                                               None)
    return recipe.series_kernels if series else recipe.matrix_kernels


def _matrix(args: argparse.Namespace) -> int:
    cells = _selection(args).cells()
    if args.avocado_variants and args.arch != X86_64.arch:
        raise BadInput(f"the avocado front end runs x86_64 cells only; run {args.arch}'s "
                       f"with `vfio-harness run --arch {args.arch}`")
    if args.avocado_variants:
        cells_dir = (args.results or Path("results") / "avocado").resolve()
        seed = args.seed if args.seed is not None else matrix.new_seed()
        params = {"results": str(cells_dir), "seed": seed, "accel": args.accel,
                  "cache": str(paths.cache_dir(args.cache_dir))}
        if args.ssh_port:
            params["ssh_port"] = check_port(args.ssh_port)
        if args.qemu:
            params["qemu"] = args.qemu
        if args.l2_qemu:
            if not args.l2_qemu.is_file():
                raise BadInput(f"QEMU under test {args.l2_qemu} does not exist")
            params["l2_qemu"] = str(args.l2_qemu.resolve())
        args.avocado_variants.write_text(json.dumps(matrix.avocado_variants(cells, params),
                                                    indent=1))
        print(f"{len(cells)} variants in {args.avocado_variants}; results will go to "
              f"{cells_dir} (seed {seed})")
        return 0
    for cell in cells:
        why = f"  because {cell.why}" if cell.why else ""
        print(f"{cell.id:<48} {cell.expectation.describe()}{why}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.report_action == "html":
        page = report.write_html(args.results, out=args.out)
        print(f"report: {page.resolve()}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    merged = report.merge(args.shards, args.out)
    (args.out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    page = report.write_html(args.out, merged)
    unmet = [c["id"] for c in merged["cells"] if not c.get("met")]
    print(f"merged {len(merged['cells'])} cells from {len(args.shards)} shards: "
          f"{args.out / 'results.json'}; report: {page}")
    for cell_id in unmet:
        print(f"  !! {cell_id}")
    return 1 if unmet or not merged["cells"] else 0
