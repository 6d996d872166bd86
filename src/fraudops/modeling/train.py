"""Training: a leak-free time split, candidate models, a threshold chosen on validation, test metrics.

Candidates are fitted on *fit*, compared on *validation* (average precision), and the winner's
threshold is chosen on its validation scores; then every candidate is refitted on the whole training
window (XGBoost with the early-stopped number of trees) and scored on the test window, from which cards
already known to be compromised are removed (simulator.md). The features kind splits by its time column
(last rows for test) or, without one, stratified at random.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fraudops import compute, features
from fraudops.compute import Engine
from fraudops.config import Settings, TrainConfig
from fraudops.context import StepContext, StepResult
from fraudops.data.loading import fingerprint
from fraudops.data.schema import CUSTOMER, LABEL, TX_TIME, model_inputs
from fraudops.errors import FraudopsError
from fraudops.features import table
from fraudops.features.table import FeatureTable
from fraudops.modeling import calibration, evaluate, plots, tuned
from fraudops.modeling.explain import DELAY, USUAL, usual_values
from fraudops.modeling.model import FraudModel, LogisticModel, XGBoostModel
from fraudops.modeling.pyfunc import log_model
from fraudops.modeling.splits import OnWorkers, Split, model_arrays, split
from fraudops.modeling.tuned import BestParams
from fraudops.tracking.client import client, flat_metrics, step_run

if TYPE_CHECKING:
    from dask.array import Array

TRAINED_ON = "trained_on"
"""Where the model was fitted: ``local`` (this process) or ``dask`` (``xgboost.dask`` on the cluster);
in the model's info, the candidates' summary and the train run's params."""
FITTED_ROWS = "fitted_rows"
"""How many rows the final fit saw: the training window's, or (logistic regression beside a window left on
the workers) its sample's."""


@dataclasses.dataclass
class Trained:
    """The chosen model with everything training learned about it (logged by :func:`log_training`)."""

    model: FraudModel
    metrics: dict[str, float]
    candidates: dict[str, dict[str, Any]]
    threshold_info: dict[str, Any]
    calibration: dict[str, Any]
    windows: dict[str, str]
    data: dict[str, Any]
    y_test: np.ndarray
    p_test: np.ndarray
    test_frame: pl.DataFrame
    importances: dict[str, float]
    seconds: float


def input_names(df: pl.DataFrame | FeatureTable, settings: Settings) -> list[str]:
    if settings.data.kind == "transactions" or isinstance(df, FeatureTable):
        return features.feature_names(settings.features)
    return model_inputs(df, settings.data)


def _counts(part: pl.DataFrame | OnWorkers) -> tuple[int, int]:
    """A window's rows and frauds."""
    if isinstance(part, OnWorkers):
        return part.height, part.frauds
    return part.height, int(part[LABEL].sum()) if part.height else 0


def check_labels(parts: Split, cfg: TrainConfig) -> None:
    for name, part in (("fit", parts.fit), ("validation", parts.valid), ("test", parts.test)):
        rows, frauds = _counts(part)
        if rows == 0:
            raise FraudopsError(f"the {name} window has no labelled rows ({parts.windows})")
        if frauds == rows:
            raise FraudopsError(f"the {name} window has only frauds: both classes are needed")
        if frauds < cfg.min_frauds:
            raise FraudopsError(
                f"the {name} window has {frauds} frauds, fewer than train.min_frauds={cfg.min_frauds} "
                f"({rows:,} rows; windows {parts.windows})"
            )


