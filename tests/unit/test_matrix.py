"""The expectation table, its signatures and the outcome rules."""

import pytest

from harness.checks import matrix, registry
from harness.checks.matrix import Expectation, settle


def test_default_matrix_has_every_combination_once():
    cells = matrix.cells()
    per_l1 = sum(len(registry.get(c).backends) for c in matrix.CHECKS)
    # vfio-user's two checks on it alone, dmabuf-per-region on all three
    assert per_l1 == 2 * (len(matrix.CHECKS) - 3) + 2 + 3
    assert len(cells) == 2 * 2 * per_l1
    assert len({c.id for c in cells}) == len(cells)
    assert "intel-iommu-iommufd-dmabuf-p2p-dma" in {c.id for c in cells}


def test_expectations_as_the_issue_tabulates_them():
    e = {k: v.outcome for k, v in matrix.EXPECTATIONS.items()}
    assert e[("dmabuf-per-region", "dmabuf", "iommufd")] == "pass"
    assert e[("dmabuf-per-region", "no-dmabuf", "legacy")] == "skip"
    assert e[("mmap-fallback", "no-dmabuf", "iommufd")] == "pass"
    assert e[("p2p-dma", "no-dmabuf", "legacy")] == "pass"
    assert e[("p2p-dma", "no-dmabuf", "iommufd")] == "xfail"
    assert all(matrix.Cell("v", b, k, c).why for (c, k, b), x in e.items() if x != "pass")


def test_every_expected_failure_and_skip_has_a_signature():
    for key, expectation in matrix.EXPECTATIONS.items():
        assert bool(expectation.signature) == (expectation.outcome != "pass"), key
    p2p = matrix.EXPECTATIONS[("p2p-dma", "no-dmabuf", "iommufd")]
    assert p2p.signature == ("bar-map-refused", "bytes-missing")


PASS, XFAIL = Expectation("pass"), Expectation("xfail", ("bytes-missing",), "why")
SKIP = Expectation("skip", ("kernel-lacks-dmabuf",), "why")


@pytest.mark.parametrize("expected, observed, findings, reported, met", [
    (PASS, "pass", (), "pass", True),
    (PASS, "fail", (), "fail", False),
    (PASS, "skip", (), "skip", False),   # an unexpected skip never passes silently
    (PASS, "error", (), "error", False),
    (XFAIL, "fail", ("bytes-missing",), "xfail", True),
    (XFAIL, "fail", (), "fail", False),  # a failure without the signature is a failure
    (XFAIL, "pass", (), "xpass", False),
    (XFAIL, "error", (), "error", False),
    (SKIP, "skip", ("kernel-lacks-dmabuf",), "skip", True),
    (SKIP, "skip", (), "skip", False),   # a skip for another reason is not the expected one
    (SKIP, "pass", (), "pass", False),
])
def test_outcome_rules(expected, observed, findings, reported, met):
    outcome, is_met, reason = settle(expected, observed, "r", frozenset(findings))
    assert (outcome, is_met) == (reported, met)
    if observed in ("fail", "skip") and expected.outcome != "pass" and not met:
        assert "not the expected" in reason


def test_a_bad_expectation_is_refused():
    with pytest.raises(ValueError, match="bad expectation 'maybe'"):
        registry.expectation("maybe")
    with pytest.raises(ValueError, match="unknown finding"):
        registry.expectation("xfail[no-such-finding]")
    with pytest.raises(ValueError, match="need one"):
        registry.expectation("xfail")


def test_every_check_backend_and_viommu_is_a_registered_marker(pytestconfig):
    markers = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    values = [*matrix.CHECKS, *matrix.BACKENDS, *matrix.DEFAULT_VIOMMUS]
    assert {v.replace("-", "_") for v in values} <= markers
