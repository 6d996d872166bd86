"""The ``fraudops`` command: init, config, data simulate / import / validate, help and errors."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from fraudops.cli import build
from fraudops.config import DataConfig, default_yaml
from fraudops.data.validation import validate
from fraudops.workspace import load_settings
from fraudops.workspace.layout import CONFIG_FILE, FOLDERS

app = build()

SMALL = ["--customers", "200", "--terminals", "400", "--days", "20"]
HANDBOOK_COLUMNS = [
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FRAUDOPS_* variable of the caller's shell may leak into these tests."""
    for var in list(os.environ):
        if var.upper().startswith("FRAUDOPS_"):
            monkeypatch.delenv(var)


class Result:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.output = output
        self.text = " ".join(output.split())  # Rich wraps long lines; compare on normalised spaces


def run(*args: str) -> Result:
    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.output)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    assert run("init", str(path)).exit_code == 0
    return path


def raw_files(ws: Path, folder: str = "data/raw") -> list[str]:
    return sorted(p.name for p in (ws / folder).iterdir())


# ---------------------------------------------------------------- help


def command_paths(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and sub-command registered on the Typer app (so later additions are covered too)."""
    yield path
    if hasattr(cmd, "list_commands"):
        ctx = cmd.make_context("fraudops", [], resilient_parsing=True)
        for name in cmd.list_commands(ctx):
            yield from command_paths(cmd.get_command(ctx, name), (*path, name))


ALL_COMMANDS = list(command_paths(typer.main.get_command(app)))


def test_the_issue_commands_exist() -> None:
    assert {
        ("init",),
        ("config",),
        ("data",),
        ("data", "simulate"),
        ("data", "import"),
        ("data", "validate"),
    } <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "fraudops")
def test_help(path: tuple[str, ...]) -> None:
    r = run(*path, "--help")
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    # every command says what it does
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.get_command(cmd.make_context("fraudops", [], resilient_parsing=True), name)
    assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"


def test_no_arguments_shows_help() -> None:
    r = run()
    assert "Usage:" in r.output
    assert "data" in r.output


# ---------------------------------------------------------------- init and config


def test_init_creates_config_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "new"
    r = run("init", str(path))
    assert r.exit_code == 0, r.output
    assert f"workspace {path}: created fraudops.yaml" in r.text
    assert (path / CONFIG_FILE).read_text() == default_yaml()
    for rel in FOLDERS:
        assert (path / rel).is_dir(), rel


def test_init_again_keeps_the_config(ws: Path) -> None:
    (ws / CONFIG_FILE).write_text("train: {train_days: 9}\n")
    r = run("init", str(ws))
    assert r.exit_code == 0, r.output
    assert "kept existing fraudops.yaml" in r.text
    assert (ws / CONFIG_FILE).read_text() == "train: {train_days: 9}\n"


def test_init_in_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("init").exit_code == 0
    assert (tmp_path / CONFIG_FILE).is_file()
    assert (tmp_path / "monitoring_outputs/retraining_decision").is_dir()


def test_init_kind_features_writes_the_kaggle_mapping(tmp_path: Path) -> None:
    path = tmp_path / "cc"
    r = run("init", str(path), "--kind", "features")
    assert r.exit_code == 0, r.output
    text = (path / CONFIG_FILE).read_text()
    assert yaml.safe_load(text)["data"] == {
        "kind": "features",
        "columns": {
            "transaction_id": None,
            "timestamp": "Time",
            "customer_id": "CUSTOMER_ID",
            "terminal_id": "TERMINAL_ID",
            "amount": "Amount",
            "label": "Class",
            "scenario": None,
        },
        "feature_columns": None,
    }
    assert "    timestamp: Time  # event time" in text  # still documented line by line
    # only the data section differs from the transactions default
    others = [line for line in text.splitlines() if not line.startswith(("  ", "data:"))]
    assert others == [line for line in default_yaml().splitlines() if not line.startswith(("  ", "data:"))]
    assert load_settings(str(path)).data == DataConfig(kind="features")
    assert "data import FILE" in r.text and "data simulate" not in r.text
    # an existing workspace of the other kind is not silently kept
    r = run("init", str(path), "--kind", "transactions")
    assert r.exit_code == 1
    assert "exists with data.kind 'features', not 'transactions'" in r.text
    assert run("init", str(path)).exit_code == 0  # no --kind: the existing file, whatever its kind
    assert run("init", str(tmp_path / "bad"), "--kind", "kaggle").exit_code == 2


def test_config_shows_file_and_environment(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (ws / CONFIG_FILE).write_text("train: {train_days: 9}\nsimulate: {n_days: 30}\n")
    monkeypatch.setenv("FRAUDOPS_SIMULATE__N_DAYS", "40")
    r = run("config", "-w", str(ws))
    assert r.exit_code == 0, r.output
    assert "train_days: 9" in r.output
    assert "n_days: 40" in r.output


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args",
    [("config",), ("data", "simulate", *SMALL), ("data", "import", "x.csv"), ("data", "validate", "x.csv")],
    ids=lambda a: " ".join(a[:2]),
)
def test_outside_a_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code == 1
    assert "is not a fraudops workspace" in r.text
    assert "run `fraudops init .`" in r.text
    assert "Traceback" not in r.output
    assert not (tmp_path / "data").exists()


def test_outside_a_workspace_names_the_given_folder(tmp_path: Path) -> None:
    r = run("data", "simulate", "-w", str(tmp_path / "nowhere"), *SMALL)
    assert r.exit_code == 1
    assert f"run `fraudops init {tmp_path / 'nowhere'}`" in r.text


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("train:\n  trian_days: 3\n", "train.trian_days: unknown key"),
        ("simulate: {n_days: 0}\n", "simulate.n_days: Input should be greater than 0 (got 0)"),
        ("workspace: /x\n", "workspace: unknown key"),
        ("train: [1,\n", "is not valid YAML"),
    ],
)
def test_invalid_config_file(ws: Path, yaml_text: str, expected: str) -> None:
    (ws / CONFIG_FILE).write_text(yaml_text)
    for args in (("config", "-w", str(ws)), ("data", "simulate", "-w", str(ws), *SMALL), ("init", str(ws))):
        r = run(*args)
        assert r.exit_code == 1, args
        assert expected in r.text, r.output
        assert str(ws / CONFIG_FILE) in r.text
    assert raw_files(ws) == []


def test_unknown_environment_variable(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_TRAIN__TRAIN_DAYZ", "3")
    r = run("config", "-w", str(ws))
    assert r.exit_code == 1
    assert "unknown setting in environment: FRAUDOPS_TRAIN__TRAIN_DAYZ" in r.text


# ---------------------------------------------------------------- data simulate


def test_simulate_writes_one_parquet_per_day(ws: Path) -> None:
    r = run("data", "simulate", "-w", str(ws), *SMALL)
    assert r.exit_code == 0, r.output
    days = [dt.date(2018, 4, 1) + dt.timedelta(days=i) for i in range(20)]
    assert raw_files(ws) == [f"{d.isoformat()}.parquet" for d in days]
    total = 0
    for d in days:
        df = pl.read_parquet(ws / "data/raw" / f"{d.isoformat()}.parquet")
        assert df.columns == HANDBOOK_COLUMNS
        assert df["TX_DATETIME"].dt.date().unique().to_list() == [d]
        assert df["TX_DATETIME"].is_sorted()
        assert validate(df, DataConfig(), d.isoformat()).problems == []
        total += df.height
    assert total > 1000
    assert f"wrote 20 daily files ({total:,} transactions) to {ws}/data/raw" in r.text


def test_simulate_uses_the_configured_column_names(ws: Path) -> None:
    (ws / CONFIG_FILE).write_text(
        "data:\n  columns: {transaction_id: tx_id, timestamp: ts, customer_id: card, terminal_id: merchant,\n"
        "            amount: amount, label: is_fraud, scenario: null}\n"
        "simulate: {start_date: 2020-01-01}\n"
    )
    r = run("data", "simulate", "-w", str(ws), "--customers", "200", "--terminals", "400", "--days", "3")
    assert r.exit_code == 0, r.output
    assert raw_files(ws) == ["2020-01-01.parquet", "2020-01-02.parquet", "2020-01-03.parquet"]
    df = pl.read_parquet(ws / "data/raw/2020-01-02.parquet")
    # unmapped roles (the scenario here) keep their handbook name
    assert df.columns == ["tx_id", "ts", "card", "merchant", "amount", "is_fraud", "TX_FRAUD_SCENARIO"]


def test_simulate_day_range_unlabelled_and_out(ws: Path) -> None:
    r = run(
        "data", "simulate", "-w", str(ws), *SMALL,
        "--first-day", "2018-04-05", "--last-day", "2018-04-07", "--unlabelled", "--out", "prod_inputs",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "wrote 3 daily files" in r.text
    assert "unlabelled" in r.text
    assert raw_files(ws) == []
    assert raw_files(ws, "prod_inputs") == ["2018-04-05.parquet", "2018-04-06.parquet", "2018-04-07.parquet"]
    df = pl.read_parquet(ws / "prod_inputs/2018-04-06.parquet")
    assert df.columns == HANDBOOK_COLUMNS[:5]


def test_simulate_is_deterministic_and_the_day_range_is_a_slice(ws: Path, tmp_path: Path) -> None:
    assert run("data", "simulate", "-w", str(ws), *SMALL, "--seed", "3").exit_code == 0
    other = tmp_path / "other"
    run("init", str(other))
    assert (
        run(
            "data", "simulate", "-w", str(other), *SMALL, "--seed", "3", "--first-day", "2018-04-10"
        ).exit_code
        == 0
    )
    assert raw_files(other) == raw_files(ws)[9:]
    for name in raw_files(other):
        assert pl.read_parquet(other / "data/raw" / name).equals(pl.read_parquet(ws / "data/raw" / name))


def test_simulate_empty_day_range(ws: Path) -> None:
    r = run("data", "simulate", "-w", str(ws), *SMALL, "--first-day", "2019-01-01")
    assert r.exit_code == 1
    assert "no simulated day falls between --first-day and --last-day" in r.text
    assert raw_files(ws) == []


def test_simulate_bad_option(ws: Path) -> None:
    r = run("data", "simulate", "-w", str(ws), "--days", "0")
    assert r.exit_code == 1 and "simulate.n_days: Input should be greater than 0 (got 0)" in r.text
    assert raw_files(ws) == []


def test_workspace_option_wins_over_environment(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    run("init", str(other))
    monkeypatch.setenv("FRAUDOPS_WORKSPACE", str(other))
    assert run("data", "simulate", "-w", str(ws), *SMALL, "--days", "2").exit_code == 0
    assert len(raw_files(ws)) == 2
    assert raw_files(other) == []
    # without -w, FRAUDOPS_WORKSPACE is the workspace
    assert run("data", "simulate", *SMALL, "--days", "1").exit_code == 0
    assert raw_files(other) == ["2018-04-01.parquet"]


# ---------------------------------------------------------------- data import / validate


GOOD = (
    "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
    "1,2018-04-01 00:00:31,596,3156,57.16,0\n"
    "2,2018-04-01 00:02:10,4961,3412,81.51,1\n"
)
BAD = (
    "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
    "3,2018-04-02 00:00:31,596,3156,abc,0\n"
    "4,2018-04-02 00:02:10,4961,3412,5.0,1\n"
)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.csv").write_text(GOOD)
    (folder / "bad.csv").write_text(BAD)
    monkeypatch.chdir(folder)
    return folder


def test_import_good_file(ws: Path, files: Path) -> None:
    r = run("data", "import", "good.csv", "-w", str(ws))
    assert r.exit_code == 0, r.output
    assert (ws / "data/raw/good.csv").read_text() == GOOD
    assert "imported" in r.output
    # a second import of the same name needs --force
    r = run("data", "import", "good.csv", "-w", str(ws))
    assert r.exit_code == 1
    assert "exists (use --force to replace it)" in r.text
    assert run("data", "import", "good.csv", "-w", str(ws), "--force").exit_code == 0


def test_import_bad_file_writes_nothing(ws: Path, files: Path) -> None:
    r = run("data", "import", "good.csv", "bad.csv", "-w", str(ws))
    assert r.exit_code == 1
    assert "bad.csv, column 'TX_AMOUNT': not a number (1 rows, e.g. 'abc')" in r.text
    assert "good.csv" not in r.text
    assert "Traceback" not in r.output
    assert raw_files(ws) == []


def test_import_missing_and_unknown_files(ws: Path, files: Path) -> None:
    (files / "notes.txt").write_text("hello")
    r = run("data", "import", "good.csv", "missing.csv", "notes.txt", "-w", str(ws))
    assert r.exit_code == 1
    assert "missing.csv" in r.text
    assert "no such file" in r.text
    assert "notes.txt: unknown file type (expected .csv or .parquet)" in r.text
    assert raw_files(ws) == []


def test_validate_files(ws: Path, files: Path) -> None:
    r = run("data", "validate", "good.csv", "-w", str(ws))
    assert r.exit_code == 0, r.output
    assert "all files valid" in r.text
    r = run("data", "validate", "good.csv", "bad.csv", "-w", str(ws))
    assert r.exit_code == 1
    assert "bad.csv, column 'TX_AMOUNT': not a number (1 rows, e.g. 'abc')" in r.text
    assert "Traceback" not in r.output
    assert raw_files(ws) == []


def test_features_kind_workspace(ws: Path, files: Path) -> None:
    (ws / CONFIG_FILE).write_text("data: {kind: features}\n")
    v = ",".join(f"V{i}" for i in range(1, 29))
    row = ",".join("0.5" for _ in range(28))
    (files / "creditcard.csv").write_text(f"Time,{v},Amount,Class\n0,{row},1.5,0\n10,{row},2.5,1\n")
    (files / "broken.csv").write_text(f"Time,{v},Amount,Class\n0,{row},1.5,0\n10,{row},2.5,3\n")
    assert run("data", "import", "creditcard.csv", "-w", str(ws)).exit_code == 0
    r = run("data", "import", "broken.csv", "-w", str(ws))
    assert r.exit_code == 1
    assert "broken.csv, column 'Class': label not in {0, 1} (1 rows, e.g. 3)" in r.text
    assert raw_files(ws) == ["creditcard.csv"]


def _kaggle_rows(n: int = 4) -> tuple[str, list[str]]:
    """A creditcard.csv header and ``n`` rows (V values all different, so no column looks like an index)."""
    v = ",".join(f"V{i}" for i in range(1, 29))
    rows = [
        ",".join([str(10 * t), *(f"0.{t}{k}" for k in range(28)), f"{t}.5", str(t % 2)]) for t in range(n)
    ]
    return f"Time,{v},Amount,Class", rows


def test_validate_a_text_cell_is_not_valid(ws: Path, files: Path) -> None:
    """Found: one text cell (V3='abc') made data validate say "all files valid" (and V3 was dropped)."""
    (ws / CONFIG_FILE).write_text("data: {kind: features}\n")
    head, rows = _kaggle_rows()
    rows[2] = rows[2].replace(",0.22,", ",abc,")  # V3 of the third row
    (files / "text.csv").write_text("\n".join([head, *rows]) + "\n")
    r = run("data", "validate", "text.csv", "-w", str(ws))
    assert r.exit_code == 1
    assert "text.csv, column 'V3': not a number (1 rows, e.g. 'abc')" in r.text
    assert "all files valid" not in r.text
    assert "Traceback" not in r.output


def test_validate_and_import_print_the_feature_columns(tmp_path: Path, files: Path) -> None:
    ws = tmp_path / "cc"
    assert run("init", str(ws), "--kind", "features").exit_code == 0
    head, rows = _kaggle_rows()
    (files / "cc.csv").write_text("\n".join([head, *rows]) + "\n")
    r = run("data", "validate", "cc.csv", "-w", str(ws))
    assert r.exit_code == 0, r.output
    features = ", ".join(f"V{i}" for i in range(1, 29))
    assert f"cc.csv: 29 feature columns: {features}, Amount; time column 'Time' (split by time)" in r.text
    assert "all files valid" in r.text
    r = run("data", "import", "cc.csv", "-w", str(ws))
    assert r.exit_code == 0, r.output
    assert f"features kind: 29 feature columns: {features}, Amount" in r.text

    (files / "index.csv").write_text(
        "\n".join([f",{head}", *(f"{i},{row}" for i, row in enumerate(rows))]) + "\n"
    )
    r = run("data", "validate", "index.csv", "-w", str(ws))
    assert r.exit_code == 1
    why = "column without a name looks like an index (pandas' index written as a column)"
    assert f"index.csv: {why}" in r.text


# ---------------------------------------------------------------- the installed command, end to end


def test_installed_command_end_to_end(ws: Path, tmp_path: Path) -> None:
    """The installed ``fraudops`` script in a real process: a failed import exits 1, names the problem on
    stderr and writes nothing (one process only: interpreter start-up is the slow part)."""
    exe = Path(sys.executable).parent / "fraudops"
    assert exe.exists(), "the fraudops script is installed in the environment"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDOPS_")}
    env["COLUMNS"] = "200"
    (tmp_path / "good.csv").write_text(GOOD)
    (tmp_path / "bad.csv").write_text(BAD)
    r = subprocess.run(
        [str(exe), "data", "import", "-w", str(ws), str(tmp_path / "good.csv"), str(tmp_path / "bad.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{tmp_path / 'bad.csv'}, column 'TX_AMOUNT': not a number (1 rows, e.g. 'abc')" in r.stderr
    assert "Traceback" not in r.stderr
    assert raw_files(ws) == []
