"""The verdict matrix on real machines: one test per cell, expectations from matrix.py.

A cell expected to skip is skipped with the reason the evidence gave; a cell
that fails as expected is an xfail with its reason; everything else must meet
its expectation, or the test fails with the verdict's reason.
"""

import pytest


def test_cell(cell, matrix_results):
    result = matrix_results.get(cell)
    if result["met"] and result["outcome"] == "skip":
        pytest.skip(result["reason"])
    if result["met"] and result["outcome"] == "xfail":
        pytest.xfail(result["reason"])
    assert result["met"], (f"{cell.id}: expected {cell.expected}, got {result['outcome']}: "
                           f"{result['reason']} (artifacts: {result['artifacts']})")
