"""fraudops.data: dataset kinds, column mapping, validation, import and loading."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fraudops.config import DataConfig, Settings
from fraudops.data.loading import (
    fingerprint,
    import_files,
    load_folder,
    load_history,
    load_labelled,
    read_source,
)
from fraudops.data.schema import (
    AMOUNT,
    CUSTOMER,
    LABEL,
    ROW_ERROR,
    SCENARIO,
    TERMINAL,
    TX_ID,
    TX_TIME,
    model_inputs,
    role_columns,
    to_file_columns,
)
from fraudops.data.validation import validate
from fraudops.errors import DataValidationError, Problem
from fraudops.workspace.layout import CURRENT, RAW
from fraudops.workspace.storage import Storage

HANDBOOK = DataConfig()
LOWER = DataConfig(
    columns={
        "transaction_id": "tx_id",
        "timestamp": "ts",
        "customer_id": "card",
        "terminal_id": "merchant",
        "amount": "amount",
        "label": "is_fraud",
        "scenario": None,
    }
)
KAGGLE = DataConfig(kind="features")
V_COLUMNS = [f"V{i}" for i in range(1, 29)]


def tx(n: int = 5, *, start_id: int = 0, day: int = 1, **overrides: list) -> pl.DataFrame:
    """Handbook-named transactions as a CSV would give them (timestamps as text)."""
    data: dict[str, list] = {
        "TRANSACTION_ID": list(range(start_id, start_id + n)),
        "TX_DATETIME": [f"2018-04-{day:02d} {i // 60:02d}:{i % 60:02d}:00" for i in range(n)],
        "CUSTOMER_ID": [i % 3 for i in range(n)],
        "TERMINAL_ID": [10 + i % 4 for i in range(n)],
        "TX_AMOUNT": [round(10.5 + i, 2) for i in range(n)],
        "TX_FRAUD": [int(i % 4 == 0) for i in range(n)],
        "TX_FRAUD_SCENARIO": [int(i % 4 == 0) for i in range(n)],
    }
    data.update(overrides)
    return pl.DataFrame(data, strict=False)


def kaggle(n: int = 6, **overrides: list) -> pl.DataFrame:
    data: dict[str, list] = {"Time": [float(10 * i) for i in range(n)]}
    data.update({v: [0.01 * (i + k) for i in range(n)] for k, v in enumerate(V_COLUMNS)})
    data["Amount"] = [1.0 + i for i in range(n)]
    data["Class"] = [int(i == 2) for i in range(n)]
    data.update(overrides)
    return pl.DataFrame(data, strict=False)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    s = Storage(str(tmp_path / "ws"))
    s.init_layout()
    return s


# ---------------------------------------------------------------- valid data and column mapping


def test_validate_handbook_transactions() -> None:
    v = validate(tx(5), HANDBOOK, "day.csv")
    assert v.problems == []
    assert v.rejects.height == 0
    valid = v.valid
    assert valid.columns == [TX_ID, TX_TIME, CUSTOMER, TERMINAL, AMOUNT, LABEL, SCENARIO]
    assert valid.schema[TX_TIME] == pl.Datetime("us")
    assert valid.schema[AMOUNT] == pl.Float64
    assert valid.schema[LABEL] == pl.Int8
    assert valid.schema[SCENARIO] == pl.Int8
    assert valid[TX_TIME][1] == dt.datetime(2018, 4, 1, 0, 1)
    assert valid[AMOUNT].to_list() == [10.5, 11.5, 12.5, 13.5, 14.5]
    assert valid[LABEL].to_list() == [1, 0, 0, 0, 1]


def test_validate_parquet_types() -> None:
    """Parquet gives real datetimes and numbers; they pass through unchanged."""
    df = tx(3).with_columns(pl.col("TX_DATETIME").str.to_datetime(), pl.col("TX_FRAUD").cast(pl.Boolean))
    v = validate(df, HANDBOOK, "day.parquet")
    assert v.problems == []
    assert v.valid[TX_TIME].to_list()[0] == dt.datetime(2018, 4, 1)
    assert v.valid[LABEL].to_list() == [1, 0, 0]


def test_validate_custom_column_mapping() -> None:
    df = (
        tx(4)
        .rename(
            {
                "TRANSACTION_ID": "tx_id",
                "TX_DATETIME": "ts",
                "CUSTOMER_ID": "card",
                "TERMINAL_ID": "merchant",
                "TX_AMOUNT": "amount",
                "TX_FRAUD": "is_fraud",
            }
        )
        .drop("TX_FRAUD_SCENARIO")
    )
    v = validate(df, LOWER, "lower.csv")
    assert v.problems == []
    assert v.valid.columns == [TX_ID, TX_TIME, CUSTOMER, TERMINAL, AMOUNT, LABEL]
    assert v.valid[AMOUNT].to_list() == [10.5, 11.5, 12.5, 13.5]
    # problems are reported under the user's column names
    bad = validate(df.with_columns(amount=pl.lit("abc")), LOWER, "lower.csv")
    assert {(p.column, p.message) for p in bad.problems} == {
        ("amount", "not a number"),
        (None, "no valid row: all 4 rows are invalid"),
    }
    # and the handbook names are what is missing when a handbook file meets the lowercase mapping
    missing = validate(tx(2), LOWER, "handbook.csv")
    assert {(p.column, p.message) for p in missing.problems} == {
        *((c, "missing column") for c in ("tx_id", "ts", "card", "merchant", "amount")),
        # the labels are not silently ignored: their column is named for a role mapped elsewhere
        ("TX_FRAUD", "reserved name: fraudops' own name for a role (column 'is_fraud' is mapped to it)"),
    }


def test_role_columns_and_back() -> None:
    assert role_columns(LOWER) == {
        "tx_id": TX_ID,
        "ts": TX_TIME,
        "card": CUSTOMER,
        "merchant": TERMINAL,
        "amount": AMOUNT,
        "is_fraud": LABEL,
    }
    canonical = validate(tx(3), HANDBOOK, "x").valid
    assert to_file_columns(canonical, LOWER).columns == [
        "tx_id",
        "ts",
        "card",
        "merchant",
        "amount",
        "is_fraud",
        SCENARIO,
    ]
    # the features kind maps only id, time, label and scenario
    assert role_columns(KAGGLE) == {"Time": TX_TIME, "Class": LABEL}


def test_extra_columns_are_kept() -> None:
    v = validate(tx(3, channel=["web", "pos", "web"]), HANDBOOK, "x.csv")
    assert v.problems == []
    assert v.valid["channel"].to_list() == ["web", "pos", "web"]


def test_features_kind_kaggle_csv(tmp_path: Path) -> None:
    path = tmp_path / "creditcard.csv"
    kaggle(6).write_csv(path)
    df = read_source(str(path))
    v = validate(df, KAGGLE, str(path))
    assert v.problems == []
    valid = v.valid
    assert v.features == [*V_COLUMNS, "Amount"]
    assert v.time == "Time"
    assert model_inputs(valid, KAGGLE) == [*V_COLUMNS, "Amount"]
    assert valid[TX_TIME].to_list() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]  # seconds, as in creditcard.csv
    assert valid[LABEL].to_list() == [0, 0, 1, 0, 0, 0]
    assert valid[TX_ID].to_list() == list(range(6))  # no id column: row numbers
    assert "Class" not in valid.columns
    assert "Time" not in valid.columns


def test_features_kind_configured_feature_columns() -> None:
    cfg = DataConfig(kind="features", feature_columns=["V1", "V2"])
    assert validate(kaggle(3), cfg, "cc.csv").features == ["V1", "V2"]
    v = validate(kaggle(3).drop("V2"), cfg, "cc.csv")
    assert (only(v.problems).column, only(v.problems).message) == ("V2", "missing column")
    # a bad value in a column the model does not use is not an error
    assert validate(kaggle(3, V9=[1.0, math.nan, 2.0]), cfg, "cc.csv").problems == []


def test_features_kind_with_datetime_text_time() -> None:
    df = kaggle(2, Time=["2018-04-01 00:00:00", "2018-04-01 00:00:05"])
    v = validate(df, KAGGLE, "cc.csv")
    assert v.problems == []
    assert v.valid[TX_TIME].to_list()[1] == dt.datetime(2018, 4, 1, 0, 0, 5)


# ---------------------------------------------------------------- validation failures


def check(
    v_problems: list[Problem], file: str, column: str | None, message: str, n: int, examples: list[str]
) -> None:
    p = only(v_problems)
    assert (p.file, p.column, p.message, p.n_rows, p.examples) == (file, column, message, n, examples)


def test_missing_column_rejects_every_row() -> None:
    v = validate(tx(4).drop("TX_AMOUNT"), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TX_AMOUNT", "missing column", 0, [])
    assert v.valid.height == 0
    assert v.rejects.height == 4
    assert str(v.problems[0]) == "day.csv, column 'TX_AMOUNT': missing column"


def test_several_missing_columns_are_all_reported() -> None:
    v = validate(tx(2).drop("TX_AMOUNT", "CUSTOMER_ID"), HANDBOOK, "day.csv")
    assert sorted(p.column for p in v.problems) == ["CUSTOMER_ID", "TX_AMOUNT"]


def test_label_and_scenario_are_optional() -> None:
    v = validate(tx(3).drop("TX_FRAUD", "TX_FRAUD_SCENARIO"), HANDBOOK, "to_score.csv")
    assert v.problems == []
    assert LABEL not in v.valid.columns
    v = validate(tx(3).drop("TX_FRAUD"), HANDBOOK, "to_score.csv", require_label=True)
    check(v.problems, "to_score.csv", "TX_FRAUD", "missing column", 0, [])


def test_unparseable_timestamp() -> None:
    times = ["2018-04-01 00:00:00", "yesterday", "2018-04-01 00:02:00", "2018-13-45 99:00:00"]
    v = validate(tx(4, TX_DATETIME=times), HANDBOOK, "day.csv")
    check(
        v.problems,
        "day.csv",
        "TX_DATETIME",
        "unparseable timestamp",
        2,
        ["'yesterday'", "'2018-13-45 99:00:00'"],
    )
    assert v.valid[TX_ID].to_list() == [0, 2]
    assert v.rejects[ROW_ERROR].to_list() == ["TX_DATETIME: unparseable timestamp"] * 2


def test_no_timestamp_parseable_at_all() -> None:
    """Even when no value gives polars a date format to go by, it is a Problem, not a crash."""
    v = validate(tx(4, TX_DATETIME=["soon", "later", "never", "2018-04-01 00:00:00"]), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TX_DATETIME", "unparseable timestamp", 3, ["'soon'", "'later'", "'never'"])
    numeric = validate(tx(2, TX_DATETIME=[1, 2]), HANDBOOK, "day.csv")
    assert [p.message for p in numeric.problems] == [
        "unparseable timestamp",
        "no valid row: all 2 rows are invalid",
    ]


def test_non_numeric_amount() -> None:
    v = validate(tx(4, TX_AMOUNT=["1.5", "abc", "2", "1,5"]), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TX_AMOUNT", "not a number", 2, ["'abc'", "'1,5'"])
    assert v.valid[AMOUNT].to_list() == [1.5, 2.0]


def test_negative_amount() -> None:
    v = validate(tx(5, TX_AMOUNT=[1.0, -0.01, 0.0, -5.0, 3.0]), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TX_AMOUNT", "negative amount", 2, ["-0.01", "-5.0"])
    assert v.valid[AMOUNT].to_list() == [1.0, 0.0, 3.0]  # zero is a valid amount


@pytest.mark.parametrize(
    ("labels", "n", "examples"),
    [
        ([0, 1, 2, 0], 1, ["2"]),
        (["0", "1", "yes", "-1"], 2, ["'yes'", "'-1'"]),
        ([0.0, 1.0, 0.5, 1.0], 1, ["0.5"]),
    ],
)
def test_label_not_in_0_1(labels: list, n: int, examples: list[str]) -> None:
    v = validate(tx(4, TX_FRAUD=labels), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TX_FRAUD", "label not in {0, 1}", n, examples)
    assert v.valid[LABEL].dtype == pl.Int8


def test_duplicate_ids() -> None:
    v = validate(tx(6, TRANSACTION_ID=[1, 2, 2, 3, 3, 3]), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TRANSACTION_ID", "duplicate id", 3, ["2", "3", "3"])
    # the first occurrence stays valid
    assert v.valid[TX_ID].to_list() == [1, 2, 3]


def test_null_ids_are_missing_not_duplicates() -> None:
    v = validate(tx(4, TRANSACTION_ID=[1, None, None, 2]), HANDBOOK, "day.csv")
    check(v.problems, "day.csv", "TRANSACTION_ID", "missing id", 2, ["None", "None"])
    assert v.rejects[ROW_ERROR].to_list() == ["TRANSACTION_ID: missing id"] * 2


def test_null_customer_and_terminal() -> None:
    v = validate(tx(4, CUSTOMER_ID=[1, None, 2, 3], TERMINAL_ID=[None, 1, 2, 3]), HANDBOOK, "day.csv")
    got = {(p.column, p.message, p.n_rows) for p in v.problems}
    assert got == {("CUSTOMER_ID", "missing id", 1), ("TERMINAL_ID", "missing id", 1)}
    assert v.valid.height == 2


def test_empty_file() -> None:
    v = validate(tx(0), HANDBOOK, "empty.csv")
    check(v.problems, "empty.csv", None, "empty file", 0, [])
    assert str(v.problems[0]) == "empty.csv: empty file"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_features_kind_nan_inf_null_are_missing(bad: float | None) -> None:
    v3 = [0.1, bad, 0.3, 0.4]
    v = validate(kaggle(4, V3=v3), KAGGLE, "cc.csv")
    check(v.problems, "cc.csv", "V3", "missing value", 1, [repr(bad)])
    assert v.valid.height == 3


def test_features_kind_bad_time_and_amount() -> None:
    v = validate(kaggle(4, Time=["0", "10", "x", "30"], Amount=[1.0, -2.0, 3.0, 4.0]), KAGGLE, "cc.csv")
    got = {(p.column, p.message, p.n_rows, tuple(p.examples)) for p in v.problems}
    assert got == {
        ("Time", "missing or non-numeric time", 1, ("'x'",)),
        ("Amount", "negative amount", 1, ("-2.0",)),
    }
    assert v.valid[TX_TIME].to_list() == [0.0, 30.0]


def test_features_kind_without_numeric_columns() -> None:
    df = pl.DataFrame({"Time": [1.0], "Class": [0], "note": ["x"]})
    v = validate(df, KAGGLE, "cc.csv")
    assert [(p.column, p.message.split(";")[0]) for p in v.problems] == [
        ("note", "text, no value is a number"),
        (None, "no numeric feature columns"),
        ("Amount", "missing column"),
    ]


def test_features_kind_missing_feature_column_given_by_history() -> None:
    v = validate(kaggle(2).drop("V7"), KAGGLE, "new.csv", feature_columns=V_COLUMNS)
    check(v.problems, "new.csv", "V7", "missing column", 0, [])


def test_every_problem_of_a_file_is_reported_with_first_reason_per_row() -> None:
    df = tx(
        5,
        TRANSACTION_ID=[1, 1, 2, 3, 4],
        TX_DATETIME=[
            "2018-04-01 00:00:00",
            "2018-04-01 00:00:01",
            "bad",
            "2018-04-01 00:00:03",
            "2018-04-01",
        ],
        TX_AMOUNT=["1", "2", "-3", "x", "5"],
        TX_FRAUD=[0, 1, 0, 0, 7],
    )
    v = validate(df, HANDBOOK, "day.csv")
    assert [(p.column, p.message, p.n_rows) for p in v.problems] == [
        ("TX_DATETIME", "unparseable timestamp", 1),
        ("TX_AMOUNT", "not a number", 1),
        ("TX_AMOUNT", "negative amount", 1),
        ("TX_FRAUD", "label not in {0, 1}", 1),
        ("TRANSACTION_ID", "duplicate id", 1),
    ]
    assert v.frame[ROW_ERROR].to_list() == [
        None,
        "TRANSACTION_ID: duplicate id",
        "TX_DATETIME: unparseable timestamp",
        "TX_AMOUNT: not a number",
        "TX_FRAUD: label not in {0, 1}",
    ]
    assert v.valid[TX_ID].to_list() == [1]
    assert ROW_ERROR not in v.valid.columns
    message = str(DataValidationError(v.problems))
    assert "day.csv, column 'TX_AMOUNT': not a number (1 rows, e.g. 'x')" in message


def test_missing_values_null_label_means_unlabelled_null_required_value_rejects_row() -> None:
    """How missing values are treated (data.py's docstring): a null in a required column (id, time,
    customer, terminal, amount; every feature column of the features kind) makes the row invalid; NaN
    and ±inf count as missing; a null label means "not labelled yet" — valid, scored, but left out of
    training (and an error only where labels are required)."""
    v = validate(
        tx(4, TX_FRAUD=[0, None, 1, None], TX_AMOUNT=[1.0, 2.0, None, math.nan]), HANDBOOK, "day.csv"
    )
    check(v.problems, "day.csv", "TX_AMOUNT", "missing value", 2, ["None", "nan"])
    assert v.valid[LABEL].to_list() == [0, None]
    required = validate(tx(2, TX_FRAUD=[0, None]), HANDBOOK, "day.csv", require_label=True)
    check(required.problems, "day.csv", "TX_FRAUD", "missing label", 1, ["None"])
    missing_time = validate(tx(2, TX_DATETIME=["2018-04-01 00:00:00", None]), HANDBOOK, "day.csv")
    check(missing_time.problems, "day.csv", "TX_DATETIME", "missing timestamp", 1, ["None"])


# ---------------------------------------------------------------- strict validation (issue 9)


def _with_cell(df: pl.DataFrame, column: str, row: int, value: str) -> pl.DataFrame:
    """``df`` with ``column`` as text and ``value`` in one row (what one bad cell does to a CSV column)."""
    return df.cast({column: pl.String}).with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )


def test_one_text_cell_in_a_feature_column_is_an_invalid_row(tmp_path: Path) -> None:
    """Found: V3='abc' in one row made the whole column text; validation said "valid" and the model was
    trained without V3."""
    path = write_csv(tmp_path / "cc.csv", _with_cell(kaggle(6), "V3", 4, "abc"))
    v = validate(read_source(path), KAGGLE, path)
    check(v.problems, path, "V3", "not a number", 1, ["'abc'"])
    assert v.features == [*V_COLUMNS, "Amount"]  # V3 is still a model input
    assert v.valid.height == 5
    assert v.valid.schema["V3"] == pl.Float64
    assert v.rejects[ROW_ERROR].to_list() == ["V3: not a number"]


def test_a_bad_cell_far_into_a_csv_is_an_invalid_row_not_a_reader_error(tmp_path: Path) -> None:
    """Found: a bad cell at row 50,000 (after polars' type inference) leaked polars' parse error."""
    big = pl.concat([kaggle(10)] * 6_000)  # 60,000 rows
    path = write_csv(tmp_path / "big.csv", _with_cell(big, "V3", 50_000, "abc"))
    df = read_source(path)
    assert df.height == 60_000
    v = validate(df, KAGGLE, path)
    check(v.problems, path, "V3", "not a number", 1, ["'abc'"])
    assert v.frame[ROW_ERROR][50_000] == "V3: not a number"
    assert v.frame[ROW_ERROR].null_count() == 59_999
    # a late fraction in a handbook file's integer id column: the row is invalid, the ids stay integers
    times = [f"2018-04-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(12_000)]
    handbook = tx(12_000, TX_DATETIME=times).with_columns(pl.col("CUSTOMER_ID").cast(pl.String))
    handbook = handbook.with_columns(
        pl.when(pl.int_range(pl.len()) == 11_000)
        .then(pl.lit("7.5"))
        .otherwise(pl.col("CUSTOMER_ID"))
        .alias("CUSTOMER_ID")
    )
    path = write_csv(tmp_path / "day.csv", handbook)
    v = validate(read_source(path), HANDBOOK, path)
    check(v.problems, path, "CUSTOMER_ID", "not a whole number (ids are integers or text)", 1, ["7.5"])
    assert v.valid.schema[CUSTOMER] == pl.Int64


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a,b\n1,2\n3,4,5\n", "a row has more fields than the header"),
        ('a,b\n1,"2\n3,4\n', "not a valid CSV file (unbalanced quotes or a broken row?)"),
        ("", "empty file (no header)"),
    ],
)
def test_unreadable_csv_is_named_in_plain_words(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataValidationError) as info:
        read_source(str(tmp_path / "bad.csv"))
    check(info.value.problems, str(tmp_path / "bad.csv"), None, f"cannot be read: {reason}", 0, [])


def test_every_mapped_column_must_be_present() -> None:
    """Found: a features-kind file without its mapped Amount passed."""
    v = validate(kaggle(4).drop("Amount"), KAGGLE, "cc.csv")
    check(v.problems, "cc.csv", "Amount", "missing column", 0, [])
    assert v.valid.height == 0
    # even when the model's inputs are configured without it: the mapping says the files have it
    cfg = DataConfig(kind="features", feature_columns=["V1", "V2"])
    check(
        validate(kaggle(4).drop("Amount"), cfg, "cc.csv").problems,
        "cc.csv",
        "Amount",
        "missing column",
        0,
        [],
    )
    # amount: null maps no amount column
    cfg = DataConfig(kind="features", columns={"amount": None})
    v = validate(kaggle(4).drop("Amount"), cfg, "cc.csv")
    assert v.problems == [] and v.features == V_COLUMNS
    # the time column is optional for the features kind (a stratified random split), not for transactions
    v = validate(kaggle(4).drop("Time"), KAGGLE, "cc.csv")
    assert (v.problems, v.time, v.valid.height) == ([], None, 4)
    assert TX_TIME not in v.valid.columns
    check(
        validate(tx(3).drop("TX_DATETIME"), HANDBOOK, "d.csv").problems,
        "d.csv",
        "TX_DATETIME",
        "missing column",
        0,
        [],
    )


@pytest.mark.parametrize(
    ("column", "values", "why"),
    [
        ("Unnamed: 0", [0, 1, 2, 3, 4, 5], "looks like an index (pandas' index written as a column)"),
        (
            "Unnamed: 0",
            [7.0, 3.0, 1.0, 9.0, 2.0, 8.0],
            "looks like an index (pandas' index written as a column)",
        ),
        ("row", [0, 1, 2, 3, 4, 5], "looks like an index (it equals the row number)"),
        ("n", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "looks like an index (it equals the row number)"),
        ("note", ["a", "b", "c", "d", "e", "f"], "text, no value is a number"),
        ("flag", [True, False, True, True, False, True], "Boolean values, not numbers"),
    ],
)
def test_features_kind_refuses_columns_that_are_not_features(column: str, values: list, why: str) -> None:
    """Found: extra numeric columns (``Unnamed: 0``) silently became model inputs."""
    df = kaggle(6).with_columns(pl.Series(column, values))
    v = validate(df, KAGGLE, "cc.csv")
    hint = "not a feature: drop it from the file or list the model's inputs in data.feature_columns"
    check(v.problems, "cc.csv", column, f"{why}; {hint}", 0, [])
    assert v.valid.height == 0
    # listed in data.feature_columns, it is what the user asked for; left out, it is ignored
    listed = (
        DataConfig(kind="features", feature_columns=[*V_COLUMNS, column]) if why.startswith("looks") else None
    )
    if listed is not None:
        v = validate(df, listed, "cc.csv")
        assert v.problems == [] and v.features[-1] == column
    v = validate(df, DataConfig(kind="features", feature_columns=V_COLUMNS), "cc.csv")
    assert v.problems == [] and column not in v.features


def test_a_column_without_a_name_is_refused_as_an_index(tmp_path: Path) -> None:
    """pandas' to_csv writes its index under an empty header name."""
    path = write_csv(tmp_path / "cc.csv", kaggle(4).select(pl.int_range(4).alias(""), pl.all()))
    v = validate(read_source(path), KAGGLE, path)
    why = "column without a name looks like an index (pandas' index written as a column)"
    hint = "not a feature: drop it from the file or list the model's inputs in data.feature_columns"
    check(v.problems, path, None, f"{why}; {hint}", 0, [])


def test_amount_that_counts_up_is_not_an_index() -> None:
    """Amount is a mapped column: its values decide nothing about indexes (kaggle() amounts are 1..n)."""
    v = validate(kaggle(6), KAGGLE, "cc.csv")
    assert v.problems == [] and v.features[-1] == "Amount"


def test_every_fault_of_a_file_is_reported_at_once() -> None:
    """Found: a file with three faults reported one (a missing column hid the rest)."""
    df = _with_cell(kaggle(6, Class=[0, 1, 2, 0, 0, 0]), "V3", 1, "abc").drop("Amount")
    df = df.with_row_index("Unnamed: 0")
    v = validate(df, KAGGLE, "cc.csv")
    assert [(p.column, p.message.split(";")[0], p.n_rows, p.examples) for p in v.problems] == [
        ("Unnamed: 0", "looks like an index (pandas' index written as a column)", 0, []),
        ("Amount", "missing column", 0, []),
        ("V3", "not a number", 1, ["'abc'"]),
        ("Class", "label not in {0, 1}", 1, ["2"]),
    ]
    assert v.valid.height == 0  # a file-level fault leaves no valid row
    message = str(DataValidationError(v.problems))
    assert "cc.csv, column 'V3': not a number (1 rows, e.g. 'abc')" in message
    assert "cc.csv, column 'Amount': missing column" in message


@pytest.mark.parametrize("id_column", ["TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"])
def test_ids_are_integers_or_text_never_fractions(id_column: str) -> None:
    """Found: a float CUSTOMER_ID with fractions was scored with no history, silently wrong."""
    v = validate(tx(4, **{id_column: [1.0, 2.5, 3.0, 4.25]}), HANDBOOK, "day.csv")
    check(
        v.problems, "day.csv", id_column, "not a whole number (ids are integers or text)", 2, ["2.5", "4.25"]
    )
    canon = {"TRANSACTION_ID": TX_ID, "CUSTOMER_ID": CUSTOMER, "TERMINAL_ID": TERMINAL}[id_column]
    assert v.valid[canon].to_list() == [1, 3]
    assert v.valid.schema[canon] == pl.Int64  # whole floats are cast: they match integer ids elsewhere
    text = validate(tx(3, **{id_column: ["a1", "b2", "c3"]}), HANDBOOK, "day.csv")
    assert text.problems == [] and text.valid[canon].to_list() == ["a1", "b2", "c3"]
    nan = validate(tx(3, **{id_column: [1.0, math.nan, 3.0]}), HANDBOOK, "day.csv")
    check(nan.problems, "day.csv", id_column, "missing id", 1, ["nan"])


def test_a_file_with_no_valid_row_fails() -> None:
    v = validate(tx(3, TX_AMOUNT=[-1.0, -2.0, -3.0]), HANDBOOK, "day.csv")
    assert [(p.column, p.message, p.n_rows) for p in v.problems] == [
        ("TX_AMOUNT", "negative amount", 3),
        (None, "no valid row: all 3 rows are invalid", 0),
    ]
    assert [p.message for p in v.file_problems] == ["no valid row: all 3 rows are invalid"]
    # one chunk of a file may be all invalid: the caller judges the whole file
    assert len(validate(tx(3, TX_AMOUNT=[-1.0, -2.0, -3.0]), HANDBOOK, "day.csv", partial=True).problems) == 1


def test_columns_named_like_a_role_mapped_elsewhere_are_refused() -> None:
    v = validate(kaggle(3).with_columns(pl.lit("2018-04-01").alias("TX_DATETIME")), KAGGLE, "cc.csv")
    check(
        v.problems,
        "cc.csv",
        "TX_DATETIME",
        "reserved name: fraudops' own name for a role (column 'Time' is mapped to it)",
        0,
        [],
    )
    dup = validate(kaggle(3).with_columns(pl.col("V1").alias("V1_duplicated_0")), KAGGLE, "cc.csv")
    check(dup.problems, "cc.csv", "V1", "duplicate column name", 0, [])


# ---------------------------------------------------------------- reading sources


def test_read_source_errors(tmp_path: Path) -> None:
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError) as info:
        read_source(str(tmp_path / "garbage.parquet"))
    assert "garbage.parquet" in str(info.value)
    assert "cannot be read" in str(info.value)


