"""MLflow tracking, the model registry and champion/challenger selection.

The promotion rule is tested on hand-made metrics. Everything else runs on one workspace (one SQLite
MLflow store, created once: that is most of this file's time): two train runs on the same data with the
same seed (so the two models tie exactly), then the champion's life, step by step, recorded by the
``life`` fixture and checked by the tests below it. The bad-input tests at the end check that a failure
leaves the registry, the aliases and the reference files as they were.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest

from fraudops.config import RegistryConfig, Settings, SimulateConfig, TrainConfig
from fraudops.context import StepContext, StepResult
from fraudops.data import simulate
from fraudops.data.loading import fingerprint, load_labelled
from fraudops.data.schema import LABEL, to_file_columns
from fraudops.errors import FraudopsError
from fraudops.modeling.model import OUTPUTS, FraudModel
from fraudops.modeling.registry import load_version
from fraudops.modeling.train import train_step
from fraudops.promotion import reference
from fraudops.promotion.champion import Window, promotion_decision, rollback, select_champion_step
from fraudops.promotion.register import register, register_step
from fraudops.tracking import registry
from fraudops.tracking.client import EXECUTION_TAG, STEP_TAG, client, experiment_id, tracking_uri
from fraudops.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import RAW
from fraudops.workspace.storage import Storage

SMALL_XGB = {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.3, "early_stopping_rounds": 10}
PLOTS = {
    "pr_curve.png",
    "roc_curve.png",
    "confusion_matrix.png",
    "feature_importances.png",
    "reliability.png",
}
UNREACHABLE = "http://127.0.0.1:9"


# ----------------------------------------------------------------------------- the promotion rule


def metrics(ap: float, recall: float = 0.6, auc: float = 0.9, fraud_rate: float = 0.01) -> dict[str, float]:
    return {"average_precision": ap, "recall": recall, "roc_auc": auc, "fraud_rate": fraud_rate}


RULE = RegistryConfig(
    min_improvement=0.005, recall_tolerance=0.02, gate_min_auc=0.7, gate_ap_over_fraud_rate=3
)


def test_challenger_that_adds_enough_ap_wins():
    promote, reasons = promotion_decision(metrics(0.706), metrics(0.70), RULE)
    assert promote
    assert any("+0.0060" in r and ">= min_improvement" in r for r in reasons)


def test_tie_keeps_the_champion_when_an_improvement_is_required():
    promote, reasons = promotion_decision(metrics(0.70), metrics(0.70), RULE)
    assert not promote
    assert any("+0.0000" in r and "< min_improvement 0.005" in r for r in reasons)


def test_tie_promotes_when_no_improvement_is_required():
    rule = RULE.model_copy(update={"min_improvement": 0.0})
    assert promotion_decision(metrics(0.70), metrics(0.70), rule)[0]


def test_gain_below_min_improvement_loses():
    assert not promotion_decision(metrics(0.704), metrics(0.70), RULE)[0]


def test_challenger_with_lower_ap_loses():
    assert not promotion_decision(metrics(0.65), metrics(0.70), RULE)[0]


def test_recall_loss_beyond_tolerance_loses_despite_better_ap():
    promote, reasons = promotion_decision(metrics(0.80, recall=0.57), metrics(0.70, recall=0.60), RULE)
    assert not promote
    assert any("beyond tolerance" in r for r in reasons)
    # within tolerance it wins
    assert promotion_decision(metrics(0.80, recall=0.59), metrics(0.70, recall=0.60), RULE)[0]


def test_first_model_is_promoted_when_it_passes_the_gate():
    promote, reasons = promotion_decision(metrics(0.5), None, RULE)
    assert promote
    assert reasons[0].startswith("gate passed") and "no champion yet" in reasons[1]


@pytest.mark.parametrize(
    "challenger",
    [
        metrics(0.5, auc=0.69),  # ROC AUC under the gate
        metrics(0.029, fraud_rate=0.01),  # AP under 3 x the fraud rate
        metrics(float("nan"), auc=float("nan")),  # one class in the window
    ],
)
def test_first_model_is_rejected_when_it_fails_the_gate(challenger: dict[str, float]):
    promote, reasons = promotion_decision(challenger, None, RULE)
    assert not promote
    assert reasons[0].startswith("gate FAILED") and len(reasons) == 1


def test_gate_applies_against_a_champion_too():
    assert not promotion_decision(metrics(0.9, auc=0.6), metrics(0.5), RULE)[0]


# --------------------------------------------------------------------------- one workspace, one store


def write_days(storage: Storage, settings: Settings, df: pl.DataFrame) -> None:
    for day, frame in simulate.iter_days(df):
        storage.write_frame(f"{RAW}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))


def with_train(settings: Settings, **updates: Any) -> Settings:
    out = settings.model_copy(deep=True)
    out.train = TrainConfig.model_validate({**out.train.model_dump(), **updates})
    return out


def with_registry(settings: Settings, **updates: Any) -> Settings:
    out = settings.model_copy(deep=True)
    out.registry = RegistryConfig.model_validate({**out.registry.model_dump(), **updates})
    return out


def state(settings: Settings, storage: Storage) -> dict[str, Any]:
    """What a failed step must not change: versions, aliases, train runs, the reference files."""
    info = registry.describe(settings)
    c = client(settings)
    runs = c.search_runs([experiment_id(settings)], max_results=1000)
    refs = sorted(storage.fs.find(storage.path("monitoring_inputs/reference")))
    return {
        "versions": [v["version"] for v in info["versions"]],
        "aliases": info["aliases"],
        "runs": sorted(r.info.run_id for r in runs),
        "reference": {p: storage.fs.cat(p) for p in refs},
        "pending": registry.pending(settings),
    }


def error_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(FraudopsError) as e:
        fn(*args, **kwargs)
    return str(e.value)


@dataclasses.dataclass
class Life:
    settings: Settings
    storage: Storage
    ws: Path
    runs: dict[str, str]
    steps: dict[str, Any]


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Life:
    """Two identical train runs, then: register v1, promote it (first model), fail twice, register v2,
    reject it (tie, min_improvement 0.005), promote it (tie, min_improvement 0), roll back."""
    ws = tmp_path_factory.mktemp("registry") / "ws"
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    write_days(
        storage, settings, simulate.simulate(SimulateConfig(n_customers=300, n_terminals=600, n_days=50))
    )
    settings = with_train(settings, xgboost=SMALL_XGB, n_jobs=1, train_days=14)
    steps: dict[str, Any] = {}

    def snap(name: str, value: Any = None) -> None:
        aliases = registry.describe(settings)["aliases"]
        steps[name] = {"value": value, "aliases": aliases}
        if CHAMPION in aliases:
            steps[name]["reference"] = reference.read(storage, aliases[CHAMPION])[0].model_dump()

    def ctx(s: Settings = settings, **kw: Any) -> StepContext:
        return StepContext(s, storage, **kw)

    runs = {
        "a": train_step(ctx(execution_id="exec-a")).run_id,
        "b": train_step(ctx(execution_id="exec-b")).run_id,
    }
    snap(
        "register_1",
        register_step(ctx(execution_id="exec-1", handed={"train": StepResult(run_id=runs["a"])})),
    )
    snap("register_1_again", error_of(register, settings, runs["a"]))
    snap("select_1", select_champion_step(ctx()))
    snap("select_without_challenger", error_of(select_champion_step, ctx()))
    snap("rollback_without_previous", error_of(rollback, ctx()))
    snap("register_2", register_step(ctx(handed={"train": StepResult(run_id=runs["b"])})))
    snap("select_2_tie", select_champion_step(ctx()))
    snap("select_2_tie_no_min", select_champion_step(ctx(with_registry(settings, min_improvement=0.0))))
    snap("rollback", rollback(ctx()))
    return Life(settings, storage, ws, runs, steps)


# ------------------------------------------------------------------------------------ tracking


def test_train_run_has_params_metrics_and_tags(life: Life):
    run = client(life.settings).get_run(life.runs["a"])
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["candidates"] == "logistic_regression,xgboost"
    assert p["candidate"] in ("logistic_regression", "xgboost")
    assert 0 < float(p["threshold"]) < 1 and p["threshold_strategy"] == "min_cost"
    assert p["window_test_end"] == "2018-05-21" and p["window_train_start"] == "2018-04-23"
    assert int(p["n_features"]) == 24 and p["seed"] == "42"
    for key in (
        "roc_auc",
        "average_precision",
        "card_precision_at_100",
        "recall_at_1pct_fpr",
        "expected_cost",
    ):
        assert f"test_{key}" in m
    for cand in ("logistic_regression", "xgboost"):
        assert f"{cand}.valid_average_precision" in m and f"{cand}.test_average_precision" in m
    assert t[STEP_TAG] == "train" and t[EXECUTION_TAG] == "exec-a"
    assert t["fraudops.version"]
    assert run.info.status == "FINISHED"


def test_train_run_logs_plots_and_the_data_fingerprint(life: Life):
    c = client(life.settings)
    run_id = life.runs["a"]
    top = {a.path for a in c.list_artifacts(run_id)}
    assert {"data_fingerprint.json", "training_summary.json", "feature_importances.json", "plots"} <= top
    assert {Path(a.path).name for a in c.list_artifacts(run_id, "plots")} == PLOTS
    for name in PLOTS:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"plots/{name}")
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fp = mlflow.artifacts.load_dict(f"runs:/{run_id}/data_fingerprint.json")
    labelled = load_labelled(life.storage, life.settings)
    assert fp["fingerprint"] == fingerprint(labelled)
    assert fp["fingerprint"]["n_rows"] == labelled.height and fp["fingerprint"]["start"].startswith(
        "2018-04-01"
    )
    assert set(fp["rows"]) == set(fp["frauds"]) == {"fit", "valid", "test"}
    assert c.get_run(run_id).data.tags["data.content_sha256"] == fp["fingerprint"]["content_sha256"]


def test_pyfunc_model_agrees_with_fraud_model(life: Life):
    uri = f"runs:/{life.runs['a']}/model"
    pyfunc = mlflow.pyfunc.load_model(uri)
    model = load_version(life.settings, 1)
    window = Window(life.settings, life.storage).test
    rows = window.select(model.feature_names).to_pandas()
    out = pyfunc.predict(rows)
    assert list(out.columns) == list(OUTPUTS)
    p, flag = model.predict(window)
    np.testing.assert_allclose(out["fraud_probability"].to_numpy(), p, rtol=1e-6)
    np.testing.assert_array_equal(out["is_fraud"].to_numpy(), flag.astype(np.int64))
    assert 0 < flag.sum() < len(flag)  # the threshold inside the model is used, not 0.5 on labels
    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.input_names() == model.feature_names
    assert signature.outputs.input_names() == list(OUTPUTS)


def test_registered_model_is_the_logged_one(life: Life):
    model = load_version(life.settings, 1)
    assert isinstance(model, FraudModel)
    threshold = client(life.settings).get_run(life.runs["a"]).data.params["threshold"]
    assert model.threshold == pytest.approx(float(threshold))


# ------------------------------------------------------------------------------------- register


def test_register_creates_a_challenger_version_with_lineage(life: Life):
    out = life.steps["register_1"]["value"]
    assert (out.model, out.version, out.alias, out.source_run_id) == (
        "creditcard-fraud-model",
        1,
        CHALLENGER,
        life.runs["a"],
    )
    assert life.steps["register_1"]["aliases"] == {CHALLENGER: 1}
    c = client(life.settings)
    mv = c.get_model_version("creditcard-fraud-model", "1")
    assert mv.run_id == life.runs["a"]  # lineage: the version points at the run that produced it
    run = c.get_run(life.runs["a"])
    assert mv.tags["fraudops.run_id"] == life.runs["a"]
    assert mv.tags[EXECUTION_TAG] == "exec-1"
    assert mv.tags["fraudops.threshold"] == run.data.params["threshold"]
    assert float(mv.tags["metric.average_precision"]) == pytest.approx(
        run.data.metrics["test_average_precision"]
    )
    assert mv.tags["data.content_sha256"] == run.data.tags["data.content_sha256"]
    assert run.data.tags[registry.REGISTERED_TAG] == "1"
    assert c.get_model_version("creditcard-fraud-model", "2").run_id == life.runs["b"]


def test_register_step_is_tracked(life: Life):
    c = client(life.settings)
    runs = c.search_runs([experiment_id(life.settings)], filter_string=f"tags.`{STEP_TAG}` = 'register'")
    assert sorted((r.data.params["version"], r.data.params["source_run_id"]) for r in runs) == [
        ("1", life.runs["a"]),
        ("2", life.runs["b"]),
    ]


def test_registering_the_same_run_twice_fails(life: Life):
    assert "already registered as version 1" in life.steps["register_1_again"]["value"]
    assert life.steps["register_1_again"]["aliases"] == {CHALLENGER: 1}


# ----------------------------------------------------------------------------- champion / challenger


def decision_run(life: Life, decision: Any) -> tuple[Any, dict[str, Any]]:
    run = client(life.settings).get_run(decision.run_id)
    return run, mlflow.artifacts.load_dict(f"runs:/{decision.run_id}/decision.json")


def test_first_model_passing_the_gate_becomes_champion(life: Life):
    step = life.steps["select_1"]
    d = step["value"]
    assert d.decision == "promoted"
    assert d.champion_version == 1 and d.challenger_version == 1 and d.previous_champion_version is None
    assert step["aliases"] == {CHAMPION: 1}  # challenger alias gone, no previous champion
    assert "no champion yet" in " ".join(d.reasons)
    assert d.window["test_end"] == "2018-05-21"  # the most recent labelled window
    _, logged = decision_run(life, d)
    assert logged["champion"] is None and logged["challenger"]["version"] == 1


def test_promotion_writes_the_monitoring_reference(life: Life):
    ref = life.steps["select_1"]["reference"]
    model = load_version(life.settings, 1)
    assert ref["version"] == 1 and ref["model"] == "creditcard-fraud-model"
    assert ref["threshold"] == model.threshold and ref["feature_names"] == model.feature_names
    _, logged = decision_run(life, life.steps["select_1"]["value"])
    assert ref["metrics"] == pytest.approx(logged["challenger"]["metrics"], nan_ok=True)
    # after the rollback the same version is champion again: the reference data are its scores on the
    # whole latest window (production data keeps known-compromised cards; the metrics leave them out)
    meta, frame = reference.read(life.storage, 1)
    window = Window(life.settings, life.storage)
    assert frame.height == window.whole.height == meta.reference_rows > window.test.height
    assert {*model.feature_names, "score", LABEL} <= set(frame.columns)
    assert meta.reference_end == str(window.whole["TX_DATETIME"].max())
    np.testing.assert_allclose(frame["score"].to_numpy(), model.predict_proba(window.whole))


def test_every_decision_is_recorded_with_its_reasons(life: Life):
    for name, kind in (
        ("select_1", "promoted"),
        ("select_2_tie", "rejected"),
        ("select_2_tie_no_min", "promoted"),
    ):
        d = life.steps[name]["value"]
        run, logged = decision_run(life, d)
        assert run.data.tags["decision"] == kind
        assert run.data.tags["decision.reasons"] == "; ".join(d.reasons)
        assert run.data.tags[STEP_TAG] == "select_champion"
        assert logged["decision"] == kind and logged["reasons"] == d.reasons
        assert "challenger.average_precision" in run.data.metrics
    c = client(life.settings)
    v2 = c.get_model_version("creditcard-fraud-model", "2")
    assert v2.tags["fraudops.decision"] == "promoted"  # the last decision about version 2
    assert "min_improvement 0.0" in v2.tags["fraudops.decision_reasons"]
    assert c.get_model_version("creditcard-fraud-model", "1").tags["fraudops.decision"] == "rolled_back_to"


def test_tied_challenger_is_rejected_and_nothing_moves(life: Life):
    step = life.steps["select_2_tie"]
    d = step["value"]
    assert d.decision == "rejected" and d.champion_version == 1
    _, logged = decision_run(life, d)
    ch, champ = logged["challenger"]["metrics"], logged["champion"]["metrics"]
    assert ch["average_precision"] == champ["average_precision"]  # same data, same seed: an exact tie
    assert step["aliases"] == {CHAMPION: 1, CHALLENGER: 2}
    assert step["reference"] == life.steps["register_2"]["reference"]  # not rewritten
    assert step["reference"]["version"] == 1


def test_tie_promotes_with_zero_min_improvement_and_keeps_the_previous_champion(life: Life):
    step = life.steps["select_2_tie_no_min"]
    assert step["value"].decision == "promoted"
    assert step["aliases"] == {CHAMPION: 2, PREVIOUS: 1}
    assert step["reference"]["version"] == 2


def test_rollback_swaps_champion_and_previous_and_rewrites_the_reference(life: Life):
    step = life.steps["rollback"]
    d = step["value"]
    assert d.decision == "rollback" and (d.champion_version, d.previous_champion_version) == (1, 2)
    assert step["aliases"] == {CHAMPION: 1, PREVIOUS: 2}
    assert step["reference"]["version"] == 1
    assert step["reference"]["written_at"] > life.steps["select_2_tie_no_min"]["reference"]["written_at"]
    run, logged = decision_run(life, d)
    assert run.data.tags[STEP_TAG] == "rollback" and logged["decision"] == "rollback"


def test_rollback_without_previous_champion_fails(life: Life):
    step = life.steps["rollback_without_previous"]
    assert "no 'previous_champion' version" in step["value"]
    assert step["aliases"] == {CHAMPION: 1}


def test_select_without_challenger_fails(life: Life):
    step = life.steps["select_without_challenger"]
    assert "no 'challenger' version" in step["value"]
    assert step["aliases"] == {CHAMPION: 1}


def test_describe_lists_versions_aliases_and_decisions(life: Life):
    info = registry.describe(life.settings)
    assert info["aliases"] == {CHAMPION: 1, PREVIOUS: 2}
    rows = {v["version"]: v for v in info["versions"]}
    assert set(rows) == {1, 2}
    assert rows[1]["aliases"] == CHAMPION and rows[2]["aliases"] == PREVIOUS
    assert rows[1]["run_id"] == life.runs["a"] and rows[2]["decision"] == "promoted"
    assert float(rows[1]["average_precision"]) > 0


# -------------------------------------------------------------------------------------- bad inputs


def test_failed_training_registers_nothing(life: Life):
    before = state(life.settings, life.storage)
    assert "fewer than train.min_frauds" in error_of(
        train_step, StepContext(with_train(life.settings, min_frauds=100_000), life.storage)
    )
    assert "outside the labelled data" in error_of(
        train_step, StepContext(with_train(life.settings, train_start=dt.date(2017, 1, 1)), life.storage)
    )
    assert state(life.settings, life.storage) == before


def other_workspace(life: Life, root: Path, frame: pl.DataFrame | None) -> tuple[Settings, Storage]:
    """A workspace with other data that tracks to the shared store."""
    settings, _ = init_workspace(str(root))
    settings = with_train(settings, xgboost=SMALL_XGB, n_jobs=1, train_days=14)
    settings.registry.tracking_uri = tracking_uri(life.settings)
    storage = Storage(settings.workspace)
    if frame is not None:
        write_days(storage, settings, frame)
    return settings, storage


def test_no_labelled_data_and_one_class_register_nothing(life: Life, tmp_path: Path):
    before = state(life.settings, life.storage)
    empty, empty_storage = other_workspace(life, tmp_path / "empty", None)
    assert "no labelled data" in error_of(train_step, StepContext(empty, empty_storage))
    one = simulate.simulate(SimulateConfig(n_customers=50, n_terminals=100, n_days=10))
    single, single_storage = other_workspace(
        life, tmp_path / "single", one.with_columns(pl.lit(0).alias(LABEL))
    )
    assert "one class only" in error_of(train_step, StepContext(single, single_storage))
    assert state(life.settings, life.storage) == before


def test_bad_registrations_change_nothing(life: Life):
    before = state(life.settings, life.storage)
    assert "not found" in error_of(register, life.settings, "0" * 32)
    decision_run_id = life.steps["rollback"]["value"].run_id
    assert "is not a train run" in error_of(register, life.settings, decision_run_id)
    handed = {"train": StepResult(run_id=life.runs["b"])}
    assert "already registered" in error_of(
        register_step, StepContext(life.settings, life.storage, handed=handed)
    )
    assert state(life.settings, life.storage) == before


def test_select_champion_failing_on_its_window_moves_no_alias(life: Life):
    before = state(life.settings, life.storage)
    c = client(life.settings)
    c.set_registered_model_alias("creditcard-fraud-model", CHALLENGER, "2")  # a challenger to judge
    try:
        moved = state(life.settings, life.storage)
        too_long = with_train(life.settings, train_days=400)
        assert "outside the labelled data" in error_of(
            select_champion_step, StepContext(too_long, life.storage)
        )
        assert state(life.settings, life.storage) == moved
    finally:
        c.delete_registered_model_alias("creditcard-fraud-model", CHALLENGER)
    assert state(life.settings, life.storage) == before


@pytest.mark.parametrize("step", ["train", "register", "select_champion", "rollback", "describe"])
def test_unreachable_tracking_server_is_a_clear_fast_error(life: Life, step: str):
    before = state(life.settings, life.storage)
    bad = with_registry(life.settings, tracking_uri=UNREACHABLE)
    handed = {"train": StepResult(run_id=life.runs["a"])}
    calls = {
        "train": lambda: train_step(StepContext(bad, life.storage)),
        "register": lambda: register_step(StepContext(bad, life.storage, handed=handed)),
        "select_champion": lambda: select_champion_step(StepContext(bad, life.storage)),
        "rollback": lambda: rollback(StepContext(bad, life.storage)),
        "describe": lambda: registry.describe(bad),
    }
    started = time.perf_counter()
    message = error_of(calls[step])
    assert f"MLflow tracking server {UNREACHABLE} cannot be reached" in message
    assert time.perf_counter() - started < 10
    assert state(life.settings, life.storage) == before


def test_register_never_creates_two_versions_for_one_run(life: Life, tmp_path: Path):
    """A version an interrupted registration created (killed before it tagged the run) is completed by
    the next attempt, not duplicated."""
    settings = with_train(life.settings)
    run_id = train_step(StepContext(settings, life.storage)).run_id
    tags = {registry.SOURCE_RUN_TAG: run_id}
    first = registry.create_version(settings, run_id, tags)  # what the killed attempt had done
    assert registry.REGISTERED_TAG not in client(settings).get_run(run_id).data.tags
    before = [v["version"] for v in registry.describe(settings)["versions"]]
    out = register_step(StepContext(settings, life.storage, handed={"train": StepResult(run_id=run_id)}))
    assert out.version == int(first.version)
    assert [v["version"] for v in registry.describe(settings)["versions"]] == before
    assert [int(v.version) for v in registry.versions_of_run(settings, run_id)] == [out.version]
    assert client(settings).get_run(run_id).data.tags[registry.REGISTERED_TAG] == str(out.version)
    assert registry.aliases(settings)[CHALLENGER] == out.version
    registry.set_alias(settings, CHALLENGER, None)  # leave the life's aliases as they were
