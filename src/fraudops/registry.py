"""Everything that talks to MLflow: tracking of runs, the model registry, champion/challenger aliases.

Lineage, never "the newest file": a registered version points at the run that produced it, and the
champion is whatever version the ``champion`` alias names.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fraudops import __version__
from fraudops.config import FraudopsError, Settings
from fraudops.model import FraudModel, FraudPyfunc
from fraudops.storage import Storage

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
STEP_TAG, EXECUTION_TAG = "fraudops.step", "fraudops.execution_id"
REGISTERED_TAG = "fraudops.registered_version"

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
logging.getLogger("mlflow").setLevel(logging.ERROR)


def tracking_uri(settings: Settings) -> str:
    """The configured URI, or a SQLite file in a local workspace (the seed's choice)."""
    if settings.registry.tracking_uri:
        return settings.registry.tracking_uri
    storage = Storage(settings.workspace)
    if not storage.is_local:
        raise FraudopsError(
            f"workspace {storage.uri()} is remote: set registry.tracking_uri (e.g. http://mlflow:5000 or "
            "postgresql://…), SQLite cannot live in an object store"
        )
    return f"sqlite:///{Path(storage.path('mlflow.db')).resolve()}"


def artifact_root(settings: Settings) -> str:
    storage = Storage(settings.workspace)
    return (
        storage.uri("prod_outputs/mlflow")
        if not storage.is_local
        else Path(storage.path("prod_outputs/mlflow")).resolve().as_uri()
    )


@functools.cache
def _check_reachable(uri: str) -> None:
    """Fail fast, once per process and server, on a tracking server that does not answer (a failure is not
    cached; MLflow's own retries cover a server that goes away later)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise FraudopsError(f"MLflow tracking server {uri} cannot be reached: {e}") from e


def client(settings: Settings) -> Any:
    """An MlflowClient on the workspace's tracking store (checked to be reachable)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def experiment_id(settings: Settings) -> str:
    c = client(settings)
    exp = c.get_experiment_by_name(settings.registry.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    return str(c.create_experiment(settings.registry.experiment, artifact_location=artifact_root(settings)))


@functools.cache
def git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def run_tags(step: str, execution_id: str | None) -> dict[str, str]:
    tags = {STEP_TAG: step, "fraudops.version": __version__}
    if execution_id:
        tags[EXECUTION_TAG] = execution_id
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


@contextlib.contextmanager
def step_run(
    settings: Settings,
    step: str,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one step (nested under the execution's run when there is one)."""
    import mlflow

    exp = experiment_id(settings)
    tags = run_tags(step, execution_id)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(experiment_id=exp, run_name=run_name or step, tags=tags) as run:
        yield run


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v) for k, v in d.items() if isinstance(v, int | float) and np.isfinite(float(v))
    }


def log_model(model: FraudModel, input_example: Any) -> None:
    """The model as an MLflow pyfunc (preprocessing + threshold inside), with signature and example."""
    import mlflow
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = Path(tmp) / "fraud_model"
        model.save(folder)
        out = FraudPyfunc()
        out.model = model
        signature = infer_signature(input_example, out.predict(None, input_example))
        mlflow.pyfunc.log_model(
            name="model",
            python_model=FraudPyfunc(),
            artifacts={"fraud_model": str(folder)},
            signature=signature,
            input_example=input_example,
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}" for p in ("mlflow", "numpy", "pandas", "polars", "scikit-learn", "xgboost")
    ] + [f"fraudops=={__version__}"]


def log_training(
    result: Any, settings: Settings, *, execution_id: str | None = None, parent_run_id: str | None = None
) -> str:
    """Log a TrainResult: params, metrics, curves, data fingerprint and the model. Returns the run id."""
    import mlflow

    from fraudops import evaluate

    with step_run(
        settings, "train", execution_id, parent_run_id, run_name=f"train-{result.model.kind}"
    ) as run:
        cfg = settings.train
        mlflow.log_params(
            {
                "data_kind": settings.data.kind,
                "candidate": result.model.kind,
                "candidates": ",".join(cfg.candidates),
                "threshold_strategy": cfg.threshold.strategy,
                "threshold": result.model.threshold,
                "cost_missed_fraud": cfg.threshold.cost_missed_fraud,
                "cost_false_alert": cfg.threshold.cost_false_alert,
                "n_features": len(result.model.feature_names),
                **{f"window_{k}": v for k, v in result.windows.items()},
                **({f"xgb_{k}": v for k, v in cfg.xgboost.items()} if result.model.kind == "xgboost" else {}),
                "seed": cfg.seed,
            }
        )
        mlflow.log_metrics(_flat("test_", result.metrics))
        for name, cand in result.candidates.items():
            mlflow.log_metrics(_flat(f"{name}.test_", cand["test"]))
            mlflow.log_metric(f"{name}.valid_average_precision", float(cand["valid_average_precision"]))
        fp = result.data["fingerprint"]
        mlflow.set_tags({f"data.{k}": str(v) for k, v in fp.items()})
        mlflow.log_dict(result.data, "data_fingerprint.json")
        mlflow.log_dict(
            {"candidates": result.candidates, "threshold": result.threshold_info, "windows": result.windows},
            "training_summary.json",
        )
        mlflow.log_dict(result.importances, "feature_importances.json")
        conf = {k: result.metrics[k] for k in ("tp", "fp", "tn", "fn")}
        names, values = zip(*sorted(result.importances.items(), key=lambda kv: -kv[1]), strict=True)
        for fig, path in (
            (evaluate.plot_pr_curve(result.y_test, result.p_test), "plots/pr_curve.png"),
            (evaluate.plot_roc_curve(result.y_test, result.p_test), "plots/roc_curve.png"),
            (evaluate.plot_confusion(conf), "plots/confusion_matrix.png"),
            (evaluate.plot_importances(list(names), list(values)), "plots/feature_importances.png"),
        ):
            mlflow.log_figure(fig, path)
        example = result.test_frame.select(result.model.feature_names).head(5).cast(pl.Float64).to_pandas()
        log_model(result.model, example)
        return str(run.info.run_id)


def latest_unregistered_train_run(settings: Settings) -> str:
    """The newest finished train run that has no registered version yet (by tracking lineage)."""
    c = client(settings)
    runs = c.search_runs(
        [experiment_id(settings)],
        filter_string=f"tags.`{STEP_TAG}` = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        if REGISTERED_TAG not in run.data.tags:
            return str(run.info.run_id)
    raise FraudopsError("no trained, unregistered model: run `fraudops train` first (or pass --run-id)")


def register(settings: Settings, run_id: str, execution_id: str | None = None) -> dict[str, Any]:
    """A new version of the registered model from a train run, aliased ``challenger``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registry.model_name
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise FraudopsError(f"run {run_id} not found in {tracking_uri(settings)}") from e
    if run.data.tags.get(STEP_TAG) != "train":
        raise FraudopsError(f"run {run_id} is not a train run")
    if REGISTERED_TAG in run.data.tags:
        raise FraudopsError(f"run {run_id} is already registered as version {run.data.tags[REGISTERED_TAG]}")
    tags = {
        f"metric.{k.removeprefix('test_')}": f"{v:.6g}"
        for k, v in run.data.metrics.items()
        if k.startswith("test_")
    }
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith("data.")})
    tags["fraudops.run_id"] = run_id
    tags["fraudops.threshold"] = run.data.params.get("threshold", "")
    if execution_id:
        tags[EXECUTION_TAG] = execution_id
    with contextlib.suppress(MlflowException):
        c.create_registered_model(name, description="Card-fraud model managed by fraudops")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mv = mlflow.register_model(f"runs:/{run_id}/model", name, tags=tags)  # quiet: we print our own
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    c.set_tag(run_id, REGISTERED_TAG, str(mv.version))
    return {"model": name, "version": int(mv.version), "alias": CHALLENGER, "run_id": run_id}


def version_by_alias(settings: Settings, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(settings.registry.model_name, alias)
    except MlflowException:
        return None


def champion_model(settings: Settings) -> tuple[int, FraudModel]:
    """The champion's version and model; a clear error when there is none yet."""
    champion = version_by_alias(settings, CHAMPION)
    if champion is None:
        raise FraudopsError(
            f"no champion yet: run select_champion (`fraudops select-champion`) so that a version of "
            f"{settings.registry.model_name} carries the '{CHAMPION}' alias"
        )
    return int(champion.version), load_model(settings, champion.version)


_model_cache: dict[tuple[str, str, str], FraudModel] = {}


def load_model(settings: Settings, version: str | int) -> FraudModel:
    """The FraudModel of a registered version (downloaded once per process)."""
    import mlflow

    name = settings.registry.model_name
    key = (tracking_uri(settings), name, str(version))
    if key not in _model_cache:
        client(settings)
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}")
        _model_cache[key] = FraudModel.load(Path(local) / "artifacts" / "fraud_model")
    return _model_cache[key]


def set_aliases(settings: Settings, changes: dict[str, int | None]) -> None:
    """Move (or, with None, delete) aliases."""
    c = client(settings)
    name = settings.registry.model_name
    for alias, version in changes.items():
        if version is None:
            from mlflow.exceptions import MlflowException

            with contextlib.suppress(MlflowException):
                c.delete_registered_model_alias(name, alias)
        else:
            c.set_registered_model_alias(name, alias, str(version))


def tag_version(settings: Settings, version: int | str, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(settings.registry.model_name, str(version), k, v)


def log_decision(
    settings: Settings,
    decision: dict[str, Any],
    step: str,
    execution_id: str | None,
    parent_run_id: str | None,
) -> str:
    import mlflow

    with step_run(settings, step, execution_id, parent_run_id) as run:
        mlflow.set_tags(
            {"decision": decision["decision"], "decision.reasons": "; ".join(decision["reasons"])[:5000]}
        )
        for who in ("challenger", "champion"):
            if (decision.get(who) or {}).get("metrics"):  # a rollback's demoted champion has none
                mlflow.log_metrics(_flat(f"{who}.", decision[who]["metrics"]))
        mlflow.log_dict(decision, "decision.json")
        return str(run.info.run_id)


def describe(settings: Settings) -> dict[str, Any]:
    """Registered versions with their aliases and key metrics (for `champion show`)."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registry.model_name
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        return {"model": name, "versions": [], "aliases": {}}
    aliases = dict(model.aliases or {})
    versions = []
    for mv in c.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=20):
        versions.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(a for a, v in aliases.items() if str(v) == str(mv.version)),
                "average_precision": mv.tags.get("metric.average_precision"),
                "card_precision_at_100": mv.tags.get("metric.card_precision_at_100"),
                "roc_auc": mv.tags.get("metric.roc_auc"),
                "decision": mv.tags.get("fraudops.decision", ""),
                "run_id": mv.run_id,
            }
        )
    return {"model": name, "aliases": {a: int(v) for a, v in aliases.items()}, "versions": versions}


def json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------------------ champion/challenger

REFERENCE_DIR = "monitoring_inputs/reference"
REFERENCE_DATA = f"{REFERENCE_DIR}/reference.parquet"
REFERENCE_META = f"{REFERENCE_DIR}/reference.json"


def promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, cfg: Any
) -> tuple[bool, list[str]]:
    """The promotion rule, on metrics computed on the same window. Returns (promote, reasons).

    Every challenger must pass the absolute gate (ROC AUC and AP relative to the fraud rate). Against a
    champion it must add at least ``min_improvement`` average precision (a tie counts as a win only when
    min_improvement is 0) and lose at most ``recall_tolerance`` recall at its own threshold.
    """
    reasons: list[str] = []
    auc, ap, rate = challenger["roc_auc"], challenger["average_precision"], challenger["fraud_rate"]
    gate_ap = cfg.gate_ap_over_fraud_rate * rate
    gate_ok = auc >= cfg.gate_min_auc and ap >= gate_ap
    reasons.append(
        f"gate {'passed' if gate_ok else 'FAILED'}: ROC AUC {auc:.4f} (min {cfg.gate_min_auc}), "
        f"AP {ap:.4f} (min {gate_ap:.4f} = {cfg.gate_ap_over_fraud_rate} x fraud rate {rate:.4%})"
    )
    if not gate_ok:
        return False, reasons
    if champion is None:
        reasons.append("no champion yet: the first model that passes the gate is promoted")
        return True, reasons
    gain = ap - champion["average_precision"]
    ap_ok = gain >= cfg.min_improvement
    reasons.append(
        f"AP {ap:.4f} vs champion {champion['average_precision']:.4f}: {gain:+.4f} "
        f"({'>=' if ap_ok else '<'} min_improvement {cfg.min_improvement})"
    )
    recall_loss = champion["recall"] - challenger["recall"]
    recall_ok = recall_loss <= cfg.recall_tolerance
    reasons.append(
        f"recall at threshold {challenger['recall']:.4f} vs champion {champion['recall']:.4f}: loss "
        f"{max(recall_loss, 0):.4f} ({'within' if recall_ok else 'beyond'} tolerance {cfg.recall_tolerance})"
    )
    return ap_ok and recall_ok, reasons


def _score_window(model: FraudModel, window: Any, settings: Settings) -> tuple[np.ndarray, dict[str, float]]:
    from fraudops import evaluate
    from fraudops.data import LABEL

    p = model.predict_proba(window)
    y = window[LABEL].to_numpy()
    metrics = evaluate.evaluate(
        y, p, model.threshold, costs=settings.train.threshold, frame=window, k=settings.train.top_k
    )
    return p, metrics


def evaluation_window(settings: Settings, storage: Storage) -> tuple[Any, dict[str, str], Any]:
    """The most recent labelled test window with features: for metrics (known-compromised cards removed,
    as in training's test), its windows, and whole (the drift reference: production data has those cards)."""
    from fraudops import data, train

    df = data.load_labelled(storage, settings)
    if df.height == 0:
        raise FraudopsError(
            "no labelled data to compare models on (data/raw/, monitoring_inputs/current_data/)"
        )
    parts = train.split(df, settings, latest=True)
    return parts.test, parts.windows, parts.test if parts.test_all is None else parts.test_all


def write_reference(
    storage: Storage,
    settings: Settings,
    version: int,
    model: FraudModel,
    window: Any,
    metrics: dict[str, float],
    windows: dict[str, str],
) -> None:
    """The champion's held-out features and scores (the whole window, as production sees it) and its test
    metrics (known-compromised cards removed): what monitoring compares against."""
    import datetime as dt

    import polars as pl

    from fraudops.data import CUSTOMER, LABEL, TX_TIME

    keep = [c for c in (*model.feature_names, CUSTOMER, TX_TIME, LABEL) if c in window.columns]
    scores = model.predict_proba(window)
    storage.write_frame(REFERENCE_DATA, window.select(keep).with_columns(pl.Series("score", scores)))
    storage.write_json(
        REFERENCE_META,
        {
            "model": settings.registry.model_name,
            "version": int(version),
            "threshold": model.threshold,
            "feature_names": model.feature_names,
            "metrics": metrics,
            "windows": windows,
            "written_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


def select_champion(
    settings: Settings, storage: Storage, execution_id: str | None = None, parent_run_id: str | None = None
) -> dict[str, Any]:
    """Score challenger and champion on the same recent window; promote by the rule; record why."""
    challenger = version_by_alias(settings, CHALLENGER)
    if challenger is None:
        raise FraudopsError(
            f"no '{CHALLENGER}' version of {settings.registry.model_name}: run `fraudops register`"
        )
    champion = version_by_alias(settings, CHAMPION)
    ch_v = int(challenger.version)
    if champion is not None and int(champion.version) == ch_v:
        return {
            "decision": "unchanged",
            "promoted": False,
            "reasons": [f"version {ch_v} is already champion"],
            "challenger": {"version": ch_v},
            "champion": {"version": ch_v},
        }
    window, windows, whole = evaluation_window(settings, storage)
    ch_model = load_model(settings, ch_v)
    _, m_ch = _score_window(ch_model, window, settings)
    m_champ = None
    if champion is not None:
        _, m_champ = _score_window(load_model(settings, champion.version), window, settings)
    promote, reasons = promotion_decision(m_ch, m_champ, settings.registry)
    decision = {
        "decision": "promoted" if promote else "rejected",
        "promoted": promote,
        "reasons": reasons,
        "window": windows,
        "challenger": {"version": ch_v, "metrics": m_ch},
        "champion": {"version": int(champion.version), "metrics": m_champ} if champion is not None else None,
    }
    if promote:
        write_reference(storage, settings, ch_v, ch_model, whole, m_ch, windows)
        set_aliases(
            settings,
            {
                CHAMPION: ch_v,
                CHALLENGER: None,
                PREVIOUS: int(champion.version) if champion is not None else None,
            },
        )
    tag_version(
        settings,
        ch_v,
        {"fraudops.decision": decision["decision"], "fraudops.decision_reasons": "; ".join(reasons)[:5000]},
    )
    decision["run_id"] = log_decision(
        settings, json_safe(decision), "select_champion", execution_id, parent_run_id
    )
    return decision


def rollback(settings: Settings, storage: Storage, execution_id: str | None = None) -> dict[str, Any]:
    """Make the previous champion champion again (the demoted one becomes previous_champion)."""
    previous = version_by_alias(settings, PREVIOUS)
    champion = version_by_alias(settings, CHAMPION)
    if previous is None:
        raise FraudopsError(
            f"no '{PREVIOUS}' version of {settings.registry.model_name}: nothing to roll back to"
        )
    window, windows, whole = evaluation_window(settings, storage)
    model = load_model(settings, previous.version)
    _, metrics = _score_window(model, window, settings)
    write_reference(storage, settings, int(previous.version), model, whole, metrics, windows)
    set_aliases(
        settings,
        {CHAMPION: int(previous.version), PREVIOUS: int(champion.version) if champion is not None else None},
    )
    reasons = [
        f"rollback requested: version {previous.version} restored"
        + (f", version {champion.version} demoted" if champion is not None else "")
    ]
    tag_version(settings, previous.version, {"fraudops.decision": "rolled_back_to"})
    decision = {
        "decision": "rollback",
        "promoted": True,
        "reasons": reasons,
        "challenger": {"version": int(previous.version), "metrics": metrics},
        "champion": {"version": int(champion.version)} if champion is not None else None,
    }
    decision["run_id"] = log_decision(settings, json_safe(decision), "rollback", execution_id, None)
    return decision


def register_step(
    settings: Settings,
    storage: Storage,
    *,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    previous: dict[str, dict] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Register the run trained in this execution (or the newest unregistered one) as challenger."""
    import mlflow

    run_id = (
        run_id or (previous or {}).get("train", {}).get("run_id") or latest_unregistered_train_run(settings)
    )
    out = register(settings, run_id, execution_id)
    with step_run(settings, "register", execution_id, parent_run_id):
        mlflow.log_params({"version": out["version"], "source_run_id": run_id})
    return out


def select_champion_step(
    settings: Settings,
    storage: Storage,
    *,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    previous: dict[str, dict] | None = None,
) -> dict[str, Any]:
    d = select_champion(settings, storage, execution_id, parent_run_id)
    champion = version_by_alias(settings, CHAMPION)
    return {
        "decision": d["decision"],
        "challenger_version": d["challenger"]["version"],
        "champion_version": int(champion.version) if champion is not None else None,
        "reasons": d["reasons"],
    }
