"""Tests of the transaction simulator against docs/simulator.md.

The small configuration keeps the published ratio of 2 terminals per customer, so the steady-state
frauds per day of scenarios 2 and 3 (which depend on transactions per terminal and per customer, not
on the population size) are the published ones; rates over all transactions are not (10x fewer
transactions a day for the same frauds a day).
"""

from __future__ import annotations

import datetime as dt
import tracemalloc

import numpy as np
import polars as pl
import pytest

from fraudops.config import SimulateConfig
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, SCENARIO, TERMINAL, TX_ID, TX_TIME
from fraudops.data.simulate import (
    Summary,
    day_file_name,
    iter_days,
    make_profiles,
    profile_tables,
    simulate,
    simulate_days,
    summary,
)

SMALL = SimulateConfig(n_customers=500, n_terminals=1000, n_days=60, seed=7)
DRIFT_START = dt.date(2018, 5, 1)
DRIFTED = SMALL.model_copy(update={"drift_start": DRIFT_START, "drift_night_burst_cards": 8})
tx_date = pl.col(TX_TIME).dt.date()
SECOND_OF_DAY = (
    pl.col(TX_TIME).dt.hour().cast(pl.Int64) * 3600
    + pl.col(TX_TIME).dt.minute().cast(pl.Int64) * 60
    + pl.col(TX_TIME).dt.second().cast(pl.Int64)
)


@pytest.fixture(scope="module")
def small() -> pl.DataFrame:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def drifted() -> pl.DataFrame:
    return simulate(DRIFTED)


@pytest.fixture(scope="module", params=["small", "drifted"])
def frame(request: pytest.FixtureRequest) -> pl.DataFrame:
    return request.getfixturevalue(request.param)


def per_day(df: pl.DataFrame, expr: pl.Expr) -> pl.DataFrame:
    return df.group_by(tx_date.alias("date")).agg(expr.alias("value")).sort("date")


def test_deterministic(small: pl.DataFrame) -> None:
    assert simulate(SMALL).equals(small)
    other = simulate(SMALL.model_copy(update={"seed": 8}))
    assert not other.equals(small)
    assert other.height != small.height or not other[AMOUNT].equals(small[AMOUNT])


def test_schema(frame: pl.DataFrame) -> None:
    assert frame.schema == pl.Schema(
        {
            TX_ID: pl.Int64,
            TX_TIME: pl.Datetime("us"),
            CUSTOMER: pl.Int64,
            TERMINAL: pl.Int64,
            AMOUNT: pl.Float64,
            LABEL: pl.Int8,
            SCENARIO: pl.Int8,
        }
    )
    assert frame.null_count().sum_horizontal().item() == 0


def test_sorted_and_ids_are_ranks(frame: pl.DataFrame) -> None:
    assert frame[TX_TIME].is_sorted()
    assert np.array_equal(frame[TX_ID].to_numpy(), np.arange(frame.height))


def test_amounts_non_negative_cents(frame: pl.DataFrame) -> None:
    cents = frame[AMOUNT].to_numpy() * 100
    assert (cents >= 0).all()
    assert np.abs(cents - np.round(cents)).max() < 1e-6


def test_times_within_days(frame: pl.DataFrame) -> None:
    dates = frame[TX_TIME].dt.date()
    assert dates.min() == SMALL.start_date
    assert dates.max() == SMALL.start_date + dt.timedelta(days=SMALL.n_days - 1)
    seconds = frame.select(SECOND_OF_DAY).to_series()
    assert seconds.min() > 0  # the spec keeps 0 < t < 86 400: nothing at exactly midnight
    assert frame[TX_TIME].dt.microsecond().max() == 0


def test_ids_in_range(frame: pl.DataFrame) -> None:
    assert frame[CUSTOMER].min() >= 0 and frame[CUSTOMER].max() < SMALL.n_customers
    assert frame[TERMINAL].min() >= 0 and frame[TERMINAL].max() < SMALL.n_terminals


