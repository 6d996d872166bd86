"""Hyperparameter search: an Optuna study over prequential folds, resumable, feeding ``train``.

Each trial draws a candidate (XGBoost or logistic regression) and its parameters (TPE), and scores them
as training would (:func:`~fraudops.modeling.train.fit_candidate`: fit, early stopping on validation,
refit on the whole window) on each prequential fold (:func:`~fraudops.modeling.splits.fold_windows`, all
before the training window's end, so the test window is never read); the objective is the mean over the
folds. The running mean is reported after each fold and the median pruner stops trials that are below the
median of earlier trials at the same fold.

The study lives in an Optuna journal file, ``tuning/study.journal``: a local workspace's file itself, so a
killed process loses only its running trial (marked failed by the next run, which holds the workspace
lock as every writer does); a remote workspace's journal is worked on in a local copy and
uploaded after each trial (atomically). The study's name is a hash of what defines the problem (objective,
folds, windows, features, candidates): running ``fraudops tune`` again with the same settings resumes the
study, counting the trials already done; other settings start another study in the same journal. After each
trial the best parameters are written to ``tuning/best_params.json`` (:mod:`~fraudops.modeling.tuned`),
which ``train`` uses. Every trial is a nested MLflow run under the study's run.

With the Dask engine the folds go to every worker once and each worker runs a trial (its folds one task
at a time, so pruning still stops it between folds); this process asks Optuna for trials and tells it
their results, so it stays the journal's only writer and resuming works as above. TPE's constant liar
keeps trials sampled while others run away from their points.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl

from fraudops import compute
from fraudops.compute import Engine
from fraudops.config import Objective, Settings, TrainConfig
from fraudops.context import StepContext, StepResult
from fraudops.data.loading import load_labelled
from fraudops.errors import FraudopsError
from fraudops.modeling import evaluate, tuned
from fraudops.modeling.splits import Split, prequential_splits
from fraudops.modeling.train import (
    Arrays,
    TrainResult,
    check_labels,
    fit_candidate,
    input_names,
    train_step,
    training_engine,
)
from fraudops.tracking.client import call, client, experiment_id, flat_metrics, run_tags, step_run
from fraudops.workspace.layout import TUNE_JOURNAL
from fraudops.workspace.storage import Storage

SEARCH_SPACE_VERSION = 1  # part of the study's name: a changed search space starts a new study
RUN_ATTR = "mlflow_run_id"
MINIMISE: set[Objective] = {"cost"}


SPACE: dict[str, tuple[float, float]] = {
    "max_depth": (2, 10),
    "learning_rate": (0.01, 0.3),
    "min_child_weight": (0.5, 20.0),
    "subsample": (0.5, 1.0),
    "colsample_bytree": (0.4, 1.0),
    "reg_lambda": (0.1, 50.0),
    "gamma": (0.0, 4.0),
}
"""XGBoost's searched ranges (scale_pos_weight: 1 or sqrt; logistic_c: 0.001..100, log scale)."""
FLOATS = ("learning_rate", "min_child_weight", "subsample", "colsample_bytree", "reg_lambda", "gamma")
LOG_SCALE = {"learning_rate", "min_child_weight", "reg_lambda"}


@dataclasses.dataclass
class Fold:
    arrays: Arrays
    windows: dict[str, str]
    engine: Engine | None = None
    """Where XGBoost trains on this fold (:func:`~fraudops.modeling.train.training_engine`)."""