# ---------------------------------------------------------------- import


def write_csv(path: Path, df: pl.DataFrame) -> str:
    df.write_csv(path)
    return str(path)


def raw_names(storage: Storage) -> list[str]:
    return sorted(p.name for p in Path(storage.path(RAW)).iterdir())


def test_import_copies_bytes_as_is(tmp_path: Path, storage: Storage) -> None:
    text = (
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
        "1,2018-04-01 00:00:31,596,3156,57.160,0\n"
        "2,2018-04-01 00:02:10,4961,3412,81.51,1\n"
    )
    (tmp_path / "a.csv").write_text(text)
    pq = tmp_path / "b.parquet"
    tx(3, start_id=10).write_parquet(pq)
    results = import_files(storage, Settings(workspace=storage.url), [str(tmp_path / "a.csv"), str(pq)])
    assert (Path(storage.path(RAW)) / "a.csv").read_text() == text  # not re-serialised: 57.160 stays
    assert (Path(storage.path(RAW)) / "b.parquet").read_bytes() == pq.read_bytes()
    assert results.files == [
        {"file": str(tmp_path / "a.csv"), "to": storage.uri("data/raw/a.csv"), "rows": 2, "frauds": 1},
        {"file": str(pq), "to": storage.uri("data/raw/b.parquet"), "rows": 3, "frauds": 1},
    ]


