"""The Dask engine on a real LocalCluster (two worker processes): the same features as the local engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from distributed import Client

from fraudops import compute, features
from fraudops.config import ComputeConfig, FeaturesConfig, SimulateConfig
from fraudops.data.simulate import simulate
from fraudops.errors import ConfigError
from fraudops.features import engine, scaled
from worker_kill import killing

pytestmark = pytest.mark.slow

SHORT = FeaturesConfig(customer_windows=[1, 3], terminal_windows=[1, 5], delay_days=2, extra=False)


@pytest.fixture(scope="module")
def tx() -> pl.DataFrame:
    return simulate(SimulateConfig(n_customers=150, n_terminals=300, n_days=60, seed=3))


def assert_same(local: pl.DataFrame, dist: pl.DataFrame, cfg: FeaturesConfig) -> None:
    assert dist.columns == local.columns
    assert dist.schema == local.schema
    assert dist["TRANSACTION_ID"].to_list() == local["TRANSACTION_ID"].to_list()
    for name in features.feature_names(cfg):
        a, b = local[name].to_numpy(), dist[name].to_numpy()
        if local.schema[name].is_integer():
            np.testing.assert_array_equal(b, a, err_msg=name)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize(
    ("cfg", "partition_rows", "ids", "hot"),
    [
        (FeaturesConfig(), 6_000, pl.Int64, 0.0),  # customer/terminal buckets
        (SHORT, 6_000, pl.String, 0.0),  # text ids: hashed to their buckets
        (SHORT, 3_000, pl.Int64, 0.4),  # a merchant's terminal with 40 % of the rows: time blocks
    ],
)
def test_features_equal_the_local_engine(
    dask_client: Client,
    tx: pl.DataFrame,
    cfg: FeaturesConfig,
    partition_rows: int,
    ids: pl.DataType,
    hot: float,
) -> None:
    busy = pl.int_range(pl.len()).shuffle(seed=2) < hot * pl.len()
    tx = tx.with_columns(pl.when(busy).then(0).otherwise(pl.col("TERMINAL_ID")).alias("TERMINAL_ID"))
    tx = tx.with_columns(pl.col("CUSTOMER_ID", "TERMINAL_ID").cast(ids)).sample(fraction=1.0, seed=1)
    local = engine.add_features(tx, cfg)
    day = 86_400_000_000
    busiest = int(tx["TERMINAL_ID"].value_counts(name="n")["n"].max())  # type: ignore[arg-type]
    blocks = scaled._blocks(busiest, 60 * day, partition_rows, features.lookback_days(cfg) * day)
    assert (blocks >= 2) == (hot > 0)  # the busy terminal's rows are cut in time
    with compute.attach(dask_client, partition_rows=partition_rows):
        dist = features.add_features(tx, cfg)
    assert_same(local, dist, cfg)


def test_features_for_new_rows_over_history_equal_the_local_engine(
    dask_client: Client, tx: pl.DataFrame
) -> None:
    cut = tx["TX_DATETIME"].dt.date().unique().sort()[45]
    history = tx.filter(pl.col("TX_DATETIME").dt.date() < cut)
    new = tx.filter(pl.col("TX_DATETIME").dt.date() >= cut).drop("TX_FRAUD")
    local = engine.features_for(new, history, FeaturesConfig())
    with compute.attach(dask_client, partition_rows=6_000):
        dist = features.features_for(new, history, FeaturesConfig())
    assert_same(local, dist, FeaturesConfig())


def test_a_worker_killed_mid_features_the_partitions_are_sent_again(
    dask_client: Client, tx: pl.DataFrame, tmp_path: Path
) -> None:
    """Partitions live on one worker: its death loses them, and they are sent again (Engine.map)."""
    local = engine.add_features(tx, SHORT)
    marker = tmp_path / "killed"
    with (
        killing(dask_client, "_entity_windows", marker) as pids,
        compute.attach(dask_client, partition_rows=3_000),
    ):
        dist = features.add_features(tx, SHORT)
    assert marker.exists() and int(marker.read_text()) in pids, "no worker was killed"
    assert_same(local, dist, SHORT)
    dask_client.wait_for_workers(2, timeout=60)  # its nanny restarted it, for the next tests


def test_features_for_a_bucket_at_a_time_equal_the_local_engine(tx: pl.DataFrame) -> None:
    """A worker's look-back (batch scoring on the cluster): buckets computed one after the other."""
    cut = tx["TX_DATETIME"].dt.date().unique().sort()[45]
    history = tx.filter(pl.col("TX_DATETIME").dt.date() < cut)
    new = tx.filter(pl.col("TX_DATETIME").dt.date() >= cut).drop("TX_FRAUD")
    local = engine.features_for(new, history, FeaturesConfig())
    reads: list[int] = []

    def read(keep: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
        reads.append(keep(history).height)
        return keep(history)

    def buckets(n: int) -> Callable[[str], Iterator[scaled.Group]]:
        return lambda entity: scaled.hash_groups(entity, n, read)

    bucketed = scaled.features_over_groups(new, buckets(4), FeaturesConfig())
    assert_same(local, bucketed, FeaturesConfig())
    assert len(reads) == 8 and sum(reads) == 2 * history.height  # each row read once per entity
    assert max(reads) < history.height / 2  # a bucket's rows at a time
    assert scaled.features_over_groups(new, buckets(1), FeaturesConfig()).equals(local)  # one bucket

    def overlapping(entity: str) -> Iterator[scaled.Group]:
        yield from scaled.hash_groups(entity, 2, read)
        yield from scaled.hash_groups(entity, 3, read)

    with pytest.raises(RuntimeError, match="customer groups hold"):
        scaled.features_over_groups(new, overlapping, FeaturesConfig())


def test_without_a_session_features_run_here(tx: pl.DataFrame) -> None:
    assert compute.current() is None
    assert features.add_features(tx.head(500)).equals(engine.add_features(tx.head(500)))


def test_a_scheduler_that_does_not_answer_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute.cluster, "CONNECT_TIMEOUT", "2s")
    cfg = ComputeConfig(engine="dask", scheduler="tcp://127.0.0.1:9")
    with (
        pytest.raises(
            ConfigError, match=r"compute.scheduler: no Dask scheduler answers at tcp://127.0.0.1:9"
        ),
        compute.session(cfg),
    ):
        pass


