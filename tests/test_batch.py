"""Batch inference: naming, columns, predictions, chunked CSV, rejects, fail mode, re-runs and errors."""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraudops import features
from fraudops.batch import scoring
from fraudops.batch.scoring import OUTPUT_COLUMNS, output_name, rejects_name
from fraudops.batch.step import BatchError, peer_history
from fraudops.batch.step import batch_step as run_batch_step
from fraudops.config import Settings, SimulateConfig
from fraudops.context import StepContext
from fraudops.data import simulate
from fraudops.data.loading import load_history
from fraudops.data.schema import LABEL, SCENARIO, to_file_columns
from fraudops.data.validation import validate
from fraudops.errors import DataValidationError, FraudopsError
from fraudops.modeling.registry import load_version
from fraudops.tracking import registry
from fraudops.tracking.client import EXECUTION_TAG, STEP_TAG, client
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import PREDICTIONS, PROD_INPUTS, RAW
from fraudops.workspace.storage import Storage
from helpers import features_workspace, kaggle_like, open_ws, train_register_promote

KAGGLE_FEATURES = [f"V{i}" for i in range(1, 29)] + ["Amount"]


@pytest.fixture(scope="module")
def tx_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Transactions kind: 67 simulated days in data/raw/, the last 3 kept back (unlabelled) to score."""
    ws = tmp_path_factory.mktemp("tx") / "ws"
    ws.mkdir()
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    df = simulate.simulate(SimulateConfig(n_customers=300, n_terminals=600, n_days=70))
    days = list(simulate.iter_days(df))
    for day, frame in days[:-3]:
        storage.write_frame(f"{RAW}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
    train_register_promote(settings, storage)
    held_out = {day: frame.drop(LABEL, SCENARIO) for day, frame in days[-3:]}
    return {"ws": ws, "days": held_out}


@pytest.fixture(scope="module")
def feat_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Features kind (Kaggle-like columns): a labelled table in data/raw/, a champion trained on it."""
    return {"ws": features_workspace(tmp_path_factory.mktemp("feat") / "ws")}


def _fresh(ws: Path) -> tuple[Settings, Storage]:
    """The workspace with empty prod_inputs/ and prod_outputs/predictions/."""
    settings, storage = open_ws(ws)
    for folder in (PROD_INPUTS, PREDICTIONS):
        storage.delete(folder, recursive=True)
        storage.makedirs(folder)
    return settings, storage


def _champion(settings: Settings) -> tuple[int, Any]:
    version = int(registry.version_by_alias(settings, registry.CHAMPION).version)
    return version, load_version(settings, version)


def batch_step(settings: Settings, storage: Storage, **kw: Any) -> dict[str, Any]:
    """The step on a context; its typed result as the JSON the history stores."""
    return run_batch_step(StepContext(settings, storage, **kw)).model_dump()


def _listing(storage: Storage, folder: str = PREDICTIONS) -> list[str]:
    """Every name in a folder, hidden (temporary) ones included."""
    return sorted(posixpath.basename(p) for p in storage.fs.ls(storage.path(folder), detail=False))


# ------------------------------------------------------------------------------------------- naming


def test_output_and_rejects_names():
    assert output_name("prod_inputs/batch_input.csv") == "prod_outputs/predictions/batch_input.out.csv"
    assert output_name("prod_inputs/day.2018.parquet") == "prod_outputs/predictions/day.2018.out.parquet"
    assert (
        rejects_name("prod_inputs/batch_input.csv") == "prod_outputs/predictions/batch_input.csv.rejects.csv"
    )
    assert rejects_name("prod_inputs/x.parquet") != rejects_name("prod_inputs/x.csv")


# ------------------------------------------------------------------------------------ transactions


