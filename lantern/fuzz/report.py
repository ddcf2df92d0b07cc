"""What a fuzzing run found: one :class:`Failure` per program that failed a check, summed in a :class:`Report`."""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field


@dataclass
class Failure:
    """One program that failed a check: ``stage`` says which (trace, run, forward, grad, fd, numpy, -O0, ...)."""

    seed: int
    index: int
    stage: str
    message: str

    def __str__(self) -> str:
        return f"program (seed {self.seed}, index {self.index}) failed [{self.stage}]: {self.message}"


@dataclass
class Report:
    """What a check saw: programs run, finite-difference checks done and skipped, failures."""

    programs: int = 0
    fd_checked: int = 0
    fd_skipped: int = 0  # the difference quotient was not stable (a kink or branch along the direction)
    failures: list[Failure] = field(default_factory=list)
    with_sizes: int = 0  # batches compiled with run-time sizes (``dynamic=True`` checks)

    def add(self, other: "Report") -> None:
        self.programs += other.programs
        self.with_sizes += other.with_sizes
        self.fd_checked += other.fd_checked
        self.fd_skipped += other.fd_skipped
        self.failures += other.failures


def describe(exc: BaseException) -> str:
    """An exception as one line: type, message (cut), and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {str(exc)[:2000]}{where}"
