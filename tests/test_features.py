"""fraudops.features against a plain loop-based reference, plus edge cases written out by hand."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fraudops.config import FeaturesConfig
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, TERMINAL, TX_ID, TX_TIME
from fraudops.features import add_features, engine, feature_names, features_for, handbook_feature_names

US_DAY = 86_400_000_000
US_HOUR = 3_600_000_000
START = dt.datetime(2018, 4, 1)

HANDBOOK_15 = [
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
]


# ---------------------------------------------------------------- reference (plain Python, O(n^2))


def reference(rows: list[dict], cfg: FeaturesConfig) -> list[dict]:
    """Features computed row by row from the definitions in fraudops.features' docstring."""
    d = cfg.delay_days
    us = [int((r[TX_TIME] - START) / dt.timedelta(microseconds=1)) for r in rows]
    by_customer: dict = {}
    by_terminal: dict = {}
    for j, r in enumerate(rows):
        by_customer.setdefault(r[CUSTOMER], []).append(j)
        by_terminal.setdefault(r[TERMINAL], []).append(j)
    out = []
    for i, r in enumerate(rows):
        t = us[i]
        f = {
            "TX_AMOUNT": r[AMOUNT],
            "TX_DURING_WEEKEND": int(r[TX_TIME].weekday() >= 5),
            "TX_DURING_NIGHT": int(r[TX_TIME].hour <= 6),
        }
        mine = by_customer[r[CUSTOMER]]
        for n in cfg.customer_windows:
            amounts = [rows[j][AMOUNT] for j in mine if t - n * US_DAY < us[j] <= t]
            f[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = len(amounts)
            f[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = sum(amounts) / len(amounts)
        for n in cfg.terminal_windows:
            labels = [
                rows[j][LABEL] or 0
                for j in by_terminal[r[TERMINAL]]
                if t - (n + d) * US_DAY < us[j] <= t - d * US_DAY
            ]
            f[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = len(labels)
            f[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = sum(labels) / len(labels) if labels else 0.0
        if cfg.extra:
            f["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] = sum(1 for j in mine if t - US_HOUR < us[j] <= t)
            prev = [j for j in mine if t - 30 * US_DAY < us[j] < t]
            amounts = [rows[j][AMOUNT] for j in prev]
            f["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] = (
                (t - max(us[j] for j in prev)) / 1e6 if prev else 30 * 86_400.0
            )
            if amounts:
                mean = sum(amounts) / len(amounts)
                f["CUSTOMER_ID_AMOUNT_RATIO_30DAY"] = r[AMOUNT] / max(mean, 1.0)
            else:
                f["CUSTOMER_ID_AMOUNT_RATIO_30DAY"] = 1.0
            if len(amounts) >= 2:
                std = math.sqrt(sum((a - mean) ** 2 for a in amounts) / (len(amounts) - 1))
                z = (r[AMOUNT] - mean) / max(std, 1.0)
                f["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] = min(max(z, -100.0), 100.0)
            else:
                f["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] = 0.0
            f["CUSTOMER_ID_NEW_TERMINAL_30DAY"] = int(not any(rows[j][TERMINAL] == r[TERMINAL] for j in prev))
        out.append(f)
    return out


def assert_matches_reference(tx: pl.DataFrame, cfg: FeaturesConfig, got: pl.DataFrame | None = None) -> None:
    got = add_features(tx, cfg) if got is None else got
    want = reference(tx.to_dicts(), cfg)
    assert got.height == len(want)
    for name in feature_names(cfg):
        expected = np.array([w[name] for w in want], dtype=float)
        actual = got.get_column(name).to_numpy().astype(float)
        bad = np.flatnonzero(~np.isclose(actual, expected, rtol=1e-9, atol=1e-9))
        assert bad.size == 0, f"{name}: rows {bad[:5]} got {actual[bad[:5]]} want {expected[bad[:5]]}"


def assert_same(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Same columns, dtypes and rows; floats to 1e-9 (rolling sums are incremental, so summing from
    another start, e.g. a trimmed history, moves the last bits)."""
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)


# ---------------------------------------------------------------- data


def random_tx(n: int = 700, seed: int = 0, days: int = 60) -> pl.DataFrame:
    """Several customers and terminals over ~60 days, with ties, window-edge offsets and null labels."""
    rng = np.random.default_rng(seed)
    us = rng.integers(0, days * US_DAY, n)
    us = (us // 60_000_000) * 60_000_000  # whole minutes, so some collide
    # copy another row's time exactly (ties) or shifted by exact edge offsets (window ends, delay)
    edges = np.array([0, 1, 7, 8, 14, 30, 37, 2, 3, 5, 10]) * US_DAY
    edges = np.concatenate([edges, [US_HOUR, 1, -1]])  # 1 us just inside / outside
    k = n // 3
    src = rng.integers(0, n, k)
    dst = rng.integers(0, n, k)
    off = rng.choice(edges, k) + rng.choice([0, 0, 0, 1, -1], k)
    us[dst] = np.clip(us[src] + off, 0, None)
    customers = rng.integers(0, 8, n)
    # copying a customer too makes the edges hit inside one customer's windows
    customers[dst[: k // 2]] = customers[src[: k // 2]]
    terminals = rng.integers(0, 6, n)
    terminals[dst[k // 2 :]] = terminals[src[k // 2 :]]
    amounts = np.round(rng.gamma(2.0, 30.0, n), 2)
    amounts[rng.random(n) < 0.03] = 0.0
    labels = (rng.random(n) < 0.15).astype(float)
    labels[rng.random(n) < 0.1] = np.nan
    return pl.DataFrame(
        {
            TX_ID: np.arange(n) + 1000,
            TX_TIME: np.datetime64(START, "us") + us.astype("timedelta64[us]"),
            CUSTOMER: customers,
            TERMINAL: terminals,
            AMOUNT: amounts,
            LABEL: pl.Series(labels, nan_to_null=True).cast(pl.Int8),
            "OTHER": [f"x{i}" for i in range(n)],
        }
    )


def tx_frame(rows: list[tuple]) -> pl.DataFrame:
    """(id, datetime, customer, terminal, amount, label) rows."""
    return pl.DataFrame(
        rows,
        schema={
            TX_ID: pl.Int64,
            TX_TIME: pl.Datetime("us"),
            CUSTOMER: pl.Int64,
            TERMINAL: pl.Int64,
            AMOUNT: pl.Float64,
            LABEL: pl.Int8,
        },
        orient="row",
    )


# ---------------------------------------------------------------- tests


def test_feature_names():
    handbook = FeaturesConfig(terminal_windows=[1, 7, 30])
    assert handbook_feature_names(handbook) == HANDBOOK_15
    assert feature_names(handbook.model_copy(update={"extra": False})) == HANDBOOK_15
    names = feature_names(handbook)
    assert names[:15] == HANDBOOK_15 and len(names) == len(set(names)) > 15
    # the defaults add the 3- and 14-day terminal windows, in window order
    defaults = handbook_feature_names()
    assert len(defaults) == 19 and set(HANDBOOK_15) < set(defaults)
    assert defaults[-8:-4] == [
        "TERMINAL_ID_NB_TX_3DAY_WINDOW",
        "TERMINAL_ID_RISK_3DAY_WINDOW",
        "TERMINAL_ID_NB_TX_7DAY_WINDOW",
        "TERMINAL_ID_RISK_7DAY_WINDOW",
    ]
    assert feature_names(FeaturesConfig(customer_windows=[2], terminal_windows=[3], extra=False)) == [
        "TX_AMOUNT",
        "TX_DURING_WEEKEND",
        "TX_DURING_NIGHT",
        "CUSTOMER_ID_NB_TX_2DAY_WINDOW",
        "CUSTOMER_ID_AVG_AMOUNT_2DAY_WINDOW",
        "TERMINAL_ID_NB_TX_3DAY_WINDOW",
        "TERMINAL_ID_RISK_3DAY_WINDOW",
    ]


@pytest.mark.parametrize(
    "cfg",
    [
        FeaturesConfig(),
        FeaturesConfig(customer_windows=[2, 5], terminal_windows=[3, 10], delay_days=3, extra=False),
        FeaturesConfig(terminal_windows=[1, 7], delay_days=0),
    ],
    ids=["default", "other-windows", "no-delay"],
)
def test_matches_reference(cfg):
    tx = random_tx()
    assert tx.select(pl.col(TX_TIME).is_duplicated().sum()).item() > 20  # ties really occur
    out = add_features(tx, cfg)
    assert out.columns == [*tx.columns, *feature_names(cfg)[1:]]
    assert_matches_reference(tx, cfg, out)


def test_customer_window_edges():
    t0 = dt.datetime(2018, 4, 2, 12)  # a Monday
    rows = [
        (1, t0, 1, 1, 10.0, 0),
        (2, t0 + dt.timedelta(days=1), 1, 2, 20.0, 0),  # exactly 1 day later: row 1 is out of the window
        (3, t0 + dt.timedelta(days=1, microseconds=-1), 1, 2, 30.0, 0),  # just inside
        (4, t0 + dt.timedelta(days=1), 1, 3, 40.0, 0),  # tie with row 2: they count for each other
        (5, t0 + dt.timedelta(days=30), 1, 3, 50.0, 0),  # row 1 exactly 30 days before: out
        (6, t0 + dt.timedelta(days=30, microseconds=-1), 1, 3, 60.0, 0),  # row 1 just inside 30 days
    ]
    tx = tx_frame(rows)
    out = add_features(tx)
    assert out["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].to_list() == [1, 3, 2, 3, 2, 1]
    assert out["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].to_list() == [10.0, 30.0, 20.0, 30.0, 55.0, 60.0]
    assert out["CUSTOMER_ID_NB_TX_30DAY_WINDOW"].to_list() == [1, 4, 2, 4, 5, 5]
    assert out["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"].to_list() == [10.0, 25.0, 20.0, 25.0, 40.0, 32.0]
    # extras: "previous" = strictly earlier, so the tied rows 2 and 4 are not previous to each other
    assert out["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"].to_list() == pytest.approx(
        [30 * 86_400, 1e-6, 86_400 - 1e-6, 1e-6, 1e-6, 29 * 86_400 - 1e-6]
    )
    assert out["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"].to_list() == [1, 3, 1, 3, 2, 1]
    assert out["CUSTOMER_ID_NEW_TERMINAL_30DAY"].to_list() == [1, 0, 1, 1, 0, 0]
    assert out["TX_DURING_WEEKEND"].to_list() == [0] * 6
    assert_matches_reference(tx, FeaturesConfig())


def test_terminal_delay_edges():
    t = dt.datetime(2018, 6, 1, 12)
    frauds_ago = [6.9, 7.0, 7.1, 8.0, 8.0 - 1e-6, 14.0, 37.0, 36.5]
    rows = [(i, t - dt.timedelta(days=a), 100 + i, 7, 1.0, 1) for i, a in enumerate(frauds_ago)]
    rows.append((99, t, 1, 7, 5.0, None))
    rows.append((98, t, 2, 8, 5.0, None))  # a terminal with no history
    tx = tx_frame(rows)
    out = add_features(tx).filter(pl.col(TX_ID) >= 98).sort(TX_ID, descending=True)
    now = out.row(0, named=True)
    # (t-8d, t-7d]: 7.0, 7.1, 8-1e-6 count; 6.9 (too recent) and 8.0 (window start) do not
    assert now["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 3
    assert now["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0
    # (t-14d, t-7d]: also 8.0; (t-37d, t-7d]: also 14.0 and 36.5, not 37.0
    assert now["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 4
    assert now["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 6
    fresh = out.row(1, named=True)
    for n in (1, 7, 30):
        assert fresh[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] == 0
        assert fresh[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] == 0.0
    assert_matches_reference(tx, FeaturesConfig())


def test_risk_uses_labels_after_delay_only():
    t = dt.datetime(2018, 6, 1, 12)
    rows = [
        (1, t - dt.timedelta(days=7.1), 1, 5, 1.0, 0),
        (2, t - dt.timedelta(days=7.2), 2, 5, 1.0, 1),
        (3, t - dt.timedelta(days=7.3), 3, 5, 1.0, None),  # unknown label: genuine
        (4, t - dt.timedelta(days=6.9), 4, 5, 1.0, 1),  # too recent
        (5, t, 9, 5, 1.0, 1),  # its own label never counts
    ]
    out = add_features(tx_frame(rows)).row(4, named=True)
    assert out["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 3
    assert out["TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(1 / 3)


def test_new_card_and_terminal():
    tx = tx_frame([(1, dt.datetime(2018, 4, 7, 3, 15), 1, 1, 42.5, None)])  # Saturday, night
    row = add_features(tx).row(0, named=True)
    assert row["TX_DURING_WEEKEND"] == 1 and row["TX_DURING_NIGHT"] == 1
    for n in (1, 7, 30):
        assert row[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] == 1
        assert row[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] == 42.5
        assert row[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] == 0
        assert row[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] == 0.0
    assert row["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] == 1
    assert row["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 30 * 86_400
    assert row["CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 1.0
    assert row["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == 0.0
    assert row["CUSTOMER_ID_NEW_TERMINAL_30DAY"] == 1


def test_weekend_and_night_boundaries():
    times = [
        dt.datetime(2018, 4, 6, 23, 59, 59),  # Friday
        dt.datetime(2018, 4, 7, 0, 0),  # Saturday
        dt.datetime(2018, 4, 8, 23, 59),  # Sunday
        dt.datetime(2018, 4, 9, 6, 59, 59),  # Monday, still night
        dt.datetime(2018, 4, 9, 7, 0),
    ]
    out = add_features(tx_frame([(i, t, i, i, 1.0, 0) for i, t in enumerate(times)]))
    assert out["TX_DURING_WEEKEND"].to_list() == [0, 1, 1, 0, 0]
    assert out["TX_DURING_NIGHT"].to_list() == [0, 1, 0, 1, 0]


def test_input_order_and_columns_preserved():
    tx = random_tx(400, seed=3)
    shuffled = tx.sample(fraction=1.0, shuffle=True, seed=1)
    out = add_features(shuffled)
    assert out[TX_ID].to_list() == shuffled[TX_ID].to_list()
    assert out.select(tx.columns).equals(shuffled)
    ordered = add_features(tx)
    assert_same(out.sort(TX_ID), ordered.sort(TX_ID))
    assert_matches_reference(shuffled, FeaturesConfig(), out)


def test_lazy_input_missing_label_and_rerun():
    tx = random_tx(200, seed=4)
    cfg = FeaturesConfig()
    out = add_features(tx.lazy(), cfg)
    assert out.equals(add_features(tx, cfg))
    assert add_features(out, cfg).equals(out)  # features already present are replaced, not duplicated
    unlabelled = add_features(tx.drop(LABEL), cfg)
    for n in (1, 7, 30):
        assert (unlabelled[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] == 0).all()
        assert unlabelled[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"].equals(out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"])


def test_extra_features_finite():
    t = dt.datetime(2018, 5, 1)
    rows = [(i, t + dt.timedelta(minutes=i), 1, 1, 0.0, 0) for i in range(5)]  # all zero: std 0, mean 0
    rows += [(10 + i, t + dt.timedelta(minutes=i), 2, 2, 7.0, 0) for i in range(5)]  # constant amounts
    rows += [(20, t + dt.timedelta(hours=1), 2, 2, 1e6, 0)]  # huge jump
    rows += [(30, t, 3, 3, 5.0, 0), (31, t, 3, 3, 9.0, 0)]  # first transactions tied
    tx = pl.concat([tx_frame(rows), random_tx(300, seed=5).select(tx_frame(rows).columns)])
    out = add_features(tx)
    values = out.select(feature_names(FeaturesConfig())).to_numpy().astype(float)
    assert np.isfinite(values).all()
    assert out.filter(pl.col(TX_ID) == 20)["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"].item() == 100.0
    assert_matches_reference(tx, FeaturesConfig())


def test_features_for_reaches_into_history():
    tx = random_tx(700, seed=6)
    cut = START + dt.timedelta(days=45)
    history = tx.filter(pl.col(TX_TIME) < cut)
    new = tx.filter(pl.col(TX_TIME) >= cut).sample(fraction=1.0, shuffle=True, seed=2)
    got = features_for(new, history)
    assert got[TX_ID].to_list() == new[TX_ID].to_list()
    assert got.columns == add_features(new).columns
    union = add_features(pl.concat([history, new]))
    want = new.select(TX_ID).join(union, on=TX_ID, how="left", maintain_order="left")
    assert_same(got, want)
    # windows really reached back: computing on new alone differs
    assert not add_features(new).equals(got)


def test_features_for_dedupes_overlapping_ids():
    tx = random_tx(600, seed=7)
    cut = START + dt.timedelta(days=40)
    new = tx.filter(pl.col(TX_TIME) >= cut)
    overlap = new.head(50)
    # the history holds stale copies of 50 new rows (other amounts / labels) and misses nothing else
    stale = overlap.with_columns(pl.col(AMOUNT) * 3 + 1, pl.lit(1, pl.Int8).alias(LABEL))
    history = pl.concat([tx.filter(pl.col(TX_TIME) < cut), stale])
    got = features_for(new, history)
    want = add_features(tx).filter(pl.col(TX_TIME) >= cut)
    assert_same(got, want)


def test_features_for_without_history_and_types():
    tx = random_tx(100, seed=8)
    assert features_for(tx, None).equals(add_features(tx))
    # history with narrower types and extra columns is fine
    history = random_tx(100, seed=9).with_columns(
        (pl.col(TX_ID) - 1000), pl.col(CUSTOMER).cast(pl.Int32), pl.lit(1).alias("EXTRA")
    )
    got = features_for(tx, history)
    union = pl.concat([history.drop("EXTRA").with_columns(pl.col(CUSTOMER).cast(pl.Int64)), tx])
    want = add_features(union).tail(tx.height)
    assert_same(got, want)


def test_bad_input_rejected():
    tx = random_tx(10)
    with pytest.raises(ValueError, match="CUSTOMER_ID"):
        add_features(tx.drop(CUSTOMER))
    with pytest.raises(ValueError, match="null"):
        add_features(
            tx.with_columns(
                pl.when(pl.col(TX_ID) == 1003).then(None).otherwise(pl.col(TERMINAL)).alias(TERMINAL)
            )
        )
    with pytest.raises(ValueError, match="Datetime"):
        add_features(tx.with_columns(pl.col(TX_TIME).cast(pl.String)))


def test_empty_input():
    out = add_features(random_tx(10).clear())
    assert out.height == 0 and out.columns[-1] == feature_names(FeaturesConfig())[-1]


def test_time_zone_aware_input():
    tx = random_tx(200, seed=10)
    aware = tx.with_columns(pl.col(TX_TIME).dt.replace_time_zone("Europe/Brussels", ambiguous="earliest"))
    out = add_features(aware)
    local = aware[TX_TIME].dt.replace_time_zone(None)
    assert out["TX_DURING_NIGHT"].to_list() == (local.dt.hour() <= 6).cast(pl.Int8).to_list()
    assert out["TX_DURING_WEEKEND"].to_list() == (local.dt.weekday() >= 6).cast(pl.Int8).to_list()
    # windows are on the absolute time line: same as the UTC instants, whatever the zone
    utc = add_features(aware.with_columns(pl.col(TX_TIME).dt.convert_time_zone("UTC")))
    cols = [c for c in feature_names(FeaturesConfig()) if c not in ("TX_DURING_NIGHT", "TX_DURING_WEEKEND")]
    assert_same(out.select(cols), utc.select(cols))
    history, new = out.head(120).select(tx.columns), aware.tail(80)
    history = history.with_columns(pl.col(TX_TIME).dt.convert_time_zone("UTC"))
    assert_same(features_for(new, history), out.tail(80))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_matches_reference_larger(seed):
    rng = np.random.default_rng(seed)
    tx = random_tx(4000, seed=seed, days=120)
    tx = tx.with_columns(
        pl.Series(CUSTOMER, rng.integers(0, 30, tx.height)),
        pl.Series(TERMINAL, rng.integers(0, 25, tx.height)),
    )
    assert_matches_reference(tx, FeaturesConfig())
    assert_matches_reference(tx, FeaturesConfig(customer_windows=[3], terminal_windows=[2, 9], delay_days=5))


@pytest.mark.parametrize("limit", [40, 3 * 10**13], ids=["pair-fallback", "batches"])
def test_packed_key_fallbacks(monkeypatch, limit):
    """Groups too many to pack in one Int64 key are rolled in batches; the results do not change."""
    tx = random_tx(500, seed=13)
    want = add_features(tx)
    monkeypatch.setattr(engine, "_KEY_LIMIT", limit)
    got = add_features(tx)
    assert_same(got, want)
    assert_matches_reference(tx, FeaturesConfig(), got)


def test_identifier_types():
    """String, categorical and sparse integer ids give the same features as small integers."""
    tx = random_tx(400, seed=14)
    want = add_features(tx).drop(CUSTOMER, TERMINAL)
    variants = [
        tx.with_columns(
            pl.format("card-{}", CUSTOMER).alias(CUSTOMER), pl.format("t{}", TERMINAL).alias(TERMINAL)
        ),
        tx.with_columns(pl.col(CUSTOMER).cast(pl.String).cast(pl.Categorical)),
        tx.with_columns(pl.col(CUSTOMER) * 10**15 - 7, pl.col(TERMINAL).cast(pl.UInt64) * 2**40),
        tx.with_columns(pl.col(CUSTOMER).cast(pl.Int8), pl.col(TERMINAL).cast(pl.UInt16)),
    ]
    for variant in variants:
        assert_same(add_features(variant).drop(CUSTOMER, TERMINAL), want)


def test_features_for_dedupes_across_id_dtypes():
    tx = random_tx(300, seed=15)
    cut = START + dt.timedelta(days=40)
    new = tx.filter(pl.col(TX_TIME) >= cut)
    stale = new.head(30).with_columns(pl.col(AMOUNT) + 500)
    history = pl.concat([tx.filter(pl.col(TX_TIME) < cut), stale]).with_columns(pl.col(TX_ID).cast(pl.Int32))
    assert_same(features_for(new, history), add_features(tx).filter(pl.col(TX_TIME) >= cut))
