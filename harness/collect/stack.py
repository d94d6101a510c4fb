"""L0 boots L1 and we log in: one context manager for the nested stack.

One boot serves every scenario run on it. On the way out, whatever happened,
L1's dmesg is saved beside L0's console, QMP transcript and stderr in the run
directory, and L0 QEMU is shut down.
"""

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.base.deadline import Deadline
from harness.base.progress import say
from harness.collect.kernel_witness import KernelWitness
from harness.images.store import Images, RootfsImage
from harness.l0.machine import L0Machine, L1Spec
from harness.l0.qemu_binary import QemuBinary
from harness.l1.session import L1Session
from harness.l1.vfio import L1Vfio
from harness.l2.qemu import L1_QMP_PORT, L1_QTEST_PORT
from harness.platforms import Platform, VIommu

SSH_DEADLINE = 90.0  # about 8 s is usual under TCG; 90 s leaves room for a loaded machine


@dataclass
class L1Stack:
    viommu: VIommu
    kernel: str
    machine: L0Machine
    session: L1Session
    vfio: L1Vfio
    boot_seconds: float
    witness: KernelWitness
    #: Why this L1 can no longer be used ("": it can): an L2 stuck in its kernel holds
    #: devices that no signal gives back. Its cells left go to a fresh L1.
    held: str = ""
    #: The packaged QEMU under test as its rootfs build recorded it (None: not recorded).
    packaged_qemu: dict | None = None

    @property
    def run_dir(self) -> Path:
        return self.machine.files.directory

    @property
    def platform(self) -> Platform:
        return self.machine.spec.platform


@contextlib.contextmanager
def booted(qemu: QemuBinary, images: Images, viommu: VIommu, kernel: str, run_dir: Path,
           accel: str = "tcg", ssh_port: int | None = None,
           ssh_deadline: float = SSH_DEADLINE,
           kernel_args: tuple[str, ...] = ()) -> Iterator[L1Stack]:
    spec = L1Spec(viommu=viommu, kernel=images.kernels[kernel].bzimage,
                  rootfs=images.rootfs.qcow2, platform=images.platform,
                  kernel_args=(*images.kernels[kernel].boot_args, *kernel_args),
                  guest_ports=(22, L1_QMP_PORT, L1_QTEST_PORT))
    say(f"L1 {viommu.name}/{kernel}: booting ({accel}), artifacts in {run_dir}")
    began = time.monotonic()
    with L0Machine(qemu, spec, run_dir, accel=accel, ssh_port=ssh_port) as machine:
        session = L1Session(machine.host_ports[22], images.rootfs.client_key,
                            images.rootfs.host_key_pub, context=machine.console_tail,
                            log=run_dir / "l1-ssh.log", alive=lambda: machine.running)
        try:
            session.wait_ready(Deadline(f"L1 boot ({viommu.name}/{kernel})", ssh_deadline),
                               alive=lambda: machine.running)
            boot_seconds = time.monotonic() - began
            say(f"L1 {viommu.name}/{kernel}: SSH ready after {boot_seconds:.1f} s")
            vfio = L1Vfio(session)
            witness = KernelWitness(vfio)
            witness.between("boot")
            yield L1Stack(viommu, kernel, machine, session, vfio, boot_seconds, witness,
                          packaged_qemu=images.rootfs.qemu_binary)
        finally:
            _save(session, "dmesg", run_dir / "l1-dmesg.txt")
            # sshd's own account (harness-init starts it with -E): why a connection the
            # harness lost was closed, in the server's words
            _save(session, "cat /run/sshd.log", run_dir / "l1-sshd.log")
            session.end()


def _save(session: L1Session, command: str, path: Path) -> None:
    try:
        path.write_text(session.run(command, timeout=15, check=False,
                                    stage=f"L1 {command}").stdout)
    except Exception as e:  # L1 may be gone; the console log still has the kernel's output
        path.write_text(f"({command!r} not collected: {e})\n")


def ssh_command(l1: L1Stack, rootfs: RootfsImage, known_hosts: Path,
                command: list[str]) -> list[str]:
    """OpenSSH into L1 with the image's client key, L1's host key pinned."""
    port = l1.machine.host_ports[22]
    kind, blob = rootfs.host_key_pub.read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    return ["ssh", "-p", str(port), "-i", str(rootfs.client_key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "LogLevel=ERROR", *(["-t"] if not command else []), "root@127.0.0.1",
            *command]