def test_import_is_all_or_nothing(tmp_path: Path, storage: Storage) -> None:
    good1 = write_csv(tmp_path / "good1.csv", tx(3))
    bad = write_csv(tmp_path / "bad.csv", tx(3, start_id=3, TX_AMOUNT=[1.0, -1.0, 2.0]))
    good2 = write_csv(tmp_path / "good2.csv", tx(3, start_id=6))
    with pytest.raises(DataValidationError) as info:
        import_files(storage, Settings(workspace=storage.url), [good1, bad, good2])
    check(info.value.problems, bad, "TX_AMOUNT", "negative amount", 1, ["-1.0"])
    assert raw_names(storage) == []


def test_import_refuses_to_overwrite_without_force(tmp_path: Path, storage: Storage) -> None:
    settings = Settings(workspace=storage.url)
    path = write_csv(tmp_path / "day.csv", tx(3))
    import_files(storage, settings, [path])
    other = write_csv(tmp_path / "other.csv", tx(2))
    write_csv(tmp_path / "day.csv", tx(4))
    with pytest.raises(DataValidationError) as info:
        import_files(storage, settings, [other, path])
    p = only(info.value.problems)
    assert p.file == path
    assert "exists (use --force to replace it)" in p.message
    assert raw_names(storage) == ["day.csv"]  # other.csv not written either
    assert storage.read_frame("data/raw/day.csv").height == 3
    import_files(storage, settings, [path], force=True)
    assert storage.read_frame("data/raw/day.csv").height == 4


