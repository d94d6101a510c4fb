"""The verdict matrix under avocado, one variant per cell.

    vfio-harness matrix --avocado-variants variants.json --results DIR [--l2-qemu PATH]
    avocado run --max-parallel-tasks 1 --json-variants-load variants.json tests/avocado/matrix.py

(ci/avocado.sh does both.) Each test process asks harness.cell_results for
its cell: the first cell of a (vIOMMU, kernel) in this avocado job boots that
L1 and runs the cells of it that the variants file holds (no others); the
others read the records it left in DIR, stamped with the job's id, so a second
job never reads the first one's verdicts. A cell expected to skip is CANCEL
with the reason; an expected failure that happened PASSes with "xfail: reason"
on its whiteboard; anything not as expected FAILs; a harness error (a torn
shared file, an L1 that did not boot) is an ERROR with its message.
"""

from pathlib import Path

from avocado import Test

from harness.base.errors import HarnessError
from harness.checks import matrix
from harness.run.cell_results import CellResults, Setup
from harness.run.plan import Selection


def job_id(logdir: str) -> str:
    """The avocado job this test runs in: its results directory holds the job's id."""
    job_dir = Path(logdir).parents[1]
    id_file = job_dir / "id"
    return f"avocado-{id_file.read_text().strip() if id_file.exists() else job_dir.name}"


class Matrix(Test):
    def test(self) -> None:
        p = self.params
        cell = matrix.Cell(p.get("viommu"), p.get("backend"), p.get("kernel"), p.get("check"))
        l2_qemu = p.get("l2_qemu", default=None)
        try:
            setup = Setup.from_environment(p.get("cache", default=None),
                                           p.get("qemu", default=None),
                                           accelerator=p.get("accel", default="auto"))
            ssh_port = p.get("ssh_port", default=None)
            # the cells of this L1 that the variants file selected, and no others
            selected = [matrix.Cell(*c) for c in p.get("l1_cells", default=None) or [cell]]
            results = CellResults(setup, Path(p.get("results")), int(p.get("seed")),
                                  job_id(self.logdir), Path(l2_qemu) if l2_qemu else None,
                                  int(ssh_port) if ssh_port else None,
                                  selection=Selection.of_cells(selected))
            record = results.get(cell)
        except HarnessError as e:
            self.error(f"{cell.id}: {e}")
        qemu = record["evidence"].get("qemu_under_test") or {}
        self.log.info("QEMU under test: %s (%s, sha256 %s)", qemu.get("version"),
                      qemu.get("origin"), qemu.get("sha256"))
        self.log.info("%s: expected %s, outcome %s: %s", cell.id, record["expected"],
                      record["outcome"], record["reason"])
        self.log.info("grounds: %s", "; ".join(record.get("grounds", [])))
        self.log.info("artifacts: %s", record["artifacts"])
        self.whiteboard = f"{record['outcome']}: {record['reason']}"
        if not record["met"]:
            self.fail(f"expected {record['expected']}, got {record['outcome']}: "
                      f"{record['reason']}")
        if record["outcome"] == "skip":
            self.cancel(record["reason"])
