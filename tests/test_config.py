"""fraudops.config: defaults, YAML and environment overrides, and the errors users see."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from fraudops.config import (
    KAGGLE_COLUMNS,
    Columns,
    DataConfig,
    Settings,
    default_yaml,
    parse_settings,
)
from fraudops.errors import ConfigError, FraudopsError
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.layout import CONFIG_FILE, FOLDERS


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FRAUDOPS_* variable of the caller's shell may leak into these tests."""
    import os

    for var in list(os.environ):
        if var.upper().startswith("FRAUDOPS_"):
            monkeypatch.delenv(var)


def parse(text: str | None) -> Settings:
    return parse_settings(text, workspace="ws", source=CONFIG_FILE)


def error_of(text: str | None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


# ---------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = Settings()
    assert s.workspace == "."
    assert s.data.kind == "transactions"
    assert s.data.columns.model_dump() == {
        "transaction_id": "TRANSACTION_ID",
        "timestamp": "TX_DATETIME",
        "customer_id": "CUSTOMER_ID",
        "terminal_id": "TERMINAL_ID",
        "amount": "TX_AMOUNT",
        "label": "TX_FRAUD",
        "scenario": "TX_FRAUD_SCENARIO",
    }
    assert s.data.feature_columns is None
    # the handbook's published simulator configuration
    assert (s.simulate.n_customers, s.simulate.n_terminals, s.simulate.n_days) == (5000, 10000, 183)
    assert s.simulate.start_date == dt.date(2018, 4, 1)
    assert s.simulate.radius == 5.0
    assert s.simulate.drift_start is None
    assert s.features.customer_windows == [1, 7, 30]
    assert s.features.terminal_windows == [1, 3, 7, 14, 30]
    assert s.features.delay_days == 7
    assert (s.train.train_days, s.train.delay_days, s.train.test_days) == (21, 7, 7)
    assert s.train.candidates == ["logistic_regression", "xgboost"]
    assert s.train.threshold.strategy == "min_cost"
    assert s.registry.tracking_uri is None
    assert s.serve.port == 8080
    assert s.serve.api_key is None


def test_no_text_and_empty_text_give_the_defaults() -> None:
    expected = Settings(workspace="ws")
    assert parse(None) == expected
    assert parse("") == expected
    assert parse("# only a comment\n") == expected
    assert parse(None).workspace == "ws"


def test_default_yaml_round_trips_to_exactly_the_defaults() -> None:
    text = default_yaml()
    assert parse_settings(text, workspace=".", source=CONFIG_FILE) == Settings()
    # every setting is written out (not just left to the defaults), with its default value
    assert yaml.safe_load(text) == Settings().model_dump(mode="json", exclude={"workspace"})
    assert "workspace" not in yaml.safe_load(text)


def test_default_yaml_documents_settings_and_env_overrides() -> None:
    text = default_yaml()
    assert text.startswith("#")
    assert "FRAUDOPS_TRAIN__TRAIN_DAYS" in text
    # field descriptions become comments
    assert "n_terminals: 10000" in text
    assert "delay_days: 7  # fraud labels are known this many days later" in text


# ---------------------------------------------------------------- YAML overrides


def test_yaml_overrides() -> None:
    s = parse(
        """
train:
  train_days: 10
  threshold: {strategy: target_fpr, target_fpr: 0.02}
simulate:
  start_date: 2019-01-15
  drift_start: '2019-02-01'
data:
  columns: {amount: amount, customer_id: card}
features:
  customer_windows: [2, 14]
serve:
  api_key: s3cret
"""
    )
    assert s.workspace == "ws"
    assert s.train.train_days == 10
    assert s.train.test_days == 7  # untouched keys keep their defaults
    assert s.train.threshold.strategy == "target_fpr"
    assert s.train.threshold.target_fpr == 0.02
    assert s.simulate.start_date == dt.date(2019, 1, 15)
    assert s.simulate.drift_start == dt.date(2019, 2, 1)
    assert s.data.columns.amount == "amount"
    assert s.data.columns.customer_id == "card"
    assert s.data.columns.timestamp == "TX_DATETIME"
    assert s.features.customer_windows == [2, 14]
    assert s.serve.api_key is not None
    assert s.serve.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


# ---------------------------------------------------------------- environment overrides


def test_env_overrides_beat_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_TRAIN__TRAIN_DAYS", "14")
    s = parse("train:\n  train_days: 10\n  test_days: 3\n")
    assert s.train.train_days == 14
    assert s.train.test_days == 3  # the rest of the YAML section is kept


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_TRAIN__TRAIN_DAYS", "14")
    monkeypatch.setenv("FRAUDOPS_SIMULATE__START_DATE", "2020-02-29")
    monkeypatch.setenv("FRAUDOPS_REGISTRY__TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("FRAUDOPS_TRAIN__CANDIDATES", '["xgboost"]')
    monkeypatch.setenv("FRAUDOPS_TRAIN__THRESHOLD__ALERTS_PER_DAY", "7")
    s = parse(None)
    assert s.train.train_days == 14
    assert s.simulate.start_date == dt.date(2020, 2, 29)
    assert s.registry.tracking_uri == "http://mlflow:5000"
    assert s.train.candidates == ["xgboost"]
    assert s.train.threshold.alerts_per_day == 7


@pytest.mark.parametrize(
    "var",
    ["FRAUDOPS_TRAIN__TRAIN_DAYZ", "FRAUDOPS_NOPE", "FRAUDOPS_TRAIN__TRAIN_DAYS__MORE", "FRAUDOPS_DATA__X"],
)
def test_unknown_env_var_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "1")
    message = error_of(None)
    assert var in message
    assert "unknown setting in environment" in message


def test_bad_env_value_names_key_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_TRAIN__TRAIN_DAYS", "fourteen")
    message = error_of("train: {train_days: 10}")
    assert "train.train_days" in message
    assert "'fourteen'" in message


def test_env_workspace_does_not_redirect_the_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    """FRAUDOPS_WORKSPACE is the CLI's --workspace default; settings keep the folder they were read from."""
    monkeypatch.setenv("FRAUDOPS_WORKSPACE", "/somewhere/else")
    assert parse(None).workspace == "ws"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("trian: {}", "trian"),
        ("train: {trian_days: 3}", "train.trian_days"),
        ("data: {columns: {amout: AMOUNT}}", "data.columns.amout"),
        ("train: {threshold: {stratgy: min_cost}}", "train.threshold.stratgy"),
    ],
)
def test_unknown_yaml_key_names_the_dotted_key(text: str, key: str) -> None:
    message = error_of(text)
    assert f"  {key}: unknown key" in message
    assert CONFIG_FILE in message


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("train: {train_days: -1}", "train.train_days", "-1"),
        ("train: {train_days: abc}", "train.train_days", "'abc'"),
        ("data: {kind: nope}", "data.kind", "'nope'"),
        ("serve: {port: 70000}", "serve.port", "70000"),
        ("simulate: {start_date: someday}", "simulate.start_date", "'someday'"),
        ("train: {candidates: [random_forest]}", "train.candidates.0", "'random_forest'"),
        ("monitor: {ks_pvalue: 1.5}", "monitor.ks_pvalue", "1.5"),
    ],
)
def test_bad_value_names_key_and_value(text: str, key: str, value: str) -> None:
    message = error_of(text)
    line = next(ln for ln in message.splitlines() if ln.strip().startswith(f"{key}:"))
    assert f"(got {value})" in line