def test_import_unknown_extension_and_missing_file(tmp_path: Path, storage: Storage) -> None:
    (tmp_path / "data.json").write_text("{}")
    good = write_csv(tmp_path / "good.csv", tx(2))
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(DataValidationError) as info:
        import_files(storage, Settings(workspace=storage.url), [str(tmp_path / "data.json"), good, missing])
    problems = info.value.problems
    assert [p.file for p in problems] == [str(tmp_path / "data.json"), missing]
    assert problems[0].message == "unknown file type (expected .csv or .parquet)"
    assert "no such file" in problems[1].message
    assert raw_names(storage) == []


def test_import_features_kind(tmp_path: Path, storage: Storage) -> None:
    settings = Settings(workspace=storage.url, data={"kind": "features"})
    path = write_csv(tmp_path / "creditcard.csv", kaggle(5))
    assert import_files(storage, settings, [path]).files[0]["frauds"] == 1
    bad = write_csv(tmp_path / "bad.csv", kaggle(5, Class=[0, 1, 2, 0, 0]))
    with pytest.raises(DataValidationError):
        import_files(storage, settings, [bad])
    # a handbook file is not a features-kind file
    handbook = write_csv(tmp_path / "tx.csv", tx(3))
    with pytest.raises(DataValidationError) as info:
        import_files(storage, settings, [handbook])
    found = {(p.column, p.message.split(":")[0]) for p in info.value.problems}
    assert {
        ("Amount", "missing column"),
        ("TX_FRAUD", "reserved name"),
        ("TX_DATETIME", "reserved name"),
    } <= found


