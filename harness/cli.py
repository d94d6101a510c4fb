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
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from harness import accel, doctor, matrix, paths, report
from harness.errors import BadInput, HarnessError
from harness.images import ImageStore
from harness.l0 import VIOMMUS, check_port, viommu
from harness.progress import say
from harness.qemu_binary import QemuBinary
from harness.recipe import Recipe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfio-harness", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", help="image cache (default: $VFIO_HARNESS_CACHE or "
                                       "$XDG_CACHE_HOME/vfio-harness)")
    p.add_argument("--qemu", help="L0 QEMU binary (default: qemu-system-x86_64 on PATH)")
    sub = p.add_subparsers(dest="action", required=True)

    images = sub.add_parser("images", help="build, list or clean the L1 images")
    isub = images.add_subparsers(dest="images_action", required=True)
    build = isub.add_parser("build", help="build what is missing, stale or corrupt")
    build.add_argument("--kernel", action="append", help="only this kernel variant (repeatable)")
    build.add_argument("--force", action="store_true", help="rebuild even if intact")
    build.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: CPUs+1)")
    isub.add_parser("list", help="what is built, and whether it is intact")
    clean = isub.add_parser("clean", help="remove artifacts no recipe points at")
    clean.add_argument("--all", action="store_true", help="remove the whole cache")

    sub.add_parser("doctor", help="what this host can do")

    run = sub.add_parser("run", help="run the verdict matrix (default: all of it)")
    run.add_argument("--viommu", action="append", choices=sorted(VIOMMUS),
                     help=f"vIOMMU (repeatable; default: {', '.join(matrix.DEFAULT_VIOMMUS)})")
    run.add_argument("--backend", action="append", choices=matrix.BACKENDS,
                     help="VFIO backend of L2 (repeatable; default: both)")
    run.add_argument("--kernel", action="append", help="kernel variant (repeatable; default: all)")
    run.add_argument("--check", action="append", choices=matrix.CHECKS,
                     help="check (repeatable; default: all)")
    run.add_argument("--results", type=Path, help="directory for results.json and artifacts "
                                                  "(default: ./results/run-TIMESTAMP)")
    run.add_argument("--seed", type=int, help="seed of the P2P pattern (default: random, "
                                              "recorded in results.json)")
    run.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                     help="L0 accelerator (auto: KVM only if a boot probe succeeds)")
    run.add_argument("--ssh-port", type=int, help="fixed host port for L1's SSH (default: free)")
    run.add_argument("--l2-qemu", type=Path, metavar="PATH",
                     help="a QEMU build (x86_64 system emulator) to test as L2 instead of the "
                          "rootfs's packaged one; uploaded into each L1")
    run.add_argument("--junit", type=Path, metavar="FILE",
                     help="also write JUnit XML, a testcase per cell")
    run.add_argument("--keep-artifacts", action="store_true",
                     help="keep every artifact (default: only those of cells that did not "
                          "meet their expectation)")

    cells = sub.add_parser("matrix", help="the cells and what each is expected to do")
    cells.add_argument("--viommu", action="append", choices=sorted(VIOMMUS))
    cells.add_argument("--backend", action="append", choices=matrix.BACKENDS)
    cells.add_argument("--kernel", action="append")
    cells.add_argument("--check", action="append", choices=matrix.CHECKS)
    cells.add_argument("--avocado-variants", type=Path, metavar="FILE",
                       help="write the cells as avocado variants (--json-variants-load FILE)")
    cells.add_argument("--results", type=Path, help="with --avocado-variants: where the "
                                                    "avocado tests put results and artifacts")
    cells.add_argument("--seed", type=int, help="with --avocado-variants: the P2P seed")
    cells.add_argument("--l2-qemu", type=Path, metavar="PATH",
                       help="with --avocado-variants: the QEMU build to test as L2")
    cells.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                       help="with --avocado-variants: the L0 accelerator")
    cells.add_argument("--ssh-port", type=int,
                       help="with --avocado-variants: fixed host port for L1's SSH")

    report = sub.add_parser("report", help="an HTML page of a run, or the merge of shards")
    rsub = report.add_subparsers(dest="report_action", required=True)
    page = rsub.add_parser("html", help="render RESULTS_DIR/results.json as report.html")
    page.add_argument("results", type=Path)
    page.add_argument("--out", type=Path, help="where to write (default: RESULTS_DIR/report.html)")
    merge = rsub.add_parser("merge", help="join the results.json of CI shards into one")
    merge.add_argument("shards", type=Path, nargs="+", help="results directories of the shards")
    merge.add_argument("--out", type=Path, required=True, help="directory for the merged result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _signals_raise()
    try:
        return _dispatch(args)
    except HarnessError as e:
        print(f"vfio-harness: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vfio-harness: interrupted; QEMU processes were stopped", file=sys.stderr)
        return 130


def _signals_raise() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every QEMU is shut down on the way out."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _store(args: argparse.Namespace, jobs: int | None = None) -> ImageStore:
    return ImageStore(Recipe.load(), paths.cache_dir(args.cache_dir), jobs=jobs)


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "images":
        return _images(args)
    if args.action == "doctor":
        found = doctor.findings(_store(args), args.qemu)
        for f in found:
            print(f.line())
        return 0 if all(f.ok for f in found) else 1
    if args.action == "run":
        return _run(args)
    if args.action == "report":
        return _report(args)
    if args.action == "matrix":
        return _matrix(args)
    raise BadInput(f"unknown action {args.action}")


def _images(args: argparse.Namespace) -> int:
    store = _store(args, jobs=getattr(args, "jobs", None))
    if args.images_action == "build":
        began = time.monotonic()
        images = store.build(args.kernel, force=args.force)
        say(f"images ready in {time.monotonic() - began:.1f} s: "
            f"{', '.join(images.kernels)} kernels, rootfs with QEMU {images.rootfs.qemu_version}")
        return 0
    if args.images_action == "list":
        print(f"cache: {store.cache}")
        for s in store.states():
            status = "ok" if s.ok else s.problem
            versions = ""
            if s.ok:
                manifest = json.loads((s.directory / "manifest.json").read_text())
                versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
            print(f"  {s.name:<18} {s.key}  {status:<10} {versions}")
        for stale in store.stale():
            print(f"  (stale) {stale.name}")
        return 0
    if args.images_action == "clean":
        for path in store.clean(everything=args.all):
            print(f"removed {path}")
        return 0
    raise BadInput(f"unknown images action {args.images_action}")


def _run(args: argparse.Namespace) -> int:
    from harness import results, runner  # L1-facing modules import paramiko: only when needed

    selection = _selection(args)
    qemu = QemuBinary.find(args.qemu)
    for name in selection.viommus:
        qemu.require_devices([viommu(name).driver])
    if args.ssh_port:
        check_port(args.ssh_port)  # before minutes of work, not after
    if args.l2_qemu and not args.l2_qemu.is_file():
        raise BadInput(f"QEMU under test {args.l2_qemu} does not exist")
    store = _store(args)
    images = store.build(list(selection.kernels))  # a no-op when the cache is intact
    any_kernel = next(iter(images.kernels.values())).bzimage
    choice = accel.choose(qemu, any_kernel, store.cache,
                          force=None if args.accel == "auto" else args.accel)
    say(f"accelerator: {choice.accel.upper()} ({choice.reason})")
    seed = args.seed if args.seed is not None else matrix.new_seed()
    out = args.results or Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    say(f"results and artifacts: {out.resolve()} (seed {seed})")
    began = time.monotonic()
    cells = []
    try:
        for cell in runner.run(qemu, images, selection, out, choice.accel, seed, args.ssh_port,
                               args.l2_qemu):
            cells.append(cell)
    finally:
        info = {"seed": seed, "accel": choice.accel, "accel_reason": choice.reason,
                "l0_qemu": qemu.version_text,
                "l2_qemu": results.qemu_under_test(cells),
                "kernels": {n: k.manifest["versions"]["kernel"] for n, k in images.kernels.items()},
                "selection": vars(selection), "duration_s": round(time.monotonic() - began, 1),
                "complete": len(cells) == len(selection.cells())}
        kept = [] if args.keep_artifacts else results.prune(out, cells)
        path = results.write(out, cells, info)
        page = report.write_html(out)
        if args.junit:
            args.junit.parent.mkdir(parents=True, exist_ok=True)
            args.junit.write_text(results.junit(cells))
        if cells:
            print("\n" + results.table(cells))
        print(f"\nresults: {path.resolve()}\nreport:  {page.resolve()}")
        if args.keep_artifacts:
            print(f"artifacts (all kept): {out.resolve()}")
        for directory in kept:
            print(f"artifacts kept: {directory.resolve()}")
    return 0 if cells and all(c.met for c in cells) else 1


def _selection(args: argparse.Namespace):
    from harness import runner

    return runner.Selection(
        viommus=tuple(args.viommu or matrix.DEFAULT_VIOMMUS),
        backends=tuple(args.backend or matrix.BACKENDS),
        kernels=tuple(args.kernel or Recipe.load().kernels),
        checks=tuple(args.check or matrix.CHECKS))


def _matrix(args: argparse.Namespace) -> int:
    cells = _selection(args).cells()
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
