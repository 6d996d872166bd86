"""One pydantic model for every setting.

Values come from, highest priority first: ``FRAUDOPS_…`` environment variables (nested keys joined by
``__``, e.g. ``FRAUDOPS_TRAIN__TRAIN_DAYS=14``), the workspace's ``fraudops.yaml``, then the defaults
below. Unknown keys and bad values are rejected with the key's name.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fraudops.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


S = TypeVar("S", bound=Section)


class Columns(Section):
    """Where each role lives in your files (so handbook and Kaggle names work without renaming)."""

    transaction_id: str | None = Field("TRANSACTION_ID", description="unique id; null = row number")
    timestamp: str | None = Field(
        "TX_DATETIME",
        description="event time (datetime; features kind: seconds or datetime, and optional: without it "
        "training splits the rows at random, stratified)",
    )
    customer_id: str = Field("CUSTOMER_ID", description="card / customer id (transactions kind)")
    terminal_id: str = Field("TERMINAL_ID", description="terminal / merchant id (transactions kind)")
    amount: str | None = Field("TX_AMOUNT", description="amount, must be >= 0")
    label: str = Field("TX_FRAUD", description="1 = fraud, 0 = genuine; optional in files to score")
    scenario: str | None = Field("TX_FRAUD_SCENARIO", description="simulator's fraud scenario, optional")


KAGGLE_COLUMNS: dict[str, Any] = {
    "transaction_id": None,
    "timestamp": "Time",
    "amount": "Amount",
    "label": "Class",
    "scenario": None,
}


class DataConfig(Section):
    kind: Literal["transactions", "features"] = Field(
        "transactions",
        description="transactions = raw card transactions (features are engineered); "
        "features = an already-engineered table such as Kaggle's creditcard.csv",
    )
    columns: Columns = Field(default_factory=Columns)
    feature_columns: list[str] | None = Field(
        None,
        description="features kind: model inputs; null = every column but id, time and label, each of them "
        "numeric (index-like columns such as 'Unnamed: 0' are refused unless listed here)",
    )

    @model_validator(mode="before")
    @classmethod
    def _kaggle_defaults(cls, values: Any) -> Any:
        """The features kind defaults to the Kaggle/ULB names unless columns are given."""
        if isinstance(values, dict) and values.get("kind") == "features":
            given = dict(values.get("columns") or {})
            values = {**values, "columns": {**KAGGLE_COLUMNS, **given}}
        return values


class SimulateConfig(Section):
    """The handbook's published configuration (simulator.md)."""

    n_customers: int = Field(5000, gt=0)
    n_terminals: int = Field(10000, gt=0)
    n_days: int = Field(183, gt=0)
    start_date: dt.date = dt.date(2018, 4, 1)
    radius: float = Field(5.0, gt=0, description="a customer uses terminals closer than this")
    seed: int = Field(0, ge=0)
    drift_start: dt.date | None = Field(
        None, description="from this day on (included), add the drifts below; null = no drift"
    )
    drift_amount_factor: float = Field(
        1.5, gt=0, description="amounts are multiplied by this before the fraud rules (so more are > 220)"
    )
    drift_night_burst_cards: int = Field(
        10, ge=0, description="cards a day hit by a burst of 5-15 frauds of 1-20 at 00:00-06:00 (scenario 4)"
    )


class FeaturesConfig(Section):
    customer_windows: list[int] = Field([1, 7, 30], description="days")
    terminal_windows: list[int] = Field(
        [1, 3, 7, 14, 30],
        description="days (the handbook's are 1, 7, 30; 3 and 14 raised test AP on seeds 5-7: README)",
    )
    delay_days: int = Field(7, ge=0, description="fraud labels are known this many days later")
    extra: bool = Field(True, description="add fraudops' features beyond the handbook's 15")


class ThresholdConfig(Section):
    strategy: Literal["min_cost", "target_fpr", "alert_budget"] = "min_cost"
    target_fpr: float = Field(0.01, gt=0, lt=1)
    alerts_per_day: int = Field(100, gt=0)
    cost_missed_fraud: float = Field(100.0, ge=0, description="cost of a fraud the model lets through")
    cost_false_alert: float = Field(2.0, ge=0, description="cost of investigating a genuine transaction")


