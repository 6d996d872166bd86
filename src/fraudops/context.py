"""The step contract: every pipeline step takes a :class:`StepContext` and returns a :class:`StepResult`.

The CLI, the execution history, the demo and the exports read these typed results, never ad-hoc dict
keys. A result is stored as JSON in the history and read back (``--resume``) with its own model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from fraudops.config import Settings
from fraudops.workspace.storage import Storage

Progress = Callable[[str, int, int | None], None]
"""progress(what, done, total or None)."""


class StepResult(BaseModel):
    """What a step hands to the next steps, the history and the CLI."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = None
    """The step's own MLflow run (nested under the execution's run)."""


R = TypeVar("R", bound=StepResult)


@dataclasses.dataclass
class StepContext:
    """Everything a step may use: the workspace, its settings, where to record, what earlier steps made."""

    settings: Settings
    storage: Storage
    execution_id: str | None = None
    parent_run_id: str | None = None
    handed: Mapping[str, StepResult] = dataclasses.field(default_factory=dict)
    progress: Progress | None = None

    def handover(self, step: str, kind: type[R]) -> R | None:
        """The result of an earlier step of this execution (or of the one resumed), if any."""
        result = self.handed.get(step)
        return result if isinstance(result, kind) else None

    @classmethod
    def of(cls, settings: Settings, **kw: Any) -> StepContext:
        """A context on the settings' own workspace (for steps run outside an execution)."""
        return cls(settings, Storage.of(settings), **kw)
