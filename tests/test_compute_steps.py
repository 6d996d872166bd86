"""Batch scoring, drift and `fraudops run` on a real Dask LocalCluster: the local engine's outputs, a
worker killed mid-batch, the command end to end (also with the workspace on the S3 API server)."""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from distributed import Client

from fraudops import compute
from fraudops.batch.step import batch_step
from fraudops.config import MonitorConfig, SimulateConfig
from fraudops.context import StepContext
from fraudops.data import simulate
from fraudops.data.loading import fingerprint, load_folder
from fraudops.data.schema import LABEL, SCENARIO
from fraudops.features import table
from fraudops.monitoring.stats import drift_table
from fraudops.monitoring.step import monitor_step
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import CURRENT, DRIFT_CSV, FEATURE_TABLES, PREDICTIONS, PROD_INPUTS, RAW
from fraudops.workspace.storage import Storage
from helpers import dask_run_workspace, open_ws, train_register_promote, write_days
from worker_kill import killing

pytestmark = pytest.mark.slow

N_DAYS, HELD_OUT = 50, 4


@pytest.fixture(scope="module")
def tx_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Transactions kind: a champion trained on data/raw/, the last days unlabelled in prod_inputs/."""
    ws = tmp_path_factory.mktemp("dask") / "ws"
    ws.mkdir()
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    df = simulate.simulate(SimulateConfig(n_customers=200, n_terminals=400, n_days=N_DAYS, seed=5))
    days = list(simulate.iter_days(df))
    write_days(storage, settings, RAW, days[:-HELD_OUT])
    train_register_promote(settings, storage)
    held = [(d, f.drop(LABEL, SCENARIO)) for d, f in days[-HELD_OUT:]]
    write_days(storage, settings, PROD_INPUTS, held)
    return {"ws": ws, "labelled": days[-HELD_OUT:]}


def _outputs(storage: Storage) -> dict[str, pl.DataFrame]:
    """Every output file, without the run's timestamp."""
    return {rel: storage.read_frame(rel).drop("scored_at") for rel in storage.ls(PREDICTIONS)}


def _hidden(ws: Path) -> list[str]:
    return [p.name for p in (ws / PREDICTIONS).iterdir() if p.name.startswith(".")]


def _run_batch(ws: Path, client: Client | None, partition_rows: int | None = None) -> dict[str, pl.DataFrame]:
    settings, storage = open_ws(ws)
    storage.delete(PREDICTIONS, recursive=True)
    if client is None:
        result = batch_step(StepContext(settings, storage))
    else:
        settings.compute.partition_rows = partition_rows or settings.compute.partition_rows
        with compute.attach(client, settings.compute.partition_rows):
            result = batch_step(StepContext(settings, storage))
    assert not result.failed and result.totals.files == len(storage.ls(PROD_INPUTS))
    return _outputs(storage)


def test_batch_on_the_cluster_gives_the_local_predictions(dask_client: Client, tx_ws: dict[str, Any]) -> None:
    local = _run_batch(tx_ws["ws"], None)
    dist = _run_batch(tx_ws["ws"], dask_client)
    assert (tx_ws["ws"] / FEATURE_TABLES / "history" / "table.json").exists()  # history built by the workers
    assert sorted(dist) == sorted(local) and len(local) == HELD_OUT
    for rel, frame in local.items():
        assert dist[rel].equals(frame), rel  # same rows, order, ids and identical probabilities
        assert frame["fraud_probability"].n_unique() > 10


def test_batch_reads_a_history_of_many_parts_a_group_at_a_time(
    dask_client: Client, tx_ws: dict[str, Any]
) -> None:
    """Small partitions: the history table has many parts, each file's look-back is read in several
    customer buckets and a part (whole terminals) at a time; the probabilities are the local ones."""
    local = _run_batch(tx_ws["ws"], None)
    storage = Storage(str(tx_ws["ws"]))
    storage.delete(FEATURE_TABLES, recursive=True)
    dist = _run_batch(tx_ws["ws"], dask_client, partition_rows=2_000)
    parts = storage.read_json(posixpath.join(FEATURE_TABLES, "history", "table.json"))["parts"]
    assert len(parts) >= 8
    for rel, frame in local.items():
        assert dist[rel].drop("fraud_probability").equals(frame.drop("fraud_probability")), rel
        np.testing.assert_allclose(dist[rel]["fraud_probability"], frame["fraud_probability"], rtol=1e-9)
    storage.delete(FEATURE_TABLES, recursive=True)  # the next tests build it with their own partitions


def test_a_worker_killed_mid_batch_the_step_completes_and_leaves_no_partial_output(
    dask_client: Client, tx_ws: dict[str, Any]
) -> None:
    ws = tx_ws["ws"]
    settings, storage = open_ws(ws)
    expected = _run_batch(ws, None)
    # more files than workers, so that a kill lands while files are being scored
    copies = []
    for rel in storage.ls(PROD_INPUTS):
        stem, ext = posixpath.splitext(rel)
        for copy in range(3):
            copies.append(f"{stem}-copy{copy}{ext}")
            storage.write_bytes(copies[-1], storage.read_bytes(rel))
    storage.delete(PREDICTIONS, recursive=True)
    marker = ws.parent / "killed"
    with (
        killing(dask_client, "score_partition", marker, ws / PREDICTIONS) as pids,
        compute.attach(dask_client),
    ):
        result = batch_step(StepContext(settings, storage))
    killed = [int(marker.read_text())] if marker.exists() else []
    assert killed and killed[0] in pids, "no worker was killed"
    assert not result.failed and result.totals.files == HELD_OUT * 4
    out = _outputs(storage)
    assert len(out) == HELD_OUT * 4 and not _hidden(ws)
    for rel, frame in out.items():
        original = next(r for r in expected if Path(rel).name.startswith(Path(r).name.split(".out")[0]))
        assert frame.equals(expected[original]), rel
    assert killed[0] not in dask_client.run(os.getpid).values()  # it really died (its nanny restarts it)
    for rel in copies:
        storage.delete(rel)


