"""Every path of a workspace, once: the seed bucket's layout plus fraudops' own files.

Paths are relative to the workspace root and use ``/``; :class:`~fraudops.workspace.storage.Storage` turns
them into local paths or object-store URLs.
"""

from __future__ import annotations

CONFIG_FILE = "fraudops.yaml"

# inputs
RAW = "data/raw"
PROD_INPUTS = "prod_inputs"
CURRENT = "monitoring_inputs/current_data"
VERDICTS = "monitoring_inputs/verdicts/verdicts.parquet"
"""Analysts' verdicts on alerts (who, when, what), appended by the dashboard."""
VERDICT_LABELS = f"{CURRENT}/analyst_verdicts.parquet"
"""The verdicts as labelled transactions: current data that monitoring and retraining count as labels."""

FEATURE_TABLES = "data/features"
"""Feature tables built on a Dask cluster: ``<name>/<generation>/part-NNNNN.parquet`` and
``<name>/table.json`` (:mod:`fraudops.features.table`)."""

# training, registry and batch outputs
PREDICTIONS = "prod_outputs/predictions"
CAPTURE = "prod_outputs/capture"
"""The endpoint's captured requests: ``date=YYYY-MM-DD/hour=HH/<part>.parquet`` (UTC)."""
MLFLOW_ARTIFACTS = "prod_outputs/mlflow"
MLFLOW_DB = "mlflow.db"
SAGEMAKER_OUTPUTS = "prod_outputs/sagemaker"
"""On AWS: each training job's ``<job>/output/model.tar.gz`` (its result; the model is in MLflow)."""

# hyperparameter search (fraudops tune): the Optuna study and the best parameters train uses
TUNING = "tuning"
TUNE_JOURNAL = f"{TUNING}/study.journal"
BEST_PARAMS = f"{TUNING}/best_params.json"

# the champion's monitoring reference, written on promotion
REFERENCE_DIR = "monitoring_inputs/reference"
REFERENCE_DATA = f"{REFERENCE_DIR}/reference.parquet"
REFERENCE_META = f"{REFERENCE_DIR}/reference.json"

# monitoring outputs
MONITORING = "monitoring_outputs"
DRIFT_CSV = f"{MONITORING}/drift/drift_metrics.csv"
PERFORMANCE_CSV = f"{MONITORING}/metrics/performance_metrics.csv"
REFERENCE_METRICS_JSON = f"{MONITORING}/metrics/reference_metrics.json"
CURRENT_METRICS_JSON = f"{MONITORING}/metrics/current_metrics.json"
DECISION_DIR = f"{MONITORING}/retraining_decision"
DECISION_CSV = f"{DECISION_DIR}/retrain_decision.csv"
DECISION_JSON = f"{DECISION_DIR}/retrain_decision.json"
TRIGGER_STATE = f"{DECISION_DIR}/trigger_state.json"
REPORT_HTML = f"{MONITORING}/report.html"
ESTIMATED_CSV = f"{MONITORING}/metrics/estimated_performance.csv"
MONITORING_HISTORY_DIR = f"{MONITORING}/history"
MONITORING_HISTORY = f"{MONITORING_HISTORY_DIR}/monitoring_history.parquet"

# fraudops' own state
STATE_DIR = ".fraudops"
LOCK_FILE = f"{STATE_DIR}/lock.json"
ONLINE_SNAPSHOT = f"{STATE_DIR}/online_state.parquet"
"""The serving's in-process online state (``fraudops serve``), reloaded at start-up."""

FOLDERS = (
    RAW,
    PROD_INPUTS,
    PREDICTIONS,
    REFERENCE_DIR,
    CURRENT,
    f"{MONITORING}/drift",
    f"{MONITORING}/metrics",
    DECISION_DIR,
    MONITORING_HISTORY_DIR,
)
"""What ``fraudops init`` creates."""

TABLE_SUFFIXES = (".csv", ".parquet")

RESET_PATHS = (
    "data",
    PROD_INPUTS,
    "prod_outputs",
    "monitoring_inputs",
    MONITORING,
    TUNING,
    MLFLOW_DB,
    f"{MLFLOW_DB}-journal",
    f"{MLFLOW_DB}-wal",
    f"{MLFLOW_DB}-shm",
    "mlruns",
)
"""What ``fraudops reset`` deletes (``fraudops.yaml`` stays)."""
