"""``fraudops tune``: prequential folds before the test window, the study that feeds train, resuming after
kill -9, and bad input. A small simulation (50 days) with two folds and small trees keeps trials quick."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import polars as pl
import pytest
from typer.testing import CliRunner

from fraudops import compute
from fraudops.cli import build
from fraudops.config import Settings, SimulateConfig, TrainConfig
from fraudops.context import StepContext
from fraudops.data.schema import TX_TIME
from fraudops.data.simulate import simulate
from fraudops.errors import FraudopsError
from fraudops.modeling import splits, tuned
from fraudops.modeling.tune import tune as run_study
from fraudops.tracking.client import client, experiment_id
from fraudops.workspace import init_workspace, load_settings, open_workspace
from fraudops.workspace.layout import BEST_PARAMS, RAW, TUNE_JOURNAL
from fraudops.workspace.storage import Storage

SIM = SimulateConfig(n_customers=300, n_terminals=600, n_days=50, seed=1)  # 2018-04-01 .. 2018-05-20
CONFIG = """\
train:
  train_days: 14
  min_frauds: 5
  n_jobs: 1
  xgboost: {n_estimators: 20, early_stopping_rounds: 5, max_bin: 64, learning_rate: 0.1}
tune: {folds: 2}
"""
app = build()

if TYPE_CHECKING:
    from distributed import Client


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.upper().startswith("FRAUDOPS_"):
            monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def tx() -> pl.DataFrame:
    return simulate(SIM)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tx: pl.DataFrame) -> Path:
    ws = tmp_path_factory.mktemp("tune") / "ws"
    ws.mkdir()
    (ws / "fraudops.yaml").write_text(CONFIG)
    settings, _ = init_workspace(str(ws))
    Storage(settings.workspace).write_frame(f"{RAW}/tx.parquet", tx)
    return ws


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "ws"))


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.output.split())


def study_trials(ws: Path) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(ws / TUNE_JOURNAL)))
    summaries = optuna.get_all_study_summaries(storage)  # none while a new process has only opened the file
    assert len(summaries) <= 1, [s.study_name for s in summaries]
    if not summaries:
        return []
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage).get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------------- folds


def test_folds_are_consecutive_and_end_before_the_test_window(tx: pl.DataFrame) -> None:
    settings = Settings(workspace=".")
    settings.train = TrainConfig(train_days=14, min_frauds=5)
    final = splits.plan_windows(dt.date(2018, 4, 1), dt.date(2018, 5, 20), settings.train)
    folds = splits.prequential_splits(tx, settings, 2)
    assert [f.windows["test_end"] for f in folds] == [
        final["train_end"].isoformat(),
        (final["train_end"] - dt.timedelta(days=7)).isoformat(),
    ]
    for fold in folds:
        assert fold.test_all is not None
        for part in (fold.fit, fold.valid, fold.test_all):
            assert part.height > 0
            assert part[TX_TIME].max().date() < final["train_end"]  # type: ignore[union-attr]
        w = {k: dt.date.fromisoformat(v) for k, v in fold.windows.items()}
        assert (w["test_start"] - w["train_end"]).days == settings.train.delay_days
        assert fold.test_all[TX_TIME].min().date() == w["test_start"]  # type: ignore[union-attr]
    # the test window's transactions (and the label-delay gap's) are never read, not even for features
    tampered = tx.with_columns(
        pl.when(pl.col(TX_TIME).dt.date() >= final["train_end"])
        .then(1)
        .otherwise(pl.col("TX_FRAUD"))
        .alias("TX_FRAUD")
    )
    assert tampered["TX_FRAUD"].sum() > tx["TX_FRAUD"].sum()
    again = splits.prequential_splits(tampered, settings, 2)
    for a, b in zip(folds, again, strict=True):
        assert a.test.equals(b.test) and a.fit.equals(b.fit)


def test_too_many_folds_for_the_data_is_a_clear_error(tx: pl.DataFrame) -> None:
    settings = Settings(workspace=".")
    settings.train = TrainConfig(train_days=14)
    with pytest.raises(FraudopsError, match=r"tune.folds=3: fold 3 would start on 2018-03-26, before"):
        splits.prequential_splits(tx, settings, 3)


# ---------------------------------------------------------------------------------- study and train


def test_tune_writes_the_best_params_and_train_uses_them(ws: Path) -> None:
    code, out = cli("tune", "-w", str(ws), "--trials", "3")
    assert code == 0, out
    best = json.loads((ws / BEST_PARAMS).read_text())
    trials = study_trials(ws)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    winner = max(trials, key=lambda t: t.value or -1)
    assert best["trial"] == winner.number and best["value"] == pytest.approx(winner.value)
    assert best["train"]["candidates"] == [winner.params["candidate"]]
    # trial 0 is the configured parameters (the baseline the search must beat)
    # (the workspace's xgboost mapping replaces the defaults': XGBoost's own max_depth, 6)
    assert trials[0].params["candidate"] == "xgboost" and trials[0].params["max_depth"] == 6
    assert trials[0].params["learning_rate"] == 0.1

    settings = load_settings(str(ws))
    c = client(settings)
    runs = c.search_runs([experiment_id(settings)], "tags.`fraudops.step` = 'tune'")
    (parent,) = runs
    nested = c.search_runs([experiment_id(settings)], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in nested) == ["trial-0", "trial-1", "trial-2"]
    assert parent.data.metrics["best_value"] == pytest.approx(winner.value, abs=1e-6)

    code, out = cli("train", "-w", str(ws))
    assert code == 0, out
    assert best["study"] in out
    (run,) = c.search_runs([experiment_id(settings)], "tags.`fraudops.step` = 'train'")
    assert run.data.params["tuned_study"] == best["study"]
    assert run.data.params["candidate"] == winner.params["candidate"]
    if winner.params["candidate"] == "xgboost":
        assert float(run.data.params["xgb_max_depth"]) == winner.params["max_depth"]
        assert float(run.data.params["xgb_learning_rate"]) == pytest.approx(winner.params["learning_rate"])


def test_train_ignores_the_best_params_when_told(ws: Path) -> None:
    storage = Storage(str(ws))
    best = tuned.BestParams(
        study="s", objective="average_precision", value=0.5, trial=3, trials_done=4,
        train={"candidates": ["logistic_regression"], "logistic_c": 0.25},
    )  # fmt: skip
    tuned.write(storage, best)
    settings = load_settings(str(ws))
    applied, used = tuned.apply(settings, storage)
    assert used == best and applied.train.candidates == ["logistic_regression"]
    assert applied.train.logistic_c == 0.25 and settings.train.logistic_c == 1.0
    settings.tune.use_best = False
    assert tuned.apply(settings, storage) == (settings, None)


def test_a_damaged_best_params_file_is_a_clear_error(ws: Path) -> None:
    (ws / "tuning").mkdir()
    (ws / BEST_PARAMS).write_text(json.dumps({"study": "s", "train": {}}))
    code, out = cli("train", "-w", str(ws))
    assert code == 1 and "best_params.json is not a best-parameters file of fraudops tune" in out
    (ws / BEST_PARAMS).write_text(
        json.dumps(
            {
                "study": "s",
                "objective": "cost",
                "value": 1,
                "trial": 0,
                "trials_done": 1,
                "train": {"logistic_c": -1},
            }
        )
    )
    code, out = cli("train", "-w", str(ws))
    assert code == 1 and "train.logistic_c: Input should be greater than 0 (got -1)" in out
    assert "Traceback" not in out


def test_on_the_dask_engine_a_trial_runs_per_worker(
    ws: Path, template: Path, tmp_path: Path, dask_client: Client
) -> None:
    settings, storage = open_workspace(str(ws))
    with compute.attach(dask_client):
        result = run_study(StepContext(settings, storage), trials=4)
    assert result.trials_done == 4 and result.trials_this_run == 4
    trials = study_trials(ws)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    # two at once: trial 1 was sampled and started before trial 0 had finished
    assert trials[1].datetime_start < trials[0].datetime_complete  # type: ignore[operator]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    best = json.loads((ws / BEST_PARAMS).read_text())
    assert best["trial"] == max(trials, key=lambda t: t.value or -1).number
    c = client(settings)
    (parent,) = c.search_runs([experiment_id(settings)], "tags.`fraudops.step` = 'tune'")
    assert parent.data.params["parallel_trials"] == "2"
    # a worker's fold scores are this process's: the configured parameters score the same here
    here_ws = Path(shutil.copytree(template, tmp_path / "here"))
    here = run_study(StepContext(*open_workspace(str(here_ws))), trials=1)
    assert here.default_value == pytest.approx(result.default_value, abs=1e-9)


@pytest.mark.slow
def test_a_killed_study_resumes_counting_the_trials_done(ws: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDOPS_")}
    args = [sys.executable, "-m", "fraudops.cli", "tune", "-w", str(ws), "--trials", "40"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if (ws / TUNE_JOURNAL).exists() and sum(t.state.is_finished() for t in study_trials(ws)) >= 2:
                break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = study_trials(ws)
    done = [t.number for t in before if t.state.is_finished()]
    assert len(done) >= 2 and len(done) < 40
    total = len(done) + 2
    code, out = cli("tune", "-w", str(ws), "--trials", str(total))
    assert code == 0, out
    after = study_trials(ws)
    finished = [
        t for t in after if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == total and re.search(r"trials_this_run\W+2\W", out)
    assert {t.number for t in finished} >= set(done)  # the earlier trials are kept, not redone
    # a trial the killed process was running is failed, not left running
    assert not [t for t in after if t.state == optuna.trial.TrialState.RUNNING]
    best = max((t for t in after if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value or -1)
    assert json.loads((ws / BEST_PARAMS).read_text())["trial"] == best.number


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--trials", "0"), "tune.trials: Input should be greater than 0 (got 0)"),
        (("--objective", "f1"), "tune.objective: Input should be 'average_precision', 'card_precision' or"),
        (("--timeout", "-5"), "tune.timeout: Input should be greater than 0 (got -5.0)"),
        (("--folds", "6"), "tune.folds=6: fold"),
    ],
)
def test_bad_input_is_one_clear_message(ws: Path, args: tuple[str, ...], message: str) -> None:
    code, out = cli("tune", "-w", str(ws), *args)
    assert code == 1 and message in out and "Traceback" not in out
    assert not (ws / BEST_PARAMS).exists()
