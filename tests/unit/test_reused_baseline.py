"""An earlier run as an A/B's baseline: taken only when every fact that decides its cells
is the one this A/B's baseline would have (harness/results/reused_baseline.py)."""

import pytest

from harness.base.errors import BadInput
from harness.evidence.records import PACKAGED
from harness.results import reused_baseline
from harness.results.reused_baseline import AFTER_IMAGES, BEFORE_IMAGES, mismatch, require

IMAGES = {"kernels": {"dmabuf": {"artifact": "kernel-dmabuf-c36124d3ff2183fe",
                                 "sha256": "03007cff"}},
          "rootfs": {"artifact": "rootfs-51e2a099df9a8c02", "sha256": "9e1d"}}
RUN = {"arch": "x86_64", "seed": 12, "accel": "tcg", "images": IMAGES,
       "selection": {"viommus": ["intel-iommu"], "backends": ["legacy", "iommufd"],
                     "kernels": ["dmabuf"], "checks": ["p2p-dma"]},
       "kernel_series": {}, "kernel_images": {}, "kernel_trees": {},
       # what differs between any two runs and decides nothing
       "run_id": "run-a", "started": "2026-12-07T01:00:00+00:00", "duration_s": 61.0}


def test_the_same_baseline_run_again_matches_on_every_fact():
    again = {**RUN, "run_id": "run-b", "started": "2026-12-07T02:00:00+00:00",
             "duration_s": 64.2}
    assert mismatch(RUN, again, BEFORE_IMAGES + AFTER_IMAGES) is None


@pytest.mark.parametrize("change, says", [
    ({"seed": 13}, "its seed 12, this A/B's baseline 13"),
    ({"arch": "aarch64"}, "its architecture 'x86_64', this A/B's baseline 'aarch64'"),
    ({"selection": {**RUN["selection"], "checks": ["p2p-dma", "reset"]}},
     "its selection of cells (checks) ['p2p-dma'], this A/B's baseline ['p2p-dma', 'reset']"),
])
def test_a_baseline_of_other_cells_is_refused_before_any_image(change, says):
    assert says in mismatch(RUN, {**RUN, **change}, BEFORE_IMAGES)


@pytest.mark.parametrize("change, says", [
    # the same recipe rebuilt: another binary, another baseline
    ({"images": {**IMAGES, "kernels": {"dmabuf": {**IMAGES["kernels"]["dmabuf"],
                                                  "sha256": "77aa01"}}}},
     "its L1 images (kernels and rootfs, by sha256) (kernels.dmabuf.sha256) '03007cff', "
     "this A/B's baseline '77aa01'"),
    # another rootfs: another packaged QEMU
    ({"images": {**IMAGES, "rootfs": {"artifact": "rootfs-0", "sha256": "1"}}}, "L1 images"),
    ({"kernel_series": {"dmabuf": {"sha256": "bc98"}}}, "its kernel series none, this A/B's"),
    ({"accel": "kvm"}, "its accelerator 'tcg', this A/B's baseline 'kvm'"),
])
def test_a_baseline_of_other_images_or_series_is_refused(change, says):
    assert says in mismatch(RUN, {**RUN, **change}, AFTER_IMAGES)


def test_a_run_recorded_before_images_were_recorded_is_not_taken_for_any():
    """A results.json of an older harness has no image identities: none is not a match."""
    old = {k: v for k, v in RUN.items() if k != "images"}
    assert "L1 images" in mismatch(old, RUN, AFTER_IMAGES)


def test_the_refusal_names_the_directory_and_the_first_fact(tmp_path):
    with pytest.raises(BadInput, match=rf"--baseline-results {tmp_path} is not this A/B's "
                                       r"baseline: its seed 12, this A/B's baseline 7$"):
        require(tmp_path, RUN, {**RUN, "seed": 7}, BEFORE_IMAGES)


def test_a_long_difference_is_cut_to_one_readable_line():
    other = {**RUN, "selection": {**RUN["selection"], "checks": ["x" * 50] * 10}}
    line = mismatch(RUN, other, BEFORE_IMAGES)
    assert line is not None and len(line) < 200 and line.endswith("...")


def test_the_packaged_qemu_is_what_a_baseline_ran(tmp_path):
    import json

    from harness.results.results_file import SCHEMA
    run = {**RUN, "complete": True, "ended": "x",
           "l2_qemu": [{"origin": PACKAGED, "sha256": "53c6"}]}
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA, "run": run,
                                                       "cells": []}))
    assert reused_baseline.load(tmp_path)["run"]["seed"] == 12
