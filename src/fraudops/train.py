"""Training: a leak-free time split, candidate models, a threshold chosen on validation, test metrics.

Transactions kind, in calendar days::

    | fit ............ | validation | label-delay gap | test |
    |<------- training window ----->|

Candidates are fitted on *fit*, compared on *validation* (average precision), and the winner's
threshold is chosen on its validation scores; then every candidate is refitted on the whole training
window (XGBoost with the early-stopped number of trees) and scored on the test window, from which cards
already known to be compromised are removed (simulator.md). The features kind splits by its time column
(last rows for test) or, without one, stratified at random.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import numpy as np
import polars as pl

from fraudops import evaluate, features
from fraudops.config import FraudopsError, Settings, TrainConfig
from fraudops.data import CUSTOMER, LABEL, TX_TIME, fingerprint, model_inputs
from fraudops.model import FraudModel
from fraudops.storage import Storage


@dataclasses.dataclass
class Split:
    fit: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    windows: dict[str, str]
    n_valid_days: float
    test_all: pl.DataFrame | None = None  # the test window before known-compromised cards are removed

    @property
    def train(self) -> pl.DataFrame:
        return pl.concat([self.fit, self.valid], how="diagonal_relaxed")


@dataclasses.dataclass
class TrainResult:
    model: FraudModel
    metrics: dict[str, float]
    candidates: dict[str, dict[str, Any]]
    threshold_info: dict[str, Any]
    windows: dict[str, str]
    data: dict[str, Any]
    y_test: np.ndarray
    p_test: np.ndarray
    test_frame: pl.DataFrame
    importances: dict[str, float]
    seconds: float


def _day(d: dt.date, n: int) -> dt.date:
    return d + dt.timedelta(days=n)


def plan_windows(first: dt.date, last: dt.date, cfg: TrainConfig) -> dict[str, dt.date]:
    """Window boundaries (start inclusive, end exclusive), latest possible unless train_start is set."""
    span = cfg.train_days + cfg.delay_days + cfg.test_days
    start = cfg.train_start or _day(last, 1 - span)
    w = {
        "train_start": start,
        "valid_start": _day(start, cfg.train_days - cfg.validation_days),
        "train_end": _day(start, cfg.train_days),
        "test_start": _day(start, cfg.train_days + cfg.delay_days),
        "test_end": _day(start, span),
    }
    if cfg.validation_days >= cfg.train_days:
        raise FraudopsError(
            f"train.validation_days ({cfg.validation_days}) must be smaller than "
            f"train.train_days ({cfg.train_days})"
        )
    if start < first or _day(w["test_end"], -1) > last:
        raise FraudopsError(
            f"the windows {start}..{_day(w['test_end'], -1)} (train {cfg.train_days} d, "
            f"delay {cfg.delay_days} d, test {cfg.test_days} d) fall outside the labelled data, "
            f"which covers {first}..{last}"
        )
    return w


def _between(df: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    day = pl.col(TX_TIME).dt.date()
    return df.filter((day >= start) & (day < end))


def split_transactions(df: pl.DataFrame, settings: Settings, *, latest: bool = False) -> Split:
    """Features over the needed history, then fit | validation | gap | test, known cards removed from test.

    ``latest`` ignores train.train_start: the windows end with the data (the most recent test window).
    """
    cfg = settings.train.model_copy(update={"train_start": None}) if latest else settings.train
    first, last = df[TX_TIME].min().date(), df[TX_TIME].max().date()  # type: ignore[union-attr]
    w = plan_windows(first, last, cfg)
    featured = features.add_features(
        _between(df, _day(w["train_start"], -features.lookback_days(settings.features)), w["test_end"]),
        settings.features,
    )
    fit = _between(featured, w["train_start"], w["valid_start"])
    valid = _between(featured, w["valid_start"], w["train_end"])
    gap = _between(featured, w["train_end"], w["test_start"])
    test_all = _between(featured, w["test_start"], w["test_end"])
    test = evaluate.remove_known_compromised(
        test_all,
        pl.concat([fit, valid]),
        cfg.delay_days,
        gap_df=gap,
    )
    windows = {k: v.isoformat() for k, v in w.items()}
    return Split(fit, valid, test, windows, float(cfg.validation_days), test_all)


def split_table(df: pl.DataFrame, cfg: TrainConfig) -> Split:
    """Features kind: by time order (last rows for test), or stratified at random without a time column."""
    if TX_TIME in df.columns:
        df = df.sort(TX_TIME, maintain_order=True)
        n_test = round(df.height * cfg.test_fraction)
        rest, test = df.head(df.height - n_test), df.tail(n_test)
        n_valid = round(rest.height * cfg.validation_fraction)
        fit, valid = rest.head(rest.height - n_valid), rest.tail(n_valid)
        how = "by time"
    else:
        from sklearn.model_selection import train_test_split

        idx = np.arange(df.height)
        y = df[LABEL].to_numpy()
        rest, test_idx = train_test_split(idx, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed)
        fit_idx, valid_idx = train_test_split(
            rest, test_size=cfg.validation_fraction, stratify=y[rest], random_state=cfg.seed
        )
        fit, valid, test = df[np.sort(fit_idx)], df[np.sort(valid_idx)], df[np.sort(test_idx)]
        how = "stratified"
    windows = {
        "split": how,
        "fit_rows": str(fit.height),
        "valid_rows": str(valid.height),
        "test_rows": str(test.height),
    }
    return Split(fit, valid, test, windows, n_valid_days=1.0)


def split(df: pl.DataFrame, settings: Settings, *, latest: bool = False) -> Split:
    if settings.data.kind == "transactions":
        return split_transactions(df, settings, latest=latest)
    return split_table(df, settings.train)


def input_names(df: pl.DataFrame, settings: Settings) -> list[str]:
    if settings.data.kind == "transactions":
        return features.feature_names(settings.features)
    return model_inputs(df, settings.data)


def _check_labels(parts: Split, cfg: TrainConfig) -> None:
    for name, part in (("fit", parts.fit), ("validation", parts.valid), ("test", parts.test)):
        frauds = int(part[LABEL].sum()) if part.height else 0
        if part.height == 0:
            raise FraudopsError(f"the {name} window has no labelled rows ({parts.windows})")
        if frauds == part.height:
            raise FraudopsError(f"the {name} window has only frauds: both classes are needed")
        if frauds < cfg.min_frauds:
            raise FraudopsError(
                f"the {name} window has {frauds} frauds, fewer than train.min_frauds={cfg.min_frauds} "
                f"({part.height:,} rows; windows {parts.windows})"
            )


def fit_logistic(x: np.ndarray, y: np.ndarray, names: list[str], cfg: TrainConfig) -> FraudModel:
    """Standardised, class-balanced logistic regression: the baseline."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0, dtype=np.float64)
    scale = x.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=cfg.seed)
    lr.fit((x - mean) / scale, y)
    return FraudModel(
        "logistic_regression",
        names,
        0.5,
        mean=mean,
        scale=scale,
        coef=lr.coef_[0].astype(np.float64),
        intercept=float(lr.intercept_[0]),
    )