class TrainConfig(Section):
    train_start: dt.date | None = Field(None, description="null = as late as the data allows")
    train_days: int = Field(21, gt=0)
    delay_days: int = Field(7, ge=0)
    test_days: int = Field(7, gt=0)
    validation_days: int = Field(3, ge=1, description="carved from the end of the training window")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="features kind: last share of rows for test")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="features kind: share of the rest")
    candidates: list[Literal["logistic_regression", "xgboost"]] = ["logistic_regression", "xgboost"]
    logistic_c: float = Field(1.0, gt=0, description="logistic regression's inverse regularisation strength")
    xgboost: dict[str, Any] = Field(
        default_factory=lambda: {
            "n_estimators": 1000,
            "max_depth": 10,
            "learning_rate": 0.013,
            "subsample": 1.0,
            "colsample_bytree": 0.6,
            "min_child_weight": 1,
            "reg_lambda": 0.2,
            "gamma": 3.0,
            "max_bin": 1024,
            "scale_pos_weight": 1.0,
            "early_stopping_rounds": 100,
        },
        description="XGBClassifier parameters (from fraudops tune on simulator seed 8, see README); "
        "n_estimators is the most trees, early stopping picks fewer; gamma keeps the deep trees from "
        "splitting on noise; max_bin 1024 resolves amount thresholds in the tail; scale_pos_weight: a "
        "number, balanced or sqrt",
    )
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    top_k: int = Field(100, gt=0, description="cards an investigation team checks a day (CP@k)")
    min_frauds: int = Field(10, ge=1, description="fewer frauds in a window is an error")
    n_jobs: int = Field(2, ge=1)
    seed: int = Field(42, ge=0)


Objective = Literal["average_precision", "card_precision", "cost"]


class TuneConfig(Section):
    """``fraudops tune``: an Optuna study over prequential folds that end before the test window."""

    trials: int = Field(50, gt=0, description="trials of the study in all (trials already done count)")
    timeout: float | None = Field(None, gt=0, description="seconds after which no trial starts; null = none")
    objective: Objective = Field(
        "average_precision",
        description="mean over the folds of: average_precision, card_precision (CP@train.top_k) or cost "
        "(expected cost per transaction at the threshold train would choose; minimised)",
    )
    folds: int = Field(
        4,
        ge=1,
        description="prequential folds: train.train_days, delay_days and test_days windows, each test_days "
        "earlier than the next; the latest one's validation ends where the training window ends",
    )
    candidates: list[Literal["logistic_regression", "xgboost"]] = Field(
        ["logistic_regression", "xgboost"], description="model kinds the search chooses from"
    )
    use_best: bool = Field(
        True, description="train uses the parameters the last study found best (tuning/best_params.json)"
    )
    before_train: bool = Field(False, description="the pipeline's train step runs a study first")


class StorageConfig(Section):
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible server for s3:// workspaces (MinIO, a local stack); null = the AWS "
        "configuration (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or AWS itself). A workspace on S3 reads this "
        "file through it: set it as FRAUDOPS_STORAGE__ENDPOINT_URL",
    )


class RegistryConfig(Section):
    tracking_uri: str | None = Field(None, description="null = sqlite file mlflow.db in a local workspace")
    experiment: str = "creditcard-fraud-experiment"
    model_name: str = "creditcard-fraud-model"
    min_improvement: float = Field(0.005, ge=0, description="average precision a challenger must add")
    recall_tolerance: float = Field(0.02, ge=0, description="recall at threshold it may lose")
    gate_min_auc: float = Field(0.7, ge=0, le=1)
    gate_ap_over_fraud_rate: float = Field(3.0, ge=1, description="first model: AP >= this x fraud rate")


class BatchConfig(Section):
    join_columns: list[str] | None = Field(None, description="input columns copied to output; null = all")
    on_invalid: Literal["reject", "fail"] = Field("reject", description="reject = rows to a rejects file")
    chunk_rows: int = Field(250_000, gt=0)
    reasons: Literal["alerts", "all", "off"] = Field(
        "alerts", description="rows given reason_1..reason_3 (the top 3 features that pushed the score up)"
    )


