"""Transaction simulator: the handbook's data model (docs/simulator.md), vectorised with numpy.

The handbook's generator loops in Python over customers, days and transactions (~145 s for the published
configuration); here every step is an array operation, and only the fraud scenarios loop over the days
(a few small array operations each), so the published configuration takes under a second.

Randomness comes from one ``numpy.random.SeedSequence(cfg.seed)`` split into independent streams for
the profiles, the transactions, the fraud scenarios and the drift. Because of that split, turning drift
on changes nothing before ``drift_start``: the days before it are identical to a run without drift.

Drift (only when ``cfg.drift_start`` is set), from that day on:

* every generated amount is multiplied by ``drift_amount_factor`` before the fraud scenarios run, so
  scenario 1 (amount > 220) follows the shifted amounts as a real rule would (more scenario-1 frauds);
* a new fraud pattern, scenario 4: each day ``drift_night_burst_cards`` random cards get a burst of
  5–15 small (1–20) transactions between 00:00 and 06:00 on their usual terminals, all fraud. They are
  added after scenarios 1–3 and keep their label 4.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.spatial import cKDTree

from fraudops.config import SimulateConfig
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, SCENARIO, TERMINAL, TX_ID, TX_TIME

SECONDS_PER_DAY = 86_400
AREA = 100.0
TIME_MEAN, TIME_STD = 43_200.0, 20_000.0
FRAUD_AMOUNT = 220.0
COMPROMISED_TERMINALS_PER_DAY, TERMINAL_DAYS = 2, 28
COMPROMISED_CUSTOMERS_PER_DAY, CUSTOMER_DAYS, CUSTOMER_AMOUNT_FACTOR = 3, 14, 5.0
BURST_SIZE = (5, 15)
BURST_AMOUNT = (1.0, 20.0)
BURST_END_SECOND = 6 * 3600


@dataclass(frozen=True)
class Profiles:
    """Customers, terminals and each customer's available terminals as a CSR list.

    ``terminals_of[offsets[c]:offsets[c + 1]]`` are customer c's terminals (distance < radius), so a
    uniform pick for many customers at once is ``terminals_of[offsets[c] + floor(u * n_terminals[c])]``.
    """

    customer_xy: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    mean_tx_per_day: np.ndarray
    terminal_xy: np.ndarray
    offsets: np.ndarray
    terminals_of: np.ndarray

    @property
    def n_terminals(self) -> np.ndarray:
        """Number of available terminals per customer."""
        return np.diff(self.offsets)

    def pick_terminals(self, customers: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A uniform terminal of each given customer (u ~ U[0, 1), customers must have terminals)."""
        count = self.n_terminals[customers]
        pick = np.minimum((u * count).astype(np.int64), count - 1)
        return self.terminals_of[self.offsets[customers] + pick]


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per stage, so enabling drift leaves the earlier stages untouched."""
    names = ("profiles", "transactions", "frauds", "drift")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


def _available_terminals(
    customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, terminal ids) of terminals strictly closer than ``radius`` to each customer."""
    pairs = cKDTree(customer_xy).sparse_distance_matrix(cKDTree(terminal_xy), radius, output_type="ndarray")
    pairs = pairs[pairs["v"] < radius]
    order = np.lexsort((pairs["j"], pairs["i"]))
    customers, terminals = pairs["i"][order], pairs["j"][order]
    counts = np.bincount(customers, minlength=len(customer_xy))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return offsets, terminals.astype(np.int64)


