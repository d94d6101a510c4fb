"""vfio-harness: the one entry point.

  images build|list|clean   the L1 kernels and rootfs in the cache
  doctor                    what this host can do
  run                       boot L1 per vIOMMU and kernel, report what it offers

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

from harness import accel, doctor, paths
from harness.errors import BadInput, HarnessError
from harness.images import ImageStore
from harness.l0 import DEFAULT_DEVICES, VIOMMUS, viommu
from harness.progress import say
from harness.qemu_binary import QemuBinary
from harness.recipe import Recipe

DEFAULT_VIOMMUS = ["intel-iommu", "virtio-iommu"]


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

    run = sub.add_parser("run", help="boot L1 per vIOMMU and kernel and report what it offers")
    run.add_argument("--viommu", action="append", choices=sorted(VIOMMUS),
                     help=f"vIOMMU (repeatable; default: {', '.join(DEFAULT_VIOMMUS)})")
    run.add_argument("--kernel", action="append", help="kernel variant (repeatable; default: all)")
    run.add_argument("--results", type=Path, help="directory for results and artifacts "
                                                  "(default: ./results/run-TIMESTAMP)")
    run.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                     help="L0 accelerator (auto: KVM only if a boot probe succeeds)")
    run.add_argument("--ssh-port", type=int, help="fixed host port for L1's SSH (default: free)")
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
    from harness import stack, survey  # L1-facing modules import paramiko: only when needed

    viommus = [viommu(n) for n in (args.viommu or DEFAULT_VIOMMUS)]
    qemu = QemuBinary.find(args.qemu)
    for vi in viommus:
        qemu.require_devices([vi.driver])
    store = _store(args)
    images = store.build(args.kernel)  # a no-op when the cache is intact
    kernels = list(images.kernels)
    any_kernel = images.kernels[kernels[0]].bzimage
    choice = (accel.choose(qemu, any_kernel, store.cache, force=None if args.accel == "auto"
                           else args.accel))
    say(f"accelerator: {choice.accel.upper()} ({choice.reason})")
    results = args.results or Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    say(f"results and artifacts: {results.resolve()}")

    rows, records, failed = [], [], 0
    for vi in viommus:
        for kernel in kernels:
            expect = store.recipe.kernels[kernel].has_dmabuf
            run_dir = results / f"{vi.name}-{kernel}"
            began = time.monotonic()
            try:
                with stack.booted(qemu, images, vi, kernel, run_dir, accel=choice.accel,
                                  ssh_port=args.ssh_port) as l1:
                    found = survey.survey(l1, DEFAULT_DEVICES, expect)
                    l1.vfio.restore([d.bdf for d in found.bound])
                issues = survey.problems(found)
                record = {"viommu": vi.name, "kernel": kernel, "problems": issues,
                          "survey": found.as_dict()}
                probes = "; ".join(f"{b} {survey.describe_probe(p)}"
                                   for b, p in found.probes.items())
                rows.append((vi.name, kernel, f"{found.boot_seconds:.1f}s",
                             "ok" if not issues else "PROBLEM", probes))
            except HarnessError as e:
                issues = [str(e)]
                record = {"viommu": vi.name, "kernel": kernel, "problems": issues}
                rows.append((vi.name, kernel, "-", "ERROR", e.message))
            record["duration_s"] = round(time.monotonic() - began, 1)
            records.append(record)
            failed += bool(issues)
            for line in issues:
                say(f"{vi.name}/{kernel}: {line}")
    (results / "survey.json").write_text(json.dumps({"l1": records}, indent=2, default=str))
    print(f"\n{'vIOMMU':<14} {'kernel':<10} {'boot':>6}  {'L1':<8} VFIO dma-buf (kernel probe)")
    for vi_name, kernel, boot, state, detail in rows:
        print(f"{vi_name:<14} {kernel:<10} {boot:>6}  {state:<8} {detail}")
    print(f"\nresults: {(results / 'survey.json').resolve()}")
    return 1 if failed else 0
