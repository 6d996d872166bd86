"""The errors a user can act on: one ``error:`` line in the CLI (no traceback), a 4xx from the endpoint.

Anything else that escapes is a bug of ours.
"""

from __future__ import annotations

import dataclasses


class FraudopsError(Exception):
    """A problem the user can fix (bad input, missing workspace, …): shown without a traceback."""


class ConfigError(FraudopsError, ValueError):
    """A configuration problem, with the offending key in the message."""


class StorageError(FraudopsError, OSError):
    """A workspace file could not be read or written."""


class LockHeldError(FraudopsError):
    """Another execution holds the workspace."""


@dataclasses.dataclass
class Problem:
    """One validation finding: where, what, how many rows, a few examples."""

    file: str
    column: str | None
    message: str
    n_rows: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.file}" + (f", column {self.column!r}" if self.column is not None else "")
        rows = f" ({self.n_rows} rows" + (f", e.g. {', '.join(self.examples)}" if self.examples else "") + ")"
        return f"{where}: {self.message}" + (rows if self.n_rows else "")


class DataValidationError(FraudopsError, ValueError):
    """Every problem found in the files checked, reported at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid data:\n" + "\n".join(f"  - {p}" for p in problems))
