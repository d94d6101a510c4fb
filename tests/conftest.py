"""Options and fixtures shared by the unit and VM tests."""

from pathlib import Path

import pytest

from harness.base import reaper
from harness.checks import registry
from harness.platforms import VIOMMUS

DEFAULT_VIOMMUS = ["intel-iommu", "virtio-iommu", "amd-iommu"]


def pytest_configure(config: pytest.Config) -> None:
    """A marker per check, from the registry: a new check needs no line here. A cancelled
    job (SIGTERM) unwinds like Ctrl-C, and what the run started is waited for at the end,
    as in the CLI. (Unlike the CLI, pytest adopts orphans only while a test that asks for
    them runs, the `orphans` fixture: those that kill a harness on purpose reap what it
    leaves.)"""
    for check in registry.REGISTRY.values():
        config.addinivalue_line("markers", f"{check.marker}: the {check.name} check: "
                                           f"{check.summary}")
    reaper.unwind_on_signals()


#: Test files that take longest (CI's junit, warm cache, two workers), longest first.
#: ci/test.sh hands out whole files to two workers in collection order: one of these
#: started last would run on alone while the other worker sat idle.
LONGEST_FIRST = ("tests/vm/test_adversaries.py", "tests/vm/test_series.py",
                 "tests/vm/test_kernel_health.py",
                 "tests/pipelines/test_pipelines.py", "tests/vm/test_ab.py",
                 "tests/vm/test_failures.py", "tests/vm/test_front_ends.py", "tests/vm/test_l2.py",
                 "tests/vm/test_matrix.py", "tests/vm/test_l1.py", "tests/unit/test_bad_input.py",
                 "tests/vm/test_kernel_tree.py", "tests/vm/test_kernel_image.py",
                 "tests/vm/test_arm64.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (a stable sort: tests keep their order within a file)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    root = Path(config.rootpath)
    gone = [name for name in LONGEST_FIRST if not (root / name).is_file()]
    if gone:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names no such file: {gone}")

    def key(item: pytest.Item) -> int:
        try:
            rel = Path(item.fspath).relative_to(root).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(rel, len(rank))
    items.sort(key=key)


def pytest_unconfigure(config: pytest.Config) -> None:
    killed = reaper.reap_all()
    if killed:
        print(f"vfio-harness: killed {len(killed)} process(es) that had not ended: {killed}")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vfio-harness")
    group.addoption("--cache-dir", help="image cache (default: as vfio-harness)")
    group.addoption("--qemu", help="L0 QEMU binary")
    group.addoption("--viommu", action="append", choices=sorted(VIOMMUS),
                    help=f"vIOMMUs for VM tests (default: {', '.join(DEFAULT_VIOMMUS)})")
    group.addoption("--kernel", action="append", help="kernel variants (default: all)")
    group.addoption("--artifacts", type=Path,
                    help="keep VM artifacts here (default: pytest's temporary directory)")
    group.addoption("--matrix-viommu", action="append", choices=sorted(VIOMMUS),
                    help="vIOMMUs of the verdict matrix (default: intel-iommu, virtio-iommu)")
    group.addoption("--seed", type=int, help="seed of the P2P pattern (default: random)")
    group.addoption("--l2-qemu", type=Path, metavar="PATH",
                    help="a QEMU build to test as L2 instead of the rootfs's packaged one")
    group.addoption("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                    help="L0 accelerator (auto: KVM only if a boot probe succeeds)")
    group.addoption("--ssh-port", type=int, help="fixed host port for L1's SSH in the matrix "
                                                 "(default: a free one)")
    group.addoption("--l1-jobs", type=int,
                    help="matrix L1s booted at once (default: as vfio-harness run --jobs)")
    group.addoption("--keep-artifacts", action="store_true",
                    help="keep the artifacts of every cell, not only of those that failed")