def fit_logistic(x: np.ndarray, y: np.ndarray, names: list[str], cfg: TrainConfig) -> LogisticModel:
    """Standardised, class-balanced logistic regression: the baseline."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0, dtype=np.float64)
    scale = x.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=cfg.logistic_c, max_iter=2000, class_weight="balanced", random_state=cfg.seed)
    lr.fit((x - mean) / scale, y)
    return LogisticModel(
        names,
        0.5,
        info={TRAINED_ON: "local", FITTED_ROWS: len(y)},
        mean=mean,
        scale=scale,
        coef=lr.coef_[0].astype(np.float64),
        intercept=float(lr.intercept_[0]),
    )


def _positive_weight(value: float | str, y: np.ndarray | Array) -> float:
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
    x: np.ndarray | Array,
    y: np.ndarray | Array,
    names: list[str],
    cfg: TrainConfig,
    *,
    eval_set: tuple | None = None,
    n_estimators: int | None = None,
    engine: Engine | None = None,
) -> XGBoostModel:
    """Gradient-boosted trees; early stopping on validation PR AUC when an eval set is given.

    With an ``engine`` the same classifier is fitted by ``xgboost.dask`` on its workers
    (:meth:`fraudops.compute.Engine.fit_xgboost`); everything else is this function's.
    """
    import xgboost

    params = dict(cfg.xgboost)
    stopping = params.pop("early_stopping_rounds", None)
    stopping = stopping if eval_set is not None else None
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
    if engine is None:
        clf = xgboost.XGBClassifier(**params, early_stopping_rounds=stopping)
        clf.fit(x, y, eval_set=[eval_set] if eval_set is not None else None, verbose=False)
        booster = clf.get_booster()
        best_iteration = getattr(clf, "best_iteration", None) if stopping else None
    else:
        booster, best_iteration = engine.fit_xgboost(
            params, x, y, eval_set=eval_set, early_stopping_rounds=stopping
        )
    best = booster.num_boosted_rounds() if best_iteration is None else int(best_iteration) + 1
    if best < booster.num_boosted_rounds():
        booster = booster[:best]
    booster.feature_names = None
    info = {"n_estimators": best, TRAINED_ON: "local" if engine is None else "dask", FITTED_ROWS: len(y)}
    return XGBoostModel(names, 0.5, info=info, booster=booster)


def _sample(
    block: tuple[np.ndarray, np.ndarray], rate: float, seed: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Each row of a block with probability ``rate``."""
    keep = np.random.default_rng(seed).random(len(block[1])) < rate
    return block[0][keep], block[1][keep]


