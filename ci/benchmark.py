#!/usr/bin/env python3
"""Measure what the harness promises about speed; report medians.

  ci/benchmark.py noop-rebuild [--runs 5]     `images build` on an intact cache
  ci/benchmark.py l1-boot [--runs 5] [--viommu V] [--kernel K]
                                              L0 start to SSH ready
  ci/benchmark.py scratch-build [--runs 1]    `images build` into an empty cache
                                              (slow: a full build per run)
  ci/benchmark.py fresh-setup [--runs 1]      a clone of this checkout, in an empty cache
                                              and its own venv: the main job (ci/main.sh:
                                              images, then the default matrix), then the
                                              debug kernel and the arm64 images .ci/run
                                              builds besides; seconds from the clone to
                                              each image and each step's end (slow: about
                                              40 minutes a run; host packages as installed)

--arch aarch64 measures the arm64 platform instead (noop-rebuild, scratch-build,
l1-boot, matrix; --viommu then defaults to smmuv3).
  ci/benchmark.py matrix [--runs 3] [--creation] [--jobs N] [--without B]
                                              `vfio-harness run`, the default matrix
                                              (--creation: its 24 creation-time cells:
                                              dmabuf-per-region, mmap-fallback, p2p-dma;
                                              --jobs: L1s at once, default the CLI's;
                                              --without: leave a backend's cells out, so
                                              that what it adds is the difference)
  ci/benchmark.py l2-scenario [--runs 5] [--viommu V] [--kernel K] [--backend B]
                                              one more L2 scenario (all checks of one
                                              backend) on an L1 that is already up
  ci/benchmark.py selection [--runs 3]        a marker selection through pytest
                                              (-m "intel_iommu and p2p_dma") against the
                                              CLI's equivalent run, paired run by run
  ci/benchmark.py ab-series [--runs 3]        `vfio-harness ab --candidate-kernel-patches`
                                              of the default matrix for a new one-file
                                              drivers/vfio series: from series to verdict
  ci/benchmark.py witness [--runs 3] [--viommu V] [--kernel K]
                                              what the kernel health witness (L1's log
                                              and taint after every step) costs a cell:
                                              `vfio-harness run` of one L1's 14 cells, the
                                              witness's own seconds per cell (the larger
                                              backend's), the run's time beside it
  ci/benchmark.py bisect [--runs 3]           `vfio-harness ab --bisect` of the 10-patch
                                              series whose 7th patch breaks whole-BAR
                                              dma-bufs (tests/data/series/bisect-10.mbox),
                                              on intel-iommu/dmabuf (14 cells): from series
                                              to the named patch, the bisect's own time
                                              beside it; the series' kernels are dropped
                                              before each run

  ci/benchmark.py prune [--runs 3] [--series 50]
                                              `images prune` of a cache holding 50 series
                                              as a CI runner leaves them (each a source
                                              tree linked to the pristine one, an object
                                              tree with the real tree's 6,700 files, a
                                              kernel), down to nothing of theirs
  ci/benchmark.py report-parse [--runs 5]     reading a 300-line kernel log into reports
                                              (the captured refcount report, then every
                                              class's sample in turn): seconds per parse,
                                              the median of 50 parses per run

Each prints one JSON line per run and a summary with the median; --json FILE
appends the summary there. Run it on a machine doing nothing else.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.l2 import backends

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed_cli(args: list[str], env: dict | None = None) -> float:
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "harness", *args], check=True,
                   env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - began


def noop_rebuild(args: argparse.Namespace) -> list[float]:
    build = ["images", "build", "--arch", args.arch]
    timed_cli(build)  # make sure it is built; not counted
    return [timed_cli(build) for _ in range(args.runs)]


def scratch_build(args: argparse.Namespace) -> list[float]:
    out = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as cache:
            out.append(timed_cli(["images", "build", "--arch", args.arch],
                                 env={"VFIO_HARNESS_CACHE": cache}))
    return out


ROOT = Path(__file__).resolve().parent.parent
#: After the clone: the main job (ci/main.sh: set-up, `images build`, the default matrix),
#: then the images .ci/run builds besides (ci/test.sh), in their order.
FRESH_STEPS = (("main job", ("bash", "ci/main.sh", "--results", "{tmp}/results")),
               ("debug kernel", ("{venv}/bin/vfio-harness", "images", "build", "--kernel",
                                 "debug")),
               ("arm64 images", ("{venv}/bin/vfio-harness", "images", "build", "--arch",
                                 "aarch64")))
_READY = re.compile(r"^\[\s*([\d.]+)s\] (\S+): ready in ")


def fresh_setup(args: argparse.Namespace) -> list[float]:
    """Seconds from `git clone` to every image .ci/run builds; args.images: per run, the
    seconds from the clone at which each image was ready and each step ended (the main
    job's end is the README's "main job from a fresh clone")."""
    out, args.images = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp:
            began = time.monotonic()
            clone, venv = Path(tmp) / "clone", Path(tmp) / "venv"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env = {**os.environ, "VFIO_HARNESS_CACHE": str(Path(tmp) / "cache"),
                   "VFIO_HARNESS_VENV": str(venv)}
            ready: dict[str, float] = {}
            for name, command in FRESH_STEPS:
                at = time.monotonic() - began
                done = subprocess.run([c.format(tmp=tmp, venv=venv) for c in command],
                                      cwd=clone, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"fresh-setup: {name} failed (exit {done.returncode}): "
                             f"{done.stderr[-2000:]}")
                for line in done.stderr.splitlines():
                    if m := _READY.match(line):  # named by step: both arches have a rootfs
                        ready[f"{name}: {m.group(2)}"] = round(at + float(m.group(1)), 1)
                ready[f"{name} done"] = round(time.monotonic() - began, 1)
            out.append(time.monotonic() - began)
            args.images.append(ready)
            print(json.dumps(ready), flush=True)
    return out


def l1_boot(args: argparse.Namespace) -> list[float]:
    from harness.collect.stack import booted
    from harness.platforms import platform
    from harness.run.cell_results import Setup

    plat = platform(args.arch)
    setup = Setup.from_environment(kernels=[args.kernel], platform=plat)
    out = []
    with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp:
        for i in range(args.runs):
            with booted(setup.qemu, setup.images, plat.viommu(args.viommu), args.kernel,
                        Path(tmp) / str(i), accel=setup.accel) as l1:
                out.append(l1.boot_seconds)
    return out


CREATION = ("dmabuf-per-region", "mmap-fallback", "p2p-dma")


def matrix_run(args: argparse.Namespace) -> list[float]:
    extra = [a for c in CREATION for a in ("--check", c)] if args.creation else []
    extra += ["--jobs", str(args.jobs)] if args.jobs else []
    extra += ["--arch", args.arch]
    if args.without:
        extra += [a for b in backends.NAMES if b not in args.without for a in ("--backend", b)]
    out = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as results:
            out.append(timed_cli(["run", "--results", results, *extra]))
    return out


def l2_scenario(args: argparse.Namespace) -> list[float]:
    from harness.checks import matrix
    from harness.collect.stack import booted
    from harness.platforms import X86_64
    from harness.run import runner
    from harness.run.cell_results import Setup

    setup = Setup.from_environment(kernels=[args.kernel])
    out = []
    with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp, \
            booted(setup.qemu, setup.images, X86_64.viommu(args.viommu), args.kernel,
                   Path(tmp) / "l1", accel=setup.accel) as l1:
        under_test = runner.qemu_under_test(l1, None)
        for i in range(args.runs + 1):  # the first run warms L1's page cache: not counted
            began = time.monotonic()
            wanted = matrix.cells((args.viommu,), (args.backend,), (args.kernel,))
            cells = list(runner.cells_on_l1(l1, under_test, wanted, Path(tmp) / str(i), seed=i))
            if i:
                out.append(time.monotonic() - began)
            if not all(c.met for c in cells):
                raise SystemExit(f"a cell did not meet its expectation: {cells}")
    return out


SELECTED = ("-m", "intel_iommu and p2p_dma")
SELECTED_CLI = ("--viommu", "intel-iommu", "--check", "p2p-dma")


def selection(args: argparse.Namespace) -> list[float]:
    """pytest's times; the CLI's go into args.paired."""
    root = Path(__file__).resolve().parent.parent
    out, args.paired = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp:
            began = time.monotonic()
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *SELECTED, "--artifacts", tmp, "tests/vm/test_matrix.py"],
                           cwd=root, check=True, stdout=subprocess.DEVNULL)
            out.append(time.monotonic() - began)
            cells = json.loads((Path(tmp) / "matrix" / "results.json").read_text())["cells"]
            if len(cells) != 4:
                raise SystemExit(f"pytest's selection wrote {len(cells)} cells, not 4")
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp:
            args.paired.append(timed_cli(["run", "--results", tmp, *SELECTED_CLI]))
    return out


def _one_file_series(out: Path, token: str) -> Path:
    """A series never built before (its comment is new), touching one drivers/vfio file."""
    from harness.base import paths
    from harness.images.recipe import Recipe
    from harness.images.store import ImageStore

    store = ImageStore(Recipe.load(), paths.cache_dir())
    src = store.kernel_source(store.recipe.kernels["dmabuf"])
    rel = "drivers/vfio/pci/vfio_pci_dmabuf.c"
    repo = out / "repo"
    (repo / Path(rel).parent).mkdir(parents=True)
    (repo / rel).write_text((src / rel).read_text())
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=repo, check=True)
    text = (repo / rel).read_text()
    (repo / rel).write_text(text.replace("static int validate_dmabuf_input(",
                                         f"/* benchmark {token} */\nstatic int "
                                         f"validate_dmabuf_input(", 1))
    subprocess.run([*git, "commit", "-qam", f"vfio/pci: a comment ({token})"], cwd=repo,
                   check=True)
    mbox = out / "series.mbox"
    mbox.write_text(subprocess.run([*git, "format-patch", "--stdout", "HEAD~1"], cwd=repo,
                                   check=True, capture_output=True, text=True).stdout)
    return mbox


def ab_series(args: argparse.Namespace) -> list[float]:
    out = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp:
            series = _one_file_series(Path(tmp), f"{time.time_ns()}-{i}")
            out.append(timed_cli(["ab", "--candidate-kernel-patches", str(series),
                                  "--results", str(Path(tmp) / "ab")]))
        timed_cli(["images", "clean"])  # drop the series' trees: 400 MB each
    return out


BISECT_SERIES = Path(__file__).resolve().parent.parent / "tests/data/series/bisect-10.mbox"


def bisect(args: argparse.Namespace) -> list[float]:
    out = []
    args.bisect_s = []
    for _ in range(args.runs):
        timed_cli(["images", "clean"])  # no kernel of the series or its prefixes left
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as tmp:
            began = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "harness", "ab", "--bisect",
                                "--candidate-kernel-patches", str(BISECT_SERIES),
                                "--viommu", args.viommu, "--kernel", args.kernel,
                                "--results", str(Path(tmp) / "ab")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out.append(time.monotonic() - began)
            record = json.loads((Path(tmp) / "ab" / "compare.json").read_text())
            named = {c["verdict"] + " " + str(c["first_bad"])
                     for c in record.get("bisect", {}).get("cells", {}).values()}
            if p.returncode != 1 or named != {"first bad patch 7"}:
                raise SystemExit(f"bisect did not name patch 7: exit {p.returncode}, {named}\n"
                                 + p.stdout[-3000:])
            args.bisect_s.append(record["bisect"]["duration_s"])
    return out


def witness(args: argparse.Namespace) -> list[float]:
    out, args.paired = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-") as results:
            args.paired.append(timed_cli(["run", "--results", results, "--arch", args.arch,
                                          "--viommu", args.viommu, "--kernel", args.kernel]))
            cells = json.loads((Path(results) / "results.json").read_text())["cells"]
            out.append(max(c["evidence"]["kernel_witness_s"] for c in cells))
    return out


def prune(args: argparse.Namespace) -> list[float]:
    from harness.base import paths
    from harness.images import cache_book
    from harness.images.linked_tree import link_tree
    from harness.images.recipe import Recipe
    from harness.images.store import ImageStore

    store = ImageStore(Recipe.load(), paths.cache_dir())
    variant = store.recipe.kernels["dmabuf"]
    pristine, objects = store.kernel_source(variant), store.build_dir / "kernel-dmabuf"
    kernel = store.kernel_dir(variant)
    if not (pristine.is_dir() and objects.is_dir() and kernel.is_dir()):
        raise SystemExit("prune: build the images first (vfio-harness images build)")
    out = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vfio-harness-bench-", dir=store.cache) as tmp:
            cache = Path(tmp)
            for n in range(args.series):
                name = f"series-{n:012x}"
                link_tree(pristine, cache / "src" / f"{pristine.name}+{name}",
                          ["drivers/vfio/pci/vfio_pci_dmabuf.c"])
                (cache / "build").mkdir(exist_ok=True)
                (cache / "artifacts").mkdir(exist_ok=True)
                subprocess.run(["cp", "-al", str(objects),
                                str(cache / "build" / f"kernel-dmabuf+{name}")], check=True)
                subprocess.run(["cp", "-al", str(kernel), str(
                    cache / "artifacts" / f"kernel-dmabuf+{name}-{n:016x}")], check=True)
            out.append(timed_cli(["--cache-dir", str(cache), "images", "prune", "--max-size",
                                  "1M"]))
            left = list((cache / "build").iterdir())
            if left:
                raise SystemExit(f"prune left {len(left)} object trees")
            while cache_book.being_deleted(cache):  # its trash, deleted behind it: not timed
                time.sleep(0.5)
    return out


def report_parse(args: argparse.Namespace) -> list[float]:
    from harness.evidence.kernel_log import LogLine, reports
    from harness.evidence.report_classes import CLASSES

    data = Path(__file__).resolve().parent.parent / "tests" / "data" / "kernel"
    names = ["captured-x86-7.2.13-double-put-at-l2-stop.txt", *(c.sample for c in CLASSES)]
    texts = [t for n in names for t in (data / n).read_text().splitlines()][:300]
    lines = [LogLine(i, 4, i, t) for i, t in enumerate(texts)]
    args.found = len(reports(lines))
    out = []
    for _ in range(args.runs):
        each = []
        for _ in range(50):
            began = time.perf_counter()
            reports(lines)
            each.append(time.perf_counter() - began)
        out.append(statistics.median(each))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["noop-rebuild", "scratch-build", "fresh-setup", "l1-boot",
                                    "matrix",
                                    "l2-scenario", "selection", "ab-series", "bisect",
                                    "witness", "report-parse", "prune"])
    p.add_argument("--runs", type=int)
    p.add_argument("--arch", default="x86_64", choices=["x86_64", "aarch64"])
    p.add_argument("--viommu")
    p.add_argument("--kernel", default="dmabuf")
    p.add_argument("--backend", default="iommufd")
    p.add_argument("--creation", action="store_true", help="matrix: the 24 creation-time cells")
    p.add_argument("--jobs", type=int, help="matrix: L1s at once")
    p.add_argument("--without", action="append", choices=backends.NAMES,
                   help="matrix: leave this backend's cells out")
    p.add_argument("--series", type=int, default=50, help="prune: series in the cache")
    p.add_argument("--json", type=Path, help="append the summary to this file")
    args = p.parse_args()
    args.runs = args.runs or {"scratch-build": 1, "fresh-setup": 1, "matrix": 3, "ab-series": 3,
                              "selection": 3, "bisect": 3, "witness": 3,
                              "prune": 3}.get(args.what, 5)
    args.viommu = args.viommu or ("smmuv3" if args.arch == "aarch64" else "intel-iommu")
    fn = {"noop-rebuild": noop_rebuild, "scratch-build": scratch_build,
          "fresh-setup": fresh_setup, "l1-boot": l1_boot,
          "matrix": matrix_run, "l2-scenario": l2_scenario, "selection": selection,
          "ab-series": ab_series, "bisect": bisect, "witness": witness,
          "report-parse": report_parse, "prune": prune}
    samples = fn[args.what](args)
    def rounded(seconds: float) -> float:
        return round(seconds, 2 if seconds >= 1 else 6)

    for i, s in enumerate(samples):
        print(json.dumps({"run": i, "seconds": rounded(s)}))
    summary = {"benchmark": args.what, "runs": len(samples),
               "median_s": rounded(statistics.median(samples)),
               "min_s": rounded(min(samples)), "max_s": rounded(max(samples)),
               "arch": args.arch,
               **({"viommu": args.viommu, "kernel": args.kernel}
                  if args.what in ("l1-boot", "l2-scenario", "witness") else {}),
               **({"per": "cell", "run_median_s": round(statistics.median(args.paired), 2)}
                  if args.what == "witness" else {}),
               **({"backend": args.backend} if args.what == "l2-scenario" else {}),
               **({"series": args.series} if args.what == "prune" else {}),
               **({"per": "parse of 300 lines", "reports": args.found,
                   "median_ms": round(statistics.median(samples) * 1000, 2)}
                  if args.what == "report-parse" else {}),
               **({"cells": "creation" if args.creation else "all",
                   "jobs": args.jobs or "default"} if args.what == "matrix" else {}),
               **({"pytest": " ".join(SELECTED), "cli": " ".join(SELECTED_CLI),
                   "cli_median_s": round(statistics.median(args.paired), 2),
                   "cli_min_s": round(min(args.paired), 2),
                   "cli_max_s": round(max(args.paired), 2)}
                  if args.what == "selection" else {}),
               **({"images_ready_median_s": {
                   name: statistics.median(r[name] for r in args.images if name in r)
                   for name in args.images[0]}} if args.what == "fresh-setup" else {}),
               **({"bisect_median_s": round(statistics.median(args.bisect_s), 2),
                   "bisect_min_s": min(args.bisect_s), "bisect_max_s": max(args.bisect_s)}
                  if args.what == "bisect" else {})}
    print(json.dumps(summary))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
