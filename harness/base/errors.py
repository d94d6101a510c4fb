"""Failures that a person reads.

Every error names the stage it happened in (image build, L1 boot, SSH, ...)
and carries the evidence that explains it (a console tail, stderr), so that
the CLI can print one clear message and exit non-zero instead of a traceback.
"""


class HarnessError(Exception):
    """A failure with a message for a person; `details` holds logs worth showing."""

    exit_code = 1

    def __init__(self, message: str, *, stage: str | None = None, details: str = ""):
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.details = details

    def __str__(self) -> str:
        head = f"{self.stage}: {self.message}" if self.stage else self.message
        return f"{head}\n{self.details.rstrip()}" if self.details else head


class BadInput(HarnessError):
    """The user asked for something that cannot work (unknown vIOMMU, busy port, ...)."""

    exit_code = 2


class StageTimeout(HarnessError):
    """A wait ran past its deadline; the stage says where."""

    exit_code = 3
