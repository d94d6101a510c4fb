"""VM fixtures: the images, the L0 QEMU, and one L1 boot per (vIOMMU, kernel).

These tests boot real machines: the images must be built (the README's test
command builds them). Missing images are an error, not a skip, so that a
pipeline that forgot to build them cannot pass.
"""

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.base import paths
from harness.checks import matrix
from harness.collect.stack import booted
from harness.collect.survey import Survey, survey
from harness.images.recipe import Recipe
from harness.images.store import Images, ImageStore
from harness.l0 import accel
from harness.l0.qemu_binary import QemuBinary
from harness.platforms import DEFAULT_DEVICES, X86_64
from harness.results import report, results_file
from harness.run import runner
from harness.run.cell_results import CellResults, Setup
from harness.run.plan import Selection
from tests.conftest import DEFAULT_VIOMMUS
from tests.vm.processes import Orphans

#: Lines for the end of the run (where results, report and kept artifacts are):
#: a fixture's print() is captured, the terminal summary is not.
SUMMARY = pytest.StashKey[list]()
#: The matrix cells this session runs, once -m, -k and the like have deselected.
SELECTED = pytest.StashKey[list]()


def say(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(SUMMARY, []).append(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("vfio-harness")
        for line in lines:
            terminalreporter.write_line(line)


def marker(name: str) -> str:
    """A matrix value as a marker name: -m "virtio_iommu and iommufd and p2p_dma"."""
    return name.replace("-", "_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)
        cell = getattr(item, "callspec", None) and item.callspec.params.get("cell")
        if cell is not None:
            item.add_marker(pytest.mark.matrix)
            for value in (cell.viommu, cell.backend, cell.kernel, cell.check):
                item.add_marker(getattr(pytest.mark, marker(value)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The cells the session will run, after every deselection: the matrix plans these
    and no more (the L1s they need, their backends and checks)."""
    cells = [item.callspec.params["cell"] for item in session.items
             if getattr(item, "callspec", None) and "cell" in item.callspec.params]
    session.config.stash[SELECTED] = list(dict.fromkeys(cells))
    if cells:
        say(session.config, f"matrix plan: {Selection.of_cells(cells).describe()}")


def selection_record(config: pytest.Config, selection: Selection) -> dict:
    """What was selected, in the user's words as well as the cells'."""
    return {**selection.record(), "markexpr": config.option.markexpr or None,
            "keyword": config.option.keyword or None, "args": list(config.args)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" in metafunc.fixturenames:
        config = metafunc.config
        cells = matrix.cells(
            viommus=config.getoption("--matrix-viommu") or matrix.DEFAULT_VIOMMUS,
            kernels=config.getoption("--kernel") or list(Recipe.load().matrix_kernels))
        metafunc.parametrize("cell", cells, ids=[c.id for c in cells])
    if "l1_params" in metafunc.fixturenames:
        config = metafunc.config
        viommus = config.getoption("--viommu") or DEFAULT_VIOMMUS
        kernels = config.getoption("--kernel") or list(Recipe.load().matrix_kernels)
        pairs = [(v, k) for v in viommus for k in kernels]
        metafunc.parametrize("l1_params", pairs, ids=[f"{v}-{k}" for v, k in pairs],
                             scope="module")


@pytest.fixture(scope="session")
def store(pytestconfig: pytest.Config) -> ImageStore:
    return ImageStore(Recipe.load(), paths.cache_dir(pytestconfig.getoption("--cache-dir")))


@pytest.fixture(scope="session")
def images(store: ImageStore) -> Images:
    return store.load()  # raises, naming what is missing, if the images are not built


@pytest.fixture(scope="session")
def qemu(pytestconfig: pytest.Config) -> QemuBinary:
    return QemuBinary.find(pytestconfig.getoption("--qemu"))


@pytest.fixture(scope="session")
def accelerator(pytestconfig: pytest.Config, qemu: QemuBinary, images: Images,
                store: ImageStore) -> str:
    kernel = next(iter(images.kernels.values())).bzimage
    forced = pytestconfig.getoption("--accel")
    return accel.choose(qemu, kernel, store.cache,
                        force=None if forced == "auto" else forced).accel


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = pytestconfig.getoption("--artifacts")
    path = chosen or tmp_path_factory.mktemp("vm-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    say(pytestconfig, f"VM artifacts: {path}")
    return path


@pytest.fixture(scope="module")
def l1(l1_params, qemu, images, accelerator, artifacts):
    """One L1 boot serves every test of a (vIOMMU, kernel) pair."""
    vi, kernel = l1_params
    with booted(qemu, images, X86_64.viommu(vi), kernel, artifacts / f"{vi}-{kernel}",
                accel=accelerator) as stack:
        yield stack


@pytest.fixture(scope="module")
def l1_survey(l1, store) -> Survey:
    return survey(l1, DEFAULT_DEVICES, store.recipe.kernels[l1.kernel].has_dmabuf)


@pytest.fixture(scope="session")
def matrix_results(pytestconfig, qemu, images, accelerator, artifacts):
    """One L1 per (vIOMMU, kernel) for the session; results.json and report.html at the end.

    The session's own id keys the shared cell results: a re-run into the same
    --artifacts directory boots afresh instead of reading the last session's verdicts."""
    seed = pytestconfig.getoption("--seed")
    if seed is None:
        seed = matrix.new_seed()
    out = artifacts / "matrix"
    selection = Selection.of_cells(pytestconfig.stash.get(SELECTED, []))
    boots = list(dict.fromkeys((c.viommu, c.kernel) for c in selection.cells()))
    stamp = results_file.stamp("pytest", selection_record(pytestconfig, selection))
    run_id = stamp["run_id"]
    results_file.begin(out, {**stamp, "seed": seed})
    say(pytestconfig, f"P2P seed: {seed}; run {run_id}")
    found = CellResults(Setup(qemu, images, accelerator), out, seed, run_id,
                        pytestconfig.getoption("--l2-qemu"), pytestconfig.getoption("--ssh-port"),
                        boots, pytestconfig.getoption("--l1-jobs") or runner.default_jobs(),
                        selection)
    yield found
    cells = list(found.produced.values())
    if not cells:
        return
    kept = [] if pytestconfig.getoption("--keep-artifacts") else results_file.prune(out, cells)
    wanted = len(selection.cells())
    results_file.write(out, cells, {**stamp, "arch": found.plan.platform.arch,
                                    "seed": seed, "accel": accelerator,
                                    "l0_qemu": qemu.version_text,
                                    "l2_qemu": results_file.qemu_under_test(cells),
                                    **results_file.kernels_info(images),
                                    "complete": len(cells) == wanted})
    page = report.write_html(out)
    say(pytestconfig, f"matrix results: {out / 'results.json'}")
    say(pytestconfig, f"matrix report: {page}")
    for directory in kept:
        say(pytestconfig, f"artifacts kept: {directory}")


#: The baseline every A/B of a kernel series on one L1's whole selection is judged
#: against: the pinned kernel and the packaged QEMU, as `ab` itself would run it.
PINNED_BASELINE = ("--viommu", "intel-iommu", "--kernel", "dmabuf", "--seed", "12")
#: The same on the debug kernel: the A/Bs of series whose bugs only its checks report
#: (a lock order) are judged against it, and it is itself held to dmabuf's expectations.
DEBUG_BASELINE = ("--viommu", "intel-iommu", "--kernel", "debug", "--seed", "12")


def shared_run(name: str, args: tuple[str, ...],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `run` of `args` for the whole session, on whichever worker asks first, taken by
    A/Bs as `ab --baseline-results` (each would run the same 24 cells again, a minute of a
    core each). The workers of one session share pytest's base directory; a lock on it
    makes the others wait for the one run, and a run that failed is told to each of them
    rather than run again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # above the worker's own directory: the session's
    out, failed = root / name, root / f"{name}.failed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():
            pytest.fail(failed.read_text(), pytrace=False)
        if not (out / "results.json").exists():
            p = subprocess.run([sys.executable, "-m", "harness", "run", *args,
                                "--results", str(out)], capture_output=True, text=True,
                               timeout=1200)
            if p.returncode != 0:
                failed.write_text(f"the {name} run failed (exit {p.returncode}): "
                                  f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
                pytest.fail(failed.read_text(), pytrace=False)
    return out


@pytest.fixture(scope="session")
def pinned_baseline(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run("pinned-baseline", PINNED_BASELINE, tmp_path_factory)


@pytest.fixture(scope="session")
def debug_baseline(store: ImageStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store.load(["debug"])  # raises, naming it, if the debug kernel is not built
    return shared_run("debug-baseline", DEBUG_BASELINE, tmp_path_factory)


@pytest.fixture
def orphans() -> Iterator[Orphans]:
    """For the test's length its process adopts what its runs orphan: a QEMU they never
    waited for is then the test's zombie, not init's (which would reap it unseen)."""
    with Orphans() as adopted:
        yield adopted
    assert not adopted.left, f"still running after the test, adopted from its runs: " \
                             f"{adopted.left}"