def test_transactions_outputs_columns_and_predictions(tx_ws):
    settings, storage = _fresh(tx_ws["ws"])
    (d1, f1), (d2, f2) = list(tx_ws["days"].items())[:2]
    storage.write_frame(f"{PROD_INPUTS}/{d1}.parquet", f1)
    storage.write_frame(f"{PROD_INPUTS}/{d2}.csv", f2)

    out = batch_step(settings, storage)

    version, model = _champion(settings)
    assert out["model_version"] == version
    assert [f["input"] for f in out["files"]] == [f"{PROD_INPUTS}/{d1}.parquet", f"{PROD_INPUTS}/{d2}.csv"]
    assert [f["output"] for f in out["files"]] == [
        f"{PREDICTIONS}/{d1}.out.parquet",
        f"{PREDICTIONS}/{d2}.out.csv",
    ]
    assert _listing(storage) == sorted([f"{d2}.out.csv", f"{d1}.out.parquet"])
    assert out["totals"]["rows_scored"] == f1.height + f2.height
    assert out["totals"]["rows_rejected"] == 0
    assert out["totals"]["rows_flagged"] == sum(f["flagged"] for f in out["files"])
    for f in out["files"]:
        assert set(f) >= {"input", "output", "rows", "flagged", "rejected"}

    history = load_history(storage, settings)
    canonical = {day: validate(frame, settings.data, "x").valid for day, frame in ((d1, f1), (d2, f2))}
    for (day, frame), suffix, other in (((d1, f1), ".parquet", d2), ((d2, f2), ".csv", d1)):
        result = storage.read_frame(f"{PREDICTIONS}/{day}.out{suffix}")
        inputs = [c for c in frame.columns if c != "TRANSACTION_ID"]
        assert result.columns == ["TRANSACTION_ID", *inputs, *OUTPUT_COLUMNS]
        assert result.height == frame.height
        assert result["TRANSACTION_ID"].to_list() == frame["TRANSACTION_ID"].to_list()
        assert result["model_version"].unique().to_list() == [version]
        assert result["scored_at"].n_unique() == 1
        # the same numbers as the model on the same rows, features over the history and the other file
        seen = pl.concat([history, canonical[other]], how="diagonal_relaxed")
        expected = model.predict_proba(features.features_for(canonical[day], seen, settings.features))
        np.testing.assert_allclose(result["fraud_probability"].to_numpy(), expected, rtol=1e-6, atol=1e-7)
        assert (result["is_fraud"].to_numpy() == (expected >= model.threshold)).all()
        alone = model.predict_proba(features.features_for(canonical[day], history, settings.features))
        # the second day's cards and terminals have the first day's transactions in their windows
        assert (np.abs(alone - expected) > 1e-6).any() == (day == d2)
    assert dt.datetime.fromisoformat(out["scored_at"]).tzinfo is not None


def test_a_repeated_id_is_the_later_files_row_and_a_failed_file_is_no_history(tx_ws):
    settings, storage = _fresh(tx_ws["ws"])
    (d1, f1), (d2, f2), (d3, f3) = list(tx_ws["days"].items())
    corrected = f1.head(50).with_columns(pl.col("TX_AMOUNT") * 3)  # resent later with other amounts
    storage.write_frame(f"{PROD_INPUTS}/{d1}.parquet", f1)
    storage.write_frame(f"{PROD_INPUTS}/{d2}.parquet", f2)
    storage.write_frame(f"{PROD_INPUTS}/{d2}.zz-corrections.parquet", corrected)
    storage.write_frame(f"{PROD_INPUTS}/{d3}.parquet", f3.drop("TERMINAL_ID"))  # fails: no terminal

    with pytest.raises(BatchError) as failed:
        run_batch_step(StepContext(settings, storage))
    out = failed.value.result.model_dump()

    assert list(out["failed"]) == [f"{PROD_INPUTS}/{d3}.parquet"]
    _, model = _champion(settings)
    peers = peer_history(storage.ls(PROD_INPUTS), storage, model, settings, None)
    assert peers is not None and peers["TRANSACTION_ID"].is_unique().all()
    assert peers.height == f1.height + f2.height  # the failed file's rows are no one's history
    kept = peers.filter(pl.col("TRANSACTION_ID").is_in(corrected["TRANSACTION_ID"].implode()))
    assert kept["TX_AMOUNT"].to_list() == corrected["TX_AMOUNT"].to_list()
    history = load_history(storage, settings)
    resent = pl.col("TRANSACTION_ID").is_in(corrected["TRANSACTION_ID"].implode())

    def scores_seeing(first_day: pl.DataFrame) -> np.ndarray:
        seen = pl.concat([history, validate(first_day, settings.data, "x").valid], how="diagonal_relaxed")
        new = validate(f2, settings.data, "x").valid
        return model.predict_proba(features.features_for(new, seen, settings.features))

    expected = scores_seeing(pl.concat([f1.filter(~resent), corrected]))
    result = storage.read_frame(f"{PREDICTIONS}/{d2}.out.parquet")["fraud_probability"].to_numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(result - scores_seeing(f1)).max() > 1e-6  # the corrected amounts made a difference


