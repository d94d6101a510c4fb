"""vfio-harness: prove VFIO device assignment end to end under nested virtualization.

Packages, from the bottom up: each imports only what is listed before it (the check
registry names its collectors in collect/ as dotted paths, loaded when they run).
  base/       errors, files, progress, deadline, checksum, paths, sizes, reaper; qmp (QMP with
              a transcript, for L0 and L2 alike); userns (a command as root of private
              namespaces: a binfmt_misc of its own)
  platforms.py  what an architecture decides, as one record (x86_64, aarch64):
              machine, vIOMMUs, L0 devices, console, kernel build and image, rootfs
              architecture, QEMU names, L2's layout (config access, BAR window,
              RAM, hotplug)
  evidence/   records.py: trace lines and messages as records; gathered.py: the evidence
              bundle a verdict judges, and its summary for A/B; teardown.py: how an L2
              ended; stuck.py: a step that never returned, and where L2 waits;
              kernel_log.py: the L1 kernel's log read as reports, report_classes.py
              (every kind of report, as a table, and the harmless lines),
              guilty_frame.py (the function a report is about)
  images/     store.py: the L1 kernels and rootfs, built and cached; recipe.py,
              kconfig.py, debian.py, series.py (a kernel series applied by git),
              foreign.py (another architecture's rootfs, configured by qemu-user in a
              chroot, or else in its own L1), linked_tree.py (a series' source tree
              linked to the pristine one), object_tree.py (an object tree copied for a
              series), cache_lock.py, cache_book.py (what the cache holds; prune, the
              budget), command.py (the images subcommands)
  l0/         machine.py: the QEMU on this host that boots L1 (vIOMMU, edu, ivshmem,
              nvme); accel.py (KVM only if a real boot gets through, else TCG);
              qemu_binary.py (the L0 QEMU binary); strays.py (QEMUs and /dev/shm files
              of harness processes that are gone)
  l1/         session.py: the SSH session into L1 and a long-lived helper over it;
              vfio.py: bind devices to vfio-pci, groups, cdevs, the kernel's dma-buf
              probe; guest/: what runs inside L1 (vfio_l1.py; msix_split.c, the
              multi-range fixture preloaded into the side L2)
  l2/         qemu.py: the QEMU under test, started in L1, and how it ended;
              backends.py: the legacy container and iommufd, as data;
              capabilities.py: what that QEMU is and can do; bundle.py: a build's
              modules, firmware and libraries carried into L1; qtest.py, pci.py,
              dma_engine.py: playing L2's guest driver (config cycles, BARs, edu)
  verdicts/   verdict.py: what a verdict is, its findings, the evidence every verdict
              needs first; creation.py: the creation-time checks and multi-range, pure
              functions of the evidence, the attribution of dma-bufs; p2p.py: a P2P
              transfer's verdict (creation, lifecycle, teardown); lifecycle.py: the
              lifecycle checks; kernel_health.py: the L1 kernel's own word laid over
              every cell
  checks/     registry.py: one record per check; matrix.py: a cell, its expectation
              held against its outcome (CellResult)
  collect/    stack.py: L0 boots L1 and we log in; survey.py: what L1 offers;
              scenario.py: the main L2 of a backend collects the evidence of all
              checks; lifecycle.py: its lifecycle steps; side_l2.py: a second L2
              (edu with x-no-mmap=on, nvme split around its MSI-X, built by
              msix_split.py); l2_probes.py: what the harness does through an L2
  results/    results_file.py: results.json (results.schema.json), its stamp, JUnit,
              the table; report.py: the HTML page, shard merging; compare.py:
              baseline against candidate; patchwork.py: the CI bot's check;
              kcidb.py: KCIDB JSON; bisection.py: a bisect's answer in words
  run/        plan.py: a run's plan, built once; runner.py: the plan run (L1 boots,
              the QEMU under test, collect, judge); parallel.py: L1s side by side;
              cell_results.py: the run's cells for pytest and avocado; ab.py: A/B;
              bisect.py: which patch of a series brought each failure; hold.py: a
              failing L1 kept up; shell.py: a shell in a cell
  cli.py      the one entry point; doctor.py: is this machine ready
"""
__version__ = "0.1.0"