def _fit_and_train(
    blocks: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_fit, y_fit, x_train, y_train of the fit window's blocks and the validation block (the last): the
    training window's arrays, and the fit window's as views of their first rows (not a second copy)."""
    x_train = np.concatenate([x for x, _ in blocks])
    y_train = np.concatenate([y for _, y in blocks])
    n_fit = len(y_train) - len(blocks[-1][1])
    return x_train[:n_fit], y_train[:n_fit], x_train, y_train


@dataclasses.dataclass
class Arrays:
    """A split as model inputs: float32 matrices and int32 labels, plus what CP@k needs of the test rows.

    The fit and training windows are numpy arrays, or (a fit window left on the workers,
    :class:`~fraudops.modeling.splits.OnWorkers`) Dask arrays of the workers' blocks; ``local`` holds
    them (or a uniform sample of them) in this process, for the models and figures fitted here."""

    x_fit: np.ndarray | Array
    y_fit: np.ndarray | Array
    x_val: np.ndarray
    y_val: np.ndarray
    x_train: np.ndarray | Array
    y_train: np.ndarray | Array
    x_test: np.ndarray
    y_test: np.ndarray
    test_frame: pl.DataFrame
    n_valid_days: float
    local: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    """x_fit, y_fit, x_train, y_train in this process: the windows, or their sample."""

    @classmethod
    def of(cls, parts: Split, names: list[str], seed: int = 0) -> Arrays:
        x_val, y_val = model_arrays(parts.valid, names)
        x_test, y_test = model_arrays(parts.test, names)
        test_frame = parts.test.select([c for c in (CUSTOMER, TX_TIME) if c in parts.test.columns])
        fit = parts.fit
        x_fit: np.ndarray | Array
        y_fit: np.ndarray | Array
        x_train: np.ndarray | Array
        y_train: np.ndarray | Array
        if isinstance(fit, OnWorkers):
            eng = compute.current()
            assert eng is not None, "a fit window on the workers needs the Dask engine"
            assert fit.names == names, (fit.names, names)
            blocks = fit.blocks
            x_fit, y_fit = eng.matrix(blocks, fit.rows, len(names))
            valid = eng.send((x_val, y_val))
            x_train, y_train = eng.matrix([*blocks, valid], [*fit.rows, len(y_val)], len(names))
            some = eng.gather([eng.submit(_sample, b, fit.rate, [seed, i]) for i, b in enumerate(blocks)])
            some.append(_sample((x_val, y_val), fit.rate, [seed, len(blocks)]))
            local = _fit_and_train(some)
        else:
            local = _fit_and_train([model_arrays(fit, names), (x_val, y_val)])
            x_fit, y_fit, x_train, y_train = local
        return cls(
            x_fit,
            y_fit,
            x_val,
            y_val,
            x_train,
            y_train,
            x_test,
            y_test,
            test_frame,
            parts.n_valid_days,
            local,
        )


def training_engine(settings: Settings, a: Arrays) -> Engine | None:
    """The cluster XGBoost trains on: the command's Dask engine when the training window has more rows
    than ``compute.train_in_memory_rows``; None (this process) otherwise or with the local engine."""
    engine = compute.current()
    return engine if engine is not None and len(a.y_train) > settings.compute.train_in_memory_rows else None


def fit_candidate(
    name: str, a: Arrays, names: list[str], cfg: TrainConfig, engine: Engine | None = None
) -> tuple[FraudModel, np.ndarray]:
    """One candidate as training makes it: fitted on *fit* (XGBoost early-stopped on validation), then
    refitted on the whole training window. Returns the refitted model and the first one's validation
    scores (what the candidate choice and the threshold are based on). XGBoost fits on ``engine``'s
    workers when one is given (:func:`training_engine`); logistic regression, the cheap baseline,
    always fits here, on the windows or (a window left on the workers) their sample (``a.local``)."""
    if name == "logistic_regression":
        x_fit, y_fit, x_train, y_train = a.local
        if len(np.unique(y_fit)) < 2:
            raise FraudopsError(
                f"logistic regression fits in this process on a sample of the training window, and its "
                f"{len(y_fit):,} rows are of one class: raise compute.train_in_memory_rows or leave "
                "logistic_regression out of train.candidates"
            )
        first: FraudModel = fit_logistic(x_fit, y_fit, names, cfg)
        return fit_logistic(x_train, y_train, names, cfg), first.predict_proba(a.x_val)
    first = fit_xgboost(a.x_fit, a.y_fit, names, cfg, engine=engine, eval_set=(a.x_val, a.y_val))
    p_val = first.predict_proba(a.x_val)
    trees = first.info["n_estimators"]
    return fit_xgboost(a.x_train, a.y_train, names, cfg, engine=engine, n_estimators=trees), p_val


def train_models(df: pl.DataFrame | FeatureTable, settings: Settings) -> Trained:
    """Fit every candidate, pick the best on validation, refit on the training window, test it.

    ``df``: the labelled rows, or (Dask engine) the feature table the cluster built of them."""
    started = time.perf_counter()
    cfg = settings.train
    if isinstance(df, FeatureTable):
        rows, frauds = df.rows, df.frauds
    else:
        rows = df.height if LABEL in df.columns else 0
        frauds = int(df[LABEL].sum() or 0) if rows else 0
    if rows == 0:
        raise FraudopsError(
            "no labelled data: add labelled files to data/raw/ (fraudops data import / simulate)"
        )
    if frauds in (0, rows):
        raise FraudopsError(
            f"the labelled data has one class only ({LABEL} = {int(frauds > 0)}): both are needed"
        )
    names = input_names(df, settings)
    parts = split(df, settings, names)
    check_labels(parts, cfg)

    a = Arrays.of(parts, names, cfg.seed)
    y_val, x_test, y_test, test_frame = a.y_val, a.x_test, a.y_test, a.test_frame

    candidates: dict[str, dict[str, Any]] = {}
    fitted: dict[str, tuple[FraudModel, np.ndarray]] = {}
    engine = training_engine(settings, a)
    for name in cfg.candidates:
        t0 = time.perf_counter()
        refit, p_val = fit_candidate(name, a, names, cfg, engine)
        fitted[name] = (refit, p_val)
        p_test = refit.predict_proba(x_test)
        candidates[name] = {
            "valid_average_precision": evaluate.average_precision(y_val, p_val),
            "test": evaluate.evaluate(
                y_test, p_test, 0.5, costs=cfg.threshold, frame=test_frame, k=cfg.top_k
            ),
            "seconds": time.perf_counter() - t0,
            TRAINED_ON: refit.info[TRAINED_ON],
            FITTED_ROWS: refit.info[FITTED_ROWS],
            **({"n_estimators": refit.info["n_estimators"]} if "n_estimators" in refit.info else {}),
        }
    best = max(candidates, key=lambda n: np.nan_to_num(candidates[n]["valid_average_precision"], nan=-1))
    model, raw_val = fitted[best]
    # calibrated on the validation scores of the model fitted without them, like the threshold
    model.calibration = calibration.fit(raw_val, y_val, seed=cfg.seed)
    p_val = model.calibrate(raw_val)
    threshold, threshold_info = evaluate.choose_threshold(y_val, p_val, cfg.threshold, parts.n_valid_days)
    model.threshold = float(threshold)
    raw_test = model.raw_proba(x_test)
    p_test = model.calibrate(raw_test)
    calibration_info = {
        "method": model.calibration["method"],
        "validation_brier": model.calibration["validation_brier"],
        "test_ece": calibration.ece(y_test, p_test),
        "test_ece_uncalibrated": calibration.ece(y_test, raw_test),
        "reliability": calibration.reliability(y_test, p_test),
        "reliability_uncalibrated": calibration.reliability(y_test, raw_test),
    }
    metrics = evaluate.evaluate(
        y_test, p_test, model.threshold, costs=cfg.threshold, frame=test_frame, k=cfg.top_k
    )
    candidates[best]["test"] = metrics
    model.info.update({"candidate": best, "windows": parts.windows, USUAL: usual_values(names, a.local[2])})
    if settings.data.kind == "transactions":
        model.info[DELAY] = settings.features.delay_days
    data = {
        "fingerprint": df.manifest.fingerprint if isinstance(df, FeatureTable) else fingerprint(df),
        "rows": {"fit": parts.fit.height, "valid": parts.valid.height, "test": parts.test.height},
        "frauds": {
            "fit": _counts(parts.fit)[1],
            "valid": int(y_val.sum()),
            "test": int(y_test.sum()),
        },
    }
    return Trained(
        model=model,
        metrics=metrics,
        candidates=candidates,
        threshold_info=threshold_info,
        calibration=calibration_info,
        windows=parts.windows,
        data=data,
        y_test=y_test,
        p_test=p_test,
        test_frame=parts.test.select(
            [c for c in parts.test.columns if c in (*names, CUSTOMER, TX_TIME, LABEL)]
        ),
        importances=model.importances(),
        seconds=time.perf_counter() - started,
    )


class TrainResult(StepResult):
    """The train step's hand-over: the MLflow run that holds the chosen model, and its test figures."""

    model: str
    threshold: float
    average_precision: float
    roc_auc: float
    card_precision_at_k: float | None = None
    calibration: str | None = None
    test_ece: float | None = None
    test_rows: int
    test_frauds: int
    windows: dict[str, str]
    seconds: float
    tuned_study: str | None = None
    """The study whose best parameters training used (tune.use_best), if any."""


def log_training(
    result: Trained,
    settings: Settings,
    *,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    tuned: BestParams | None = None,
) -> str:
    """Log what training learned: params, metrics, curves, data fingerprint, the model. Returns the run id."""
    import mlflow

    with step_run(
        settings, "train", execution_id, parent_run_id, run_name=f"train-{result.model.kind}"
    ) as run:
        cfg = settings.train
        mlflow.log_params(
            {
                "data_kind": settings.data.kind,
                "candidate": result.model.kind,
                "candidates": ",".join(cfg.candidates),
                TRAINED_ON: result.model.info[TRAINED_ON],
                "threshold_strategy": cfg.threshold.strategy,
                "threshold": result.model.threshold,
                "cost_missed_fraud": cfg.threshold.cost_missed_fraud,
                "cost_false_alert": cfg.threshold.cost_false_alert,
                "n_features": len(result.model.feature_names),
                "feature_columns": ",".join(result.model.feature_names)[:6000],
                **{f"window_{k}": v for k, v in result.windows.items()},
                **({f"xgb_{k}": v for k, v in cfg.xgboost.items()} if result.model.kind == "xgboost" else {}),
                **({"logistic_c": cfg.logistic_c} if result.model.kind == "logistic_regression" else {}),
                **({"tuned_study": tuned.study, "tuned_trial": tuned.trial} if tuned else {}),
                "seed": cfg.seed,
            }
        )
        mlflow.log_metrics(flat_metrics("test_", result.metrics))
        cal = result.calibration
        mlflow.log_param("calibration", cal["method"])
        mlflow.log_metrics(
            {
                "test_ece": cal["test_ece"],
                "test_ece_uncalibrated": cal["test_ece_uncalibrated"],
                **{f"valid_brier_{m}": v for m, v in cal["validation_brier"].items()},
            }
        )
        mlflow.log_dict(cal, "calibration.json")
        for name, cand in result.candidates.items():
            mlflow.log_metrics(flat_metrics(f"{name}.test_", cand["test"]))
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
            (plots.plot_pr_curve(result.y_test, result.p_test), "plots/pr_curve.png"),
            (plots.plot_roc_curve(result.y_test, result.p_test), "plots/roc_curve.png"),
            (plots.plot_confusion(conf), "plots/confusion_matrix.png"),
            (
                plots.plot_reliability(
                    {"calibrated": cal["reliability"], "uncalibrated": cal["reliability_uncalibrated"]}
                ),
                "plots/reliability.png",
            ),
            (plots.plot_importances(list(names), list(values)), "plots/feature_importances.png"),
        ):
            mlflow.log_figure(fig, path)
        example = result.test_frame.select(result.model.feature_names).head(5).cast(pl.Float64).to_pandas()
        log_model(result.model, example)
        return str(run.info.run_id)


def train_step(ctx: StepContext) -> TrainResult:
    """The pipeline's train step: labelled data in, a tracked MLflow run out."""
    client(ctx.settings)  # fail fast on an unreachable tracking server, before any work
    settings, tuned_params = tuned.apply(ctx.settings, ctx.storage)
    trained = train_models(table.labelled(ctx.storage, settings), settings)
    run_id = log_training(
        trained, settings, execution_id=ctx.execution_id, parent_run_id=ctx.parent_run_id, tuned=tuned_params
    )
    m = trained.metrics
    cp = next((v for k, v in m.items() if k.startswith("card_precision_at_")), None)
    return TrainResult(
        run_id=run_id,
        model=trained.model.kind,
        threshold=round(trained.model.threshold, 6),
        average_precision=round(m["average_precision"], 4),
        roc_auc=round(m["roc_auc"], 4),
        card_precision_at_k=None if cp is None else round(cp, 4),
        calibration=trained.calibration["method"],
        test_ece=round(trained.calibration["test_ece"], 5),
        test_rows=int(m["n_rows"]),
        test_frauds=int(m["n_frauds"]),
        windows=trained.windows,
        seconds=round(trained.seconds, 1),
        tuned_study=tuned_params.study if tuned_params else None,
    )