def test_transactions_rejects_and_join_columns(tx_ws):
    settings, storage = _fresh(tx_ws["ws"])
    settings.batch.join_columns = ["TX_AMOUNT"]
    day, frame = next(iter(tx_ws["days"].items()))
    broken = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(-5.0).otherwise(pl.col("TX_AMOUNT")).alias("TX_AMOUNT"),
        pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("CUSTOMER_ID")).alias("CUSTOMER_ID"),
    )
    storage.write_frame(f"{PROD_INPUTS}/{day}.parquet", broken)

    out = batch_step(settings, storage)

    f = out["files"][0]
    assert (f["rows"], f["rejected"]) == (frame.height - 2, 2)
    assert f["rejects"] == f"{PREDICTIONS}/{day}.parquet.rejects.csv"
    rejects = storage.read_frame(f["rejects"])
    assert rejects["row_number"].to_list() == [3, 7]
    assert rejects["TRANSACTION_ID"].to_list() == frame["TRANSACTION_ID"].gather([3, 7]).to_list()
    assert rejects["reason"].to_list() == ["TX_AMOUNT: negative amount", "CUSTOMER_ID: missing id"]
    result = storage.read_frame(f["output"])
    assert result.columns == ["TRANSACTION_ID", "TX_AMOUNT", *OUTPUT_COLUMNS]
    assert result.height == frame.height - 2


def test_fractional_customer_ids_are_rejected_whole_float_ids_match_history(tx_ws):
    """Found: a float CUSTOMER_ID with fractions was scored with no history, silently wrong."""
    settings, storage = _fresh(tx_ws["ws"])
    day, frame = next(iter(tx_ws["days"].items()))
    storage.write_frame(f"{PROD_INPUTS}/{day}.parquet", frame)
    as_ints = batch_step(settings, storage)["files"][0]
    expected = storage.read_frame(as_ints["output"])

    floats = frame.with_columns(pl.col("CUSTOMER_ID").cast(pl.Float64))
    floats = floats.with_columns(
        pl.when(pl.int_range(pl.len()) == 4)
        .then(pl.col("CUSTOMER_ID") + 0.5)
        .otherwise(pl.col("CUSTOMER_ID"))
        .alias("CUSTOMER_ID")
    )
    storage.write_frame(f"{PROD_INPUTS}/{day}.parquet", floats)
    f = batch_step(settings, storage)["files"][0]

    assert (f["rows"], f["rejected"]) == (frame.height - 1, 1)
    rejects = storage.read_frame(f["rejects"])
    assert rejects["row_number"].to_list() == [4]
    assert rejects["reason"].to_list() == ["CUSTOMER_ID: not a whole number (ids are integers or text)"]
    # whole-number float ids are the integer ids: the same history, the same scores
    result = storage.read_frame(f["output"])
    kept = expected.filter(pl.col("TRANSACTION_ID") != frame["TRANSACTION_ID"][4])
    np.testing.assert_allclose(result["fraud_probability"].to_numpy(), kept["fraud_probability"].to_numpy())


# ---------------------------------------------------------------------------------------- features


def _put_csv(storage: Storage, name: str, df: pl.DataFrame) -> str:
    rel = f"{PROD_INPUTS}/{name}"
    storage.write_frame(rel, df)
    return rel


