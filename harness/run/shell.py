"""A shell in one cell: its L1 booted, its devices on vfio-pci, its main L2 started as the
cell starts it, and SSH into L1; quitting tears it all down.

A maintainer looking at a failure wants the machine, not a log: the same kernel,
QEMU under test, devices, backend and trace events, with L2's BARs placed and
decoding as a cell leaves them after creation. The harness then lets go of L2's
QMP and qtest sockets so that the user can take them (one client each).
"""

import contextlib
import subprocess
from dataclasses import replace
from pathlib import Path

from harness.base.progress import say
from harness.checks.matrix import Cell
from harness.collect import scenario, stack, vfio_user
from harness.l1.vfio_user import VfioUserServers
from harness.l2.backends import BACKENDS, VFIO_USER_SOCKETS, backend
from harness.l2.pci import PciConfig
from harness.l2.qemu import L1_QMP_PORT, L1_QTEST_PORT, L2Qemu
from harness.platforms import PassthroughDevice
from harness.run import runner
from harness.run.plan import RunPlan


def _start_l2(l1: stack.L1Stack, cell: Cell, through: scenario.PassedThrough, qemu: str,
              traces: tuple[str, ...], out: Path, devices: tuple[PassthroughDevice, ...]
              ) -> L2Qemu:
    """The cell's main L2, its BARs placed and decoding, its sockets let go. A vfio-user
    cell's is the one its run starts (its server already listening): edu served, ivshmem
    beside it on vfio-pci."""
    be = backend(cell.backend)
    if be.sockets is not None:
        spec = vfio_user.served_spec(l1, through.devices["edu"], through.devices["ivshmem"],
                                     qemu, BACKENDS[scenario.P2P_TO])
        spec = replace(spec, traces=spec.traces + tuple(t for t in traces
                                                        if t not in spec.traces))
        devices = tuple(d for d in devices if d.name in ("edu", "ivshmem"))
    else:
        spec = scenario.main_spec(be, through.devices, qemu, traces, l1.platform)
    ports = (l1.machine.host_ports[L1_QMP_PORT], l1.machine.host_ports[L1_QTEST_PORT])
    l2 = L2Qemu(l1.session, spec, out, *ports, watch=l1.vfio)
    l2.start()
    try:
        pci = PciConfig(l2.qtest, l2.spec.platform.l2)
        slots = [pci.find(d.vendor_device) for d in devices]
        for slot in slots:
            pci.place(slot)
        for slot in slots:
            pci.enable(slot)
    except BaseException:
        l2.stop()
        raise
    l2.qmp.close()
    l2.qtest.close()
    return l2


def open_shell(plan: RunPlan, cell: Cell, command: list[str], start_l2: bool = True) -> int:
    """The cell's L1 (and L2) up, then `command` in L1 (none: an interactive shell); its exit
    status is the shell's."""
    (boot,) = [b for b in plan.boots() if (b.viommu, b.kernel) == (cell.viommu, cell.kernel)]
    side = plan.sides[0]
    run_dir = boot.directory / f"{cell.viommu}-{cell.kernel}"
    with stack.booted(plan.qemu, boot.images, plan.platform.viommu(cell.viommu), cell.kernel,
                      run_dir, accel=plan.accel, ssh_port=plan.ssh_port) as l1:
        under_test = runner.qemu_under_test(l1, side.l2_qemu)
        with scenario.passed_through(l1) as through, contextlib.ExitStack() as served:
            if backend(cell.backend).sockets is not None:  # its server, for L2 or the user
                served.enter_context(VfioUserServers(
                    l1.session, l1.vfio, (through.devices["edu"],), VFIO_USER_SOCKETS,
                    run_dir / cell.backend / "servers"))
            l2 = None
            if start_l2:
                l2 = _start_l2(l1, cell, through, under_test.path, side.traces,
                               run_dir / cell.backend, plan.platform.devices)
            try:
                _say_where(l1, cell, through, l2)
                ssh = stack.ssh_command(l1, boot.images.rootfs, run_dir / "known_hosts",
                                        command)
                return subprocess.run(ssh).returncode
            finally:
                if l2 is not None:
                    l2.stop()


def _say_where(l1: stack.L1Stack, cell: Cell, through: scenario.PassedThrough,
               l2: L2Qemu | None) -> None:
    ports = l1.machine.host_ports
    say(f"{cell.id}: L1 {cell.viommu}/{cell.kernel} up; devices on vfio-pci: "
        + ", ".join(f"{n} {bdf}" for n, bdf in through.devices.items()))
    if l2 is None:
        say(f"L2 not started (--no-l2): {cell.backend} is yours to start in L1 (QMP port "
            f"{L1_QMP_PORT} and qtest port {L1_QTEST_PORT} are forwarded to 127.0.0.1:"
            f"{ports[L1_QMP_PORT]} and :{ports[L1_QTEST_PORT]})")
        return
    say(f"L2 ({cell.backend}) pid {l2.pid} in L1, BARs placed and decoding; its command line: "
        f"{l2.artifacts / 'l2-cmdline.txt'}")
    say(f"L2 QMP: 127.0.0.1:{ports[L1_QMP_PORT]} on this host (in L1: port {L1_QMP_PORT}); "
        f"qtest: 127.0.0.1:{ports[L1_QTEST_PORT]} (in L1: {L1_QTEST_PORT}); one client each")
    say(f"in L1: trace {l2.paths.trace}, stderr {l2.paths.stderr}")
    say(f"L1 over SSH: port {ports[22]}; quitting the shell stops L2 and L1")