# ---------------------------------------------------------------- loading


def test_load_folder_concatenates_every_file(storage: Storage) -> None:
    storage.write_frame(
        "data/raw/2018-04-01.parquet", tx(4, day=1).with_columns(pl.col("TX_DATETIME").str.to_datetime())
    )
    storage.write_frame("data/raw/2018-04-02.csv", tx(3, start_id=4, day=2))
    storage.write_frame("data/raw/2018-04-03.csv", tx(2, start_id=7, day=3))
    df = load_folder(storage, [RAW], HANDBOOK, labelled_only=False)
    assert df.height == 9  # every file, not only the first (the seed's defect)
    assert df[TX_ID].to_list() == list(range(9))
    assert df[TX_TIME].is_sorted()
    assert df.schema[TX_TIME] == pl.Datetime("us")


def test_load_folder_dedups_ids_later_file_wins_and_sorts(storage: Storage) -> None:
    first = tx(3, day=2, TX_FRAUD=[0, 0, 0])
    # a later file corrects transaction 1's label and adds an earlier transaction
    second = tx(2, day=1, TRANSACTION_ID=[1, 99], TX_FRAUD=[1, 0])
    storage.write_frame("data/raw/a.csv", first)
    storage.write_frame("data/raw/b.csv", second)
    df = load_folder(storage, [RAW], HANDBOOK, labelled_only=False)
    assert df.height == 4
    assert df[TX_ID].n_unique() == 4
    assert df[TX_TIME].is_sorted()
    assert df.filter(pl.col(TX_ID) == 1)[LABEL].to_list() == [1]
    assert df.filter(pl.col(TX_ID) == 1)[TX_TIME].to_list() == [dt.datetime(2018, 4, 1, 0, 0)]