def _positive_weight(value: float | str, y: np.ndarray) -> float:
    """xgboost.scale_pos_weight: a number, or "balanced" (genuine / frauds) or "sqrt" (its square root).

    The default, 1, leaves the trees unweighted: weighting the frauds up measurably lowers test average
    precision on the handbook's data (benchmarks/bench_quality.py); the imbalance is handled where it
    matters for decisions, by the cost-based threshold chosen on validation and by early stopping on PR AUC.
    """
    if isinstance(value, str):
        pos = max(float(y.sum()), 1.0)
        ratio = (len(y) - pos) / pos
        if value not in ("balanced", "sqrt"):
            raise FraudopsError(
                f"train.xgboost.scale_pos_weight: a number, 'balanced' or 'sqrt', not {value!r}"
            )
        return float(ratio if value == "balanced" else np.sqrt(ratio))
    return float(value)


def fit_xgboost(
    x: np.ndarray,
    y: np.ndarray,
    names: list[str],
    cfg: TrainConfig,
    *,
    eval_set: tuple | None = None,
    n_estimators: int | None = None,
) -> FraudModel:
    """Gradient-boosted trees; early stopping on validation PR AUC when an eval set is given."""
    import xgboost

    params = dict(cfg.xgboost)
    stopping = params.pop("early_stopping_rounds", None)
    if n_estimators is not None:
        params["n_estimators"] = n_estimators
    params["scale_pos_weight"] = _positive_weight(params.pop("scale_pos_weight", 1.0), y)
    params = {
        "tree_method": "hist",
        "eval_metric": "aucpr",
        "n_jobs": cfg.n_jobs,
        "random_state": cfg.seed,
        **params,
    }
    clf = xgboost.XGBClassifier(**params, early_stopping_rounds=stopping if eval_set is not None else None)
    clf.fit(x, y, eval_set=[eval_set] if eval_set is not None else None, verbose=False)
    booster = clf.get_booster()
    best_iteration = getattr(clf, "best_iteration", None) if eval_set is not None and stopping else None
    best = booster.num_boosted_rounds() if best_iteration is None else int(best_iteration) + 1
    if best < booster.num_boosted_rounds():
        booster = booster[:best]
    booster.feature_names = None
    return FraudModel("xgboost", names, 0.5, booster=booster, info={"n_estimators": best})


def _fit(
    name: str, x: np.ndarray, y: np.ndarray, names: list[str], cfg: TrainConfig, **kw: Any
) -> FraudModel:
    if name == "logistic_regression":
        return fit_logistic(x, y, names, cfg)
    return fit_xgboost(x, y, names, cfg, **kw)


