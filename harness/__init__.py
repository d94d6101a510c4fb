"""vfio-harness: prove VFIO device assignment end to end under nested virtualization.

Where things live:
  L0    l0.py          the QEMU on this host that boots L1 (vIOMMU, edu, ivshmem, nvme)
        accel.py       KVM only if a real boot gets through, else TCG
  L1    l1.py          the SSH session into L1
        l1_vfio.py     bind devices to vfio-pci, groups, cdevs, the kernel's dma-buf probe
        guest/         what runs inside L1 (vfio_l1.py; msix_split.c, the multi-range
                       fixture preloaded into the side L2, built by msix_split.py)
        stack.py       L0 boots L1 and we log in
  L2    l2.py          the QEMU under test, started in L1; the legacy/iommufd backends
        qemu_under_test.py  what that QEMU is and can do, asked in L1 before any cell
        qtest.py, pci.py, dma_engine.py   playing L2's guest driver: config cycles, BARs, edu
  verdicts
        scenario.py    the main L2 of a backend collects the evidence of all checks;
        lifecycle.py   its lifecycle steps (decode toggle, reset, unplug), after creation;
        side_l2.py     a second L2: edu with x-no-mmap=on, nvme split around its MSI-X
        l2_probes.py   what the harness does through an L2 (BAR access, P2P, DMA reads)
        evidence.py    trace lines and messages as records; the evidence bundle
        verdicts.py    the creation-time checks and multi-range, pure functions of the
                       evidence; their findings
        lifecycle_verdicts.py  the lifecycle checks
        matrix.py      the run's model: a cell, its expectation (table, signature, why),
                       what it produced (CellResult)
  around
        images.py, recipe.py, kconfig.py, debian.py   the L1 kernels and rootfs
        runner.py      the matrix run: L1 boots, the QEMU under test, collect, judge
        parallel.py    L1s side by side, each in a child process
        cell_results.py  the run's cells for pytest and avocado, shared within one run
        results.py, report.py         results.json, JUnit, the HTML page, shard merging
        cli.py         the one entry point; doctor.py, survey.py
"""
__version__ = "0.1.0"
