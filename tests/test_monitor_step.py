"""The monitor step end to end: outputs, decision, MLflow run, every current file, labels, both data kinds,
only data the champion never saw, bad input (a clear error and the previous outputs untouched), the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from fraudops import features
from fraudops.config import Settings, SimulateConfig
from fraudops.context import StepContext
from fraudops.data import simulate
from fraudops.data.loading import load_folder
from fraudops.data.schema import LABEL, SCENARIO, TX_TIME, to_file_columns
from fraudops.data.validation import validate
from fraudops.errors import DataValidationError, FraudopsError
from fraudops.modeling import evaluate
from fraudops.modeling.registry import champion
from fraudops.monitoring.decision import CSV_COLUMNS
from fraudops.monitoring.stats import drift_table
from fraudops.monitoring.step import MonitorResult
from fraudops.monitoring.step import monitor_step as run_monitor_step
from fraudops.promotion import reference
from fraudops.tracking.client import EXECUTION_TAG, STEP_TAG, client, experiment_id
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import (
    CURRENT,
    CURRENT_METRICS_JSON,
    DECISION_CSV,
    DECISION_JSON,
    DRIFT_CSV,
    MONITORING,
    PERFORMANCE_CSV,
    PROD_INPUTS,
    RAW,
    REFERENCE_METRICS_JSON,
    REPORT_HTML,
)
from fraudops.workspace.storage import Storage
from helpers import features_workspace, kaggle_like, open_ws, train_register_promote

START = dt.date(2018, 4, 1)
N_DAYS, TRAIN_DAYS = 70, 60  # data/raw/ holds the first 60 days; days 60.. are "production"
DRIFT_COLUMNS_FIRST = ["feature", "ks_statistic", "ks_pvalue", "psi", "wasserstein", "drift_detected"]
OUTPUT_FILES = {
    "drift/drift_metrics.csv",
    "metrics/performance_metrics.csv",
    "metrics/reference_metrics.json",
    "metrics/current_metrics.json",
    "metrics/estimated_performance.csv",
    "history/monitoring_history.parquet",
    "retraining_decision/retrain_decision.csv",
    "retraining_decision/retrain_decision.json",
    "report.html",
}


# ------------------------------------------------------------------------------------------ helpers


def monitor_step(settings: Settings, storage: Storage, **kw: Any) -> MonitorResult:
    return run_monitor_step(StepContext(settings, storage, **kw))


def _put(storage: Storage, folder: str, files: dict[str, pl.DataFrame | str]) -> None:
    """A folder holding exactly these files (frames by suffix, strings as text)."""
    storage.delete(folder, recursive=True)
    storage.makedirs(folder)
    for name, content in files.items():
        if isinstance(content, str):
            storage.write_text(f"{folder}/{name}", content)
        else:
            storage.write_frame(f"{folder}/{name}", content)


def _put_current(storage: Storage, files: dict[str, pl.DataFrame | str], prod: dict | None = None) -> None:
    """monitoring_inputs/current_data/ holding exactly these files, prod_inputs/ those of ``prod``."""
    _put(storage, CURRENT, files)
    _put(storage, PROD_INPUTS, prod or {})


def _outputs(storage: Storage) -> dict[str, tuple[bytes, int, int]]:
    """Every file under monitoring_outputs/ (hidden temporaries included): bytes, mtime, inode."""
    root = Path(storage.path(MONITORING))
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (p.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def _monitor_runs(settings: Settings) -> list[str]:
    runs = client(settings).search_runs(
        [experiment_id(settings)], filter_string=f"tags.`{STEP_TAG}` = 'monitor'"
    )
    return sorted(r.info.run_id for r in runs)


def _week(tx: dict[str, Any], which: str) -> dict[str, pl.DataFrame]:
    """The first 7 production days of the ``plain`` or ``drifted`` simulation, one Parquet file a day."""
    return {f"{day}.parquet": frame for day, frame in zip(tx["days"][:7], tx[which][:7], strict=True)}


def _decision_rows(storage: Storage) -> list[list[str]]:
    return list(csv.reader(io.StringIO(storage.read_text(DECISION_CSV))))


def _drift_reasons(reasons: list[str]) -> list[str]:
    return [r for r in reasons if r.startswith(("feature drift", "score drift"))]


def _rejected(settings: Settings, storage: Storage, error: type[Exception], *fragments: str) -> str:
    """monitor_step fails with ``error`` naming every fragment; outputs and MLflow runs are untouched."""
    before = _outputs(storage)
    runs = _monitor_runs(settings)
    with pytest.raises(error) as info:
        monitor_step(settings, storage)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    after = _outputs(storage)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], f"{name} was rewritten by a failed run"
    assert _monitor_runs(settings) == runs
    return msg


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Transactions kind: 60 simulated days in data/raw/ and a champion trained on them; the 10 days
    after, simulated twice from the same seed: as they were (``plain``) and with drift from day 60 on
    (``drifted``: amounts x 1.5 and night bursts). Before day 60 the two simulations are identical."""
    ws = tmp_path_factory.mktemp("tx") / "ws"
    ws.mkdir()
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    cfg = SimulateConfig(n_customers=300, n_terminals=600, n_days=N_DAYS)
    plain = list(simulate.iter_days(simulate.simulate(cfg)))
    drift_cfg = cfg.model_copy(update={"drift_start": START + dt.timedelta(days=TRAIN_DAYS)})
    drifted = list(simulate.iter_days(simulate.simulate(drift_cfg)))
    assert [d for d, _ in plain] == [d for d, _ in drifted]
    for day, frame in plain[:TRAIN_DAYS]:
        storage.write_frame(f"{RAW}/{day}.parquet", to_file_columns(frame, settings.data))
    train_register_promote(settings, storage)
    return {
        "ws": ws,
        "plain": [f for _, f in plain[TRAIN_DAYS:]],
        "drifted": [f for _, f in drifted[TRAIN_DAYS:]],
        "days": [d for d, _ in plain[TRAIN_DAYS:]],
    }