def test_features_csv_chunked_one_header_and_predictions(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.chunk_rows = 7
    df = kaggle_like(53, 1, start=1e6).drop("Class")
    _put_csv(storage, "batch_input.csv", df)

    out = batch_step(settings, storage)

    text = storage.read_text(f"{PREDICTIONS}/batch_input.out.csv")
    lines = text.splitlines()
    header = lines[0]
    assert header.split(",") == ["row_number", *df.columns, *OUTPUT_COLUMNS]
    assert lines.count(header) == 1
    assert len(lines) == 1 + df.height
    result = storage.read_frame(f"{PREDICTIONS}/batch_input.out.csv")
    assert result["row_number"].to_list() == list(range(df.height))
    _, model = _champion(settings)
    expected = model.predict_proba(df)
    np.testing.assert_allclose(result["fraud_probability"].to_numpy(), expected, rtol=1e-6, atol=1e-7)
    assert result["is_fraud"].to_list() == (expected >= model.threshold).astype(int).tolist()
    assert out["files"][0]["rows"] == df.height
    # input values are copied verbatim: the CSV text of V1 is unchanged
    source = storage.read_text(f"{PROD_INPUTS}/batch_input.csv").splitlines()
    assert [row.split(",")[2] for row in source[1:]] == [row.split(",")[3] for row in lines[1:]]


def test_features_parquet_streams_row_groups(feat_ws, monkeypatch):
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.chunk_rows = 16
    settings.batch.join_columns = ["Amount", "Time"]
    df = kaggle_like(100, 2, start=5e5)
    pq.write_table(df.to_arrow(), storage.path(f"{PROD_INPUTS}/big.parquet"), row_group_size=30)
    seen: list[int] = []
    real = scoring.pl.from_arrow

    def spy(batch_, *a, **kw):
        seen.append(batch_.num_rows)
        return real(batch_, *a, **kw)

    monkeypatch.setattr(scoring.pl, "from_arrow", spy)
    progress: list[tuple[str, int, int | None]] = []
    out = batch_step(settings, storage, progress=lambda *a: progress.append(a))

    assert max(seen) <= 16 and sum(seen) == df.height  # never the whole file at once
    assert progress[-1] == (f"{PROD_INPUTS}/big.parquet", df.height, df.height)
    result = pl.read_parquet(storage.path(f"{PREDICTIONS}/big.out.parquet"))
    assert result.columns == ["row_number", "Amount", "Time", *OUTPUT_COLUMNS]
    assert result.schema["scored_at"] == pl.Datetime("us", "UTC")
    _, model = _champion(settings)
    np.testing.assert_allclose(result["fraud_probability"].to_numpy(), model.predict_proba(df), rtol=1e-6)
    assert out["totals"]["rows_scored"] == df.height
    assert pq.ParquetFile(storage.path(f"{PREDICTIONS}/big.out.parquet")).metadata.num_row_groups > 1


def _with_bad_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Text columns with a non-number (row 2), a missing value (row 9) and a negative amount (row 20)."""
    text = df.cast(pl.String)
    i = pl.int_range(pl.len())
    return text.with_columns(
        pl.when(i == 2).then(pl.lit("abc")).otherwise(pl.col("V3")).alias("V3"),
        pl.when(i == 9).then(None).otherwise(pl.col("V5")).alias("V5"),
        pl.when(i == 20).then(pl.lit("-1.5")).otherwise(pl.col("Amount")).alias("Amount"),
    )


def test_features_rejects_file(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.chunk_rows = 8
    df = kaggle_like(30, 3, start=2e6).drop("Class")
    _put_csv(storage, "b.csv", _with_bad_rows(df))

    out = batch_step(settings, storage)

    f = out["files"][0]
    assert (f["rows"], f["rejected"]) == (27, 3)
    rejects = storage.read_frame(f"{PREDICTIONS}/b.csv.rejects.csv", columns=None)
    assert rejects.columns == ["row_number", *df.columns, "reason"]
    assert rejects["row_number"].to_list() == [2, 9, 20]
    assert rejects["reason"].to_list() == ["V3: not a number", "V5: missing value", "Amount: negative amount"]
    assert rejects["V3"].cast(pl.String).to_list()[0] == "abc"
    result = storage.read_frame(f"{PREDICTIONS}/b.out.csv")
    assert result["row_number"].to_list() == [i for i in range(30) if i not in (2, 9, 20)]
    _, model = _champion(settings)
    good = df.filter(~pl.int_range(pl.len()).is_in([2, 9, 20]))
    np.testing.assert_allclose(result["fraud_probability"].to_numpy(), model.predict_proba(good), rtol=1e-6)

    # the next run finds none: the stale rejects file goes
    _put_csv(storage, "b.csv", df)
    out = batch_step(settings, storage)
    assert out["files"][0]["rejected"] == 0 and out["files"][0]["rejects"] is None
    assert _listing(storage) == ["b.out.csv"]


def test_fail_mode_writes_nothing_for_the_file(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.on_invalid = "fail"
    settings.batch.chunk_rows = 8
    df = kaggle_like(30, 4, start=3e6).drop("Class")
    _put_csv(storage, "bad.csv", _with_bad_rows(df))
    _put_csv(storage, "good.csv", df)

    with pytest.raises(BatchError) as info:
        batch_step(settings, storage)

    msg = str(info.value)
    assert "1 of 2 files" in msg and "bad.csv" in msg
    assert "column 'V3': not a number (first at row 2" in msg and "'abc'" in msg
    assert "column 'V5': missing value" in msg and "column 'Amount': negative amount" in msg
    assert "(1 rows" in msg
    assert _listing(storage) == ["good.out.csv"]  # nothing for bad.csv, no temporary file left
    assert [f["input"] for f in info.value.result.model_dump()["files"]] == [f"{PROD_INPUTS}/good.csv"]
    assert f"{PROD_INPUTS}/bad.csv" in info.value.result.failed


def test_rerun_replaces_outputs(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.chunk_rows = 10
    df = kaggle_like(45, 5, start=4e6)
    _put_csv(storage, "a.csv", df)
    pq.write_table(df.to_arrow(), storage.path(f"{PROD_INPUTS}/a.parquet"), row_group_size=20)

    batch_step(settings, storage)
    first = {n: storage.read_frame(f"{PREDICTIONS}/{n}") for n in ("a.out.csv", "a.out.parquet")}
    batch_step(settings, storage)
    again = {n: storage.read_frame(f"{PREDICTIONS}/{n}") for n in ("a.out.csv", "a.out.parquet")}

    assert _listing(storage) == ["a.out.csv", "a.out.parquet"]
    for name in first:
        assert again[name].height == df.height
        assert again[name].drop("scored_at").equals(first[name].drop("scored_at"))
        assert again[name]["scored_at"][0] != first[name]["scored_at"][0]


def test_failed_rerun_keeps_previous_output(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    df = kaggle_like(20, 6, start=5e6)
    _put_csv(storage, "c.csv", df)
    batch_step(settings, storage)
    before = storage.read_bytes(f"{PREDICTIONS}/c.out.csv")
    _put_csv(storage, "c.csv", df.drop("V7"))
    with pytest.raises(BatchError, match="column 'V7': missing column"):
        batch_step(settings, storage)
    assert storage.read_bytes(f"{PREDICTIONS}/c.out.csv") == before
    assert _listing(storage) == ["c.out.csv"]


def test_a_file_with_no_valid_row_fails_the_step(feat_ws):
    """Found: a file whose every row was rejected was reported as scored (step SUCCEEDED, exit 0)."""
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.chunk_rows = 4
    df = kaggle_like(10, 13, start=6e6).drop("Class")
    _put_csv(storage, "all_bad.csv", df.with_columns(pl.lit("abc").alias("V3")))
    _put_csv(storage, "good.csv", df)

    with pytest.raises(BatchError) as info:
        batch_step(settings, storage)

    msg = str(info.value)
    assert "1 of 2 files could not be scored" in msg
    assert "all_bad.csv: no valid row: all 10 rows are invalid" in msg
    assert "all_bad.csv, column 'V3': not a number (first at row 0, counted from 0) (10 rows" in msg
    assert info.value.result.totals.rows_scored == 10
    assert list(info.value.result.failed) == [f"{PROD_INPUTS}/all_bad.csv"]
    assert _listing(storage) == ["good.out.csv"]  # no output and no rejects file for the failed one

    from typer.testing import CliRunner

    from fraudops.cli import build

    _fresh(feat_ws["ws"])
    _put_csv(storage, "all_bad.csv", df.with_columns(pl.lit("abc").alias("V3")))
    result = CliRunner().invoke(build(), ["batch", "-w", str(feat_ws["ws"])])
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # Rich wraps long lines
    assert "batch_inference FAILED" in text and "all_bad.csv: no valid row" in text


def test_late_bad_cell_of_a_transactions_csv_is_a_rejected_row(tx_ws):
    """A transactions file is read whole, typed from all its rows: a bad amount far into it is a rejected
    row, not a reader error."""
    settings, storage = _fresh(tx_ws["ws"])
    days = list(tx_ws["days"].values())
    frame = pl.concat(days)
    frame = pl.concat([frame] * (12_000 // frame.height + 1)).head(12_000)
    frame = frame.with_columns(pl.int_range(10_000_000, 10_012_000).alias("TRANSACTION_ID"))
    bad = frame.cast({"TX_AMOUNT": pl.String}).with_columns(
        pl.when(pl.int_range(pl.len()) == 11_000)
        .then(pl.lit("12,50"))
        .otherwise(pl.col("TX_AMOUNT"))
        .alias("TX_AMOUNT")
    )
    storage.write_frame(f"{PROD_INPUTS}/late.csv", bad)

    f = batch_step(settings, storage)["files"][0]

    assert (f["rows"], f["rejected"]) == (11_999, 1)
    rejects = storage.read_frame(f["rejects"])
    assert (rejects["row_number"].to_list(), rejects["reason"].to_list()) == (
        [11_000],
        ["TX_AMOUNT: not a number"],
    )


# ------------------------------------------------------------------------------------------ errors


def test_unknown_extension_is_an_error(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    _put_csv(storage, "ok.csv", kaggle_like(5, 7))
    storage.write_text(f"{PROD_INPUTS}/notes.txt", "hello")
    with pytest.raises(DataValidationError, match=r"notes\.txt: unknown file type"):
        batch_step(settings, storage)
    assert _listing(storage) == []


def test_empty_folder_is_an_error(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    with pytest.raises(FraudopsError, match="no files to score"):
        batch_step(settings, storage)


def test_missing_columns(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    settings.batch.join_columns = ["Amount", "Merchant"]
    _put_csv(storage, "no_v7.csv", kaggle_like(5, 8).drop("V7"))
    with pytest.raises(BatchError) as info:
        batch_step(settings, storage)
    msg = str(info.value)
    assert "no_v7.csv, column 'V7': missing column" in msg
    assert "no_v7.csv, column 'Merchant': missing column" in msg
    assert _listing(storage) == []


def test_empty_and_unreadable_files(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    _put_csv(storage, "ok.csv", kaggle_like(5, 8))
    storage.write_text(f"{PROD_INPUTS}/empty.csv", ",".join(kaggle_like(1, 0).columns) + "\n")
    pq.write_table(kaggle_like(0, 0).to_arrow(), storage.path(f"{PROD_INPUTS}/empty.parquet"))
    storage.write_text(f"{PROD_INPUTS}/broken.parquet", "not parquet")
    with pytest.raises(BatchError) as info:
        batch_step(settings, storage)
    msg = str(info.value)
    assert "3 of 4 files could not be scored (the others were)" in msg
    assert "empty.csv: empty file" in msg and "empty.parquet: empty file" in msg
    assert "broken.parquet: cannot be read" in msg
    assert _listing(storage) == ["ok.out.csv"]


def test_no_champion(tmp_path):
    settings, _ = init_workspace(str(tmp_path / "ws"))
    storage = Storage(settings.workspace)
    storage.write_frame(f"{PROD_INPUTS}/x.csv", kaggle_like(3, 0))
    with pytest.raises(FraudopsError, match="no champion yet: run select_champion"):
        batch_step(settings, storage)


# ---------------------------------------------------------------------------------- model and run


def test_scoring_model_leaves_the_served_booster_alone(feat_ws):
    settings, _ = open_ws(feat_ws["ws"])
    _, model = _champion(settings)
    scorer = model.with_threads(2)
    assert scorer.booster is not model.booster

    def nthread(booster: Any) -> int:
        return int(json.loads(booster.save_config())["learner"]["generic_param"]["nthread"])

    assert (nthread(model.booster), nthread(scorer.booster)) == (1, 2)
    x = np.random.default_rng(0).standard_normal((50, len(model.feature_names))).astype(np.float32)
    np.testing.assert_array_equal(scorer.predict_proba(x), model.predict_proba(x))


def test_mlflow_run_logged(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    _put_csv(storage, "m.csv", kaggle_like(12, 9))
    out = batch_step(settings, storage, execution_id="exec-1")
    run = client(settings).get_run(out["run_id"])
    assert run.data.tags[STEP_TAG] == "batch_inference"
    assert run.data.tags[EXECUTION_TAG] == "exec-1"
    assert run.data.params["model_version"] == str(out["model_version"])
    assert run.data.params["files"] == "m.csv"
    assert run.data.metrics["rows_scored"] == 12
    assert {"rows_rejected", "rows_flagged", "seconds", "rows_per_second"} <= set(run.data.metrics)


def test_cli_batch(feat_ws):
    from typer.testing import CliRunner

    from fraudops.cli import build

    app = build()

    _, storage = _fresh(feat_ws["ws"])
    _put_csv(storage, "cli.csv", kaggle_like(9, 10))
    result = CliRunner().invoke(app, ["batch", "-w", str(feat_ws["ws"])])
    assert result.exit_code == 0, result.output
    assert "cli.out.csv" in result.output and "rows_scored" in result.output
    storage.write_text(f"{PROD_INPUTS}/bad.json", "{}")
    result = CliRunner().invoke(app, ["batch", "-w", str(feat_ws["ws"])])
    assert result.exit_code == 1
    assert "bad.json" in result.output


def test_arrow_types_of_join_columns_kept(feat_ws):
    settings, storage = _fresh(feat_ws["ws"])
    df = kaggle_like(10, 11).with_columns(
        pl.Series("merchant", [f"m{i}" for i in range(10)]), pl.col("Amount").cast(pl.Float32)
    )
    table = df.to_arrow()
    table = table.set_column(
        table.schema.get_field_index("merchant"), "merchant", table["merchant"].cast(pa.string())
    )
    pq.write_table(table, storage.path(f"{PROD_INPUTS}/typed.parquet"))
    batch_step(settings, storage)
    result = pq.read_table(storage.path(f"{PREDICTIONS}/typed.out.parquet"))
    assert result.schema.field("Amount").type == pa.float32()
    assert result.column("merchant").to_pylist() == [f"m{i}" for i in range(10)]


def test_score_file_on_a_remote_filesystem(feat_ws):
    """The fsspec path (file objects, not local paths) through score_file, on memory://."""
    settings, _ = open_ws(feat_ws["ws"])
    _, model = _champion(settings)
    remote = settings.model_copy(deep=True)
    remote.batch.chunk_rows = 6
    storage = Storage("memory://fraudops-test-batch")
    df = kaggle_like(20, 12)
    storage.write_frame(f"{PROD_INPUTS}/r.csv", df)
    storage.write_frame(f"{PROD_INPUTS}/r.parquet", df)
    for name in ("r.csv", "r.parquet"):
        out = scoring.score_file(storage, f"{PROD_INPUTS}/{name}", model, remote, version=7).model_dump()
        assert out["rows"] == df.height
        result = storage.read_frame(out["output"])
        np.testing.assert_allclose(result["fraud_probability"].to_numpy(), model.predict_proba(df), rtol=1e-6)
        assert result["model_version"].unique().to_list() == [7]
    assert _listing(storage) == ["r.out.csv", "r.out.parquet"]
    storage.delete("", recursive=True)
