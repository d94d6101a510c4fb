"""Deadlines for every wait, so that a timeout always names its stage."""

import time
from collections.abc import Callable
from typing import TypeVar

from harness.base.errors import StageTimeout

T = TypeVar("T")


class Deadline:
    def __init__(self, stage: str, seconds: float):
        self.stage = stage
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def timeout(self, what: str, details: str = "") -> StageTimeout:
        return StageTimeout(f"{what} (gave up after {self.seconds:g} s)",
                            stage=self.stage, details=details)


def wait_for(predicate: Callable[[], T | None], deadline: Deadline, what: str,
             interval: float = 0.25, details: Callable[[], str] | None = None) -> T:
    """Poll `predicate` until it returns something truthy or the deadline passes."""
    while True:
        result = predicate()
        if result:
            return result
        if deadline.expired:
            raise deadline.timeout(what, details() if details else "")
        time.sleep(min(interval, max(deadline.remaining(), 0.01)))
