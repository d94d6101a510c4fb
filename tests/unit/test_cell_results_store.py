"""The shared cell results of one run: used only by the same run, torn or foreign files refused."""

import json
from dataclasses import asdict

import pytest

from harness.base.errors import HarnessError
from harness.base.files import write_atomic
from harness.run.cell_results import FORMAT, RunIdentity, read_store

ME = RunIdentity("avocado-1234", 7, "packaged 1:11.1.3+ds-1", "", {"rootfs": "r1"}, "0.1.0")


def store(tmp_path, identity=ME, cells=None):
    path = tmp_path / "intel-iommu-dmabuf" / "cells.json"
    write_atomic(path, json.dumps({"format": FORMAT, "identity": asdict(identity),
                                   "cells": cells or {"a-cell": {"outcome": "pass"}}}))
    return path


def test_the_same_run_reads_what_it_wrote(tmp_path):
    assert read_store(store(tmp_path), ME) == {"a-cell": {"outcome": "pass"}}


def test_nothing_there_means_boot(tmp_path):
    assert read_store(tmp_path / "cells.json", ME) is None


@pytest.mark.parametrize("change", [
    {"run_id": "avocado-earlier-job"},                 # a re-run: never replay
    {"seed": 8},
    {"l2_qemu": "/home/me/qemu/build/qemu-system-x86_64", "l2_qemu_sha256": "ab" * 32},
    {"images": {"rootfs": "r2"}},
    {"harness": "0.2.0"},
])
def test_another_runs_results_mean_a_fresh_boot(tmp_path, change):
    theirs = RunIdentity(**{**asdict(ME), **change})
    assert read_store(store(tmp_path, theirs), ME) is None


def test_a_torn_file_is_an_error_naming_it(tmp_path):
    path = store(tmp_path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(HarnessError, match=f"{path} is torn"):
        read_store(path, ME)


def test_a_foreign_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cells.json"
    path.write_text(json.dumps({"intel-iommu-legacy-dmabuf-p2p-dma": {"outcome": "pass"}}))
    with pytest.raises(HarnessError, match=f"{path} is not a vfio-harness cell results file"):
        read_store(path, ME)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    write_atomic(tmp_path / "x.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
