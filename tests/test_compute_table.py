"""The feature table on a real LocalCluster: the workers read the workspace's files (whole, or a Parquet
file's row groups), compute the features and write them; what training reads from it is the local
engine's."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from distributed import Client

from fraudops import compute
from fraudops.config import Settings, SimulateConfig
from fraudops.data import simulate
from fraudops.data.loading import Piece, fingerprint, load_folder, load_labelled
from fraudops.data.schema import AMOUNT, LABEL, SCENARIO, TX_ID, to_file_columns
from fraudops.errors import DataValidationError
from fraudops.features import engine, table
from fraudops.modeling.splits import split
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import CURRENT, FEATURE_TABLES, RAW
from fraudops.workspace.storage import Storage

pytestmark = pytest.mark.slow

PARTITION_ROWS = 4_000


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """data/raw/: a Parquet file a day, then one file of many row groups; current_data/: a CSV with
    unlabelled rows and a corrected copy (same id and customer, other amount) of an older transaction."""
    root = tmp_path_factory.mktemp("table") / "ws"
    root.mkdir()
    settings, _ = init_workspace(str(root))
    storage = Storage(settings.workspace)
    df = simulate.simulate(SimulateConfig(n_customers=200, n_terminals=400, n_days=50, seed=7))
    days = list(simulate.iter_days(df))
    for day, frame in days[:30]:
        storage.write_frame(f"{RAW}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
    bulk = pl.concat([f for _, f in days[30:45]])
    bulk.write_parquet(root / RAW / "bulk.parquet", row_group_size=1_000)
    current = pl.concat([f for _, f in days[45:]]).drop(SCENARIO)
    current = current.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col(LABEL)).alias(LABEL)
    )
    corrected = days[10][1].head(1).drop(SCENARIO).with_columns(pl.col(AMOUNT) * 3)
    pl.concat([current, corrected]).write_csv(root / CURRENT / "current.csv")
    return {"settings": settings, "storage": storage, "corrected": corrected[TX_ID][0]}


def _build(client: Client, settings: Settings, storage: Storage, labelled_only: bool) -> table.FeatureTable:
    with compute.attach(client, partition_rows=PARTITION_ROWS) as eng:
        return table.build(eng, storage, settings, "t", [RAW, CURRENT], labelled_only=labelled_only)


def assert_same(local: pl.DataFrame, dist: pl.DataFrame) -> None:
    """Same rows (by id), columns and types; every count equal, every average within 1e-9."""
    assert dist.columns == local.columns and dist.schema == local.schema
    a, b = local.sort(TX_ID), dist.sort(TX_ID)
    assert a[TX_ID].equals(b[TX_ID])
    for name in a.columns:
        if a.schema[name].is_float():
            x, y = a[name].to_numpy(), b[name].to_numpy()
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-9, err_msg=name)
        else:
            assert b[name].equals(a[name]), name


@pytest.mark.parametrize("labelled_only", [True, False])
def test_the_table_holds_the_local_engines_features(
    dask_client: Client, ws: dict[str, Any], labelled_only: bool
) -> None:
    settings, storage = ws["settings"], ws["storage"]
    rows = load_folder(storage, [RAW, CURRENT], settings.data, labelled_only=labelled_only)
    local = engine.add_features(rows, settings.features)
    built = _build(dask_client, settings, storage, labelled_only)
    assert len(built.manifest.parts) >= 3  # more buckets than workers: the data really is cut
    first, last = built.days
    whole = built.window(first, last + dt.timedelta(days=1))
    assert_same(local, whole)
    assert whole.select(pl.col("TX_DATETIME").is_sorted()).item()  # (time, id) order
    assert whole.filter(pl.col(TX_ID) == ws["corrected"])[AMOUNT].to_list() == (
        rows.filter(pl.col(TX_ID) == ws["corrected"])[AMOUNT].to_list()
    )  # the later file's copy of a repeated id
    assert built.manifest.fingerprint == fingerprint(rows)
    some = built.window(first + dt.timedelta(days=20), first + dt.timedelta(days=27), [TX_ID, "TX_DATETIME"])
    day = pl.col("TX_DATETIME").dt.date()
    expected = local.filter((day >= first + dt.timedelta(days=20)) & (day < first + dt.timedelta(days=27)))
    assert some.columns == [TX_ID, "TX_DATETIME"] and sorted(some[TX_ID]) == sorted(expected[TX_ID])


def test_training_windows_from_the_table_are_the_local_ones(dask_client: Client, ws: dict[str, Any]) -> None:
    settings, storage = ws["settings"], ws["storage"]
    settings = settings.model_copy(deep=True)
    settings.train.train_days, settings.train.test_days = 21, 7
    local = split(load_labelled(storage, settings), settings)
    with compute.attach(dask_client, partition_rows=PARTITION_ROWS):
        built = table.labelled(storage, settings)
        assert isinstance(built, table.FeatureTable)
        dist = split(built, settings)
    assert dist.windows == local.windows
    for name in ("fit", "valid", "test", "test_all"):
        assert_same(getattr(local, name), getattr(dist, name))
    # the same inputs: the same table (select_champion reads the one train built); a changed file: rebuilt,
    # the new generation replacing the old one
    with compute.attach(dask_client, partition_rows=PARTITION_ROWS):
        assert table.labelled(storage, settings).manifest.generation == built.manifest.generation
        first_day = sorted(storage.ls(RAW))[0]
        storage.write_bytes(first_day, storage.read_bytes(first_day))  # rewritten: a new version
        rebuilt = table.labelled(storage, settings)
    assert rebuilt.manifest.generation != built.manifest.generation
    generations = [p for p in (Path(storage.path(FEATURE_TABLES)) / "labelled").iterdir() if p.is_dir()]
    assert [p.name for p in generations] == [rebuilt.manifest.generation]


def test_bad_rows_are_reported_as_when_loading_here(
    dask_client: Client, ws: dict[str, Any], tmp_path: Path
) -> None:
    """Every problem at once, a file's row groups reporting as the file."""
    settings, _ = init_workspace(str(tmp_path))
    storage = Storage(settings.workspace)
    source = ws["storage"]
    bulk = pl.read_parquet(source.path(f"{RAW}/bulk.parquet"))
    bad = pl.int_range(pl.len()).is_in([5, 1_500, 2_500, 2_501])  # in three row groups
    bulk = bulk.with_columns(pl.when(bad).then(-1.0).otherwise(pl.col(AMOUNT)).alias(AMOUNT))
    bulk.write_parquet(tmp_path / RAW / "bulk.parquet", row_group_size=1_000)
    (tmp_path / RAW / "extra.csv").write_text("TRANSACTION_ID,TX_DATETIME\n1,2018-04-01 00:00:00\n")
    with pytest.raises(DataValidationError) as here:
        load_folder(storage, [RAW], settings.data, labelled_only=True)
    with pytest.raises(DataValidationError) as there, compute.attach(dask_client) as eng:
        table.build(eng, storage, settings, "t", [RAW], labelled_only=True)
    assert sorted(map(str, there.value.problems)) == sorted(map(str, here.value.problems))
    assert any(p.n_rows == 4 for p in here.value.problems)
    assert not storage.ls(FEATURE_TABLES)  # checked before anything is computed or written


def test_pieces_are_read_in_batches_of_consecutive_pieces() -> None:
    """A shuffle's first tasks: consecutive pieces up to the partition's rows (a bigger piece alone), and
    at least as many batches as asked when there are as many pieces."""
    pieces = [Piece(f"f{i}.parquet", None, 10, i) for i in range(10)]

    def cut(sizes: list[int], rows: int, at_least: int) -> list[list[int]]:
        return [[p.index for p in b] for b in table._batches(pieces[: len(sizes)], sizes, rows, at_least)]

    assert cut([10] * 10, 30, 2) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert cut([10] * 10, 1_000, 4) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # 25 rows a batch at most
    assert cut([10, 50, 10, 10], 30, 1) == [[0], [1], [2, 3]]
    assert cut([10, 10], 1_000, 4) == [[0], [1]]
