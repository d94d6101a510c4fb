"""vfio-harness: prove VFIO device assignment end to end under nested virtualization.

Where things live:
  L0    l0.py          the QEMU on this host that boots L1 (vIOMMU, edu, ivshmem)
        accel.py       KVM only if a real boot gets through, else TCG
  L1    l1.py          the SSH session into L1
        l1_vfio.py     bind devices to vfio-pci, groups, cdevs, the kernel's dma-buf probe
        guest/         what runs inside L1 (vfio_l1.py)
        stack.py       L0 boots L1 and we log in
  L2    l2.py          the QEMU under test, started in L1; the legacy/iommufd backends
        qemu_under_test.py  what that QEMU is and can do, asked in L1 before any cell
        qtest.py, pci.py, dma_engine.py   playing L2's guest driver: config cycles, BARs, edu
  verdicts
        scenario.py    one L2 per backend collects the evidence of all checks
        evidence.py    trace lines and messages as records; the evidence bundle
        verdicts.py    the three checks, pure functions of the evidence; their findings
        matrix.py      the run's model: a cell, its expectation (table, signature, why),
                       what it produced (CellResult)
  around
        images.py, recipe.py, kconfig.py, debian.py   the L1 kernels and rootfs
        runner.py      the matrix run: L1 boots, the QEMU under test, collect, judge
        cell_results.py  the run's cells for pytest and avocado, shared within one run
        results.py, report.py         results.json, JUnit, the HTML page, shard merging
        cli.py         the one entry point; doctor.py, survey.py
"""
__version__ = "0.1.0"
