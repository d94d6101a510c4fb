"""The expectation table and the outcome rules."""

import pytest

from harness import matrix


def test_default_matrix_has_every_combination_once():
    cells = matrix.cells()
    assert len(cells) == 2 * 2 * 2 * 3
    assert len({c.id for c in cells}) == len(cells)
    assert "intel-iommu-iommufd-dmabuf-p2p-dma" in {c.id for c in cells}


def test_expectations_as_the_issue_tabulates_them():
    e = matrix.EXPECTATIONS
    assert e[("dmabuf-per-region", "dmabuf", "iommufd")] == "pass"
    assert e[("dmabuf-per-region", "no-dmabuf", "legacy")] == "skip"
    assert e[("mmap-fallback", "no-dmabuf", "iommufd")] == "pass"
    assert e[("p2p-dma", "no-dmabuf", "legacy")] == "pass"
    assert e[("p2p-dma", "no-dmabuf", "iommufd")] == "xfail"
    assert all(matrix.Cell("v", b, k, c).why for (c, k, b), x in e.items() if x != "pass")


@pytest.mark.parametrize("expected, observed, reported, met", [
    ("pass", "pass", "pass", True),
    ("pass", "fail", "fail", False),
    ("pass", "skip", "skip", False),   # an unexpected skip never passes silently
    ("xfail", "fail", "xfail", True),
    ("xfail", "pass", "xpass", False),
    ("skip", "skip", "skip", True),
    ("skip", "pass", "pass", False),
    ("pass", "error", "error", False),
])
def test_outcome_rules(expected, observed, reported, met):
    assert matrix.outcome(expected, observed) == reported
    assert matrix.met(expected, reported) is met


def test_a_bad_table_is_refused():
    with pytest.raises(ValueError, match="bad expectation 'maybe'"):
        matrix._parse("p2p-dma dmabuf pass maybe")