class MonitorConfig(Section):
    psi_threshold: float = Field(0.25, gt=0)
    wasserstein_threshold: float = Field(0.1, gt=0, description="in reference standard deviations")
    ks_pvalue: float = Field(0.05, gt=0, lt=1, description="used only below large_sample rows")
    large_sample: int = Field(
        10_000,
        gt=0,
        description="from this many rows on, only distances decide (p-values flag trivial shifts)",
    )
    drift_share: float = Field(0.3, gt=0, le=1, description="share of drifted features that fires")
    score_psi_threshold: float = Field(0.25, gt=0)
    ap_tolerance: float = Field(0.1, ge=0, lt=1, description="relative drop of AP that fires")
    recall_tolerance: float = Field(0.1, ge=0, lt=1)
    min_rows: int = Field(1000, ge=1)
    min_frauds: int = Field(20, ge=1)
    bins: int = Field(10, ge=2)
    estimated_decay: bool = Field(
        True,
        description="without enough labels, decide on performance estimated from calibrated scores (CBPE)",
    )
    estimated_ap_tolerance: float = Field(
        0.2, ge=0, lt=1, description="relative drop of estimated AP (vs the reference window's) that fires"
    )
    estimate_samples: int = Field(200, ge=10, description="label draws behind each estimate and its band")
    estimate_band: float = Field(0.95, gt=0, lt=1, description="central share of the draws in the band")
    production: Literal["prod_inputs", "capture", "both"] = Field(
        "prod_inputs",
        description="production data judged with current_data/: the files to score, the endpoint's "
        "captured requests (prod_outputs/capture/, serve.capture), or both",
    )


class PipelineConfig(Section):
    retries: int = Field(3, ge=0, description="attempts after the first for transient errors")
    retry_backoff: float = Field(1.0, ge=0, description="seconds, doubled each attempt")
    lock_timeout: float = Field(0, ge=0, description="seconds to wait for another execution")


class CaptureConfig(Section):
    """Request/response capture of the endpoint (like SageMaker Data Capture), written in the background."""

    enabled: bool = False
    sampling: float = Field(1.0, ge=0, le=1, description="share of requests captured (at random)")
    flush_rows: int = Field(10_000, gt=0, description="write a Parquet file once this many rows wait")
    flush_seconds: float = Field(
        60.0, gt=0, description="or once the oldest waiting row is this many seconds old"
    )
    max_buffer_rows: int = Field(
        200_000, gt=0, description="rows held in memory at most; more are dropped and counted in /metrics"
    )


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, gt=0, lt=65536)
    workers: int = Field(1, ge=1)
    reload_interval: float = Field(10.0, gt=0, description="seconds between champion checks")
    max_payload_bytes: int = Field(5_000_000, gt=0)
    max_rows: int = Field(10_000, gt=0)
    api_key: SecretStr | None = Field(None, description="require header X-API-Key when set")
    header_timeout: float = Field(
        10.0, gt=0, description="seconds for a request's headers to arrive (then 408, connection closed)"
    )
    read_timeout: float = Field(30.0, gt=0, description="seconds for a request's body to arrive (then 408)")
    request_timeout: float = Field(
        60.0, gt=0, description="seconds from a request's headers to its answer (then 504)"
    )
    online_state: str = Field(
        "memory",
        description="raw transactions' feature state: memory (one worker) or redis://host:port/db (shared)",
        pattern=r"^(memory|rediss?://.+|unix://.+)$",
    )
    online_max_lateness: float = Field(
        3600.0, ge=0, description="seconds a raw transaction may be older than the newest one (then 422)"
    )
    online_max_future: float = Field(
        300.0, ge=0, description="seconds a raw transaction may be ahead of the server's clock (then 422)"
    )
    online_snapshot_interval: float = Field(
        60.0, gt=0, description="seconds between online state snapshots and looks at current_data/"
    )
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    shadow: str | None = Field(
        None,
        description="registry alias (e.g. challenger) that scores every captured request off the request "
        "path, compared with the served model in /metrics and `fraudops shadow report`; needs capture",
    )

    @model_validator(mode="after")
    def _shadow_needs_capture(self) -> ServeConfig:
        if self.shadow is not None and not self.capture.enabled:
            raise ValueError("serve.shadow scores the captured requests: set serve.capture.enabled: true")
        return self


class DashboardConfig(Section):
    """``fraudops dashboard``; it asks for serve.api_key when that is set."""

    host: str = "127.0.0.1"
    port: int = Field(8090, gt=0, lt=65536)
    mlflow_url: str | None = Field(
        "http://127.0.0.1:5000", description="MLflow UI for run links (`fraudops ui`); null = no links"
    )
    alert_limit: int = Field(100, gt=0, description="alerts shown in the queue, highest score first")
    cache_seconds: float = Field(
        5.0, ge=0, description="MLflow answers older than this are refreshed in the background"
    )