def test_labels_follow_scenarios(frame: pl.DataFrame) -> None:
    assert set(frame[LABEL].unique()) <= {0, 1}
    assert (frame[LABEL] == (frame[SCENARIO] > 0).cast(pl.Int8)).all()
    # Scenario 1 runs first and later scenarios only add frauds or raise amounts, so the rule holds
    # on the final labels: no genuine transaction is above 220 and every scenario-1 one is.
    assert (frame.filter(pl.col(AMOUNT) > 220)[LABEL] == 1).all()
    assert frame.filter(pl.col(SCENARIO) == 1)[AMOUNT].min() > 220


def test_compromised_terminal_days_are_all_fraud(small: pl.DataFrame) -> None:
    """A terminal with a scenario-2 fraud on a day is inside a 28-day window: all that day is fraud."""
    hit = small.filter(pl.col(SCENARIO) == 2).select(TERMINAL, tx_date.alias("date")).unique()
    same_day = small.with_columns(tx_date.alias("date")).join(hit, on=[TERMINAL, "date"])
    assert same_day.height > 0
    assert set(same_day[SCENARIO].unique()) <= {2, 3}


def test_scenario_3_multiplies_amounts(small: pl.DataFrame) -> None:
    """Scenario-3 amounts are 5x the customer's usual ones."""
    customers, _ = profile_tables(SMALL)
    ratio = (
        small.filter(pl.col(SCENARIO).is_in([0, 3]))
        .join(customers.select(CUSTOMER, "mean_amount"), on=CUSTOMER)
        .group_by(SCENARIO)
        .agg((pl.col(AMOUNT) / pl.col("mean_amount")).mean())
        .sort(SCENARIO)[AMOUNT]
    )
    assert 4.0 < ratio[1] / ratio[0] < 6.0


def test_rates_and_scenarios(small: pl.DataFrame) -> None:
    customers, _ = profile_tables(SMALL)
    per_tx_day = customers.filter(pl.col("nb_terminals") > 0)["mean_nb_tx_per_day"].sum()
    expected = per_tx_day * 0.9687  # P(0 < N(43 200, 20 000) < 86 400)
    assert small.height / SMALL.n_days == pytest.approx(expected, rel=0.05)
    share_1 = (small[SCENARIO] == 1).mean()
    assert 0.0002 < share_1 < 0.0012  # published 973 / 1 754 155 = 0.00055
    ramped_up = SMALL.start_date + dt.timedelta(days=28)
    steady = small.filter(tx_date >= ramped_up)
    n_steady = SMALL.n_days - 28
    assert 35 < (steady[SCENARIO] == 2).sum() / n_steady < 70  # published ≈ 9 077 / 183 ≈ 50
    assert 17 < (steady[SCENARIO] == 3).sum() / n_steady < 37  # published ≈ 4 631 / 183 ≈ 25
    assert (small[SCENARIO] == 4).sum() == 0
    first_week = SMALL.start_date + dt.timedelta(days=7)
    early = small.filter(tx_date < first_week)[LABEL].mean()
    assert early < steady[LABEL].mean() / 2  # scenarios 2 and 3 ramp up


def test_terminals_within_radius(frame: pl.DataFrame) -> None:
    customers, terminals = profile_tables(SMALL)
    joined = frame.join(customers, on=CUSTOMER).join(terminals, on=TERMINAL)
    dist = np.hypot(
        joined["x_customer_id"] - joined["x_terminal_id"], joined["y_customer_id"] - joined["y_terminal_id"]
    )
    assert joined.height == frame.height
    assert dist.max() < SMALL.radius
    used = frame.select(CUSTOMER).unique().join(customers, on=CUSTOMER)
    assert (used["nb_terminals"] > 0).all()


def test_available_terminals_match_brute_force() -> None:
    p = make_profiles(SMALL)
    dist = np.linalg.norm(p.customer_xy[:, None, :] - p.terminal_xy[None, :, :], axis=2)
    for c in (0, 17, 123, 499):
        expected = np.flatnonzero(dist[c] < SMALL.radius)
        assert np.array_equal(p.terminals_of[p.offsets[c] : p.offsets[c + 1]], expected)
    assert np.array_equal(p.n_terminals, (dist < SMALL.radius).sum(axis=1))