def test_every_bad_key_is_reported_at_once() -> None:
    message = error_of("train: {train_days: 0, test_days: 0}\nserve: {prot: 1}")
    assert "train.train_days" in message
    assert "train.test_days" in message
    assert "serve.prot: unknown key" in message


def test_section_that_is_not_a_mapping() -> None:
    message = error_of("train: 5")
    assert "train:" in message


def test_invalid_yaml() -> None:
    message = error_of("train: [1, 2\n")
    assert "fraudops.yaml is not valid YAML" in message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string", "str"), ("42", "int")])
def test_non_mapping_yaml(text: str, kind: str) -> None:
    assert error_of(text) == f"fraudops.yaml must be a mapping of settings, got {kind}"


def test_workspace_key_in_yaml_is_rejected() -> None:
    message = error_of("workspace: /elsewhere\n")
    assert "workspace: unknown key" in message


def test_config_error_is_a_user_error() -> None:
    assert issubclass(ConfigError, FraudopsError)
    assert issubclass(ConfigError, ValueError)


def test_assignments_are_validated() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.train.train_days = 0
    s.train.train_days = 5
    assert s.train.train_days == 5


# ---------------------------------------------------------------- data kinds


def test_features_kind_gets_kaggle_columns() -> None:
    s = parse("data: {kind: features}")
    cols = s.data.columns
    assert (cols.transaction_id, cols.timestamp, cols.amount, cols.label, cols.scenario) == (
        None,
        "Time",
        "Amount",
        "Class",
        None,
    )


def test_features_kind_keeps_given_columns() -> None:
    s = parse("data:\n  kind: features\n  columns: {label: is_fraud, transaction_id: row_id}\n")
    assert s.data.columns.label == "is_fraud"
    assert s.data.columns.transaction_id == "row_id"
    assert s.data.columns.timestamp == KAGGLE_COLUMNS["timestamp"]
    assert s.data.columns.amount == KAGGLE_COLUMNS["amount"]


def test_features_kind_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_DATA__KIND", "features")
    assert parse(None).data.columns.label == "Class"


def test_transactions_kind_keeps_handbook_columns() -> None:
    assert DataConfig(kind="transactions").columns == Columns()
    assert DataConfig(kind="features", columns={"label": "y"}).columns.timestamp == "Time"


# ---------------------------------------------------------------- workspaces


def test_load_settings_outside_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(tmp_path))
    assert "is not a fraudops workspace" in str(info.value)
    assert f"run `fraudops init {tmp_path}`" in str(info.value)


def test_init_workspace_creates_config_and_layout(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    settings, created = init_workspace(str(ws))
    assert created
    assert settings == Settings(workspace=str(ws))
    assert (ws / CONFIG_FILE).read_text() == default_yaml()
    for rel in FOLDERS:
        assert (ws / rel).is_dir(), rel


def test_init_workspace_keeps_an_existing_config(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("train: {train_days: 9}\n")
    settings, created = init_workspace(str(tmp_path))
    assert not created
    assert settings.train.train_days == 9
    assert (tmp_path / CONFIG_FILE).read_text() == "train: {train_days: 9}\n"
    assert (tmp_path / "data/raw").is_dir()


def test_load_settings_names_the_file_in_errors(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("train:\n  trian_days: 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / CONFIG_FILE) in message
    assert "train.trian_days: unknown key" in message


def test_load_settings_reads_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / CONFIG_FILE).write_text("train: {train_days: 9, test_days: 4}\n")
    monkeypatch.setenv("FRAUDOPS_TRAIN__TEST_DAYS", "5")
    settings = load_settings(str(tmp_path))
    assert (settings.train.train_days, settings.train.test_days) == (9, 5)
    assert settings.workspace == str(tmp_path)


def test_readme_configuration_reference_is_the_code_default():
    """The README's configuration reference is default_yaml() verbatim, so the docs stay true."""
    from pathlib import Path

    from fraudops.config import default_yaml

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"```yaml\n{default_yaml()}```" in readme