def suggest(trial: Any, candidates: list[str], base: TrainConfig) -> dict[str, Any]:
    """A trial's changes to the train settings. XGBoost: tree depth and leaf size (how specific a rule
    may get), learning rate (with early stopping, it trades trees for smoothness), row and column
    subsampling and L2 / split-gain regularisation (variance on a few hundred frauds), and the fraud
    weight; the most trees and the early-stopping patience stay as configured. Logistic regression: its
    regularisation strength."""
    kind = trial.suggest_categorical("candidate", candidates)
    if kind == "logistic_regression":
        return {"candidates": [kind], "logistic_c": trial.suggest_float("logistic_c", 1e-3, 1e2, log=True)}
    xgb: dict[str, Any] = {"max_depth": trial.suggest_int("max_depth", *map(int, SPACE["max_depth"]))}
    for key in FLOATS:
        lo, hi = SPACE[key]
        xgb[key] = trial.suggest_float(key, lo, hi, log=key in LOG_SCALE)
    xgb["scale_pos_weight"] = trial.suggest_categorical("scale_pos_weight", [1.0, "sqrt"])
    return {"candidates": [kind], "xgboost": {**base.xgboost, **xgb}}


def fold_score(fold: Fold, kind: str, names: list[str], cfg: TrainConfig, objective: Objective) -> float:
    """The objective on one fold's assessment window, for a candidate trained as ``train`` would."""
    a = fold.arrays
    model, p_val = fit_candidate(kind, a, names, cfg, fold.engine)
    p = model.predict_proba(a.x_test)
    if objective == "average_precision":
        return evaluate.average_precision(a.y_test, p)
    if objective == "card_precision":
        cards = a.test_frame.with_columns(pl.Series("score", p), pl.Series(evaluate.LABEL, a.y_test))
        return evaluate.card_precision_at_k(cards, cfg.top_k)[0]
    threshold, _ = evaluate.choose_threshold(a.y_val, p_val, cfg.threshold, a.n_valid_days)
    return evaluate.expected_cost(
        a.y_test, p, threshold, cfg.threshold.cost_missed_fraud, cfg.threshold.cost_false_alert
    )[1]