def _importances(model: FraudModel) -> dict[str, float]:
    if model.kind == "xgboost":
        gains = model.booster.get_score(importance_type="gain")
        return {n: float(gains.get(f"f{i}", 0.0)) for i, n in enumerate(model.feature_names)}
    assert model.coef is not None
    return {n: float(abs(c)) for n, c in zip(model.feature_names, model.coef, strict=True)}


def train_models(df: pl.DataFrame, settings: Settings) -> TrainResult:
    """Fit every candidate, pick the best on validation, refit on the training window, test it."""
    started = time.perf_counter()
    cfg = settings.train
    if df.height == 0 or LABEL not in df.columns:
        raise FraudopsError(
            "no labelled data: add labelled files to data/raw/ (fraudops data import / simulate)"
        )
    if df[LABEL].n_unique() < 2:
        raise FraudopsError(
            f"the labelled data has one class only ({LABEL} = {df[LABEL][0]}): both are needed"
        )
    parts = split(df, settings)
    names = input_names(df, settings)
    _check_labels(parts, cfg)

    def xy(part: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return part.select(names).to_numpy().astype(np.float32), part[LABEL].to_numpy().astype(np.int32)

    x_fit, y_fit = xy(parts.fit)
    x_val, y_val = xy(parts.valid)
    train_part = parts.train
    x_train, y_train = xy(train_part)
    x_test, y_test = xy(parts.test)
    test_frame = parts.test.select([c for c in (CUSTOMER, TX_TIME) if c in parts.test.columns])

    candidates: dict[str, dict[str, Any]] = {}
    fitted: dict[str, tuple[FraudModel, np.ndarray]] = {}
    for name in cfg.candidates:
        t0 = time.perf_counter()
        first = _fit(name, x_fit, y_fit, names, cfg, eval_set=(x_val, y_val))
        p_val = first.predict_proba(x_val)
        refit = _fit(name, x_train, y_train, names, cfg, n_estimators=first.info.get("n_estimators"))
        fitted[name] = (refit, p_val)
        p_test = refit.predict_proba(x_test)
        candidates[name] = {
            "valid_average_precision": evaluate.average_precision(y_val, p_val),
            "test": evaluate.evaluate(
                y_test, p_test, 0.5, costs=cfg.threshold, frame=test_frame, k=cfg.top_k
            ),
            "seconds": time.perf_counter() - t0,
            **({"n_estimators": refit.info["n_estimators"]} if "n_estimators" in refit.info else {}),
        }
    best = max(candidates, key=lambda n: np.nan_to_num(candidates[n]["valid_average_precision"], nan=-1))
    model, p_val = fitted[best]
    threshold, threshold_info = evaluate.choose_threshold(y_val, p_val, cfg.threshold, parts.n_valid_days)
    model.threshold = float(threshold)
    p_test = model.predict_proba(x_test)
    metrics = evaluate.evaluate(
        y_test, p_test, model.threshold, costs=cfg.threshold, frame=test_frame, k=cfg.top_k
    )
    candidates[best]["test"] = metrics
    model.info.update({"candidate": best, "windows": parts.windows})
    data = {
        "fingerprint": fingerprint(df),
        "rows": {"fit": parts.fit.height, "valid": parts.valid.height, "test": parts.test.height},
        "frauds": {
            "fit": int(y_fit.sum()),
            "valid": int(y_val.sum()),
            "test": int(y_test.sum()),
        },
    }
    return TrainResult(
        model=model,
        metrics=metrics,
        candidates=candidates,
        threshold_info=threshold_info,
        windows=parts.windows,
        data=data,
        y_test=y_test,
        p_test=p_test,
        test_frame=parts.test.select(
            [c for c in parts.test.columns if c in (*names, CUSTOMER, TX_TIME, LABEL)]
        ),
        importances=_importances(model),
        seconds=time.perf_counter() - started,
    )


def train_step(
    settings: Settings,
    storage: Storage,
    *,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    previous: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """The pipeline's train step: labelled data in, a tracked MLflow run out."""
    from fraudops import data, registry

    registry.client(settings)  # fail fast on an unreachable tracking server, before any work
    df = data.load_labelled(storage, settings)
    result = train_models(df, settings)
    run_id = registry.log_training(result, settings, execution_id=execution_id, parent_run_id=parent_run_id)
    m = result.metrics
    return {
        "run_id": run_id,
        "model": result.model.kind,
        "threshold": round(result.model.threshold, 6),
        "average_precision": round(m["average_precision"], 4),
        "roc_auc": round(m["roc_auc"], 4),
        **({k: round(v, 4) for k, v in m.items() if k.startswith("card_precision_at_")}),
        "test_rows": int(m["n_rows"]),
        "test_frauds": int(m["n_frauds"]),
        "windows": result.windows,
        "seconds": round(result.seconds, 1),
    }