def test_terminal_choice_is_uniform(small: pl.DataFrame) -> None:
    """The busiest customer's terminals are each used about equally often (chi-square, loose)."""
    p = make_profiles(SMALL)
    busiest = small.group_by(CUSTOMER).len().sort("len", descending=True)[CUSTOMER][0]
    used = small.filter(pl.col(CUSTOMER) == busiest)[TERMINAL].to_numpy()
    own = p.terminals_of[p.offsets[busiest] : p.offsets[busiest + 1]]
    counts = np.array([(used == t).sum() for t in own])
    expected = used.size / own.size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 3 * own.size + 20


def test_drift_leaves_earlier_days_unchanged(small: pl.DataFrame, drifted: pl.DataFrame) -> None:
    before = tx_date < DRIFT_START
    assert drifted.filter(before).equals(small.filter(before))
    assert (drifted.filter(before)[SCENARIO] == 4).sum() == 0


def test_drift_shifts_amounts(small: pl.DataFrame, drifted: pl.DataFrame) -> None:
    """Amounts as generated (scenarios 0 and 1, before scenario 3 multiplies) rise by the factor."""
    generated = drifted.filter(pl.col(SCENARIO) <= 1)
    after = tx_date >= DRIFT_START
    ratio = generated.filter(after)[AMOUNT].mean() / generated.filter(~after)[AMOUNT].mean()
    assert ratio == pytest.approx(DRIFTED.drift_amount_factor, rel=0.05)
    baseline = small.filter(pl.col(SCENARIO) <= 1)
    assert baseline.filter(after)[AMOUNT].mean() / baseline.filter(~after)[AMOUNT].mean() == pytest.approx(
        1.0, rel=0.05
    )
    assert (drifted.filter(after)[SCENARIO] == 1).sum() > 5 * (small.filter(after)[SCENARIO] == 1).sum()


def test_drift_night_bursts(small: pl.DataFrame, drifted: pl.DataFrame) -> None:
    bursts = drifted.filter(pl.col(SCENARIO) == 4)
    assert (bursts[LABEL] == 1).all()
    assert bursts[TX_TIME].dt.hour().max() < 6
    assert bursts[AMOUNT].min() >= 1 and bursts[AMOUNT].max() <= 20
    assert bursts[TX_TIME].dt.date().min() == DRIFT_START
    cards = DRIFTED.drift_night_burst_cards
    days = per_day(bursts, pl.col(CUSTOMER).n_unique()).join(per_day(bursts, pl.len()), on="date")
    n_drift_days = (SMALL.start_date + dt.timedelta(days=SMALL.n_days) - DRIFT_START).days
    assert days.height == n_drift_days
    assert (days["value"] == cards).all()
    assert days["value_right"].is_between(5 * cards, 15 * cards).all()
    after = tx_date >= DRIFT_START

    def night(df: pl.DataFrame) -> float:
        return df.filter(after).select((pl.col(TX_TIME).dt.hour() < 6).mean()).item()

    assert night(drifted) > night(small) + 0.01


def test_drift_start_outside_the_period() -> None:
    late = simulate(SMALL.model_copy(update={"drift_start": dt.date(2030, 1, 1)}))
    assert late.equals(simulate(SMALL))
    early = simulate(SMALL.model_copy(update={"drift_start": dt.date(2000, 1, 1), "n_days": 5}))
    assert per_day(early.filter(pl.col(SCENARIO) == 4), pl.len()).height == 5


def test_tiny_populations() -> None:
    df = simulate(SimulateConfig(n_customers=2, n_terminals=1, n_days=3, radius=200.0))
    assert df[TERMINAL].unique().to_list() in ([0], [])
    none = simulate(SimulateConfig(n_customers=3, n_terminals=3, n_days=3, radius=0.001))
    assert none.height == 0
    assert summary(none)["n_transactions"] == 0


def test_iter_days(small: pl.DataFrame) -> None:
    days = list(iter_days(small))
    assert len(days) == SMALL.n_days
    assert [d for d, _ in days] == [SMALL.start_date + dt.timedelta(days=i) for i in range(SMALL.n_days)]
    assert all(isinstance(d, dt.date) and (part[TX_TIME].dt.date() == d).all() for d, part in days)
    assert pl.concat([part for _, part in days]).equals(small)
    shuffled = list(iter_days(small.sample(fraction=1.0, shuffle=True, seed=1)))
    assert [part.height for _, part in shuffled] == [part.height for _, part in days]
    assert list(iter_days(small.head(0))) == []


