"""The harness refuses to pass a QEMU under test that lies or breaks the feature.

Every adversary of the catalogue (tests/vm/adversaries) runs as the QEMU under
test on real L1s of both kernels, on both kernel backends, through the same path as
a user's `--l2-qemu` build. (vfio-user's own adversaries, a lying server and an L2
that drops a BAR's mmap, are in test_vfio_user.py; the one relation of a kernel
adversary to vfio-user's cells, refuse-dmabuf breaking its P2P into a vfio-pci BAR,
is held in test_ab.py, whose `ab` runs every backend.) Each must get the
verdicts the catalogue names, with a reason pointing at the lie; every other cell
must meet its expectation as with the honest QEMU; and no adversary may get
through with every cell met.

The L1s run side by side (one child process each, as the matrix runs its L1s),
two per kernel, each playing its share of the adversaries this session selected
one after another; each test then judges what its adversary got.
"""

import json
from pathlib import Path

import pytest

from harness.checks import matrix, registry
from harness.collect.stack import booted
from harness.platforms import X86_64
from harness.run import parallel, runner
from tests.vm.adversaries import CATALOGUE, build_shim
from tests.vm.conftest import say

VIOMMU = "intel-iommu"
KERNELS = ("dmabuf", "no-dmabuf")
#: What the L2 that dies (below) is called among the adversaries' results.
DIES_NAME = "dies"

#: A QEMU under test that L1 kills (SIGKILL) once the harness is driving it (40 qtest
#: commands in: BAR programming), whatever the machine's speed.
DIES = """#!/bin/bash
real=/usr/bin/qemu-system-x86_64
case " $* " in *" -qtest "*) ;; *) exec "$real" "$@" ;; esac
log=; prev=; for a in "$@"; do [ "$prev" = -qtest-log ] && log=$a; prev=$a; done
echo "vfio-harness test: this L2 will be killed" >&2
( for i in $(seq 3000); do
    [ -f "$log" ] && [ "$(wc -l < "$log")" -ge 40 ] && break; sleep 0.02
  done; kill -9 $$ ) </dev/null >/dev/null 2>&1 &
exec "$real" "$@"
"""


def _selected(session: pytest.Session) -> dict[str, set[str]]:
    """kernel -> the adversaries this session runs on it (after -k and the like)."""
    wanted: dict[str, set[str]] = {}
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module.__name__ == __name__ and "kernel" in params:
            wanted.setdefault(params["kernel"], set()).add(
                params["adversary"].name if "adversary" in params else DIES_NAME)
    return wanted


@pytest.fixture(scope="module")
def played(request, qemu, images, accelerator, artifacts, tmp_path_factory):
    """(adversary, kernel) -> the cell results it got, rows of plain values; the L1s of
    both kernels side by side, each playing its selected adversaries in turn."""
    shim = build_shim(tmp_path_factory.mktemp("shim"))
    wrappers = tmp_path_factory.mktemp("wrappers")
    wanted = _selected(request.session)

    def play(share: tuple[str, int, tuple[str, ...]]):
        kernel, n, names = share
        with booted(qemu, images, X86_64.viommu(VIOMMU), kernel,
                    artifacts / f"adversaries-{kernel}-{n}", accel=accelerator) as l1:
            for adversary in CATALOGUE:
                if adversary.name not in names:
                    continue
                wrapper = wrappers / f"qemu-{adversary.name}-{kernel}"
                wrapper.write_text(adversary.wrapper(shim if adversary.shim else None))
                cells = matrix.cells((VIOMMU,), registry.KERNEL, (kernel,))
                yield adversary.name, kernel, _rows(l1, wrapper, cells, l1.run_dir / adversary.name)
            if DIES_NAME in names:
                wrapper = wrappers / f"qemu-{DIES_NAME}"
                wrapper.write_text(DIES)
                cells = matrix.cells((VIOMMU,), ("legacy",), (kernel,))
                yield DIES_NAME, kernel, _rows(l1, wrapper, cells, l1.run_dir / DIES_NAME)

    shares = _shares(wanted, L1S_PER_KERNEL)
    return {(name, kernel): rows for name, kernel, rows
            in parallel.run(shares, len(shares), play, name=lambda s: f"adversaries-{s[0]}-{s[1]}")}


