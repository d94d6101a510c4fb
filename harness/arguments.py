"""The command line's grammar: every subcommand, option and argument type, and the one
clear line (exit 2) argparse gives for a value that is not one (cli.py acts on them)."""

import argparse
from pathlib import Path

from harness.base import sizes
from harness.checks import matrix, registry
from harness.platforms import AARCH64, ALL_VIOMMUS, PLATFORMS, X86_64


def parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfio-harness", description=description)
    p.add_argument("--cache-dir", help="image cache (default: $VFIO_HARNESS_CACHE or "
                                       "$XDG_CACHE_HOME/vfio-harness)")
    p.add_argument("--cache-max", type=_size, metavar="SIZE",
                   help="the cache's budget, kept after each build by removing the least "
                        "recently used series trees and kernels (default: "
                        "$VFIO_HARNESS_CACHE_MAX or 40G)")
    p.add_argument("--qemu", help="L0 QEMU binary (default: qemu-system-x86_64 on PATH)")
    sub = p.add_subparsers(dest="action", required=True)

    images = sub.add_parser("images", help="build, list or clean the L1 images")
    isub = images.add_subparsers(dest="images_action", required=True)
    build = isub.add_parser("build", help="build what is missing, stale or corrupt")
    _arch_option(build)
    build.add_argument("--kernel", action="append", help="only this kernel variant (repeatable)")
    build.add_argument("--force", action="store_true", help="rebuild even if intact")
    build.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: CPUs)")
    build.add_argument("--kernel-patches", type=Path, metavar="SERIES",
                       help="also build each kernel variant with this series applied (an mbox "
                            "or a directory of patches)")
    _arch_option(isub.add_parser("list", help="what is built, and whether it is intact"))
    clean = isub.add_parser("clean", help="remove artifacts no recipe points at")
    clean.add_argument("--all", action="store_true", help="remove the whole cache")
    prune = isub.add_parser("prune", help="remove series trees and kernels, least recently "
                                          "used first (never the recipes' images, never what "
                                          "a running process holds)")
    prune.add_argument("--max-size", type=_size, metavar="SIZE",
                       help="until the cache is at most this large (e.g. 20G)")
    prune.add_argument("--older-than", type=_days, metavar="DAYS",
                       help="whatever was not used for this many days")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")

    doc = sub.add_parser("doctor", help="what this host can do, the cache, and what killed "
                                        "runs left behind")
    doc.add_argument("--clean", action="store_true",
                     help="first remove the L0 QEMUs and /dev/shm files of harness processes "
                          "that are gone")

    run = sub.add_parser("run", help="run the verdict matrix (default: all of it)")
    _run_options(run)
    _under_test_options(run)
    run.add_argument("--junit", type=Path, metavar="FILE",
                     help="also write JUnit XML, a testcase per cell")
    run.add_argument("--bisect", action="store_true",
                     help="with --kernel-patches: when cells miss their expectation, name the "
                          "first patch of the series that makes each miss it")
    run.add_argument("--keep-failed", type=_hold, nargs="?", const=1800.0, metavar="SECONDS",
                     help="keep an L1 whose cells did not all meet their expectation up after "
                          "them, say how to reach it, and go on when Enter is pressed or "
                          "SECONDS (default 1800) are over; L1s then boot one at a time")
    run.add_argument("--keep-artifacts", action="store_true",
                     help="keep every artifact (default: only those of cells that did not "
                          "meet their expectation)")

    shell = sub.add_parser("shell", help="a cell's L1 up, its L2 started as the cell starts "
                                         "it, and a shell in L1; quitting tears it down")
    shell.add_argument("cell", metavar="CELL-ID",
                       help="as in results and reports, e.g. intel-iommu-iommufd-dmabuf-reset")
    _under_test_options(shell)
    _series_option(shell)
    shell.add_argument("--no-l2", action="store_true",
                       help="boot L1 and hand the devices to vfio-pci; leave L2 to you")
    shell.add_argument("--results", type=Path, help="directory for the artifacts "
                                                    "(default: ./results/shell-TIMESTAMP)")
    shell.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                       help="L0 accelerator (auto: KVM only if a boot probe succeeds)")
    shell.add_argument("--ssh-port", type=_port,
                       help="fixed host port for L1's SSH (default: free)")
    shell.epilog = "shell CELL-ID [options] -- COMMAND runs COMMAND in L1 instead of a shell"

    ab = sub.add_parser("ab", help="baseline against candidate: both QEMUs under test on the "
                                   "same L1 boots, images, seed and cells, then compared")
    ab.add_argument("--candidate-l2-qemu", type=Path, metavar="PATH",
                    help="the QEMU build under test (say, with a series applied)")
    ab.add_argument("--baseline-l2-qemu", type=Path, metavar="PATH",
                    help="the QEMU to compare it with (default: the rootfs's packaged one)")
    ab.add_argument("--baseline-results", type=Path, metavar="DIR",
                    help="an earlier run to take as the baseline instead of running it: "
                         "finished, of the packaged QEMU, on the same cells, seed, images "
                         "and accelerator this A/B's baseline would be (else refused)")
    ab.add_argument("--candidate-kernel-patches", type=Path, metavar="SERIES",
                    help="a kernel series under test: the candidate's L1 kernels have it")
    ab.add_argument("--baseline-kernel-patches", type=Path, metavar="SERIES",
                    help="a series the baseline's L1 kernels have (default: none)")
    ab.add_argument("--candidate-kernel-image", type=Path, metavar="BZIMAGE",
                    help="a kernel built elsewhere as the candidate's L1 kernel")
    ab.add_argument("--candidate-kernel-config", type=Path, metavar="FILE",
                    help="its .config (default: the one it embeds)")
    ab.add_argument("--bisect", action="store_true",
                    help="when the candidate's kernel series brings new failures, name the "
                         "first patch that brings each: its prefixes built incrementally, "
                         "only the new failures run on each")
    _run_options(ab)
    ab.add_argument("--junit", type=Path, metavar="FILE",
                    help="also write the comparison as JUnit XML, a testcase per cell")

    cmp = sub.add_parser("compare", help="compare two results directories (baseline, "
                                         "candidate): new failures and the evidence that changed")
    cmp.add_argument("baseline", type=Path)
    cmp.add_argument("candidate", type=Path)
    cmp.add_argument("--out", type=Path, help="where compare.{txt,json,xml,html} go "
                                              "(default: CANDIDATE/compare)")
    cmp.add_argument("--json", action="store_true", help="print JSON instead of text")
    cmp.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    _patchwork_options(cmp)
    _kcidb_option(cmp)

    cells = sub.add_parser("matrix", help="the cells and what each is expected to do")
    _arch_option(cells)
    cells.add_argument("--viommu", action="append", choices=ALL_VIOMMUS)
    cells.add_argument("--backend", action="append", choices=matrix.BACKENDS)
    cells.add_argument("--kernel", action="append")
    cells.add_argument("--check", action="append", choices=registry.names())
    cells.add_argument("--avocado-variants", type=Path, metavar="FILE",
                       help="write the cells as avocado variants (--json-variants-load FILE)")
    cells.add_argument("--results", type=Path, help="with --avocado-variants: where the "
                                                    "avocado tests put results and artifacts")
    cells.add_argument("--seed", type=int, help="with --avocado-variants: the P2P seed")
    cells.add_argument("--l2-qemu", type=Path, metavar="PATH",
                       help="with --avocado-variants: the QEMU build to test as L2")
    cells.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                       help="with --avocado-variants: the L0 accelerator")
    cells.add_argument("--ssh-port", type=_port,
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


def _int_in(text: str, low: int, high: int, what: str) -> int:
    """An integer in [low, high], refused by argparse (exit 2, one line) when it is not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not {what} ({low}-{high})")
    return value


def _port(text: str) -> int:
    return _int_in(text, 1, 65535, "a TCP port")


def _hold(text: str) -> float:
    return float(_int_in(text, 1, 86400, "a number of seconds to hold an L1"))


def _size(text: str) -> int:
    try:
        return sizes.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not 0 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}")
    return days


def _positive(text: str) -> int:
    return _int_in(text, 1, 10**6, "a number of patches")


def _jobs(text: str) -> int:
    """L1s at once: each is 4 GiB of RAM and about half a core."""
    return _int_in(text, 1, 8, "a number of L1s at once")


def _run_options(p: argparse.ArgumentParser) -> None:
    """What selects cells and shapes a run: the same for `run` and `ab`."""
    _arch_option(p)
    p.add_argument("--viommu", action="append", choices=ALL_VIOMMUS,
                   help=f"vIOMMU (repeatable; default: {', '.join(matrix.DEFAULT_VIOMMUS)} on "
                        f"x86_64, {', '.join(AARCH64.default_viommus)} on aarch64)")
    p.add_argument("--backend", action="append", choices=matrix.BACKENDS,
                   help="VFIO backend of L2 (repeatable; default: both)")
    p.add_argument("--kernel", action="append", help="kernel variant (repeatable; default: the "
                   "recipe's matrix, dmabuf and no-dmabuf; with a kernel series, debug in "
                   "dmabuf's place)")
    p.add_argument("--check", action="append", choices=registry.names(),
                   help="check (repeatable; default: all)")
    p.add_argument("--results", type=Path, help="directory for results and artifacts "
                                                "(default: ./results/ACTION-TIMESTAMP)")
    p.add_argument("--seed", type=int, help="seed of the P2P pattern (default: random, "
                                            "recorded in results.json)")
    p.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                   help="L0 accelerator (auto: KVM only if a boot probe succeeds)")
    p.add_argument("--ssh-port", type=_port, help="fixed host port for L1's SSH (default: free)")
    p.add_argument("--jobs", type=_jobs, metavar="N",
                   help="L1s booted at once (default: one per core; 1 with --ssh-port)")
    _series_option(p)
    _patchwork_options(p)
    _kcidb_option(p)


def _under_test_options(p: argparse.ArgumentParser) -> None:
    """The kernel and QEMU under test: the same for `run` and `shell`."""
    p.add_argument("--kernel-patches", type=Path, metavar="SERIES",
                   help="a kernel series under test (an mbox, or a directory of patches), "
                        "applied to the pinned source of each kernel variant")
    p.add_argument("--kernel-patches-first", type=_positive, metavar="N",
                   help="apply only the series' first N patches (a bisect's reproduce line "
                        "names the first bad patch this way)")
    p.add_argument("--kernel-tree", type=Path, metavar="DIR",
                   help="your own kernel source tree, built out of tree (O= in the cache) "
                        "with each variant's fragments and booted as L1")
    p.add_argument("--kernel-image", type=Path, metavar="BZIMAGE",
                   help="a kernel built elsewhere, booted as L1 as is, after checking its "
                        "config; its variant is --kernel, else dmabuf if its config has "
                        "VFIO_PCI_DMABUF")
    p.add_argument("--kernel-config", type=Path, metavar="FILE",
                   help="the .config of --kernel-image (default: the one it embeds, "
                        "CONFIG_IKCONFIG)")
    p.add_argument("--l2-qemu", type=Path, metavar="PATH",
                   help="a QEMU build (x86_64 system emulator) to test as L2 instead of the "
                        "rootfs's packaged one; uploaded into each L1")


def _series_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", type=Path, metavar="FILE",
                   help="the series being validated (QEMU's or the kernel's, an mbox or a "
                        "directory): every trace event it adds or changes is switched on in "
                        "L2, and the report says where each fired and which cells run the "
                        "files it touches")


def _patchwork_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patchwork-check", type=Path, metavar="FILE",
                   help="write the Patchwork check for the series (state, context, "
                        "description, target_url) here; nothing is posted")
    p.add_argument("--patchwork-target-url", metavar="URL",
                   help="the check's target_url (default: the report's file:// URL)")


def _kcidb_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kcidb", type=Path, metavar="FILE",
                   help="also write the run (an A/B: both sides) as KCIDB JSON (schema v5.3), "
                        "for `kcidb-submit`")


def _arch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=sorted(PLATFORMS), default=X86_64.arch,
                   help=f"the platform L0 emulates and L1 runs (default: {X86_64.arch})")
