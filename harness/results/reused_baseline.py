"""An earlier run taken as an A/B's baseline (`ab --baseline-results DIR`).

A maintainer judging several series against the same base, or a CI job judging each
series of a queue, runs the same baseline again and again: the pinned kernel and the
packaged QEMU on the same cells and seed. One finished run can stand for all of them,
but only if it is exactly what the A/B would have run as its baseline; anything else
would make "new failure" mean "differs from some other run". So every fact of the run
record that decides the cells' outcomes must match, and the first that does not is the
one clear line the user gets.
"""

import argparse
from collections.abc import Callable
from pathlib import Path

from harness.base.errors import BadInput
from harness.base.progress import say
from harness.evidence.records import PACKAGED
from harness.results import results_file

#: (run record key, what a mismatch says it is): the facts a baseline is defined by.
#: Known before any image is built (an empty cache refuses a wrong baseline at once) ...
BEFORE_IMAGES = (("arch", "architecture"), ("selection", "selection of cells"),
                 ("seed", "seed"))
#: ... and once the images (with any baseline series) and the accelerator are settled.
AFTER_IMAGES = (("images", "L1 images (kernels and rootfs, by sha256)"),
                ("kernel_series", "kernel series"), ("kernel_images", "kernel images"),
                ("kernel_trees", "kernel trees"), ("accel", "accelerator"))


def offered(args: argparse.Namespace, selected: Callable[[], dict]) -> dict | None:
    """--baseline-results DIR, checked as far as it can be before any image is built: its
    seed becomes the A/B's (args.seed) unless --seed says otherwise, and then it is refused.
    `selected`: this A/B's architecture and selection record."""
    directory = args.baseline_results
    if directory is None:
        return None
    if args.baseline_l2_qemu:
        raise BadInput("--baseline-results takes the baseline from an earlier run of the "
                       "packaged QEMU: --baseline-l2-qemu would make it another; give one")
    reused = load(directory)
    if args.seed is None:
        args.seed = reused["run"].get("seed")
    require(directory, reused["run"], {**selected(), "seed": args.seed}, BEFORE_IMAGES)
    return reused


def taken(directory: Path, reused: dict, want: dict, begun: tuple[Path, ...]) -> None:
    """The rest of the check, once the images are settled (`want`: the run record this A/B's
    baseline would have); refused, the records `begun` for this A/B are undone."""
    try:
        require(directory, reused["run"], want, AFTER_IMAGES)
    except BadInput:
        for record in begun:
            results_file.abandon(record)
        raise
    say(f"baseline: run {reused['run']['run_id']} in {directory.resolve()} "
        f"({len(reused['cells'])} cells, seed {reused['run']['seed']}), not run again")


def load(directory: Path) -> dict:
    """The earlier run's results.json, refused unless it finished and ran the packaged
    QEMU (a baseline's QEMU is the rootfs's: its sha256 is in the rootfs's)."""
    data = results_file.load(directory, finished=True)
    others = [q.get("origin") for q in data["run"].get("l2_qemu") or []
              if q.get("origin") != PACKAGED]
    if others:
        raise BadInput(f"--baseline-results {directory}: its L2 QEMU was {others[0]}, not "
                       f"the rootfs's packaged one an A/B's baseline runs")
    return data


def mismatch(run: dict, want: dict, keys: tuple[tuple[str, str], ...]) -> str | None:
    """The first fact of `keys` on which the earlier `run` differs from what this A/B's
    baseline would be (`want`), in words; None when it can stand as that baseline."""
    for key, words in keys:
        theirs, ours = run.get(key) or None, want.get(key) or None
        if theirs != ours:
            where, theirs, ours = _where(theirs, ours)
            return (f"its {words}{f' ({where})' if where else ''} {_short(theirs)}, "
                    f"this A/B's baseline {_short(ours)}")
    return None


def _where(theirs: object, ours: object, path: str = "") -> tuple[str, object, object]:
    """Down nested records to the first key that differs: a selection's checks, not the
    whole selection twice."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                return _where(theirs.get(key), ours.get(key), f"{path}.{key}" if path else key)
    return path, theirs, ours


def require(directory: Path, run: dict, want: dict,
            keys: tuple[tuple[str, str], ...]) -> None:
    why = mismatch(run, want, keys)
    if why:
        raise BadInput(f"--baseline-results {directory} is not this A/B's baseline: {why}")


def _short(value: object, width: int = 100) -> str:
    text = "none" if value is None else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