@pytest.fixture(scope="module")
def tx_baseline(tx: dict[str, Any]) -> dict[str, Any]:
    """One successful monitoring run, so that bad-input tests have previous outputs to protect."""
    settings, storage = open_ws(tx["ws"])
    _put_current(storage, {"a.parquet": tx["plain"][0], "b.parquet": tx["plain"][1]})
    out = monitor_step(settings, storage)
    assert set(_outputs(storage)) == OUTPUT_FILES
    return out


@pytest.fixture(scope="module")
def feat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Features kind (Kaggle-like columns): a labelled table in data/raw/ and a champion trained on it."""
    return {"ws": features_workspace(tmp_path_factory.mktemp("feat") / "ws")}


# --------------------------------------------------------------------------------- transactions kind


def _reference(settings: Settings, storage: Storage) -> tuple[reference.Reference, pl.DataFrame]:
    return reference.read(storage, champion(settings)[0])


def test_drifted_transactions_outputs_and_decision(tx):
    settings, storage = open_ws(tx["ws"])
    settings.monitor.min_frauds, settings.monitor.min_rows = (
        5,
        100,
    )  # small: few rows once known cards are out
    current = list(_week(tx, "drifted").values())
    _put_current(storage, _week(tx, "drifted"))

    out = monitor_step(settings, storage, execution_id="exec-monitor")

    version, model = champion(settings)
    meta, ref_data = _reference(settings, storage)
    assert set(_outputs(storage)) == OUTPUT_FILES  # nothing else, no temporary file left

    # decision: YES, for drift, in the CSV the seed's Lambda reads (rows[1][0]) and in the JSON
    assert out.retraining_required == "YES"
    assert _drift_reasons(out.reasons), out.reasons
    # the new fraud pattern costs precision: decay fires exactly when the numbers say so
    decayed = [r for r in out.reasons if r.startswith("performance decay: average precision")]
    tol = settings.monitor.ap_tolerance
    cur_ap, ref_ap = out.current_average_precision, meta.metrics["average_precision"]
    assert bool(decayed) == (cur_ap < ref_ap * (1 - tol) - 1e-4), (decayed, cur_ap, ref_ap)
    rows = _decision_rows(storage)
    assert len(rows) == 2
    assert rows[0] == list(CSV_COLUMNS) and rows[0][0] == "retraining_required"
    assert rows[1][0] == "YES"
    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["retraining_required"] == "YES"
    assert decision["reasons"] == out.reasons
    assert decision["model_version"] == version
    assert decision["n_rows"] == decision["n_labelled"] == sum(f.height for f in current)
    assert dt.datetime.fromisoformat(decision["monitored_at"]).tzinfo is not None
    assert decision["performance_status"] == out.performance_status == "ok"
    # the data judged and the reference, stated: the current week starts after the reference window
    assert decision["window_start"] == str(min(f[TX_TIME].min() for f in current))
    assert decision["window_end"] == str(max(f[TX_TIME].max() for f in current))
    assert (decision["reference_start"], decision["reference_end"]) == (
        meta.reference_start,
        meta.reference_end,
    )
    assert decision["reference_rows"] == meta.reference_rows == ref_data.height
    assert decision["window_start"] > decision["reference_end"]

    # drift table: every model feature, the step's numbers are drift_table's on the featured current data
    drift = storage.read_frame(DRIFT_CSV)
    assert drift.columns[:6] == DRIFT_COLUMNS_FIRST
    assert drift["feature"].to_list() == model.feature_names
    assert (out.n_drifted, out.n_features) == (drift["drift_detected"].sum(), drift.height)
    assert (
        decision["drifted_features"]
        == out.drifted_features
        == drift.filter("drift_detected")["feature"].to_list()
    )
    history = load_folder(storage, [RAW], settings.data, labelled_only=False)
    canonical = pl.concat([validate(f, settings.data, "x").valid for f in current])
    featured = features.features_for(canonical, history, settings.features)
    expected = drift_table(ref_data, featured, model.feature_names, settings.monitor)
    for col in ("ks_statistic", "ks_pvalue", "psi", "wasserstein"):
        np.testing.assert_allclose(drift[col].to_numpy(), expected[col].to_numpy(), rtol=1e-9)
    assert drift["drift_detected"].to_list() == expected["drift_detected"].to_list()
    assert "TX_AMOUNT" in decision["drifted_features"]  # amounts x 1.5

    # performance against the champion's held-out test metrics, not training metrics
    perf = storage.read_frame(PERFORMANCE_CSV)
    assert perf.columns == ["metric", "reference", "current", "change", "status"]
    assert {"average_precision", "roc_auc", "recall", "precision", "card_precision_at_100"} <= set(
        perf["metric"].to_list()
    )
    assert perf["status"].unique().to_list() == ["ok"]
    by_metric = {r["metric"]: r for r in perf.iter_rows(named=True)}
    # performance is judged as the champion's test was: cards already known to be compromised left out
    judged = evaluate.remove_known_compromised(
        featured.with_columns(pl.int_range(pl.len()).alias("_row")),
        history.filter(pl.col(LABEL).is_not_null()),
        settings.features.delay_days,
    )["_row"].to_numpy()
    assert 0 < len(judged) < featured.height
    scores = model.predict_proba(featured)[judged]
    ap = evaluate.average_precision(featured[LABEL].to_numpy()[judged], scores)
    assert by_metric["average_precision"]["current"] == pytest.approx(ap, rel=1e-9)
    assert by_metric["average_precision"]["reference"] == pytest.approx(meta.metrics["average_precision"])
    assert out.current_average_precision == pytest.approx(ap, abs=1e-9)
    ref_json = json.loads(storage.read_text(REFERENCE_METRICS_JSON))
    assert ref_json["model_version"] == version
    assert ref_json["metrics"]["average_precision"] == pytest.approx(meta.metrics["average_precision"])
    cur_json = json.loads(storage.read_text(CURRENT_METRICS_JSON))
    assert cur_json["performance"]["status"] == "ok"
    assert cur_json["performance"]["n_rows"] == len(judged)
    assert cur_json["score_drift"]["psi"] == pytest.approx(out.score_psi)
    for key in ("window_start", "window_end", "n_rows", "reference_start", "reference_end", "reference_rows"):
        assert cur_json[key] == decision[key]

    # the report: decision first, self-contained
    report = storage.read_text(REPORT_HTML)
    assert report.index("Retraining required: YES") < report.index("Per-feature drift")
    assert "Precision-recall (current data)" in report and "data:image/png;base64," in report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", report, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", report, re.IGNORECASE)
    assert out.report == storage.uri(REPORT_HTML) and out.decision_file == storage.uri(DECISION_CSV)
    assert "Data judged" in report and decision["window_start"] in report and meta.reference_end in report

    # the MLflow run
    run = client(settings).get_run(out.run_id)
    assert run.data.tags[STEP_TAG] == "monitor"
    assert run.data.tags[EXECUTION_TAG] == "exec-monitor"
    assert run.data.tags["retraining_required"] == "YES"
    assert "drift" in run.data.tags["reasons"]
    assert run.data.params["model_version"] == str(version)
    assert run.data.params["current_rows"] == str(decision["n_rows"])
    assert run.data.metrics["drift_share"] == pytest.approx(decision["drift_share"])
    assert run.data.metrics["current_average_precision"] == pytest.approx(ap)
    artifacts = {a.path for a in client(settings).list_artifacts(out.run_id)}
    logged = {"report.html", "drift_metrics.csv", "performance_metrics.csv", "retrain_decision.json"}
    assert logged <= artifacts

    tx["drifted_result"] = out  # for the no-drift comparison below (recomputed there if run alone)


def test_same_distribution_drifts_less(tx):
    settings, storage = open_ws(tx["ws"])
    if "drifted_result" not in tx:
        _put_current(storage, _week(tx, "drifted"))
        tx["drifted_result"] = monitor_step(settings, storage)
    _put_current(storage, _week(tx, "plain"))

    out = monitor_step(settings, storage)

    drifted = tx["drifted_result"]
    assert out.n_features == drifted.n_features
    assert out.n_drifted < drifted.n_drifted
    assert out.score_psi < drifted.score_psi
    # the reference is the whole test window, as production sees it (known-compromised cards kept), so
    # undrifted data raises no drift reason
    assert not _drift_reasons(out.reasons), out.reasons
    assert out.retraining_required == "NO"
    drift = storage.read_frame(DRIFT_CSV)
    # the amounts are not multiplied by 1.5 and no night bursts: the amount's PSI and the share of
    # night transactions barely move
    row = {r["feature"]: r for r in drift.iter_rows(named=True)}
    assert row["TX_AMOUNT"]["psi"] < 0.1
    assert not row["TX_DURING_NIGHT"]["drift_detected"]


def test_every_file_of_the_folder_is_read(tx):
    settings, storage = open_ws(tx["ws"])
    one, two = tx["plain"][2], tx["plain"][3]
    # the seed read only the first file; here a Parquet and a CSV file are both read
    _put_current(storage, {"one.parquet": one, "two.csv": two})

    out = monitor_step(settings, storage)

    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["n_rows"] == one.height + two.height
    cur = json.loads(storage.read_text(CURRENT_METRICS_JSON))
    assert cur["score_drift"]["n_cur"] == one.height + two.height
    assert client(settings).get_run(out.run_id).data.params["current_rows"] == str(one.height + two.height)


def test_unlabelled_current_data(tx):
    settings, storage = open_ws(tx["ws"])
    frames = [f.drop(LABEL, SCENARIO) for f in tx["plain"][:3]]
    _put_current(storage, {f"u{i}.parquet": f for i, f in enumerate(frames)})

    out = monitor_step(settings, storage)

    assert out.performance_status == "no labelled data"
    assert out.current_average_precision is None and out.n_labelled == 0
    assert not [r for r in out.reasons if r.startswith("performance")]
    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["n_rows"] == sum(f.height for f in frames)
    assert any("no labelled current data" in n for n in decision["notes"]), decision["notes"]
    perf = storage.read_frame(PERFORMANCE_CSV)
    assert perf["status"].unique().to_list() == ["no labelled data"]
    assert perf["current"].is_null().all() or perf["current"].is_nan().all()
    assert json.loads(storage.read_text(CURRENT_METRICS_JSON))["performance"] is None
    assert "Precision-recall (current data)" not in storage.read_text(REPORT_HTML)


def test_too_few_labelled_rows_is_insufficient_data(tx):
    settings, storage = open_ws(tx["ws"])
    # labels arrive late: only the first day is labelled (fewer than monitor.min_rows = 1000 rows)
    labelled = tx["plain"][0]
    unlabelled = [f.drop(LABEL, SCENARIO) for f in tx["plain"][1:3]]
    assert labelled.height < settings.monitor.min_rows
    _put_current(storage, {"l.parquet": labelled, "u1.parquet": unlabelled[0], "u2.csv": unlabelled[1]})

    out = monitor_step(settings, storage)

    assert out.performance_status == "insufficient data"
    assert not [r for r in out.reasons if r.startswith("performance")]
    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["performance_status"] == "insufficient data"
    assert any("insufficient data" in n for n in decision["notes"]), decision["notes"]
    assert decision["n_rows"] == labelled.height + sum(f.height for f in unlabelled)
    perf = json.loads(storage.read_text(CURRENT_METRICS_JSON))["performance"]
    assert 0 < perf["n_rows"] <= labelled.height  # known-compromised cards are left out
    assert perf["n_unlabelled"] == sum(f.height for f in unlabelled)
    assert storage.read_frame(PERFORMANCE_CSV)["status"].unique().to_list() == ["insufficient data"]


# ------------------------------------------------------------------------------------ features kind


def test_features_kind(feat):
    settings, storage = open_ws(feat["ws"])
    _, model = champion(settings)

    _put_current(storage, {"shifted.csv": kaggle_like(2000, 1, start=1e6, shift=1.5)})
    out = monitor_step(settings, storage)

    assert out.retraining_required == "YES"
    assert any(r.startswith("feature drift") for r in out.reasons), out.reasons
    assert _decision_rows(storage)[1][0] == "YES"
    drift = storage.read_frame(DRIFT_CSV)
    assert drift.columns[:6] == DRIFT_COLUMNS_FIRST
    assert drift["feature"].to_list() == model.feature_names == [f"V{i}" for i in range(1, 29)] + ["Amount"]
    flagged = set(drift.filter("drift_detected")["feature"].to_list())
    assert {f"V{i}" for i in range(1, 13)} <= flagged
    assert out.performance_status == "ok"
    assert set(_outputs(storage)) == OUTPUT_FILES

    # the same distribution, in two files (one unlabelled): no drift reason
    same = kaggle_like(3000, 2, start=2e6)
    _put_current(storage, {"a.csv": same.head(2000), "b.parquet": same.tail(1000).drop("Class")})
    out = monitor_step(settings, storage)
    assert not _drift_reasons(out.reasons), out.reasons
    assert out.n_drifted < len(flagged)
    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["n_rows"] == 3000
    assert json.loads(storage.read_text(CURRENT_METRICS_JSON))["performance"]["n_rows"] == 2000


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing column", ["bad.csv", "column 'V7': missing column"]),
        ("extra column", ["bad.csv", "column 'Merchant': unexpected column"]),
        ("not a number", ["bad.csv", "column 'V3': not a number", "'abc'"]),
    ],
)
def test_features_kind_bad_input(feat, case, fragments):
    settings, storage = open_ws(feat["ws"])
    good = kaggle_like(300, 3, start=3e6)
    if not storage.exists(DECISION_CSV):
        _put_current(storage, {"good.csv": good})
        monitor_step(settings, storage)
    bad = {
        "missing column": good.drop("V7"),
        "extra column": good.with_columns(pl.lit(1.0).alias("Merchant")),
        "not a number": good.cast({"V3": pl.String}).with_columns(
            pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("abc")).otherwise(pl.col("V3")).alias("V3")
        ),
    }[case]
    _put_current(storage, {"good.csv": good, "bad.csv": bad})
    _rejected(settings, storage, DataValidationError, *fragments)


# ---------------------------------------------------------------------------------------- bad input


def _day_csv_with(frame: pl.DataFrame, column: str, row: int, value: str) -> pl.DataFrame:
    text = frame.cast({column: pl.String})
    return text.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )


BAD_INPUTS: dict[str, tuple[Any, type[Exception], list[str]]] = {
    # case: (current files from a good day frame, error, fragments of the message)
    "header-only csv": (
        lambda good: {"good.parquet": good, "empty.csv": ",".join(good.columns) + "\n"},
        DataValidationError,
        ["empty.csv: empty file"],
    ),
    "zero-row parquet": (
        lambda good: {"good.parquet": good, "empty.parquet": good.head(0)},
        DataValidationError,
        ["empty.parquet: empty file"],
    ),
    "zero-byte file": (
        lambda good: {"good.parquet": good, "blank.csv": ""},
        DataValidationError,
        ["blank.csv", "cannot be read"],
    ),
    "unknown extension": (
        lambda good: {"good.parquet": good, "notes.txt": "hello"},
        DataValidationError,
        ["notes.txt: unknown file type"],
    ),
    "missing column": (
        lambda good: {"good.parquet": good, "bad.parquet": good.drop("TERMINAL_ID")},
        DataValidationError,
        ["bad.parquet", "column 'TERMINAL_ID': missing column"],
    ),
    "extra column": (
        lambda good: {"bad.parquet": good.with_columns(pl.lit("m1").alias("MERCHANT"))},
        DataValidationError,
        ["bad.parquet", "column 'MERCHANT': unexpected column"],
    ),
    "unparseable amount": (
        lambda good: {"good.parquet": good, "bad.csv": _day_csv_with(good, "TX_AMOUNT", 5, "abc")},
        DataValidationError,
        ["bad.csv", "column 'TX_AMOUNT': not a number", "'abc'"],
    ),
    "unparseable timestamp": (
        lambda good: {"bad.csv": _day_csv_with(good, "TX_DATETIME", 2, "yesterday")},
        DataValidationError,
        ["bad.csv", "column 'TX_DATETIME': unparseable timestamp", "'yesterday'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_current_data(tx, tx_baseline, case):
    settings, storage = open_ws(tx["ws"])
    build, error, fragments = BAD_INPUTS[case]
    _put_current(storage, build(tx["plain"][4]))
    _rejected(settings, storage, error, *fragments)


def test_missing_reference(tx, tx_baseline):
    settings, storage = open_ws(tx["ws"])
    _put_current(storage, {"good.parquet": tx["plain"][4]})
    version = champion(settings)[0]
    meta_file = Path(storage.path(f"{reference.folder(version)}/{reference.META}"))
    moved = meta_file.with_name("moved-away.bin")
    meta_file.rename(moved)
    try:
        _rejected(
            settings,
            storage,
            FraudopsError,
            f"no monitoring reference for champion version {version}",
            reference.folder(version),
            "select_champion",
        )
    finally:
        moved.rename(meta_file)


def test_no_champion_yet(tmp_path, tx):
    settings, _ = init_workspace(str(tmp_path / "ws"))
    storage = Storage(settings.workspace)
    _put_current(storage, {"good.parquet": tx["plain"][4]})
    with pytest.raises(FraudopsError, match="no champion yet: run select_champion"):
        monitor_step(settings, storage)
    assert _outputs(storage) == {}


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_monitor(request):
    from typer.testing import CliRunner

    from fraudops.cli import build

    app = build()
    tx = request.getfixturevalue("tx")
    request.getfixturevalue("tx_baseline")  # previous outputs, which the failing run must leave alone
    _, storage = open_ws(tx["ws"])
    _put_current(storage, {"d.parquet": tx["drifted"][5], "e.parquet": tx["drifted"][6]})
    result = CliRunner().invoke(app, ["monitor", "-w", str(tx["ws"])])
    assert result.exit_code == 0, result.output
    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["n_rows"] == tx["drifted"][5].height + tx["drifted"][6].height
    assert decision["retraining_required"] in result.output

    before = _outputs(storage)
    _put_current(storage, {"d.parquet": tx["drifted"][5], "notes.txt": "hello"})
    result = CliRunner().invoke(app, ["monitor", "-w", str(tx["ws"])])
    assert result.exit_code == 1, result.output
    assert "notes.txt" in result.output
    assert _outputs(storage) == before


# ------------------------------------------------------------------------- only data the champion never saw


def test_rows_the_champion_was_trained_on_are_not_judged(tx, tx_baseline):
    """Current data overlapping the training period: only the rows after the reference window count."""
    settings, storage = open_ws(tx["ws"])
    settings.monitor.min_rows = 100
    meta, _ = _reference(settings, storage)
    new = tx["plain"][:2]
    # the last week of data/raw/ (the champion's test window) and one more day, copied into current_data/
    seen = [pl.read_parquet(tx["ws"] / RAW / f"{day}.parquet") for day in _raw_days(tx)[-8:]]
    _put_current(
        storage, {**{f"old{i}.parquet": f for i, f in enumerate(seen)}, "new0.parquet": new[0]}, prod={}
    )
    out = monitor_step(settings, storage)
    assert out.n_rows == new[0].height  # the old rows left out
    assert out.window_start > meta.reference_end
    decision = json.loads(storage.read_text(DECISION_JSON))
    assert decision["n_rows"] == new[0].height


def test_nothing_newer_is_insufficient_data_never_ok(tx, tx_baseline):
    settings, storage = open_ws(tx["ws"])
    seen = [pl.read_parquet(tx["ws"] / RAW / f"{day}.parquet") for day in _raw_days(tx)[-7:]]
    _put_current(storage, {f"old{i}.parquet": f for i, f in enumerate(seen)})
    out = monitor_step(settings, storage)
    assert out.retraining_required == "NO" and out.status == "insufficient data"
    assert out.performance_status == "insufficient data"
    assert out.n_rows == 0 and out.window_start is None
    assert len(out.reasons) == 1 and out.reasons[0].startswith("insufficient data: 0 current rows after")
    rows = _decision_rows(storage)
    record = dict(zip(rows[0], rows[1], strict=True))
    assert record["retraining_required"] == "NO" and record["reasons"].startswith("insufficient data")
    assert record["status"] == "insufficient data" and record["n_rows"] == "0"
    assert "Retraining required: NO" in storage.read_text(REPORT_HTML)
    # an empty folder (and no production inputs) too: NO, insufficient data, not an error
    _put_current(storage, {})
    out = monitor_step(settings, storage)
    assert out.status == "insufficient data" and out.retraining_required == "NO"


def test_production_inputs_count_for_drift(tx, tx_baseline):
    """Unlabelled batches in prod_inputs/ newer than the reference are compared too (performance is not)."""
    settings, storage = open_ws(tx["ws"])
    batch = pl.concat(tx["drifted"][2:6]).drop(LABEL, SCENARIO)
    _put_current(storage, {}, prod={"batch.parquet": batch})
    out = monitor_step(settings, storage)
    assert out.n_rows == batch.height and out.n_labelled == 0
    assert out.performance_status == "no labelled data"
    assert out.retraining_required == "YES" and _drift_reasons(out.reasons)
    # a row both in current_data/ (labelled) and in prod_inputs/ counts once, as the labelled one
    labelled = pl.concat(tx["drifted"][2:4])
    _put_current(storage, {"l.parquet": labelled}, prod={"batch.parquet": batch})
    out = monitor_step(settings, storage)
    assert out.n_rows == batch.height and out.n_labelled == labelled.height


def test_features_kind_judges_only_rows_it_has_not_seen(feat):
    settings, storage = open_ws(feat["ws"])
    trained_on = kaggle_like(4000, 0)  # what data/raw/ holds
    _put_current(storage, {"seen.csv": trained_on.head(2500)})
    out = monitor_step(settings, storage)
    assert out.status == "insufficient data" and out.n_rows == 0 and out.retraining_required == "NO"
    fresh = kaggle_like(1500, 9)
    _put_current(storage, {"seen.csv": trained_on.head(2500), "fresh.csv": fresh})
    out = monitor_step(settings, storage)
    assert out.status == "ok" and out.n_rows == fresh.height


def _raw_days(tx: dict[str, Any]) -> list[dt.date]:
    return sorted(dt.date.fromisoformat(p.stem) for p in (tx["ws"] / RAW).glob("*.parquet"))
