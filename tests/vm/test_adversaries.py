"""The harness refuses to pass a QEMU under test that lies or breaks the feature.

Every adversary of the catalogue (tests/vm/adversaries) runs as the QEMU under
test on real L1s of both kernels, on both backends, through the same path as a
user's `--l2-qemu` build. Each must get the verdicts the catalogue names, with
a reason pointing at the lie; every other cell must meet its expectation as
with the honest QEMU; and no adversary may get through with every cell met.
"""

import json

import pytest

from harness.checks import matrix
from harness.collect.stack import booted
from harness.platforms import viommu
from harness.run import runner
from tests.vm.adversaries import CATALOGUE, build_shim
from tests.vm.conftest import say

VIOMMU = "intel-iommu"


@pytest.fixture(scope="module", params=["dmabuf", "no-dmabuf"])
def adversary_l1(request, qemu, images, accelerator, artifacts):
    with booted(qemu, images, viommu(VIOMMU), request.param,
                artifacts / f"adversaries-{request.param}", accel=accelerator) as stack:
        yield stack


@pytest.fixture(scope="session")
def shim(tmp_path_factory):
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.mark.parametrize("adversary", CATALOGUE, ids=[a.name for a in CATALOGUE])
def test_adversary_gets_the_true_verdicts(adversary, adversary_l1, shim, tmp_path,
                                          pytestconfig):
    wrapper = tmp_path / f"qemu-{adversary.name}"
    wrapper.write_text(adversary.wrapper(shim if adversary.shim else None))
    under_test = runner.qemu_under_test(adversary_l1, wrapper)
    out = adversary_l1.run_dir / adversary.name
    cells = matrix.cells((adversary_l1.viommu.name,), matrix.BACKENDS, (adversary_l1.kernel,))
    results = list(runner.cells_on_l1(adversary_l1, under_test, cells, out, seed=1))
    kernel = adversary_l1.kernel
    summary = [{"cell": r.cell.id, "outcome": r.outcome, "met": r.met, "reason": r.reason}
               for r in results]
    (out / "adversary.json").write_text(json.dumps(summary, indent=1))
    for r in results:
        say(pytestconfig, f"adversary {adversary.name}: {r.cell.id}: {r.outcome}"
                          f"{'' if r.met else ' (unmet)'}: {r.reason[:160]}")
    problems = []
    for r in results:
        want = adversary.expected(kernel, r.cell.backend, r.cell.check)
        if want is None:
            if not r.met:
                problems.append(f"{r.cell.id}: untouched by the lie, yet {r.outcome}: {r.reason}")
            continue
        outcome, fragment = want
        if r.outcome != outcome or fragment not in r.reason or r.met:
            problems.append(f"{r.cell.id}: wanted {outcome} with {fragment!r}, got "
                            f"{r.outcome} (met={r.met}): {r.reason}")
    assert not problems, "\n".join(problems)
    if any(adversary.expected(kernel, b, c) for b in matrix.BACKENDS for c in matrix.CHECKS):
        assert not all(r.met for r in results), f"{adversary.name} got through on {kernel}"


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


def test_an_l2_that_dies_is_named_in_l1s_words(adversary_l1, tmp_path):
    """Every cell the dead L2 took says how it ended (the signal, as L1 saw it) and what
    it last wrote on stderr, not merely that a socket closed."""
    if adversary_l1.kernel != "dmabuf":
        pytest.skip("one kernel is enough: the death does not depend on it")
    wrapper = tmp_path / "qemu-dies"
    wrapper.write_text(DIES)
    under_test = runner.qemu_under_test(adversary_l1, wrapper)
    out = adversary_l1.run_dir / "dies"
    cells = matrix.cells((adversary_l1.viommu.name,), ("legacy",), (adversary_l1.kernel,))
    results = list(runner.cells_on_l1(adversary_l1, under_test, cells, out, seed=1))
    assert len(results) == len(matrix.CHECKS)
    said = (out / "legacy" / "l2-stderr.log").read_text().splitlines()
    assert "this L2 will be killed" in said[0]  # the wrapper's line: this L2 is the one killed
    for r in results:
        assert r.outcome == "error", r.reason
        assert "was killed by SIGKILL (9), as L1 saw it; its stderr ended: " in r.reason, r.reason
        assert said[-1].strip() in r.reason, r.reason  # what it last wrote
        assert r.l2_end and r.error_stage