def _make_profiles(cfg: SimulateConfig, rng: np.random.Generator) -> Profiles:
    """Customer and terminal profiles as in the spec's "Entities" section."""
    customer_xy = rng.uniform(0, AREA, (cfg.n_customers, 2))
    mean_amount = rng.uniform(5, 100, cfg.n_customers)
    mean_tx_per_day = rng.uniform(0, 4, cfg.n_customers)
    terminal_xy = rng.uniform(0, AREA, (cfg.n_terminals, 2))
    offsets, terminals_of = _available_terminals(customer_xy, terminal_xy, cfg.radius)
    return Profiles(
        customer_xy=customer_xy,
        mean_amount=mean_amount,
        std_amount=mean_amount / 2,
        mean_tx_per_day=mean_tx_per_day,
        terminal_xy=terminal_xy,
        offsets=offsets,
        terminals_of=terminals_of,
    )


def make_profiles(cfg: SimulateConfig) -> Profiles:
    """The exact profiles ``simulate(cfg)`` uses (for tests and for inspecting the geometry)."""
    return _make_profiles(cfg, _streams(cfg.seed)["profiles"])


def profile_tables(cfg: SimulateConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Customer and terminal profile tables, with ids matching ``simulate(cfg)``."""
    p = make_profiles(cfg)
    customers = pl.DataFrame(
        {
            CUSTOMER: np.arange(cfg.n_customers, dtype=np.int64),
            "x_customer_id": p.customer_xy[:, 0],
            "y_customer_id": p.customer_xy[:, 1],
            "mean_amount": p.mean_amount,
            "std_amount": p.std_amount,
            "mean_nb_tx_per_day": p.mean_tx_per_day,
            "nb_terminals": p.n_terminals,
        }
    )
    terminals = pl.DataFrame(
        {
            TERMINAL: np.arange(cfg.n_terminals, dtype=np.int64),
            "x_terminal_id": p.terminal_xy[:, 0],
            "y_terminal_id": p.terminal_xy[:, 1],
        }
    )
    return customers, terminals


def _drift_day(cfg: SimulateConfig) -> int | None:
    """Index of the first drifted day (clipped to [0, n_days]), or None without drift."""
    if cfg.drift_start is None:
        return None
    return min(max((cfg.drift_start - cfg.start_date).days, 0), cfg.n_days)


@dataclass
class _Transactions:
    """Column arrays of generated transactions (the base ones are sorted by customer, then day)."""

    customer: np.ndarray
    day: np.ndarray
    second: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray


def _generate(
    cfg: SimulateConfig, p: Profiles, rng: np.random.Generator, drift_day: int | None
) -> _Transactions:
    """All customer-days at once: Poisson counts, then one draw per transaction for each attribute."""
    n_days = cfg.n_days
    counts = rng.poisson(p.mean_tx_per_day[:, None], size=(cfg.n_customers, n_days))
    counts[p.n_terminals == 0] = 0
    key = np.repeat(np.arange(cfg.n_customers * n_days, dtype=np.int64), counts.ravel())
    second = rng.normal(TIME_MEAN, TIME_STD, key.size).astype(np.int64)
    kept = (second > 0) & (second < SECONDS_PER_DAY)
    key, second = key[kept], second[kept]
    customer, day = np.divmod(key, n_days)

    mean = p.mean_amount[customer]
    amount = rng.normal(mean, p.std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    if drift_day is not None:
        amount[day >= drift_day] *= cfg.drift_amount_factor
    amount = np.round(amount, 2)
    terminal = p.pick_terminals(customer, rng.random(key.size))
    return _Transactions(customer, day, second, terminal, amount)


def _add_frauds(
    cfg: SimulateConfig, tx: _Transactions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scenarios 1–3 in the handbook's order; a later scenario overwrites the label of an earlier one.

    As in the handbook, scenario 3's third is drawn from the pooled transactions of the day's three
    customers, and a transaction drawn on two days is multiplied twice. Mutates ``tx.amount``.
    Returns (fraud, scenario) arrays.
    """
    n_days = cfg.n_days
    scenario = np.where(tx.amount > FRAUD_AMOUNT, 1, 0).astype(np.int8)

    compromised = np.zeros((cfg.n_terminals, n_days), dtype=bool)
    n_terminals = min(COMPROMISED_TERMINALS_PER_DAY, cfg.n_terminals)
    for d in range(n_days):
        compromised[rng.choice(cfg.n_terminals, n_terminals, replace=False), d : d + TERMINAL_DAYS] = True
    scenario[compromised[tx.terminal, tx.day]] = 2

    # Transactions are sorted by (customer, day): a customer's days d..d+13 are one contiguous range.
    bounds = np.searchsorted(tx.customer * n_days + tx.day, np.arange(cfg.n_customers * n_days + 1))
    n_customers = min(COMPROMISED_CUSTOMERS_PER_DAY, cfg.n_customers)
    for d in range(n_days):
        customers = rng.choice(cfg.n_customers, n_customers, replace=False)
        lo = bounds[customers * n_days + d]
        hi = bounds[customers * n_days + min(d + CUSTOMER_DAYS, n_days)]
        window = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        chosen = rng.choice(window, window.size // 3, replace=False)
        tx.amount[chosen] *= CUSTOMER_AMOUNT_FACTOR
        scenario[chosen] = 3
    return (scenario > 0).astype(np.int8), scenario


def _night_bursts(
    cfg: SimulateConfig, p: Profiles, rng: np.random.Generator, drift_day: int
) -> _Transactions:
    """Scenario 4: each drifted day, some cards get a burst of small night-time frauds."""
    eligible = np.flatnonzero(p.n_terminals > 0)
    per_day = min(cfg.drift_night_burst_cards, eligible.size)
    days = np.arange(drift_day, cfg.n_days)
    if per_day == 0 or days.size == 0:
        empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return _Transactions(empty_i, empty_i, empty_i, empty_i, empty_f)
    cards = np.stack([rng.choice(eligible, per_day, replace=False) for _ in days])
    sizes = rng.integers(BURST_SIZE[0], BURST_SIZE[1] + 1, cards.shape)
    customer = np.repeat(cards.ravel(), sizes.ravel())
    day = np.repeat(np.repeat(days, per_day), sizes.ravel())
    second = rng.integers(1, BURST_END_SECOND, customer.size)
    amount = np.round(rng.uniform(*BURST_AMOUNT, customer.size), 2)
    terminal = p.pick_terminals(customer, rng.random(customer.size))
    return _Transactions(customer, day, second, terminal, amount)


def simulate(cfg: SimulateConfig) -> pl.DataFrame:
    """Simulate card transactions with fraud labels (docs/simulator.md), deterministic for ``cfg.seed``.

    Columns: TRANSACTION_ID (rank in time order), TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT,
    TX_FRAUD (0/1), TX_FRAUD_SCENARIO (0 genuine, 1–3 handbook scenarios, 4 drift night bursts);
    sorted by TX_DATETIME.
    """
    rngs = _streams(cfg.seed)
    p = _make_profiles(cfg, rngs["profiles"])
    drift_day = _drift_day(cfg)
    tx = _generate(cfg, p, rngs["transactions"], drift_day)
    fraud, scenario = _add_frauds(cfg, tx, rngs["frauds"])
    parts, frauds, scenarios = [tx], [fraud], [scenario]
    if drift_day is not None:
        burst = _night_bursts(cfg, p, rngs["drift"], drift_day)
        parts.append(burst)
        frauds.append(np.ones(burst.customer.size, dtype=np.int8))
        scenarios.append(np.full(burst.customer.size, 4, dtype=np.int8))

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    seconds = column("day") * SECONDS_PER_DAY + column("second")
    order = np.argsort(seconds, kind="stable")
    epoch = dt.datetime.combine(cfg.start_date, dt.time()) - dt.datetime(1970, 1, 1)
    start_us = epoch // dt.timedelta(microseconds=1)
    return pl.DataFrame(
        [
            pl.Series(TX_ID, np.arange(order.size, dtype=np.int64)),
            pl.Series(TX_TIME, start_us + seconds[order] * 1_000_000).cast(pl.Datetime("us")),
            pl.Series(CUSTOMER, column("customer")[order].astype(np.int64)),
            pl.Series(TERMINAL, column("terminal")[order].astype(np.int64)),
            pl.Series(AMOUNT, np.round(column("amount")[order], 2)),
            pl.Series(LABEL, np.concatenate(frauds)[order], dtype=pl.Int8),
            pl.Series(SCENARIO, np.concatenate(scenarios)[order], dtype=pl.Int8),
        ]
    )


def day_file_name(date: dt.date) -> str:
    """File name of one day's transactions, e.g. ``2018-04-01.parquet`` (sorts in date order)."""
    return f"{date.isoformat()}.parquet"


def iter_days(df: pl.DataFrame) -> Iterator[tuple[dt.date, pl.DataFrame]]:
    """Split a transactions frame by calendar day of TX_DATETIME, in date order (days without rows are
    skipped). The day frames are zero-copy slices, sorted by time."""
    if not df[TX_TIME].is_sorted():
        df = df.sort(TX_TIME, maintain_order=True)
    days = df[TX_TIME].dt.date().to_numpy()
    if days.size == 0:
        return
    starts = np.concatenate(([0], np.flatnonzero(days[1:] != days[:-1]) + 1, [days.size]))
    for lo, hi in itertools.pairwise(starts):
        yield days[lo].astype(dt.date), df.slice(int(lo), int(hi - lo))


def _per_day_means(frauds: pl.DataFrame, first: dt.date, n_days: int) -> tuple[float, float]:
    """Mean frauds and mean distinct compromised cards per calendar day (days without fraud count 0)."""
    if n_days <= 0:
        return 0.0, 0.0
    last = first + dt.timedelta(days=n_days - 1)
    kept = frauds.filter(pl.col("date").is_between(first, last))
    return kept.height / n_days, kept.unique().height / n_days


def summary(df: pl.DataFrame) -> dict[str, Any]:
    """Headline statistics, comparable with the handbook's published ones (docs/simulator.md).

    Per-day means are over every calendar day from the first to the last date; a compromised card is a
    customer with at least one fraud that day. Scenarios 2 and 3 need 28 days to ramp up, so the
    handbook's "about 85 frauds and 80 compromised cards a day" are the ``*_after_ramp_up`` figures
    (days from the 29th on; equal to the plain means for shorter data).
    """
    n = df.height
    n_frauds = int(df[LABEL].sum()) if n else 0
    out: dict[str, Any] = {
        "n_transactions": n,
        "n_frauds": n_frauds,
        "fraud_rate": n_frauds / n if n else 0.0,
    }
    counts = dict(df[SCENARIO].value_counts().iter_rows()) if n else {}
    for s in range(1, 5):
        out[f"n_scenario_{s}"] = int(counts.get(s, 0))
    out["n_customers_transacting"] = df[CUSTOMER].n_unique()
    dates = df[TX_TIME].dt.date()
    first: dt.date = dates.min() if n else dt.date.min  # type: ignore[assignment]
    last: dt.date = dates.max() if n else dt.date.min  # type: ignore[assignment]
    n_days = (last - first).days + 1 if n else 0
    frauds = df.filter(pl.col(LABEL) == 1).select(pl.col(TX_TIME).dt.date().alias("date"), CUSTOMER)
    ramp = TERMINAL_DAYS if n_days > TERMINAL_DAYS else 0
    out["n_days"] = n_days
    out["frauds_per_day"], out["compromised_cards_per_day"] = _per_day_means(frauds, first, n_days)
    out["frauds_per_day_after_ramp_up"], out["compromised_cards_per_day_after_ramp_up"] = (
        _per_day_means(frauds, first + dt.timedelta(days=ramp), n_days - ramp) if n else (0.0, 0.0)
    )
    out["first_date"] = first
    out["last_date"] = last
    return out
