"""No traceback for any user mistake: generated command lines and configuration files end in exit code 1 or
2 with an error message, never a Python traceback."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fraudops.cli import build
from fraudops.config import default_yaml
from fraudops.workspace import init_workspace

APP = build()

COMMANDS = [
    ["config"],
    ["champion", "show"],
    ["champion", "rollback", "--yes"],
    ["executions", "list"],
    ["executions", "show"],
    ["train"],
    ["register"],
    ["select-champion"],
    ["batch"],
    ["monitor"],
    ["trigger"],
    ["run"],
    ["data", "validate"],
    ["reset"],
]
"""Commands that fail fast on an empty workspace (no data, no model): nothing here trains or serves."""

OPTIONS = [
    "--train-days",
    "--delay-days",
    "--test-days",
    "--train-start",
    "--input",
    "--from",
    "--only",
    "--resume",
    "--run-id",
    "--limit",
    "--force",
    "--logs",
    "-i",
    "--bogus",
    "-w",
]

VALUES = st.one_of(
    st.integers(-(10**9), 10**9).map(str),
    st.text(alphabet=string.printable, max_size=12),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e400",
            "2018-02-30",
            "all",
            "train",
            "monitor",
            "{",
            '{"run": 3}',
            '{"run": "all", "x": 1}',
            "[]",
            "@/nonexistent.json",
            "last",
            "abc",
            "../..",
            "/",
        ]
    ),
)


def _ok(result: Any) -> str:
    """Exit 0, or 1/2 with an error message; never an exception escaping the command."""
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    assert result.exit_code in (0, 1, 2), (result.exit_code, output)
    if result.exit_code:  # a mistake says so; declining a confirmation is no mistake
        assert "error" in output.lower() or output.rstrip().endswith("Aborted."), output
    return output


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "ws"
    init_workspace(str(path))
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.upper().startswith("FRAUDOPS_"):
            monkeypatch.delenv(var)


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(COMMANDS),
    options=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=3),
    positional=st.lists(VALUES, max_size=2),
)
def test_generated_command_lines_never_show_a_traceback(ws: Path, command, options, positional) -> None:
    args = [*command, *positional]
    for option, value in options:
        args += [option, value]
    if "-w" not in args:
        args += ["-w", str(ws)]
    _ok(CliRunner().invoke(APP, args, input="n\n"))


SIMULATE = st.lists(
    st.tuples(
        st.sampled_from(["--days", "--customers", "--terminals", "--seed", "--first-day", "--drift-start"]),
        st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["x", "2018-02-30", "2018-04-02", "1.5"])),
    ),
    max_size=3,
)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=SIMULATE)
def test_simulate_options_are_validated_without_a_traceback(ws: Path, options) -> None:
    args = [
        "data",
        "simulate",
        "-w",
        str(ws),
        "--out",
        "prod_outputs/fuzz",
        "--customers",
        "5",
        "--days",
        "2",
    ]
    for option, value in options:
        args += [option, value]
    _ok(CliRunner().invoke(APP, args))


SETTINGS_KEYS = yaml.safe_load(default_yaml())


def _mutated(base: dict[str, Any], draw: Any) -> Any:
    """The default settings with one value replaced by something arbitrary."""
    section = draw(st.sampled_from(sorted(base)))
    key = draw(st.sampled_from(sorted(base[section]) if isinstance(base[section], dict) else ["x"]))
    value = draw(
        st.one_of(st.integers(), st.text(max_size=8), st.floats(), st.lists(st.integers(), max_size=2))
    )
    return {**base, section: {**(base[section] or {}), key: value}}


@st.composite
def config_files(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["mutated", "text", "bytes", "duplicate"]))
    if kind == "mutated":
        return yaml.safe_dump(_mutated(SETTINGS_KEYS, draw)).encode()
    if kind == "duplicate":
        return b"train:\n  train_days: 3\ntrain:\n  test_days: 2\n"
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=config_files(), command=st.sampled_from([["config"], ["champion", "show"], ["train"]]))
def test_generated_configuration_files_never_show_a_traceback(ws: Path, content: bytes, command) -> None:
    (ws / "fraudops.yaml").write_bytes(content)
    try:
        _ok(CliRunner().invoke(APP, [*command, "-w", str(ws)]))
    finally:
        (ws / "fraudops.yaml").write_text(default_yaml())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00binary", "is not a text file"),
        (b"train:\n  train_days: 3\ntrain:\n  test_days: 2\n", "duplicate key 'train'"),
        (b"train:\n  train_days: 3\n  train_days: 4\n", "duplicate key 'train_days'"),
    ],
)
def test_found_configuration_mistakes(ws: Path, content: bytes, message: str) -> None:
    (ws / "fraudops.yaml").write_bytes(content)
    try:
        assert message in _ok(CliRunner().invoke(APP, ["config", "-w", str(ws)]))
    finally:
        (ws / "fraudops.yaml").write_text(default_yaml())


def test_configuration_file_that_is_a_directory(tmp_path: Path) -> None:
    init_workspace(str(tmp_path / "ws"))
    (tmp_path / "ws" / "fraudops.yaml").unlink()
    (tmp_path / "ws" / "fraudops.yaml").mkdir()
    result = CliRunner().invoke(APP, ["config", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1 and "cannot be read" in _ok(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--train-days", "0"], "train.train_days"),
        (["train", "--test-days", "-2"], "test_days"),
        (["data", "simulate", "--days", "0"], "n_days"),
        (["data", "simulate", "--customers", "-1"], "n_customers"),
    ],
)
def test_option_values_are_checked_like_settings(ws: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(APP, [*args, "-w", str(ws)])
    assert result.exit_code == 1 and message in " ".join(_ok(result).split())