def study_name(settings: Settings, splits: list[Split]) -> str:
    """Same problem, same name: what the trials' scores depend on, hashed."""
    t = settings.tune
    problem = {
        "space": SEARCH_SPACE_VERSION,
        "objective": t.objective,
        "candidates": sorted(t.candidates),
        "folds": [s.windows for s in splits],
        "features": settings.features.model_dump(mode="json"),
        "train": settings.train.model_dump(mode="json", exclude={"candidates", "logistic_c", "xgboost"}),
        "xgboost_fixed": {
            k: settings.train.xgboost.get(k) for k in ("n_estimators", "early_stopping_rounds")
        },
    }
    digest = hashlib.sha256(json.dumps(problem, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"fraudops-{t.objective}-{digest}"


@contextlib.contextmanager
def journal(storage: Storage) -> Iterator[tuple[str, Any]]:
    """The journal's local path and an ``upload()`` to call after each trial (a no-op when local)."""
    if storage.is_local:
        storage.makedirs(TUNE_JOURNAL.rpartition("/")[0])
        path = storage.path(TUNE_JOURNAL)
        # a killed process leaves Optuna's lock behind; we hold the workspace lock, so it is stale
        Path(path + ".lock").unlink(missing_ok=True)
        yield path, lambda: None
        return
    with tempfile.TemporaryDirectory(prefix="fraudops-tune-") as tmp:
        local = Path(tmp) / "study.journal"
        if storage.exists(TUNE_JOURNAL):
            local.write_bytes(storage.read_bytes(TUNE_JOURNAL))
        yield str(local), lambda: storage.write_bytes(TUNE_JOURNAL, local.read_bytes())


def fail_abandoned(study: Any) -> int:
    """Trials left running by a process that died (kill -9, a crash) are marked failed: they never
    count, and the study continues. The caller holds the workspace lock, so no other process runs this
    workspace's trials: every running trial is abandoned. Returns how many."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(running)


class TuneResult(StepResult):
    """What a study run did: its name, trials (all, and done: complete or pruned), the best trial."""

    study: str
    objective: str
    trials_done: int
    trials_complete: int
    trials_pruned: int
    trials_this_run: int
    best_value: float | None
    best_trial: int | None
    best_candidate: str | None
    default_value: float | None
    """The objective of the configured train settings on the same folds (the study's trial 0)."""
    seconds: float


def _log_trial(
    settings: Settings, exp: str, parent: str, trial: Any, state: str, scores: list[float]
) -> None:
    """One trial as a nested MLflow run: its parameters, fold scores and state."""
    from mlflow.entities import Metric, Param, RunStatus

    c = client(settings)
    tags = {**run_tags("tune_trial", None), "mlflow.parentRunId": parent, "optuna.state": state}
    run = call(settings, "trial run", lambda: c.create_run(exp, run_name=f"trial-{trial.number}", tags=tags))
    now = int(time.time() * 1000)
    metrics = {f"fold{i + 1}": s for i, s in enumerate(scores)}
    if scores:
        metrics["objective"] = statistics.fmean(scores)
    params = [Param(k, str(v)[:6000]) for k, v in trial.params.items()]
    values = [Metric(k, v, now, 0) for k, v in flat_metrics("", metrics).items()]
    rid = run.info.run_id
    call(settings, "trial log", lambda: c.log_batch(rid, metrics=values, params=params))
    status = RunStatus.to_string(RunStatus.FINISHED if state != "FAIL" else RunStatus.FAILED)
    call(settings, "trial end", lambda: c.set_terminated(rid, status))


@dataclasses.dataclass
class _Running:
    """A trial in flight: its candidate, its train settings and the fold scores so far."""

    trial: Any
    kind: str
    cfg: TrainConfig
    scores: list[float] = dataclasses.field(default_factory=list)


def score_on_worker(
    i: int, kind: str, cfg: TrainConfig, names: list[str], objective: Objective, folds: list[Fold]
) -> float:
    """:func:`fold_score` as a cluster task: XGBoost trains with the worker's threads, not the command's."""
    from distributed import get_worker

    cfg = cfg.model_copy(update={"n_jobs": get_worker().state.nthreads})
    return fold_score(folds[i], kind, names, cfg, objective)


class _Here:
    """Fold scores computed in this process, one at a time (the local engine, or folds whose XGBoost
    trains with ``xgboost.dask`` on the whole cluster)."""

    slots = 1

    def __init__(self, folds: list[Fold], names: list[str], objective: Objective) -> None:
        self.folds, self.names, self.objective = folds, names, objective
        self.queue: list[tuple[int, int, str, TrainConfig]] = []

    def submit(self, number: int, i: int, kind: str, cfg: TrainConfig) -> None:
        self.queue.append((number, i, kind, cfg))

    def next(self) -> tuple[int, float]:
        number, i, kind, cfg = self.queue.pop(0)
        return number, fold_score(self.folds[i], kind, self.names, cfg, self.objective)

    def cancel(self) -> None:
        self.queue.clear()


class _OnCluster:
    """Fold scores as tasks on the Dask cluster, a trial per worker at once; the folds are sent to every
    worker once. This process stays the study's only writer (ask and tell), so the journal, its lock
    and resuming work as with one process."""

    def __init__(self, eng: Engine, folds: list[Fold], names: list[str], objective: Objective) -> None:
        self.eng, self.names, self.objective = eng, names, objective
        self.slots = eng.workers
        self.folds = eng.broadcast(folds)
        self.futures: dict[Any, int] = {}

    def submit(self, number: int, i: int, kind: str, cfg: TrainConfig) -> None:
        task = self.eng.submit(score_on_worker, i, kind, cfg, self.names, self.objective, folds=self.folds)
        self.futures[task] = number

    def next(self) -> tuple[int, float]:
        task = self.eng.first_done(self.futures)
        return self.futures.pop(task), float(task.result())

    def cancel(self) -> None:
        for task in self.futures:
            task.cancel()
        self.futures.clear()


def tune(
    ctx: StepContext,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    df: pl.DataFrame | None = None,
) -> TuneResult:
    """Run (or resume) the study until it has ``trials`` trials done or ``timeout`` seconds have passed.

    With the Dask engine, trials run in parallel, one per worker (unless a fold's window is large
    enough for XGBoost to train on the whole cluster: then one trial at a time, as here)."""
    import mlflow
    import optuna

    started = time.perf_counter()
    settings, storage = ctx.settings, ctx.storage
    cfg = settings.tune
    trials = cfg.trials if trials is None else trials
    timeout = cfg.timeout if timeout is None else timeout
    if trials <= 0:
        raise FraudopsError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and not timeout > 0:
        raise FraudopsError(f"--timeout must be a positive number of seconds, got {timeout}")
    client(settings)  # fail fast on an unreachable tracking server, before any work
    if df is None:
        df = load_labelled(storage, settings)
    splits = prequential_splits(df, settings, cfg.folds)
    for s in splits:
        check_labels(s, settings.train)
    names = input_names(df, settings)
    arrays = [Arrays.of(s, names) for s in splits]
    folds = [Fold(a, s.windows, training_engine(settings, a)) for s, a in zip(splits, arrays, strict=True)]
    eng = compute.current()
    scorer: _Here | _OnCluster = (
        _OnCluster(eng, folds, names, cfg.objective)
        if eng is not None and all(f.engine is None for f in folds)
        else _Here(folds, names, cfg.objective)
    )
    name = study_name(settings, splits)
    direction: Literal["minimize", "maximize"] = "minimize" if cfg.objective in MINIMISE else "maximize"
    TrialState = optuna.trial.TrialState
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with journal(storage) as (path, upload):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.create_study(
            storage=JournalStorage(JournalFileBackend(path)),
            study_name=name,
            direction=direction,
            # constant liar: a trial sampled while others run is steered away from their points
            sampler=optuna.samplers.TPESampler(
                seed=settings.train.seed, n_startup_trials=10, constant_liar=True
            ),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
            load_if_exists=True,
        )
        fail_abandoned(study)
        before = len(study.get_trials(deepcopy=False, states=done_states))
        if not study.trials:  # trial 0: the configured settings, the baseline the search must beat
            study.enqueue_trial(baseline(settings), skip_if_exists=True)
        exp = experiment_id(settings)
        run_name = f"tune-{name}"
        with step_run(
            settings,
            "tune",
            ctx.execution_id,
            ctx.parent_run_id,
            run_name=run_name,
            resume_run_id=study.user_attrs.get(RUN_ATTR),
        ) as run:
            parent = str(run.info.run_id)
            study.set_user_attr(RUN_ATTR, parent)
            mlflow.log_params(
                {
                    "study": name,
                    "objective": cfg.objective,
                    "folds": cfg.folds,
                    "candidates": ",".join(cfg.candidates),
                    "parallel_trials": scorer.slots,
                    **{
                        f"fold{i + 1}": f"{f.windows['train_start']}..{f.windows['test_end']}"
                        for i, f in enumerate(folds)
                    },
                }
            )
            done = before
            running: dict[int, _Running] = {}

            def start() -> None:
                trial = study.ask()
                changes = suggest(trial, list(cfg.candidates), settings.train)
                trial.set_user_attr("train", changes)
                train_cfg = TrainConfig.model_validate({**settings.train.model_dump(), **changes})
                running[trial.number] = _Running(trial, changes["candidates"][0], train_cfg)
                scorer.submit(trial.number, 0, changes["candidates"][0], train_cfg)

            def finish(r: _Running, state: Any) -> None:
                nonlocal done
                if state == TrialState.COMPLETE and any(math.isnan(s) for s in r.scores):
                    raise FraudopsError(f"trial {r.trial.number}: a fold's {cfg.objective} is undefined")
                _log_trial(settings, exp, parent, r.trial, state.name, r.scores)
                value = statistics.fmean(r.scores) if state == TrialState.COMPLETE else None
                frozen = study.tell(r.trial, value, state=state)
                del running[r.trial.number]
                done += 1
                if state == TrialState.COMPLETE and frozen.number == study.best_trial.number:
                    _write_best(storage, study, name, cfg.objective)
                upload()
                if ctx.progress:
                    ctx.progress("trials", done, trials)

            deadline = math.inf if timeout is None else time.perf_counter() + timeout
            try:
                while True:
                    while (
                        len(running) < scorer.slots
                        and done + len(running) < trials
                        and time.perf_counter() < deadline
                    ):
                        start()
                    if not running:
                        break
                    number, score = scorer.next()
                    r = running[number]
                    r.scores.append(score)
                    r.trial.report(statistics.fmean(r.scores), len(r.scores) - 1)
                    if r.trial.should_prune():
                        finish(r, TrialState.PRUNED)
                    elif len(r.scores) < len(folds):
                        scorer.submit(number, len(r.scores), r.kind, r.cfg)
                    else:
                        finish(r, TrialState.COMPLETE)
            except BaseException:
                scorer.cancel()
                for r in running.values():
                    study.tell(r.trial, state=TrialState.FAIL)
                upload()
                raise
            result = _result(study, name, cfg.objective, before, time.perf_counter() - started)
            mlflow.log_metrics(
                flat_metrics(
                    "",
                    {
                        "trials_done": result.trials_done,
                        "trials_pruned": result.trials_pruned,
                        "best_value": result.best_value,
                        "default_value": result.default_value,
                    },
                )
            )
            if result.best_trial is not None:
                mlflow.log_dict(
                    json.loads(json.dumps(study.best_trial.user_attrs["train"])), "best_params.json"
                )
            upload()
            return result.model_copy(update={"run_id": parent})


XGB_LIBRARY_DEFAULTS: dict[str, Any] = {  # what XGBoost uses for a searched parameter the settings omit
    "max_depth": 6,
    "learning_rate": 0.3,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
    "gamma": 0.0,
    "scale_pos_weight": 1.0,
}


def baseline(settings: Settings) -> dict[str, Any]:
    """The configured train settings as a point of the search space (trial 0); a value outside the space
    is left for the sampler to draw."""
    train, candidates = settings.train, settings.tune.candidates
    if "xgboost" not in candidates:
        return {"candidate": candidates[0], "logistic_c": train.logistic_c}
    xgb = {**XGB_LIBRARY_DEFAULTS, **train.xgboost}
    inside = {
        k: xgb[k]
        for k, (lo, hi) in SPACE.items()
        if k in xgb and isinstance(xgb[k], int | float) and lo <= xgb[k] <= hi
    }
    if xgb.get("scale_pos_weight") in (1, 1.0, "sqrt"):
        inside["scale_pos_weight"] = 1.0 if xgb["scale_pos_weight"] == 1 else "sqrt"
    return {"candidate": "xgboost", **inside}


def _write_best(storage: Storage, study: Any, name: str, objective: str) -> None:
    best = study.best_trial
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    tuned.write(
        storage,
        tuned.BestParams(
            study=name,
            objective=objective,
            value=float(best.value),
            trial=best.number,
            trials_done=len(done),
            train=best.user_attrs["train"],
        ),
    )


def _result(study: Any, name: str, objective: str, before: int, seconds: float) -> TuneResult:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    best = study.best_trial if complete else None
    first = next((t for t in complete if t.number == 0), None)
    return TuneResult(
        study=name,
        objective=objective,
        trials_done=len(complete) + len(pruned),
        trials_complete=len(complete),
        trials_pruned=len(pruned),
        trials_this_run=len(complete) + len(pruned) - before,
        best_value=None if best is None else round(float(best.value), 6),
        best_trial=None if best is None else best.number,
        best_candidate=None if best is None else str(best.params.get("candidate")),
        default_value=None if first is None else round(float(first.value), 6),
        seconds=round(seconds, 1),
    )


def train_step_tuned(ctx: StepContext) -> TrainResult:
    """The pipeline's train step: a study first when ``tune.before_train`` (its run nested under the
    execution's), then training, which uses the best parameters (``tune.use_best``)."""
    if ctx.settings.tune.before_train:
        tune(ctx)
    return train_step(ctx)
