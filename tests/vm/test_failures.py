"""Failures on real boots: each names its stage, shows the evidence, and leaves no QEMU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.base.errors import HarnessError, StageTimeout
from harness.collect.stack import booted
from harness.platforms import X86_64
from harness.results.results_file import SCHEMA
from tests.vm.processes import descendants, qemu_processes_using

VIOMMU, KERNEL = "intel-iommu", "dmabuf"


def test_ssh_deadline_names_the_stage_and_shows_the_console(qemu, images, accelerator, tmp_path):
    with pytest.raises(StageTimeout) as e:
        with booted(qemu, images, X86_64.viommu(VIOMMU), KERNEL, tmp_path, accel=accelerator,
                    ssh_deadline=3.0):
            pass
    message = str(e.value)
    assert f"L1 boot ({VIOMMU}/{KERNEL})" in message
    assert "never answered" in message
    console = (tmp_path / "l0-console.log").read_text().splitlines()
    assert console, "the console log is empty: the kernel printed nothing in 3 s"
    assert "L0 console tail" in message and console[-1] in message
    assert qemu_processes_using(tmp_path) == []
    assert (tmp_path / "l0-cmdline.txt").exists()


def test_l1_that_dies_at_boot_fails_fast_with_the_panic(qemu, images, accelerator, tmp_path):
    began = time.monotonic()
    with pytest.raises(HarnessError) as e:
        with booted(qemu, images, X86_64.viommu(VIOMMU), KERNEL, tmp_path, accel=accelerator,
                    kernel_args=("init=/no/such/init",)):
            pass
    assert "L0 QEMU exited while L1 was booting" in str(e.value)
    assert "Kernel panic" in e.value.details
    assert time.monotonic() - began < 60  # not the full SSH deadline
    assert qemu_processes_using(tmp_path) == []


def _start_run(tmp_path: Path, kernels: tuple[str, ...] = (KERNEL,)) -> subprocess.Popen:
    """One L1, or (two kernels) two L1s side by side, each in a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--viommu", VIOMMU,
         *(a for k in kernels for a in ("--kernel", k)), "--results", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_qemu(tmp_path: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not qemu_processes_using(tmp_path):
        assert time.monotonic() < end, "the run never started QEMU"
        time.sleep(0.2)


PARALLEL = ("dmabuf", "no-dmabuf")  # two L1s side by side, each in a child process


@pytest.mark.parametrize("kernels, after", [
    ((KERNEL,), 0.0), ((KERNEL,), 6.0), ((KERNEL,), 9.0), ((KERNEL,), 14.0),
    (PARALLEL, 3.0), (PARALLEL, 12.0)],
    ids=lambda v: f"{v:g}s-after-l0" if isinstance(v, float) else
    ("parallel-l1s" if len(v) > 1 else "one-l1"))
def test_sigterm_stops_the_run_and_its_qemu(tmp_path, kernels, after, orphans):
    """At boot, at the probe, at an L2 start, among the cells: one clear last line, exit
    130, no traceback (a QMP client interrupted mid-close used to print one at exit)."""
    earlier = {"schema": SCHEMA, "run": {"run_id": "run-earlier", "complete": True},
               "cells": []}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    proc = _start_run(tmp_path, kernels)
    _wait_for_qemu(tmp_path)
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out
    assert out.strip().splitlines()[-1] == \
        "vfio-harness: interrupted; QEMU processes were stopped", out[-2000:]
    assert orphans.qemu_zombies() == []  # reaped before that line, not just signalled
    assert "Traceback" not in out, out[max(0, out.find("Traceback") - 300):][:3000]
    assert qemu_processes_using(tmp_path) == []
    # Its own record, unfinished, never the earlier run's (kept aside under another name).
    record = json.loads((tmp_path / "results.json").read_text())["run"]
    assert record["run_id"] != "run-earlier" and record["complete"] is False
    assert json.loads((tmp_path / "results.previous.json").read_text()) == earlier
    # The interrupted L1's artifacts are kept (an L1 whose cells all met is pruned as usual).
    assert list(tmp_path.glob("*/l0-console.log"))


@pytest.mark.parametrize("kernels", [
    # Alone: every L1 boot sweeps stale ivshmem files, and one beside this test would take
    # the file it leaves before the test can see the sweep take it.
    pytest.param((KERNEL,), id="one-l1", marks=pytest.mark.alone),
    pytest.param(PARALLEL, id="parallel-l1s")])
def test_sigkill_of_the_harness_takes_qemu_with_it(tmp_path, kernels, orphans):
    from harness.l0.machine import SHM, sweep_stale_shm
    proc = _start_run(tmp_path, kernels)
    _wait_for_qemu(tmp_path)
    if len(kernels) == 1:
        # QEMU shows in the process table before it has created its ivshmem backend
        # file: a SIGKILL in between (its parent-death signal takes it too) leaves no
        # file, and nothing for the sweep to do.
        end = time.monotonic() + 60
        while not list(SHM.glob(f"vfio-harness-{proc.pid}-*.ivshmem")):
            assert time.monotonic() < end, "QEMU never created its ivshmem file"
            time.sleep(0.1)
    run = {proc.pid} | descendants(proc.pid)  # the harness, its L1 workers, their QEMUs
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    end = time.monotonic() + 30  # parallel L1s: each child unwinds, then its QEMU goes
    while qemu_processes_using(tmp_path) and time.monotonic() < end:
        time.sleep(0.2)
    assert qemu_processes_using(tmp_path) == []
    if len(kernels) > 1:  # the children unwound: they removed their ivshmem files themselves
        assert orphans.reap() == []
        assert [p for pid in run for p in SHM.glob(f"vfio-harness-{pid}-*")] == []
        return
    # Nothing ran to remove its ivshmem file: the next run does, and says so.
    left = list(SHM.glob(f"vfio-harness-{proc.pid}-*.ivshmem"))
    assert left, "SIGKILL left no ivshmem file: this test no longer tests the sweep"
    assert set(left) <= set(sweep_stale_shm())
    assert not list(SHM.glob(f"vfio-harness-{proc.pid}-*.ivshmem"))


def test_a_port_taken_before_qemu_binds_it_is_chosen_again(qemu, images, accelerator, tmp_path,
                                                           monkeypatch):
    """free_port() lets go of the port it found; here another process takes it first."""
    import socket

    from harness.l0 import machine as l0
    from harness.l0.machine import L0Machine, L1Spec

    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    busy = taker.getsockname()[1]
    real, handed = l0.free_port, []

    def racy() -> int:
        handed.append(busy if not handed else real())
        return handed[-1]

    monkeypatch.setattr(l0, "free_port", racy)
    spec = L1Spec(viommu=X86_64.viommu(VIOMMU), kernel=images.kernels[KERNEL].bzimage,
                  rootfs=images.rootfs.qcow2, kernel_args=(), guest_ports=(22,))
    try:
        with L0Machine(qemu, spec, tmp_path, accel=accelerator) as machine:
            assert machine.host_ports[22] != busy and machine.running
    finally:
        taker.close()
    assert handed[0] == busy and len(handed) >= 2
    assert qemu_processes_using(tmp_path) == []