def test_load_folder_labelled_only(storage: Storage) -> None:
    storage.write_frame("data/raw/a.csv", tx(4, TX_FRAUD=[0, None, 1, None]))
    storage.write_frame("data/raw/b.csv", tx(2, start_id=10).drop("TX_FRAUD", "TX_FRAUD_SCENARIO"))
    labelled = load_folder(storage, [RAW], HANDBOOK, labelled_only=True)
    assert labelled[TX_ID].to_list() == [0, 2]
    everything = load_folder(storage, [RAW], HANDBOOK, labelled_only=False)
    assert everything.height == 6
    assert everything[LABEL].null_count() == 4


def test_load_labelled_and_history_read_raw_and_current(storage: Storage) -> None:
    settings = Settings(workspace=storage.url)
    storage.write_frame("data/raw/a.csv", tx(3, TX_FRAUD=[0, 0, None]))
    storage.write_frame(f"{CURRENT}/late.csv", tx(2, start_id=2, day=5, TX_FRAUD=[1, 0]))
    labelled = load_labelled(storage, settings)
    assert labelled[TX_ID].to_list() == [0, 1, 2, 3]
    assert labelled.filter(pl.col(TX_ID) == 2)[LABEL].to_list() == [1]  # the newest label
    assert load_history(storage, settings).height == 4


