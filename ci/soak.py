#!/usr/bin/env python3
"""The default matrix N times in a row; every verdict that flips, with both reasons.

    ci/soak.sh N [run options...]

Each run goes to RESULTS/run-K (default RESULTS: results/soak-TIMESTAMP). A flip is a
cell whose outcome differs from the previous run's (compare.py does the pairing). Exit 0
when every run met every expectation and nothing flipped, 1 otherwise.
"""

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.results import compare  # noqa: E402
from harness.results.report import load  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: ci/soak.sh N [vfio-harness run options]", file=sys.stderr)
        return 2
    runs, extra = int(argv[0]), argv[1:]
    top = Path("results") / datetime.now().strftime("soak-%Y%m%d-%H%M%S")
    flips, unmet, times, previous = 0, 0, [], None
    for k in range(1, runs + 1):
        out = top / f"run-{k}"
        began = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "harness", "run", "--results", str(out),
                               *extra], stdout=subprocess.DEVNULL).returncode
        times.append(time.monotonic() - began)
        cells = load(out)["cells"]
        bad = [c for c in cells if not c["met"]]
        unmet += len(bad)
        print(f"run {k}/{runs}: exit {code}, {len(cells)} cells, {len(bad)} not as expected, "
              f"{times[-1]:.1f} s", flush=True)
        for c in bad:
            print(f"  !! {c['id']}: expected {c['expected']}, got {c['outcome']}: {c['reason']}")
        if previous is not None:
            for change in compare.compare(previous, out).cells:
                b, c = change.baseline, change.candidate
                if b and c and b["outcome"] != c["outcome"]:
                    flips += 1
                    print(f"  flip {change.id}: {b['outcome']} -> {c['outcome']}\n"
                          f"    run {k - 1}: {b['reason']}\n    run {k}: {c['reason']}")
        previous = out
    times.sort()
    print(f"soak: {runs} runs, {flips} flip(s), {unmet} cell(s) not as expected in all; "
          f"median {times[len(times) // 2]:.1f} s; results in {top.resolve()}")
    return 0 if not flips and not unmet else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
