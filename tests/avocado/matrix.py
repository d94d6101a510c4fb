"""The verdict matrix under avocado, one variant per cell.

    vfio-harness matrix --avocado-variants variants.json --results DIR
    avocado run --max-parallel-tasks 1 --json-variants-load variants.json tests/avocado/matrix.py

(ci/avocado.sh does both.) Each test process asks harness.cell_results for
its cell: the first cell of a (vIOMMU, kernel) boots that L1 and runs all of
its cells; the others read the records it left in DIR. A cell expected to skip
is CANCEL with the reason; an expected failure that happened PASSes with
"xfail: reason" on its whiteboard; anything not as expected FAILs.
"""

from pathlib import Path

from avocado import Test

from harness import matrix
from harness.cell_results import CellResults, Setup


class Matrix(Test):
    def test(self) -> None:
        p = self.params
        cell = matrix.Cell(p.get("viommu"), p.get("backend"), p.get("kernel"), p.get("check"))
        setup = Setup.from_environment(p.get("cache", default=None), p.get("qemu", default=None))
        results = CellResults(setup, Path(p.get("results")), int(p.get("seed")))
        record = results.get(cell)
        self.log.info("%s: expected %s, outcome %s: %s", cell.id, record["expected"],
                      record["outcome"], record["reason"])
        self.log.info("artifacts: %s", record["artifacts"])
        self.whiteboard = f"{record['outcome']}: {record['reason']}"
        if not record["met"]:
            self.fail(f"expected {record['expected']}, got {record['outcome']}: "
                      f"{record['reason']}")
        if record["outcome"] == "skip":
            self.cancel(record["reason"])