def test_load_folder_without_id_column_keeps_every_row(storage: Storage) -> None:
    """With no id column the ids are row numbers per file: rows of different files are not duplicates."""
    cfg = DataConfig(columns={"transaction_id": None})
    storage.write_frame("data/raw/a.csv", tx(3, day=2).drop("TRANSACTION_ID"))
    storage.write_frame("data/raw/b.csv", tx(3, day=1).drop("TRANSACTION_ID"))
    df = load_folder(storage, [RAW], cfg, labelled_only=False)
    assert df.height == 6
    assert df[TX_ID].to_list() == list(range(6))
    assert df[TX_TIME].is_sorted()


def test_unmapped_id_column_under_its_canonical_name() -> None:
    """transaction_id: null and a TRANSACTION_ID column in the file: it is the id (was a KeyError)."""
    v = validate(tx(3, TRANSACTION_ID=[5, 5, 6]), DataConfig(columns={"transaction_id": None}), "day.csv")
    check(v.problems, "day.csv", "TRANSACTION_ID", "duplicate id", 1, ["5"])


def test_load_folder_features_kind(storage: Storage) -> None:
    storage.write_frame("data/raw/b.csv", kaggle(3, Time=[100.0, 110.0, 120.0]))
    storage.write_frame("data/raw/a.csv", kaggle(3))
    df = load_folder(storage, [RAW], KAGGLE, labelled_only=True)
    assert df.height == 6
    assert df[TX_TIME].to_list() == [0.0, 10.0, 20.0, 100.0, 110.0, 120.0]
    assert model_inputs(df, KAGGLE) == [*V_COLUMNS, "Amount"]


def test_load_folder_features_kind_later_file_must_have_the_same_features(storage: Storage) -> None:
    storage.write_frame("data/raw/a.csv", kaggle(3))
    storage.write_frame("data/raw/b.csv", kaggle(3).drop("V5"))
    with pytest.raises(DataValidationError) as info:
        load_folder(storage, [RAW], KAGGLE, labelled_only=False)
    p = only(info.value.problems)
    assert (p.file, p.column) == (storage.uri("data/raw/b.csv"), "V5")
    assert p.message == "missing column (a.csv has it: every file of a folder has the same columns)"


def test_every_file_of_a_folder_has_the_same_features_and_types(storage: Storage) -> None:
    """A later file with an extra feature, or ids of another type, is an error naming file and column."""
    storage.write_frame("data/raw/a.csv", kaggle(3))
    storage.write_frame("data/raw/b.parquet", kaggle(3).with_columns(pl.lit(0.5).alias("V29")))
    storage.write_frame(f"{CURRENT}/c.csv", kaggle(3).drop("Time"))
    with pytest.raises(DataValidationError) as info:
        load_folder(storage, [RAW, CURRENT], KAGGLE, labelled_only=False)
    same = "every file of a folder has the same columns"
    assert [(p.file, p.column, p.message) for p in info.value.problems] == [
        (storage.uri("data/raw/b.parquet"), "V29", f"extra column (a.csv has no such column: {same})"),
        (storage.uri(f"{CURRENT}/c.csv"), "Time", f"missing column (a.csv has it: {same})"),
    ]
    storage.delete("data/raw", recursive=True)
    storage.delete(CURRENT, recursive=True)
    storage.write_frame("data/raw/a.csv", kaggle(3))
    storage.write_frame("data/raw/b.csv", kaggle(3, Time=["2018-04-01 00:00:00"] * 3))
    with pytest.raises(DataValidationError) as info:
        load_folder(storage, [RAW], KAGGLE, labelled_only=False)
    types = "every file of a folder has the same types"
    check(
        info.value.problems,
        storage.uri("data/raw/b.csv"),
        "Time",
        f"datetimes, but seconds in a.csv ({types})",
        0,
        [],
    )
    storage.write_frame("data/raw/a.csv", tx(3))
    storage.write_frame("data/raw/b.csv", tx(3, start_id=3, CUSTOMER_ID=["c1", "c2", "c3"]))
    with pytest.raises(DataValidationError) as info:
        load_folder(storage, [RAW], HANDBOOK, labelled_only=False)
    check(
        info.value.problems,
        storage.uri("data/raw/b.csv"),
        "CUSTOMER_ID",
        "text ids, but integer ids in a.csv (every file of a folder has the same types)",
        0,
        [],
    )