class ComputeConfig(Section):
    engine: Literal["local", "dask"] = Field(
        "local",
        description="local = this process; dask = features, batch, drift and large training windows run on a "
        "Dask cluster",
    )
    scheduler: str | None = Field(
        None,
        description="dask: address of a running scheduler (tcp://host:8786); null = a LocalCluster of "
        "compute.workers processes started for the command",
    )
    workers: int = Field(2, ge=1, description="LocalCluster: worker processes (one thread each)")
    worker_memory_limit: str = Field(
        "4GB", description="LocalCluster: memory limit per worker (spills, then restarts the worker above it)"
    )
    partition_rows: int = Field(
        2_000_000,
        gt=0,
        description="dask: target rows per partition (feature buckets, xgboost.dask row blocks)",
    )
    train_in_memory_rows: int = Field(
        5_000_000,
        ge=0,
        description="dask: a training window with more rows keeps its fit window on the workers and trains "
        "XGBoost there with xgboost.dask; logistic regression and the usual values use a sample of about "
        "this many rows in the command's process (5 M rows x 24 float32 features = 0.5 GB, comfortable in "
        "one 4 GB process with XGBoost's quantised copy and working memory)",
    )

    @model_validator(mode="after")
    def _scheduler_address(self) -> ComputeConfig:
        if self.scheduler is not None and not self.scheduler.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError(f"scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")
        return self


class Settings(BaseSettings):
    """Everything fraudops can be told. ``workspace`` is where fraudops.yaml lives."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUDOPS_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    workspace: str = Field(".", description="local folder or fsspec URL (s3://bucket/prefix)")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the YAML file (passed as init values)."""
        return (env_settings, init_settings)


def updated(section: S, changes: dict[str, Any], name: str) -> S:
    """A copy of the settings section ``name`` with ``changes`` (e.g. from command-line options),
    validated: a bad value is a ConfigError naming the setting, not a pydantic traceback."""
    try:
        return type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "the command-line options", prefix=name)) from e


def format_validation_error(err: ValidationError, source: str, prefix: str | None = None) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in ([prefix] if prefix else []) + list(e["loc"])) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        value = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def _unknown_env_keys(environ: dict[str, str]) -> list[str]:
    """FRAUDOPS_* variables that name no setting (pydantic-settings would silently ignore them)."""
    bad = []
    for var in environ:
        if not var.startswith("FRAUDOPS_"):
            continue
        model: type[BaseModel] | None = Settings
        for part in var.removeprefix("FRAUDOPS_").lower().split("__"):
            field = model.model_fields.get(part) if model else None
            if field is None:
                bad.append(var)
                break
            ann = field.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return bad


class _StrictLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_settings(text: str | None, *, workspace: str, source: str) -> Settings:
    """Settings from YAML text (None = defaults only) plus the environment."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader) if text else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of settings, got {type(raw).__name__}")
    if "workspace" in raw:
        raise ConfigError(f"{source}: workspace: unknown key (the workspace is where the file lives)")
    unknown = _unknown_env_keys(dict(os.environ))
    if unknown:
        raise ConfigError(f"unknown setting in environment: {', '.join(unknown)}")
    try:
        settings = Settings(**raw, workspace=workspace)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{source} / FRAUDOPS_* environment")) from e
    # the environment source beats init values, but the workspace is where the file was read from: a
    # FRAUDOPS_WORKSPACE (the CLI's --workspace default) must not redirect the data elsewhere
    settings.workspace = workspace
    return settings


def _describe(model: type[BaseModel], indent: int = 0) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for name, field in model.model_fields.items():
        if name == "workspace":
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append(f"{pad}{name}:")
            out += _describe(ann, indent + 1)
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, dt.date):
            default = default.isoformat()
        dumped = yaml.safe_dump({name: default}, default_flow_style=True, width=1000).strip()[1:-1]
        note = f"  # {field.description}" if field.description else ""
        out.append(f"{pad}{dumped}{note}")
    return out


def default_yaml() -> str:
    """A fraudops.yaml that documents every setting with its default."""
    head = [
        "# fraudops workspace configuration. Every key is optional; shown values are the defaults.",
        "# Override any key with an environment variable: FRAUDOPS_<SECTION>__<KEY>, e.g.",
        "# FRAUDOPS_TRAIN__TRAIN_DAYS=14 or FRAUDOPS_REGISTRY__TRACKING_URI=http://mlflow:5000",
    ]
    return "\n".join(head + _describe(Settings)) + "\n"
