"""The plumbing of parallel L1s, with plain functions as the work: every item comes back,
`jobs` at a time; a child's bad input or death is the parent's error; a consumer that
stops early leaves no child behind (each child is asked to stop and unwinds)."""

import os
import time
from pathlib import Path

import pytest

from harness.base.errors import BadInput, HarnessError
from harness.run import parallel


def _items(task: int):
    for n in range(3):
        yield (task, n, os.getpid())


def test_every_item_of_every_task_comes_back_from_child_processes():
    got = list(parallel.run([1, 2, 3], 2, _items, str))
    assert sorted((t, n) for t, n, _ in got) == [(t, n) for t in (1, 2, 3) for n in range(3)]
    assert os.getpid() not in {pid for *_, pid in got}


def test_no_more_than_jobs_children_at_once(tmp_path: Path):
    def work(task: int):
        (tmp_path / f"{task}.start").write_text(str(time.monotonic()))
        time.sleep(0.3)
        (tmp_path / f"{task}.end").write_text(str(time.monotonic()))
        yield task

    assert sorted(parallel.run([1, 2, 3, 4], 2, work, str)) == [1, 2, 3, 4]
    spans = [(float((tmp_path / f"{t}.start").read_text()),
              float((tmp_path / f"{t}.end").read_text())) for t in (1, 2, 3, 4)]
    for s, _ in spans:
        assert sum(1 for a, b in spans if a <= s < b) <= 2


def test_bad_input_in_a_child_is_bad_input_here():
    def work(task: int):
        if task == 2:
            raise BadInput("no such kernel")
        yield task

    with pytest.raises(BadInput, match="no such kernel"):
        list(parallel.run([1, 2], 2, work, str))


def test_a_child_that_dies_is_an_error_naming_it():
    def work(task: int):
        yield task
        os._exit(3)  # as a segfault would: no last words

    with pytest.raises(HarnessError, match=r"worker for t7 died \(exit code 3\)"):
        list(parallel.run([7], 2, work, lambda t: f"t{t}"))


def test_stopping_early_asks_each_child_to_unwind(tmp_path: Path):
    def work(task: int):
        try:
            (tmp_path / f"{task}.started").write_text("yes")
            yield task
            # In slices, as the harness's waits poll. A SIGTERM that lands after Python's
            # last look at its signals and before the sleep's system call starts is acted
            # on only when the call returns: the likely reason why, once in about ten CI
            # runs, one sleep(60) was slept out (close took 60.05 s).
            for _ in range(600):
                time.sleep(0.1)
            yield -1
        finally:  # what stack.booted's shutdown stands for
            (tmp_path / f"{task}.unwound").write_text("yes")

    gen = parallel.run([1, 2], 2, work, str)
    next(gen)
    deadline = time.monotonic() + 20
    while not (tmp_path / "2.started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "2.started").exists(), "the second child never started its work"
    began = time.monotonic()
    gen.close()
    took = time.monotonic() - began
    unwound = sorted(p.name for p in tmp_path.glob("*.unwound"))
    assert took < 20, f"stopping took {took:.1f} s; unwound: {unwound}"
    assert unwound == ["1.unwound", "2.unwound"]