def test_import_keeps_data_raw_to_one_layout(tmp_path: Path, storage: Storage) -> None:
    settings = Settings(workspace=storage.url, data={"kind": "features"})
    first = import_files(storage, settings, [write_csv(tmp_path / "a.csv", kaggle(4))])
    assert (first.features, first.time) == ([*V_COLUMNS, "Amount"], "Time")
    extra = write_csv(tmp_path / "b.csv", kaggle(4).with_columns(pl.lit(1.5).alias("Merchant")))
    other = write_csv(tmp_path / "c.csv", kaggle(4).drop("Time"))
    with pytest.raises(DataValidationError) as info:
        import_files(storage, settings, [extra, other])
    a = storage.uri("data/raw/a.csv")
    same = "every file of a folder has the same columns"
    assert [(p.file, p.column, p.message) for p in info.value.problems] == [
        (extra, "Merchant", f"extra column ({a} has no such column: {same})"),
        (other, "Time", f"missing column ({a} has it: {same})"),
    ]
    assert raw_names(storage) == ["a.csv"]
    # a file replacing a.csv is compared with the others, not with the file it replaces
    import_files(storage, settings, [write_csv(tmp_path / "a.csv", kaggle(4).drop("Time"))], force=True)
    assert storage.read_frame("data/raw/a.csv").columns[0] == "V1"


def test_load_folder_errors(storage: Storage) -> None:
    assert load_folder(storage, [RAW], HANDBOOK, labelled_only=False).height == 0
    storage.write_frame("data/raw/a.csv", tx(2))
    storage.write_frame("data/raw/b.csv", tx(2, start_id=5, TX_AMOUNT=["1", "x"]))
    with pytest.raises(DataValidationError) as info:
        load_folder(storage, [RAW], HANDBOOK, labelled_only=False)
    assert only(info.value.problems).file == storage.uri("data/raw/b.csv")
    storage.delete("data/raw/b.csv")
    storage.write_text("data/raw/readme.txt", "not data")
    with pytest.raises(DataValidationError, match="unknown file type"):
        load_folder(storage, [RAW], HANDBOOK, labelled_only=False)
    storage.delete("data/raw/readme.txt")
    storage.write_text("data/raw/.hidden.txt", "hidden files are not data")
    assert load_folder(storage, [RAW], HANDBOOK, labelled_only=False).height == 2


# ---------------------------------------------------------------- fingerprint


def test_fingerprint() -> None:
    df = validate(tx(8), HANDBOOK, "x").valid
    fp = fingerprint(df)
    assert fp == fingerprint(df.clone())
    assert fp == fingerprint(df.reverse())  # row order does not matter
    assert fp["n_rows"] == 8
    assert fp["n_frauds"] == 2
    assert fp["start"] == "2018-04-01 00:00:00"
    assert fp["end"] == "2018-04-01 00:07:00"
    assert len(str(fp["content_sha256"])) == 64
    changed = df.with_columns(pl.when(pl.col(TX_ID) == 3).then(99.0).otherwise(pl.col(AMOUNT)).alias(AMOUNT))
    assert fingerprint(changed)["content_sha256"] != fp["content_sha256"]
    assert fingerprint(df.head(7))["content_sha256"] != fp["content_sha256"]
    assert fingerprint(df.rename({"TX_AMOUNT": "AMT"}))["content_sha256"] != fp["content_sha256"]
    empty = fingerprint(df.head(0))
    assert (empty["n_rows"], empty["n_frauds"]) == (0, 0)
    assert "start" not in empty


def test_fingerprint_is_stable_across_processes() -> None:
    """The hash is recorded with each model, so it must not depend on the process (hash seeds)."""
    import subprocess
    import sys

    code = (
        "import polars as pl; from fraudops.data.loading import fingerprint; "
        "print(fingerprint(pl.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', None]}))['content_sha256'])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = fingerprint(pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]}))["content_sha256"]
    assert other == f"{here}\n"


def test_import_then_load_round_trip(tmp_path: Path, storage: Storage) -> None:
    settings = Settings(workspace=storage.url)
    paths = [write_csv(tmp_path / f"2018-04-0{d}.csv", tx(3, start_id=3 * d, day=d)) for d in (1, 2)]
    import_files(storage, settings, paths)
    df = load_labelled(storage, settings)
    assert df.height == 6
    assert_frame_equal(df.select(TX_ID), pl.DataFrame({TX_ID: [3, 4, 5, 6, 7, 8]}))


def test_import_two_files_of_the_same_name(tmp_path: Path, storage: Storage) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_csv(tmp_path / "a" / "day.csv", tx(2))
    second = write_csv(tmp_path / "b" / "day.csv", tx(2, start_id=5))
    with pytest.raises(DataValidationError) as info:
        import_files(storage, Settings(workspace=storage.url), [first, second], force=True)
    check(info.value.problems, second, None, "another file to import is also named day.csv", 0, [])
    assert raw_names(storage) == []
