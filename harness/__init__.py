"""vfio-harness: prove VFIO device assignment end to end under nested virtualization.

Where things live:
  L0    l0.py          the QEMU on this host that boots L1 (vIOMMU, edu, ivshmem, nvme)
        accel.py       KVM only if a real boot gets through, else TCG
        platforms.py   what an architecture decides, as one record (x86_64)
        qemu_binary.py, qmp.py   the L0 QEMU binary; QMP with a transcript
  L1    l1.py          the SSH session into L1, and a long-lived helper over it
        l1_vfio.py     bind devices to vfio-pci, groups, cdevs, the kernel's dma-buf probe
        guest/         what runs inside L1 (vfio_l1.py; msix_split.c, the multi-range
                       fixture preloaded into the side L2, built by msix_split.py)
        stack.py       L0 boots L1 and we log in; survey.py: what L1 offers
  L2    l2.py          the QEMU under test, started in L1, and how it ended
        backends.py    the legacy container and iommufd, as data
        qemu_under_test.py, qemu_bundle.py   what that QEMU is and can do; a build's
                       modules, firmware and libraries carried into L1
        qtest.py, pci.py, dma_engine.py   playing L2's guest driver: config cycles, BARs, edu
  checks
        checks.py      the registry: one record per check
        scenario.py    the main L2 of a backend collects the evidence of all checks;
        lifecycle.py   its lifecycle steps (decode toggle, reset, unplug), after creation;
        side_l2.py     a second L2: edu with x-no-mmap=on, nvme split around its MSI-X
        l2_probes.py   what the harness does through an L2 (BAR access, P2P, DMA reads,
                       the decode witness)
        evidence.py    trace lines and messages as records; the evidence bundle
        verdicts.py    the creation-time checks and multi-range, pure functions of the
                       evidence; their findings; the attribution of dma-bufs
        lifecycle_verdicts.py  the lifecycle checks
        matrix.py      a cell, its expectation held against its outcome (CellResult)
  run
        plan.py        a run's plan: selection, images, QEMU, seed, sides, built once
        runner.py      the plan run: L1 boots, the QEMU under test, collect, judge
        parallel.py    L1s side by side, each in a child process
        cell_results.py  the run's cells for pytest and avocado, shared within one run
        ab.py, compare.py   baseline against candidate
  results
        results.py     results.json (results.schema.json), its stamp, JUnit, the table
        report.py      the HTML page, shard merging; patchwork.py: the CI bot's check
  around
        images.py, recipe.py, kconfig.py, debian.py, series.py, cache_lock.py
                       the L1 kernels and rootfs
        errors.py, files.py, progress.py, deadline.py, checksum.py, paths.py, reaper.py
        cli.py         the one entry point; doctor.py
"""
__version__ = "0.1.0"
