"""Crash-consistent registry changes: write the whole intended change first, then apply it, then clear it.

A promotion or rollback moves several aliases, tags versions and logs a decision run: a process killed
between those calls would leave the registry half-changed (e.g. ``champion=5, previous_champion=1`` with
the challenger alias still on 5). So the change is first recorded as one pending change on the registered
model (a single call), then applied with calls that are each idempotent (set this alias to that version,
set this tag, log the decision run unless one with this change id exists), and cleared last. Whoever
touches the registry next (any registry step, ``--resume``, ``champion rollback``) calls
:func:`complete_pending` first, which applies a pending change again to the end: after a crash at any
point the registry is either unchanged (killed before the record) or exactly as intended.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fraudops.config import Settings
from fraudops.tracking import registry
from fraudops.tracking.client import call, client, experiment_id, flat_metrics, step_run

log = logging.getLogger("fraudops.promotion")

CHANGE_TAG = "fraudops.change_id"


class Change(BaseModel):
    """One registry change, complete: the aliases as they must end, the version tags, the decision record."""

    model_config = ConfigDict(extra="forbid")

    id: str
    decision: Literal["promoted", "rejected", "rollback"]
    step: str
    aliases: dict[str, int | None]
    version_tags: dict[int, dict[str, str]]
    record: dict[str, Any]
    execution_id: str | None = None
    parent_run_id: str | None = None
    created_at: str


def new_change(
    decision: Literal["promoted", "rejected", "rollback"],
    step: str,
    *,
    aliases: dict[str, int | None],
    version_tags: dict[int, dict[str, str]],
    record: dict[str, Any],
    execution_id: str | None,
    parent_run_id: str | None,
) -> Change:
    return Change(
        id=uuid.uuid4().hex,
        decision=decision,
        step=step,
        aliases=aliases,
        version_tags=version_tags,
        record=record,
        execution_id=execution_id,
        parent_run_id=parent_run_id,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )


def _decision_run(settings: Settings, change: Change) -> str:
    """The MLflow run that records the decision: logged once per change (a run left open by a killed
    process is closed as KILLED and logged again)."""
    import mlflow

    c = client(settings)
    runs = call(
        settings,
        "decision runs",
        lambda: c.search_runs(
            [experiment_id(settings)], filter_string=f"tags.`{CHANGE_TAG}` = '{change.id}'"
        ),
    )
    for run in runs:
        if run.info.status == "FINISHED":
            return str(run.info.run_id)
        call(settings, "close run", functools.partial(c.set_terminated, run.info.run_id, status="KILLED"))
    record = change.record
    with step_run(
        settings, change.step, change.execution_id, change.parent_run_id, tags={CHANGE_TAG: change.id}
    ) as run:
        mlflow.set_tags(
            {"decision": change.decision, "decision.reasons": "; ".join(record.get("reasons", []))[:5000]}
        )
        for who in ("challenger", "champion"):
            metrics = (record.get(who) or {}).get("metrics")
            if metrics:  # a rollback's demoted champion has none
                mlflow.log_metrics(flat_metrics(f"{who}.", metrics))
        mlflow.log_dict(record, "decision.json")
        return str(run.info.run_id)


def apply(settings: Settings, change: Change) -> str:
    """Bring the registry to the change's end state (every call idempotent), then clear it. Returns the
    decision run's id."""
    for version, tags in change.version_tags.items():
        registry.tag_version(settings, version, tags)
    for alias in sorted(change.aliases, key=lambda a: a != registry.CHAMPION):  # the champion first
        registry.set_alias(settings, alias, change.aliases[alias])
    run_id = _decision_run(settings, change)
    registry.clear_pending(settings)
    return run_id


def commit(settings: Settings, change: Change) -> str:
    """Record the change, then apply it."""
    registry.set_pending(settings, change.model_dump(mode="json"))
    return apply(settings, change)


def complete_pending(settings: Settings) -> tuple[Change, str] | None:
    """Finish a change a crashed process left half-applied: (the change, its decision run), or None."""
    pending = registry.pending(settings)
    if pending is None:
        return None
    change = Change.model_validate(pending)
    log.warning(
        "completing an interrupted registry change of %s (%s, %s): aliases %s",
        change.created_at,
        change.step,
        change.decision,
        change.aliases,
    )
    return change, apply(settings, change)
