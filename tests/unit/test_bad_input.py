"""The bad-input catalogue: every kind of input the harness refuses, through the real CLI.

Each kind is a row: what is given, the exit code the README documents for bad input
(2), and what the one error line must say. Every row runs `python -m harness` with an
empty image cache: a refusal that came only after an image build or an L1 boot would
start minutes of work here (and be caught by the deadline and the 'booting' check), so
the catalogue also proves each is refused before anything expensive starts.

Kinds that need built images to be refused live with the VM tests and are listed in
ELSEWHERE, so that this file stays the one index of them.
"""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.base import paths
from harness.checks.matrix import Cell, CellResult
from harness.images.recipe import Recipe
from harness.images.store import verify
from harness.results.results_file import SCHEMA, exit_code
from harness.run.plan import Selection

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT / "tests" / "data" / "series"
BAD_INPUT = 2  # the README's exit code for bad input

#: Refused only with built images or a booted L1: (kind, where it is tested).
ELSEWHERE = {
    "series-does-not-apply": "tests/vm/test_series.py",
    "kernel-image-without-iommufd (a real image)": "tests/vm/test_kernel_image.py",
    "l2-qemu-does-not-run-in-l1": "tests/vm/test_l2.py",
    "l2-qemu-without-qtest (trixie's modular build)": "tests/vm/test_l2.py",
    "stale-l2-on-its-ports": "tests/vm/test_l2.py",
    "torn-shared-cells-file": "tests/unit/test_cell_results_store.py",
    "cache-locked-by-a-build": "tests/unit/test_cache_lock.py",
    "baseline-results-of-other-images": "tests/unit/test_reused_baseline.py",
}


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: `args` may name {tmp}, {port} and the files `files` writes."""
    name: str
    args: tuple[str, ...]
    says: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    mode: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # set for its run
    #: It is told only with the kernel's own tools (scripts/extract-ikconfig): the run
    #: fetches the kernel source into its cache first, unless the cache has it.
    needs_source: bool = False


def _results(cells: list[dict], complete: bool = True, **run: object) -> str:
    """A results.json as a run of this harness stamps it (`run`: more of its record)."""
    run = {"run_id": "run-1", "started": "2026-11-30T10:00:00+00:00", "complete": complete,
           **run}
    return json.dumps({"schema": SCHEMA, "run": run, "cells": cells})


#: The baseline `ab --viommu intel-iommu --kernel dmabuf --seed 12` would run, as a
#: run of it records its selection (what --baseline-results is checked against first).
AB_SELECTION = Selection(viommus=("intel-iommu",), kernels=("dmabuf",)).record()
AB_BASELINE = ("ab", "--viommu", "intel-iommu", "--kernel", "dmabuf", "--candidate-kernel-patches",
               str(SERIES / "0001-comment-only.mbox"), "--baseline-results", "{tmp}/base")


AARCH64_ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xb7\x00" + b"\0" * 44
X86_64_ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\x3e\x00" + b"\0" * 44
OLD_QEMU = "#!/bin/sh\necho 'QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2)'\n"
NO_VIOMMU_QEMU = ("#!/bin/sh\ncase \"$*\" in *help*) echo 'name \"edu\"';; "
                  "*) echo 'QEMU emulator version 11.1.3';; esac\n")
#: All the dmabuf variant needs but IOMMUFD and what depends on it, as a user's .config.
#: A kernel image as far as its boot header goes, and nothing inside.
BZIMAGE = b"\0" * 0x202 + b"HdrS" + b"\0" * (4096 - 0x206)

CONFIG_WITHOUT_IOMMUFD = "".join(
    f"{option}={value}\n" if option not in ("CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV")
    else f"# {option} is not set\n"
    for option, value in Recipe.load().kernels["dmabuf"].required_options().items())
FULL_CELL = {"id": "x", "viommu": "intel-iommu", "backend": "legacy", "kernel": "dmabuf",
             "check": "p2p-dma", "expected": "pass", "outcome": "pass", "met": True,
             "reason": "", "duration_s": 1.0, "error_stage": None, "deadline": False,
             "infrastructure": False, "l2_end": None}

CATALOGUE = [
    # L0
    Kind("l0-qemu-missing", ("--qemu", "/nonexistent/qemu-system-x86_64", "run"),
         "L0 QEMU '/nonexistent/qemu-system-x86_64' not found"),
    Kind("l0-qemu-not-qemu", ("--qemu", "/bin/true", "run"), "does not look like QEMU"),
    Kind("l0-qemu-too-old", ("--qemu", "{tmp}/qemu", "run"), "is 6.2.0, too old: need 7.0",
         files={"qemu": OLD_QEMU}, mode={"qemu": 0o755}),
    Kind("l0-qemu-lacks-the-viommu", ("--qemu", "{tmp}/qemu", "run", "--viommu", "intel-iommu"),
         "lacks the device(s) intel-iommu", files={"qemu": NO_VIOMMU_QEMU},
         mode={"qemu": 0o755}),
    Kind("viommu-unknown", ("run", "--viommu", "vt-d"), "invalid choice: 'vt-d'"),
    Kind("viommu-of-another-platform", ("run", "--viommu", "smmuv3"),
         "unknown vIOMMU 'smmuv3' on x86_64; known: intel-iommu, virtio-iommu, amd-iommu"),
    Kind("viommu-of-another-platform-arm64", ("run", "--arch", "aarch64", "--viommu",
                                             "intel-iommu"),
         "unknown vIOMMU 'intel-iommu' on aarch64; known: smmuv3, virtio-iommu"),
    Kind("arch-unknown", ("run", "--arch", "riscv64"), "invalid choice: 'riscv64'"),
    Kind("arch-avocado", ("matrix", "--arch", "aarch64", "--avocado-variants", "{tmp}/v.json"),
         "the avocado front end runs x86_64 cells only"),
    Kind("arch-unknown-images", ("images", "build", "--arch", "s390x"),
         "invalid choice: 's390x'"),
    Kind("check-unknown", ("run", "--check", "nope"), "invalid choice: 'nope'"),
    Kind("kernel-variant-unknown", ("images", "build", "--kernel", "no-such-kernel"),
         "unknown kernel variant 'no-such-kernel'"),
    Kind("seed-not-a-number", ("run", "--seed", "abc"), "argument --seed: invalid int value"),
    # ports
    Kind("ssh-port-busy", ("run", "--ssh-port", "{port}"), "port {port} on 127.0.0.1 is busy"),
    Kind("ssh-port-out-of-range", ("run", "--ssh-port", "70000"), "--ssh-port"),
    Kind("ssh-port-not-a-number", ("run", "--ssh-port", "ssh"), "--ssh-port"),
    Kind("jobs-zero", ("run", "--jobs", "0"), "0 is not a number of L1s at once (1-8)"),
    Kind("jobs-not-a-number", ("run", "--jobs", "all"), "'all' is not a number of L1s"),
    # where things go
    Kind("cache-dir-is-a-file", ("--cache-dir", "{tmp}/a-file", "images", "list"),
         "the image cache {tmp}/a-file (--cache-dir) is not a directory", files={"a-file": ""}),
    Kind("cache-max-not-a-size", ("--cache-max", "lots", "images", "list"),
         "argument --cache-max: not a size: 'lots' (e.g. 40G, 512M)"),
    Kind("cache-max-env-not-a-size", ("images", "build"),
         "VFIO_HARNESS_CACHE_MAX: not a size: 'lots'", env={"VFIO_HARNESS_CACHE_MAX": "lots"}),
    Kind("prune-without-a-bound", ("images", "prune"),
         "images prune: say how much to keep: --max-size SIZE and/or --older-than DAYS"),
    Kind("prune-max-size-not-a-size", ("images", "prune", "--max-size", "4parsecs"),
         "argument --max-size: not a size: '4parsecs'"),
    Kind("prune-older-than-negative", ("images", "prune", "--older-than", "-1"),
         "argument --older-than: not a number of days: '-1'"),
    Kind("results-dir-unwritable", ("run", "--results", "{tmp}/a-file/results"),
         "cannot write results to {tmp}/a-file/results: Not a directory", files={"a-file": ""}),
    # results files
    Kind("results-missing", ("report", "html", "{tmp}"), "no results.json at {tmp}"),
    Kind("results-torn", ("report", "html", "{tmp}"), "results.json is not valid JSON",
         files={"results.json": '{"cells": ['}),
    Kind("results-cells-lack-fields", ("report", "html", "{tmp}"),
         "cell 0 lacks viommu, backend, kernel, check, expected, met",
         files={"results.json": _results([{"id": "x", "outcome": "pass"}])}),
    Kind("results-break-the-schema", ("report", "html", "{tmp}"),
         "does not follow vfio-harness-results/2 (results.schema.json) at cells/0/outcome: "
         "'maybe' is not one of",
         files={"results.json": _results([{**FULL_CELL, "outcome": "maybe"}])}),
    Kind("results-unstamped", ("report", "html", "{tmp}"),
         "is not a results.json of this vfio-harness",
         files={"results.json": json.dumps({"run": {"complete": True}, "cells": []})}),
    Kind("compare-a-torn-side", ("compare", "{tmp}/base", "{tmp}/cand"),
         "results.json is not valid JSON",
         files={"base/results.json": _results([FULL_CELL]), "cand/results.json": "{"}),
    Kind("compare-an-unfinished-side", ("compare", "{tmp}/base", "{tmp}/cand"),
         "run run-1 (started 2026-11-30T10:00:00+00:00) did not finish",
         files={"base/results.json": _results([FULL_CELL]),
                "cand/results.json": _results([FULL_CELL], complete=False)}),
    Kind("baseline-results-unfinished", AB_BASELINE, "did not finish",
         files={"base/results.json": _results([FULL_CELL], complete=False)}),
    Kind("baseline-results-of-another-qemu", AB_BASELINE,
         "its L2 QEMU was /home/me/qemu/build, not the rootfs's packaged one",
         files={"base/results.json": _results([FULL_CELL], l2_qemu=[
             {"origin": "/home/me/qemu/build", "sha256": "ab"}])}),
    Kind("baseline-results-of-other-cells", AB_BASELINE,
         "{tmp}/base is not this A/B's baseline: its selection of cells",
         files={"base/results.json": _results([FULL_CELL], arch="x86_64", seed=12, selection={
             **AB_SELECTION, "viommus": ["virtio-iommu"]})}),
    Kind("baseline-results-with-another-seed", (*AB_BASELINE, "--seed", "13"),
         "is not this A/B's baseline: its seed 12, this A/B's baseline 13",
         files={"base/results.json": _results([FULL_CELL], arch="x86_64", seed=12,
                                              selection=AB_SELECTION)}),
    Kind("baseline-results-and-a-baseline-qemu",
         (*AB_BASELINE, "--baseline-l2-qemu", "{tmp}/q"),
         "--baseline-l2-qemu would make it another; give one"),
    Kind("merge-an-interrupted-shard", ("report", "merge", "{tmp}/shard", "--out", "{tmp}/m"),
         "is incomplete", files={"shard/results.json": _results([], complete=False)}),
    # the kernel under test
    Kind("series-missing", ("run", "--kernel-patches", "{tmp}/nope.mbox"),
         "series {tmp}/nope.mbox does not exist"),
    Kind("series-not-an-mbox", ("run", "--kernel-patches", str(SERIES / "broken.mbox")),
         "not an mbox of patches"),
    Kind("series-empty-directory", ("run", "--kernel-patches", "{tmp}/patches"), "is empty",
         files={"patches/.keep": ""}),
    Kind("two-kernels-under-test", ("run", "--kernel-image", "{tmp}/bzImage", "--kernel-tree",
                                    "{tmp}"),
         "one kernel under test at a time: --kernel-image and --kernel-tree were given",
         files={"bzImage": b"\0" * 4096}),
    Kind("kernel-image-missing", ("run", "--kernel-image", "{tmp}/bzImage"),
         "kernel image {tmp}/bzImage does not exist"),
    Kind("kernel-image-not-a-kernel", ("run", "--kernel-image", "{tmp}/vmlinux"),
         "{tmp}/vmlinux is not a x86_64 kernel image (no 'HdrS' boot header at 0x202)",
         files={"vmlinux": b"\x7fELF" + b"\0" * 4092}),
    Kind("kernel-image-of-the-other-architecture",
         ("run", "--arch", "aarch64", "--kernel-image", "{tmp}/bzImage"),
         "{tmp}/bzImage is not a aarch64 kernel image (no 'ARMd' boot header at 0x38)",
         files={"bzImage": BZIMAGE}),
    Kind("kernel-image-without-config", ("run", "--kernel-image", "{tmp}/bzImage"),
         "has no embedded config (CONFIG_IKCONFIG)", files={"bzImage": BZIMAGE},
         needs_source=True),
    Kind("kernel-without-iommufd", ("run", "--kernel-image", "{tmp}/bzImage", "--kernel-config",
                                    "{tmp}/config"),
         "lacks what the 'dmabuf' scenarios need: CONFIG_IOMMUFD (is n, needs y), "
         "CONFIG_VFIO_DEVICE_CDEV (is n, needs y)",
         files={"bzImage": BZIMAGE, "config": CONFIG_WITHOUT_IOMMUFD}),
    Kind("kernel-tree-not-a-tree", ("run", "--kernel-tree", "{tmp}"),
         "is not a kernel source tree (no Makefile and Kconfig)"),
    # the QEMU under test
    Kind("l2-qemu-missing", ("run", "--l2-qemu", "{tmp}/qemu-system-x86_64"),
         "QEMU under test {tmp}/qemu-system-x86_64 does not exist"),
    Kind("l2-qemu-another-architecture", ("run", "--l2-qemu", "{tmp}/qemu-system-x86_64"),
         "is a AArch64 binary (for --arch aarch64): L1 is x86_64",
         files={"qemu-system-x86_64": AARCH64_ELF}, mode={"qemu-system-x86_64": 0o755}),
    Kind("l2-qemu-another-architecture-arm64",
         ("run", "--arch", "aarch64", "--l2-qemu", "{tmp}/qemu-system-aarch64"),
         "is a x86-64 binary (for --arch x86_64): L1 is aarch64",
         files={"qemu-system-aarch64": X86_64_ELF}, mode={"qemu-system-aarch64": 0o755}),
    Kind("l2-qemu-neither-binary-nor-script", ("run", "--l2-qemu", "{tmp}/qemu-system-x86_64"),
         "is neither an executable (ELF) nor a script",
         files={"qemu-system-x86_64": "QEMU\n"}),
    Kind("l2-qemu-build-dir-without-binary", ("run", "--l2-qemu", "{tmp}/build"),
         "no qemu-system-x86_64 in {tmp}/build (a build directory or an install prefix)",
         files={"build/build.ninja": ""}),
    Kind("ab-with-nothing-under-test", ("ab",), "ab needs something under test"),
    Kind("bisect-without-a-series", ("ab", "--bisect", "--candidate-l2-qemu", "{tmp}/q"),
         "--bisect bisects the candidate's kernel series: give --candidate-kernel-patches"),
    Kind("bisect-against-another-baseline-kernel",
         ("ab", "--bisect", "--candidate-kernel-patches", str(SERIES / "bisect-10.mbox"),
          "--baseline-kernel-patches", str(SERIES / "0001-comment-only.mbox")),
         "--baseline-kernel-patches would make the baseline another kernel"),
    Kind("bisect-a-run-without-a-series", ("run", "--bisect"),
         "--bisect bisects the kernel series under test: give --kernel-patches"),
    Kind("keep-failed-with-parallel-l1s", ("run", "--keep-failed", "--jobs", "2"),
         "--keep-failed holds each failing L1 in turn, one L1 at a time: --jobs 2 cannot be"),
    Kind("keep-failed-not-seconds", ("run", "--keep-failed", "0"),
         "0 is not a number of seconds to hold an L1 (1-86400)"),
    Kind("patches-first-without-a-series", ("run", "--kernel-patches-first", "2"),
         "--kernel-patches-first N takes the first N patches of --kernel-patches"),
    Kind("patches-first-beyond-the-series",
         ("run", "--kernel-patches", str(SERIES / "bisect-skip-4.mbox"),
          "--kernel-patches-first", "5"),
         "--kernel-patches-first 5: " + str(SERIES / "bisect-skip-4.mbox") + " has 4 patch(es)"),
    Kind("patches-first-not-a-number", ("run", "--kernel-patches-first", "0"),
         "0 is not a number of patches"),
    Kind("patchwork-check-unwritable", ("compare", "{tmp}/base", "{tmp}/base",
                                        "--patchwork-check", "{tmp}/a-file/check.json"),
         "{tmp}/a-file/check.json",
         files={"base/results.json": _results([FULL_CELL]), "a-file": ""}),
    Kind("shell-unknown-cell", ("shell", "intel-iommu-iommufd-dmabuf"),
         "no cell 'intel-iommu-iommufd-dmabuf': a cell is VIOMMU-BACKEND-KERNEL-CHECK"),
    Kind("command-for-run", ("run", "--", "ls"), "only shell takes a command after --: ls"),
    Kind("kcidb-file-unwritable", ("run", "--kcidb", "{tmp}/a-file/kcidb.json"),
         "cannot write the KCIDB file {tmp}/a-file/kcidb.json to {tmp}/a-file: File exists",
         files={"a-file": ""}),
]


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _given(kind: Kind, tmp: Path, port: int) -> Callable[[str], str]:
    for name, content in kind.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(kind.mode.get(name, 0o644))
    return lambda s: s.format(tmp=tmp, port=port)


def test_the_catalogue_has_at_least_twenty_kinds_each_named_once():
    names = [k.name for k in CATALOGUE] + list(ELSEWHERE)
    assert len(set(names)) == len(names) and len(CATALOGUE) >= 20


@pytest.mark.parametrize("kind", CATALOGUE, ids=lambda k: k.name)
def test_bad_input_is_one_clear_line_and_exit_2(kind, tmp_path):
    cache = tmp_path / "empty-cache"
    given = tmp_path / "given"
    given.mkdir()
    source = paths.cache_dir(None) / "src"
    if kind.needs_source and source.is_dir():  # the kernel source the images were built from
        cache.mkdir()
        (cache / "src").symlink_to(source)
    with _busy_port() as busy:
        fill = _given(kind, given, busy.getsockname()[1])
        p = subprocess.run([sys.executable, "-m", "harness", "--cache-dir", str(cache),
                            *map(fill, kind.args)], capture_output=True, text=True,
                           timeout=300 if kind.needs_source else 60, cwd=tmp_path,
                           env={**os.environ, **kind.env})
    out = p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    assert p.returncode == BAD_INPUT, out
    assert "Traceback" not in out and "booting" not in out, out
    assert "error: " in last and fill(kind.says) in last, out
    # Nothing expensive began: no image was built into the empty cache.
    assert not (cache / "artifacts").exists() or not any((cache / "artifacts").iterdir())


@pytest.mark.parametrize("manifest", ['{"name": "x"}', '{"files": {"bzImage": 3}}', "[1, 2]",
                                      '{"files": {"bzImage": {"size": "big"}}}'])
def test_a_manifest_of_the_wrong_shape_is_not_intact(tmp_path, manifest):
    (tmp_path / "manifest.json").write_text(manifest)
    assert "no valid manifest" in verify(tmp_path)


def test_images_list_on_an_empty_cache_is_no_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness", "--cache-dir", str(tmp_path),
                        "images", "list"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert "kernel-dmabuf" in p.stdout and "not built" in p.stdout


def test_exit_code_3_when_only_deadlines_ended_cells():
    cell = Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma")
    late = CellResult(cell, "error", "L2 DMA: edu DMA still running", {}, 1.0, deadline=True)
    wrong = CellResult(cell, "fail", "the bytes did not arrive", {}, 1.0)
    fine = CellResult(cell, "pass", "", {}, 1.0)
    assert exit_code([fine]) == 0
    assert exit_code([fine, late]) == 3
    assert exit_code([late, wrong]) == 1
    assert exit_code([]) == 1


def test_a_reader_that_goes_away_ends_the_listing_without_a_traceback(tmp_path):
    """`vfio-harness images list | head -1`: the pipe closes under the listing (here
    before its first line: `true` reads nothing and has exited by then)."""
    p = subprocess.run(f"{sys.executable} -m harness --cache-dir {tmp_path} images list "
                       f"--arch aarch64 | true; echo \"${{PIPESTATUS[0]}}\" >&2",
                       shell=True, executable="/bin/bash", capture_output=True, text=True,
                       timeout=60)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "141"  # as a shell tool ends on SIGPIPE
