"""The bisect search on its own: a truth table of which prefix breaks which cell, and
prefixes that do not build, played against it."""

import pytest

from harness.images.series import Patch, Series
from harness.run.bisect import FIRST_BAD, NOT_THE_SERIES, RANGE, Search, Unbuilt, bisect


def play(search: Search, first_bad: dict[str, int], unbuilt=frozenset()) -> list[int]:
    tried = []
    while (nxt := search.next()) is not None:
        k, cells = nxt
        tried.append(k)
        assert len(tried) < 50
        if k in unbuilt:
            search.skip(k, "error: broken")
            continue
        search.record(k, {c: k >= first_bad[c] for c in cells})
    return tried


@pytest.mark.parametrize("bad", range(1, 11))
def test_one_bad_patch_of_ten_is_named_in_at_most_four_steps(bad):
    s = Search(10, ["a", "b"])
    tried = play(s, {"a": bad, "b": bad})
    assert len(tried) <= 4 and 10 not in tried and 0 not in tried
    assert s.result("a") == {"verdict": FIRST_BAD, "first_bad": bad, "could_be": [bad]}


def test_cells_broken_by_different_patches_each_get_theirs():
    s = Search(10, ["a", "b", "c"])
    play(s, {"a": 3, "b": 8, "c": 3})
    assert [s.result(c)["first_bad"] for c in "abc"] == [3, 8, 3]


def test_a_prefix_that_does_not_build_is_skipped_and_a_neighbour_tried():
    s = Search(10, ["a"])
    tried = play(s, {"a": 7}, unbuilt={5})
    assert tried[0] == 5 and tried[1] in (4, 6)
    assert s.result("a")["first_bad"] == 7


def test_when_only_unbuilt_prefixes_are_left_the_answer_is_the_range():
    s = Search(4, ["a"])
    play(s, {"a": 3}, unbuilt={2})
    r = s.result("a")
    assert r["verdict"] == RANGE and r["could_be"] == [2, 3]


def test_without_a_baseline_the_pinned_kernel_is_run_only_when_the_answer_hangs_on_it():
    s = Search(4, ["a"], good_known=False)
    assert 0 not in play(s, {"a": 3})
    assert s.result("a")["first_bad"] == 3
    s = Search(4, ["a"], good_known=False)
    assert play(s, {"a": 1})[-1] == 0
    assert s.result("a")["first_bad"] == 1
    s = Search(4, ["a"], good_known=False)
    play(s, {"a": 0})
    assert s.result("a")["verdict"] == NOT_THE_SERIES


def test_a_cell_not_judged_at_a_step_is_skipped_there_alone():
    s = Search(4, ["a", "b"])
    k, cells = s.next()
    s.record(k, {"a": None, "b": True})
    assert s.next()[1] == ["a"] or "a" in s.next()[1]
    play(s, {"a": 4, "b": 1})
    assert s.result("b")["first_bad"] == 1 and s.result("a")["first_bad"] == 4
    s = Search(4, ["a"])
    s.record(2, {"a": None})
    play(s, {"a": 2})  # the step that would have told is the one not judged
    assert s.result("a")["could_be"] == [2, 3]


def test_the_record_names_patches_and_the_steps_taken():
    series = Series(__import__("pathlib").Path("/s.mbox"), "t",
                    tuple(Patch(n, f"patch {n}", "A <a@b>", f"d{n}") for n in range(1, 5)))

    def step(k, cells):
        if k == 2:
            raise Unbuilt("drivers/x.c:1: error: expected ';'")
        return {c: k >= 3 for c in cells}, f"/r/{k}"

    r = bisect(series, ["a"], step)
    cell = r["cells"]["a"]
    assert cell["verdict"] == RANGE and [p["number"] for p in cell["could_be"]] == [2, 3]
    assert cell["skipped"] == [2] and r["unbuilt"] == {"2": "drivers/x.c:1: error: expected ';'"}
    assert [s["patches"] for s in r["steps"]] == [2, 1, 3]
    assert r["steps"][0]["built"] is False and r["steps"][1]["verdicts"] == {"a": "good"}


def test_a_step_runs_a_cell_with_every_check_of_the_l2_it_stood_on():
    """quit-while-revoked alone finds nothing to trip on when the dma-buf that outlives
    its device comes from an unplug earlier in the same L2: a step runs them together."""
    from harness.checks.matrix import cells
    from harness.run.bisect import context

    every = cells(("intel-iommu", "virtio-iommu"), ("legacy", "iommufd"), ("dmabuf",),
                  ("dmabuf-unplug", "unplug-while-revoked", "quit-while-revoked"))
    ran = context(every, ["intel-iommu-legacy-dmabuf-quit-while-revoked"])
    assert [c.id for c in ran] == [f"intel-iommu-legacy-dmabuf-{check}" for check in
                                   ("dmabuf-unplug", "unplug-while-revoked",
                                    "quit-while-revoked")]
    both = context(every, ["intel-iommu-legacy-dmabuf-quit-while-revoked",
                           "virtio-iommu-iommufd-dmabuf-dmabuf-unplug"])
    assert len(both) == 6 and {c.backend for c in both} == {"legacy", "iommufd"}