def test_a_worker_killed_while_writing_a_feature_table_part_the_table_is_whole(
    dask_client: Client, tx_ws: dict[str, Any]
) -> None:
    """Its part is rewritten by the rerun task (the lost work recomputed from the files), the killed
    attempt's temporary removed: the table holds every row once, as loaded here."""
    settings, storage = open_ws(tx_ws["ws"])
    marker = tx_ws["ws"].parent / "killed-table"
    folder = tx_ws["ws"] / FEATURE_TABLES
    with (
        killing(dask_client, "write_part", marker, folder) as pids,
        compute.attach(dask_client, partition_rows=3_000) as eng,
    ):
        built = table.build(eng, storage, settings, "killed", [RAW], labelled_only=True)
    assert marker.exists() and int(marker.read_text()) in pids, "no worker was killed"
    assert built.manifest.fingerprint == fingerprint(
        load_folder(storage, [RAW], settings.data, labelled_only=True)
    )
    assert not [p for p in folder.rglob(".*")]


def test_monitor_on_the_cluster_decides_as_the_local_engine(
    dask_client: Client, tx_ws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labelled current data over the history table the workers built: the same features (the rows'
    look-back read by a worker, never here), drift, performance (known-compromised cards left out from
    the table's frauds) and decision."""
    settings, storage = open_ws(tx_ws["ws"])
    write_days(storage, settings, CURRENT, tx_ws["labelled"][:2])
    read_here: list[tuple[Any, Any]] = []
    read_days = table.read_days

    def reading(storage: Storage, rel: str, start: Any, end: Any, columns: Any) -> pl.DataFrame:
        read_here.append((start, end))
        return read_days(storage, rel, start, end, columns)

    try:
        local = monitor_step(StepContext(settings, storage))
        local_drift = storage.read_frame(DRIFT_CSV)
        with compute.attach(dask_client, partition_rows=3_000):
            monkeypatch.setattr(table, "read_days", reading)
            dist = monitor_step(StepContext(settings, storage))
            monkeypatch.undo()
        dist_drift = storage.read_frame(DRIFT_CSV)
    finally:
        storage.delete(CURRENT, recursive=True)
        storage.makedirs(CURRENT)
    assert (tx_ws["ws"] / FEATURE_TABLES / "raw" / "table.json").exists()
    assert read_here and set(read_here) == {(None, None)}  # whole parts for the frauds, no look-back
    assert local.performance_status != "no labelled data" and local.n_labelled > 0
    skip = {"run_id", "monitored_at"}
    assert dist.model_dump(exclude=skip) == local.model_dump(exclude=skip)
    exact = [c for c, t in local_drift.schema.items() if not t.is_float()]
    assert dist_drift.select(exact).equals(local_drift.select(exact))
    for col in (c for c in local_drift.columns if c not in exact):
        np.testing.assert_allclose(dist_drift[col].to_numpy(), local_drift[col].to_numpy(), rtol=1e-12)


def test_drift_on_the_cluster_equals_the_local_statistics(dask_client: Client) -> None:
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(6)]
    ref = pl.DataFrame({n: rng.normal(0, 1, 20_000) for n in names})
    cur = pl.DataFrame({n: rng.normal(0.1 * i, 1 + 0.1 * i, 30_000) for i, n in enumerate(names)})
    cur = cur.with_columns(pl.when(pl.col("f5") > 2).then(None).otherwise(pl.col("f5")).alias("f5"))
    cfg = MonitorConfig()
    local = drift_table(ref, cur, names, cfg)
    with compute.attach(dask_client):
        dist = drift_table(ref, cur, names, cfg)
    # the same decision and counts; the statistics to float rounding (a worker sums with one thread)
    exact = ["feature", "drift_detected", "reason", "n_ref", "n_cur", "missing_ref", "missing_cur"]
    assert dist.select(exact).equals(local.select(exact))
    for col in ("ks_statistic", "ks_pvalue", "psi", "wasserstein"):
        np.testing.assert_allclose(dist[col].to_numpy(), local[col].to_numpy(), rtol=1e-12, err_msg=col)
    assert 0 < local["drift_detected"].sum() < len(names)


def test_fraudops_run_with_the_dask_engine(dask_client: Client, tmp_path: Path) -> None:
    """`fraudops run` end to end in its own process, its compute engine the cluster's scheduler
    (compute.scheduler). With the workspace on the S3 API server: tests/test_stack_pipeline.py."""
    ws = tmp_path / "ws"
    ws.mkdir()
    dask_run_workspace(str(ws), f"{{engine: dask, scheduler: {dask_client.scheduler.address}}}")
    cmd = [sys.executable, "-m", "fraudops.cli", "run", "--workspace", str(ws)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    storage = Storage(str(ws))
    assert len(storage.ls(PREDICTIONS)) == 2
    assert storage.exists("prod_outputs/monitoring/retrain_decision.csv") or "SUCCEEDED" in proc.stdout
    # the workers built the tables: train's labelled one (select_champion read it again), batch's history
    assert len(storage.folders(f"{FEATURE_TABLES}/labelled")) == 1
    assert storage.exists(f"{FEATURE_TABLES}/history/table.json")