def test_frames_pickle_as_their_arrow_buffers_and_a_view_with_its_rows_only() -> None:
    """What Dask sends and spills: a frame's columns out of band; a view of a bigger frame (a part's
    window) copied first, not sent with the whole buffers; categoricals through polars' own pickling."""
    import pickle

    from fraudops.compute.cluster import register_polars

    register_polars()
    big = pl.DataFrame({"a": np.arange(1_000_000, dtype=np.float64), "b": np.arange(1_000_000) % 7})
    view = big.slice(500_000, 10_000)
    assert view.to_arrow().get_total_buffer_size() > 50 * view.estimated_size()  # shares big's buffers
    for frame, most in ((big, 1.01 * big.estimated_size()), (view, 1.01 * view.estimated_size())):
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(frame, protocol=5, buffer_callback=buffers.append)
        assert len(data) < 10_000  # the columns travel out of band
        assert sum(memoryview(b).nbytes for b in buffers) <= most
        assert pickle.loads(data, buffers=buffers).equals(frame)
    labels = pl.DataFrame({"c": ["x", "y", "x"]}, schema={"c": pl.Categorical})
    assert pickle.loads(pickle.dumps(labels, protocol=5)).equals(labels)


def test_release_memory_hands_what_tasks_freed_back_to_the_system(dask_client: Client) -> None:
    """A worker's heap left full of holes (as a spilled table build leaves it) shrinks by what was freed."""

    def rss_mb() -> float:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:"))

    def fragment(dask_worker: Any) -> float:
        blocks = [bytes(4_000) + bytes([i % 256]) for i in range(60_000)]  # 240 MB, malloc'd one by one
        dask_worker.fraudops_test_kept = blocks[::32]  # a block in 32 kept: the freed ones are holes
        del blocks
        return rss_mb()

    def forget(dask_worker: Any) -> None:
        del dask_worker.fraudops_test_kept

    pids = dask_client.run(os.getpid)
    fragmented = dask_client.run(fragment)
    with compute.attach(dask_client) as eng:
        eng.release_memory()
    released = dask_client.run(rss_mb)
    dask_client.run(forget)
    assert dask_client.run(os.getpid) == pids  # what they keep is under the restart fraction: not restarted
    for worker, before in fragmented.items():
        assert before - released[worker] > 150, (worker, before, released[worker])


def test_a_worker_keeping_too_much_after_release_is_restarted_while_idle(dask_client: Client) -> None:
    """Memory no release can return (here: held by a reference outside Dask's data) above the fraction of
    the limit: that worker, and only it, is restarted by its nanny before the next phase starts."""
    limit = next(iter(dask_client.scheduler_info()["workers"].values()))["memory_limit"]
    heavy = sorted(dask_client.scheduler_info()["workers"])[0]

    def hold(dask_worker: Any) -> None:
        threshold = max(compute.cluster.KEPT_RESTART_FRACTION * limit, compute.cluster.KEPT_FLOOR_BYTES)
        dask_worker.fraudops_test_kept = bytearray(int(1.5 * threshold))

    pids = dask_client.run(os.getpid)
    dask_client.run(hold, workers=[heavy])
    with compute.attach(dask_client) as eng:
        eng.release_memory()
    dask_client.wait_for_workers(2, timeout=60)
    after = dask_client.run(os.getpid)
    light = next(a for a in pids if a != heavy)
    assert after[light] == pids[light]
    assert heavy not in after or after[heavy] != pids[heavy]
    assert len(set(after.values()) - set(pids.values())) == 1  # one new worker process