def test_day_file_name() -> None:
    assert day_file_name(dt.date(2018, 4, 1)) == "2018-04-01.parquet"


def test_summary(drifted: pl.DataFrame) -> None:
    s = summary(drifted)
    assert s["n_transactions"] == drifted.height
    assert s["n_frauds"] == sum(s[f"n_scenario_{i}"] for i in range(1, 5)) == drifted[LABEL].sum()
    assert s["fraud_rate"] == pytest.approx(s["n_frauds"] / s["n_transactions"])
    assert s["n_scenario_4"] > 0
    assert s["first_date"] == SMALL.start_date and s["n_days"] == SMALL.n_days
    assert s["frauds_per_day"] == pytest.approx(s["n_frauds"] / SMALL.n_days)
    cards = drifted.filter(pl.col(LABEL) == 1).select(tx_date, CUSTOMER).unique().height
    assert s["compromised_cards_per_day"] == pytest.approx(cards / SMALL.n_days)
    assert s["compromised_cards_per_day_after_ramp_up"] > s["compromised_cards_per_day"]
    assert 0 < s["n_customers_transacting"] <= SMALL.n_customers


@pytest.mark.slow
def test_published_statistics() -> None:
    """The default configuration reproduces the handbook's published statistics (docs/simulator.md)."""
    s = summary(simulate(SimulateConfig()))
    assert 1_700_000 <= s["n_transactions"] <= 1_810_000
    assert 0.0078 <= s["fraud_rate"] <= 0.0090
    assert 4_950 <= s["n_customers_transacting"] <= 5_000
    published = {1: 973, 2: 9_077, 3: 4_631}
    for i, count in published.items():
        assert s[f"n_scenario_{i}"] == pytest.approx(count, rel=0.15)
        assert s[f"n_scenario_{i}"] / s["n_frauds"] == pytest.approx(count / 14_681, rel=0.15)
    assert s["n_scenario_4"] == 0
    # The handbook's "about 85 frauds and 80 compromised cards a day" are read off its plot after the
    # first month's ramp-up; the plain means over all 183 days are lower (≈ 80 and ≈ 71).
    assert s["frauds_per_day_after_ramp_up"] == pytest.approx(85, rel=0.15)
    assert 70 <= s["compromised_cards_per_day_after_ramp_up"] <= 90
    assert 70 <= s["frauds_per_day"] <= 90


def test_days_streamed_are_the_frame_and_its_summary(drifted: pl.DataFrame) -> None:
    days = list(simulate_days(DRIFTED))
    assert [d for d, _ in days] == [d for d, _ in iter_days(drifted)]
    assert pl.concat([frame for _, frame in days]).equals(drifted)
    stats = Summary()
    for _, frame in days:
        stats.add(frame)
    assert stats.result() == summary(drifted)


def test_a_longer_simulation_extends_a_shorter_one(small: pl.DataFrame) -> None:
    """Days are generated one by one with their own random streams: the days before the last 14 (whose
    scenario-3 windows the end of the period cuts) do not depend on how many days follow."""
    longer = simulate(SMALL.model_copy(update={"n_days": SMALL.n_days + 25}))
    settled = SMALL.start_date + dt.timedelta(days=SMALL.n_days - 14)
    before = pl.col(TX_TIME).dt.date() < settled
    assert small.filter(before).height > 0
    assert longer.filter(before).equals(small.filter(before))  # same rows, ids, labels and amounts
    assert (
        longer.filter(~before).head(small.filter(~before).height)[TX_ID].equals(small.filter(~before)[TX_ID])
    )


def test_memory_is_bounded_by_the_window_not_the_days() -> None:
    """The generator's peak allocation (numpy arrays, traced) is the same for 45 and 135 days."""
    cfg = SimulateConfig(n_customers=2000, n_terminals=4000, n_days=45, seed=2)

    def peak(n_days: int) -> int:
        tracemalloc.start()
        try:
            rows = sum(frame.height for _, frame in simulate_days(cfg.model_copy(update={"n_days": n_days})))
            assert rows > 2000 * n_days
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(45), peak(135)
    assert long < 1.2 * short, (short, long)
