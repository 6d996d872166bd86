"""The MLflow model registry: versions, their tags and the champion/challenger aliases.

The champion is whatever version the ``champion`` alias names; a version points at the train run that made
it (lineage). Changes that span several calls (a promotion, a rollback) are written first as one pending
change on the registered model (:func:`set_pending`), so that a crash between the calls can be completed
by whoever comes next (:mod:`fraudops.promotion.journal`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from pathlib import Path
from typing import Any

from fraudops.config import Settings
from fraudops.errors import FraudopsError
from fraudops.tracking.client import call, client, tracking_uri

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
REGISTERED_TAG = "fraudops.registered_version"
"""On a train run: the version registered from it."""
SOURCE_RUN_TAG = "fraudops.run_id"
"""On a version: the train run it was registered from."""
DECISION_TAG, DECISION_REASONS_TAG = "fraudops.decision", "fraudops.decision_reasons"
PENDING_TAG = "fraudops.pending_change"
"""On the registered model: a change in progress (JSON), cleared when it is complete."""
TAG_MAX = 5000


def _not_found(e: Exception) -> bool:
    code = getattr(e, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "not found" in str(e).lower()


def store_exists(settings: Settings) -> bool:
    """False for a local workspace whose SQLite store was never created (reading must not create it)."""
    uri = tracking_uri(settings)
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def version_by_alias(settings: Settings, alias: str) -> Any | None:
    """The ModelVersion an alias names, or None (also when the store or model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    if not store_exists(settings):
        return None
    c = client(settings)
    name = settings.registry.model_name
    try:
        return call(settings, f"alias {alias}", lambda: c.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        if _not_found(e) or "alias" in str(e).lower():
            return None
        raise


def get_version(settings: Settings, version: int | str) -> Any:
    c = client(settings)
    name = settings.registry.model_name
    return call(settings, f"version {version}", lambda: c.get_model_version(name, str(version)))


def aliases(settings: Settings) -> dict[str, int]:
    """Alias -> version of the registered model ({} when it does not exist yet)."""
    from mlflow.exceptions import MlflowException

    if not store_exists(settings):
        return {}
    c = client(settings)
    try:
        model = call(settings, "model", lambda: c.get_registered_model(settings.registry.model_name))
    except MlflowException as e:
        if _not_found(e):
            return {}
        raise
    return {a: int(v) for a, v in (model.aliases or {}).items()}


def set_alias(settings: Settings, alias: str, version: int | None) -> None:
    """Point ``alias`` at ``version`` (None deletes it); doing it twice is harmless."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registry.model_name
    if version is not None:
        call(settings, f"set {alias}", lambda: c.set_registered_model_alias(name, alias, str(version)))
        return
    with contextlib.suppress(MlflowException):
        call(settings, f"delete {alias}", lambda: c.delete_registered_model_alias(name, alias))


def tag_version(settings: Settings, version: int | str, tags: dict[str, str]) -> None:
    c = client(settings)
    name = settings.registry.model_name
    for k, v in tags.items():
        tag = functools.partial(c.set_model_version_tag, name, str(version), k, v[:TAG_MAX])
        call(settings, f"tag {k}", tag)


def ensure_model(settings: Settings) -> None:
    """Create the registered model once."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registry.model_name
    with contextlib.suppress(MlflowException):
        call(settings, "create model", lambda: c.get_registered_model(name))
        return
    with contextlib.suppress(MlflowException):  # created by someone else in between
        call(
            settings,
            "create model",
            lambda: c.create_registered_model(name, description="Card-fraud model managed by fraudops"),
        )


def versions_of_run(settings: Settings, run_id: str) -> list[Any]:
    """Every version registered from a run (normally at most one)."""
    c = client(settings)
    name = settings.registry.model_name
    found = call(
        settings,
        "versions of run",
        lambda: c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"),
    )
    return sorted(found, key=lambda mv: int(mv.version))


def create_version(settings: Settings, run_id: str, tags: dict[str, str]) -> Any:
    """A version from a run's logged model; if an earlier attempt already created one, that one.

    The creation is the one registry call that is not idempotent, so it is never retried blindly: after a
    failure, the run's versions are looked up before trying again.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    ensure_model(settings)
    name = settings.registry.model_name
    for attempt in range(settings.pipeline.retries + 1):
        existing = versions_of_run(settings, run_id)
        if existing:
            return existing[0]
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return mlflow.register_model(f"runs:/{run_id}/model", name, tags=tags)
        except MlflowException:
            if attempt == settings.pipeline.retries:
                raise
    raise AssertionError("unreachable")


def pending(settings: Settings) -> dict[str, Any] | None:
    """The change in progress on the registered model, or None."""
    from mlflow.exceptions import MlflowException

    if not store_exists(settings):
        return None
    c = client(settings)
    try:
        model = call(settings, "model", lambda: c.get_registered_model(settings.registry.model_name))
    except MlflowException as e:
        if _not_found(e):
            return None
        raise
    raw = (model.tags or {}).get(PENDING_TAG)
    if not raw:
        return None
    try:
        change = json.loads(raw)
    except ValueError as e:
        raise FraudopsError(f"the registry's pending change is not readable JSON: {raw[:200]!r}") from e
    return change if isinstance(change, dict) else None


def set_pending(settings: Settings, change: dict[str, Any]) -> None:
    c = client(settings)
    name = settings.registry.model_name
    text = json.dumps(change, separators=(",", ":"), default=str)
    call(settings, "pending change", lambda: c.set_registered_model_tag(name, PENDING_TAG, text))


def clear_pending(settings: Settings) -> None:
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registry.model_name
    with contextlib.suppress(MlflowException):
        call(settings, "clear pending change", lambda: c.delete_registered_model_tag(name, PENDING_TAG))


def download_version(settings: Settings, version: int | str) -> Path:
    """A local copy of a version's artifacts."""
    import mlflow

    client(settings)
    name = settings.registry.model_name
    local = call(
        settings,
        f"download version {version}",
        lambda: mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"),
    )
    return Path(local)


def describe(settings: Settings) -> dict[str, Any]:
    """Registered versions with their aliases and key metrics (for `champion show`)."""
    name = settings.registry.model_name
    current = aliases(settings)
    if not current and not store_exists(settings):
        return {"model": name, "versions": [], "aliases": {}}
    c = client(settings)
    found = call(
        settings,
        "versions",
        lambda: c.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=20),
    )
    versions = [
        {
            "version": int(mv.version),
            "aliases": ",".join(a for a, v in current.items() if v == int(mv.version)),
            "average_precision": mv.tags.get("metric.average_precision"),
            "card_precision_at_100": mv.tags.get("metric.card_precision_at_100"),
            "roc_auc": mv.tags.get("metric.roc_auc"),
            "decision": mv.tags.get(DECISION_TAG, ""),
            "reasons": mv.tags.get(DECISION_REASONS_TAG, ""),
            "run_id": mv.run_id,
        }
        for mv in found
    ]
    return {"model": name, "aliases": current, "versions": versions}