#: L1s per kernel, side by side, the adversaries dealt out among them: an L1 spends much
#: of its time waiting on round trips, so two per kernel (four in all, as the matrix runs
#: its L1s on two cores) finish the catalogue sooner than one playing it all in turn.
L1S_PER_KERNEL = 2


def _shares(wanted: dict[str, set[str]], per_kernel: int) -> list[tuple[str, int, tuple[str, ...]]]:
    """(kernel, n, adversaries) per L1: each kernel's selected adversaries, in catalogue
    order, dealt round-robin to at most `per_kernel` L1s (none left empty)."""
    order = [a.name for a in CATALOGUE] + [DIES_NAME]
    shares = []
    for kernel in (k for k in KERNELS if k in wanted):
        names = [n for n in order if n in wanted[kernel]]
        for n in range(min(per_kernel, len(names))):
            shares.append((kernel, n, tuple(names[n::per_kernel])))
    return shares


def _rows(l1, wrapper: Path, cells: list, out: Path) -> list[dict]:
    under_test = runner.qemu_under_test(l1, wrapper)
    results = list(runner.cells_on_l1(l1, under_test, cells, out, seed=1))
    rows = [{"cell": r.cell.id, "backend": r.cell.backend, "check": r.cell.check,
             "outcome": r.outcome, "met": r.met, "reason": r.reason, "l2_end": r.l2_end,
             "error_stage": r.error_stage, "out": str(out)} for r in results]
    (out / "adversary.json").write_text(json.dumps(rows, indent=1))
    return rows


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("adversary", CATALOGUE, ids=[a.name for a in CATALOGUE])
def test_adversary_gets_the_true_verdicts(adversary, kernel, played, pytestconfig):
    results = played[(adversary.name, kernel)]
    for r in results:
        say(pytestconfig, f"adversary {adversary.name}: {r['cell']}: {r['outcome']}"
                          f"{'' if r['met'] else ' (unmet)'}: {r['reason'][:160]}")
    problems = []
    for r in results:
        want = adversary.expected(kernel, r["backend"], r["check"])
        if want is None:
            if not r["met"]:
                problems.append(f"{r['cell']}: untouched by the lie, yet {r['outcome']}: "
                                f"{r['reason']}")
            continue
        outcome, fragment = want
        if r["outcome"] != outcome or fragment not in r["reason"] or r["met"]:
            problems.append(f"{r['cell']}: wanted {outcome} with {fragment!r}, got "
                            f"{r['outcome']} (met={r['met']}): {r['reason']}")
    assert len(results) == len(matrix.cells((VIOMMU,), registry.KERNEL, (kernel,)))
    assert not problems, "\n".join(problems)
    if any(adversary.expected(kernel, b, c) for b in registry.KERNEL for c in matrix.CHECKS):
        assert not all(r["met"] for r in results), f"{adversary.name} got through on {kernel}"


@pytest.mark.parametrize("kernel", ["dmabuf"])  # the death does not depend on the kernel
def test_an_l2_that_dies_is_named_in_l1s_words(kernel, played):
    """Every cell the dead L2 took says how it ended (the signal, as L1 saw it) and what
    it last wrote on stderr, not merely that a socket closed."""
    results = played[(DIES_NAME, kernel)]
    assert len(results) == len(matrix.cells((VIOMMU,), ("legacy",), (kernel,)))
    said = (Path(results[0]["out"]) / "legacy" / "l2-stderr.log").read_text().splitlines()
    assert "this L2 will be killed" in said[0]  # the wrapper's line: this L2 is the one killed
    for r in results:
        assert r["outcome"] == "error", r["reason"]
        assert "was killed by SIGKILL (9), as L1 saw it; its stderr ended: " in r["reason"], \
            r["reason"]
        assert said[-1].strip() in r["reason"], r["reason"]  # what it last wrote
        assert r["l2_end"] and r["error_stage"]
