"""The retraining trigger: the seed's Lambda and second state machine, run locally.

Reads the monitor's ``retrain_decision.csv`` and on YES starts ``{"run": "all", "triggered_by":
"monitoring", "reason": "auto_retraining"}``, once per decision (remembered in ``trigger_state.json`` beside
the CSV, checked under the workspace lock, so two triggers at once cannot both retrain).
"""

from __future__ import annotations

import contextlib
from typing import Any

from fraudops.config import Settings
from fraudops.errors import FraudopsError, StorageError
from fraudops.monitoring.decision_file import parse_decision
from fraudops.pipeline.executor import Event, execute
from fraudops.pipeline.graph import TRIGGER_INPUT
from fraudops.pipeline.history import RUNNING, new_execution_id, now_iso
from fraudops.workspace.layout import DECISION_CSV, DECISION_DIR, TRIGGER_STATE
from fraudops.workspace.lock import WorkspaceLock
from fraudops.workspace.storage import Storage


def read_decision(storage: Storage) -> dict[str, Any]:
    """The monitor's decision: YES/NO in the first column of the second row (the seed Lambda's rows[1][0])."""
    where = storage.uri(DECISION_CSV)
    if not storage.exists(DECISION_CSV):
        raise FraudopsError(
            f"no retraining decision at {where}: run the monitor step first (`fraudops run --only monitor`)"
        )
    data = storage.read_bytes(DECISION_CSV)
    written = None
    with contextlib.suppress(Exception):
        info = storage.info(DECISION_CSV)
        written = (
            info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
        )
    return parse_decision(data, where, written)


def _trigger_state(storage: Storage) -> dict[str, Any]:
    with contextlib.suppress(StorageError, ValueError, FileNotFoundError):
        state = storage.read_json(TRIGGER_STATE)
        if isinstance(state, dict) and isinstance(state.get("handled"), list):
            return state
    return {"handled": []}


def _save_state(storage: Storage, state: dict[str, Any], entry: dict[str, Any]) -> None:
    handled = [h for h in state["handled"] if h.get("key") != entry["key"]] + [entry]
    storage.write_json(TRIGGER_STATE, {"handled": handled[-50:]})


def trigger(
    settings: Settings,
    storage: Storage,
    *,
    force: bool = False,
    on_event: Event | None = None,
    execution_id: str | None = None,
) -> dict[str, Any]:
    """The seed's retraining trigger: act on a YES decision once. Returns what was done.

    ``action``: ``none`` (NO), ``already_handled`` (this decision started an execution before) or
    ``started`` (with ``execution``, the record). The check and the start happen under the workspace lock,
    so two triggers at once cannot both retrain.
    """
    decision = read_decision(storage)
    if on_event:
        on_event("decision", decision, None)
    if decision["retraining_required"] == "NO":
        return {"action": "none", "decision": decision}
    execution_id = execution_id or new_execution_id()
    with WorkspaceLock(storage, execution_id, timeout=settings.pipeline.lock_timeout) as lock:
        decision = read_decision(storage)  # it may have changed while we waited for the lock
        if decision["retraining_required"] == "NO":
            return {"action": "none", "decision": decision}
        storage.remove_leftovers(DECISION_DIR)
        state = _trigger_state(storage)
        done = next((h for h in state["handled"] if h.get("key") == decision["key"]), None)
        if done and not force:
            return {"action": "already_handled", "decision": decision, "handled": done}
        entry = {
            "key": decision["key"],
            "decision": "YES",
            "decision_written": decision["written"],
            "execution_id": execution_id,
            "status": RUNNING,
            "handled_at": now_iso(),
        }
        _save_state(storage, state, entry)
        try:
            inp = dict(TRIGGER_INPUT)
            record = execute(settings, storage, inp, execution_id=execution_id, lock=lock, on_event=on_event)
        except BaseException:  # nothing ran (e.g. tracking store unreachable): the decision is not acted on
            storage.write_json(TRIGGER_STATE, state)
            raise
        _save_state(storage, _trigger_state(storage), {**entry, "status": record["status"]})
    return {"action": "started", "decision": decision, "execution": record}
