"""Transaction simulator: the handbook's data model (docs/simulator.md), vectorised with numpy, day by day.

The handbook's generator loops in Python over customers, days and transactions (~145 s for the published
configuration); here each day is a few array operations over all customers, so the published
configuration takes about a second.

Days are generated one at a time and handed out in date order (:func:`simulate_days`), so memory is
bounded by the days a scenario spans, not by the simulation's length: a day is final once the cards
compromised on it and on the 13 days before have had their third of transactions picked, which needs
the 13 days after it; the generator keeps those 14 days, plus, per terminal, the last day it is
compromised (scenario 2's 28 days). :func:`simulate` is the same days in one frame.

Randomness: every stage of every day draws from its own generator, ``SeedSequence(seed, spawn_key=(stage,
day))`` (the profiles from ``(0,)``), so a day's data does not depend on how many days are generated or
how they are grouped, and turning drift on changes nothing before ``drift_start``: the days before it
are identical to a run without drift.

Drift (only when ``cfg.drift_start`` is set), from that day on:

* every generated amount is multiplied by ``drift_amount_factor`` before the fraud scenarios run, so
  scenario 1 (amount > 220) follows the shifted amounts as a real rule would (more scenario-1 frauds);
* a new fraud pattern, scenario 4: each day ``drift_night_burst_cards`` random cards get a burst of
  5–15 small (1–20) transactions between 00:00 and 06:00 on their usual terminals, all fraud. They are
  added after scenarios 1–3 and keep their label 4.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
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
PROFILES, TRANSACTIONS, TERMINALS, CUSTOMERS, DRIFT = range(5)
"""The random stages (the first element of their generators' spawn key)."""
SCHEMA = pl.Schema(
    [
        (TX_ID, pl.Int64()),
        (TX_TIME, pl.Datetime("us")),
        (CUSTOMER, pl.Int64()),
        (TERMINAL, pl.Int64()),
        (AMOUNT, pl.Float64()),
        (LABEL, pl.Int8()),
        (SCENARIO, pl.Int8()),
    ]
)


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


def _rng(seed: int, stage: int, *day: int) -> np.random.Generator:
    """The generator of one stage (of one day): independent of every other stage and day."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stage, *day)))


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
    return _make_profiles(cfg, _rng(cfg.seed, PROFILES))


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
class _Day:
    """One day's transactions as column arrays (the generated ones sorted by customer) and their
    scenario (0 genuine); scenarios 2 and 3 mark and scale them in place."""

    customer: np.ndarray
    second: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    scenario: np.ndarray


def _generate_day(cfg: SimulateConfig, p: Profiles, d: int, drift_day: int | None) -> _Day:
    """Day ``d`` for every customer at once: Poisson counts, then one draw per transaction for each
    attribute; scenario 1 (amount over 220) marked."""
    rng = _rng(cfg.seed, TRANSACTIONS, d)
    counts = rng.poisson(p.mean_tx_per_day)
    counts[p.n_terminals == 0] = 0
    customer = np.repeat(np.arange(cfg.n_customers, dtype=np.int64), counts)
    second = rng.normal(TIME_MEAN, TIME_STD, customer.size).astype(np.int64)
    kept = (second > 0) & (second < SECONDS_PER_DAY)
    customer, second = customer[kept], second[kept]

    mean = p.mean_amount[customer]
    amount = rng.normal(mean, p.std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    if drift_day is not None and d >= drift_day:
        amount *= cfg.drift_amount_factor
    amount = np.round(amount, 2)
    terminal = p.pick_terminals(customer, rng.random(customer.size))
    scenario = np.where(amount > FRAUD_AMOUNT, 1, 0).astype(np.int8)
    return _Day(customer, second, terminal, amount, scenario)


def _compromise_terminals(cfg: SimulateConfig, until: np.ndarray, d: int, day: _Day) -> None:
    """Scenario 2: the terminals compromised on day ``d`` stay so for 28 days (``until`` holds each
    terminal's last compromised day, carried from day to day); their transactions that day are fraud."""
    rng = _rng(cfg.seed, TERMINALS, d)
    chosen = rng.choice(cfg.n_terminals, min(COMPROMISED_TERMINALS_PER_DAY, cfg.n_terminals), replace=False)
    until[chosen] = d + TERMINAL_DAYS - 1
    day.scenario[until[day.terminal] >= d] = 2


def _compromise_customers(cfg: SimulateConfig, s: int, window: Sequence[_Day]) -> None:
    """Scenario 3 for the cards compromised on day ``s``: a third of their transactions over days
    s..s+13 (``window``, fewer at the end of the simulation), drawn from the pooled transactions of the
    day's cards as in the handbook, get five times their amount and are fraud. A transaction drawn on two
    days is multiplied twice."""
    rng = _rng(cfg.seed, CUSTOMERS, s)
    cards = rng.choice(cfg.n_customers, min(COMPROMISED_CUSTOMERS_PER_DAY, cfg.n_customers), replace=False)
    # a day's generated rows are sorted by customer: a card's rows of a day are one range
    spans = [
        (np.searchsorted(day.customer, cards), np.searchsorted(day.customer, cards, "right"))
        for day in window
    ]
    pooled = [(i, np.arange(lo[k], hi[k])) for k in range(cards.size) for i, (lo, hi) in enumerate(spans)]
    days = np.concatenate([np.full(rows.size, i) for i, rows in pooled])
    rows = np.concatenate([rows for _, rows in pooled])
    chosen = rng.choice(rows.size, rows.size // 3, replace=False)
    for i, day in enumerate(window):
        picked = rows[chosen[days[chosen] == i]]
        day.amount[picked] *= CUSTOMER_AMOUNT_FACTOR
        day.scenario[picked] = 3


def _night_burst(cfg: SimulateConfig, p: Profiles, eligible: np.ndarray, d: int) -> _Day:
    """Scenario 4 on a drifted day: some cards get a burst of small night-time frauds."""
    rng = _rng(cfg.seed, DRIFT, d)
    cards = rng.choice(eligible, min(cfg.drift_night_burst_cards, eligible.size), replace=False)
    customer = np.repeat(cards, rng.integers(BURST_SIZE[0], BURST_SIZE[1] + 1, cards.size))
    second = rng.integers(1, BURST_END_SECOND, customer.size)
    amount = np.round(rng.uniform(*BURST_AMOUNT, customer.size), 2)
    terminal = p.pick_terminals(customer, rng.random(customer.size))
    return _Day(customer, second, terminal, amount, np.full(customer.size, 4, dtype=np.int8))


def _frame(cfg: SimulateConfig, d: int, parts: list[_Day], first_id: int) -> pl.DataFrame:
    """Day ``d``'s rows in time order, ids counting on from ``first_id``."""

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    second = column("second")
    order = np.argsort(second, kind="stable")
    epoch = dt.datetime.combine(cfg.start_date, dt.time()) - dt.datetime(1970, 1, 1)
    start_us = epoch // dt.timedelta(microseconds=1) + d * SECONDS_PER_DAY * 1_000_000
    scenario = column("scenario")[order]
    return pl.DataFrame(
        [
            pl.Series(TX_ID, np.arange(first_id, first_id + order.size, dtype=np.int64)),
            pl.Series(TX_TIME, start_us + second[order] * 1_000_000).cast(pl.Datetime("us")),
            pl.Series(CUSTOMER, column("customer")[order].astype(np.int64)),
            pl.Series(TERMINAL, column("terminal")[order].astype(np.int64)),
            pl.Series(AMOUNT, np.round(column("amount")[order], 2)),
            pl.Series(LABEL, (scenario > 0).astype(np.int8), dtype=pl.Int8),
            pl.Series(SCENARIO, scenario, dtype=pl.Int8),
        ]
    )


def simulate_days(cfg: SimulateConfig) -> Iterator[tuple[dt.date, pl.DataFrame]]:
    """The simulation one day at a time, in date order (days without transactions skipped); the frames
    concatenated are :func:`simulate`'s. Holds the profiles and 14 days, whatever ``cfg.n_days``."""
    p = _make_profiles(cfg, _rng(cfg.seed, PROFILES))
    drift_day = _drift_day(cfg)
    eligible = np.flatnonzero(p.n_terminals > 0)
    until = np.full(cfg.n_terminals, -1, dtype=np.int64)
    window: collections.deque[_Day] = collections.deque()
    next_id = 0
    for d in range(cfg.n_days + CUSTOMER_DAYS - 1):
        if d < cfg.n_days:
            day = _generate_day(cfg, p, d, drift_day)
            _compromise_terminals(cfg, until, d, day)
            window.append(day)
        s = d - (CUSTOMER_DAYS - 1)  # the days from s on are generated: s's cards can be compromised
        if s < 0:
            continue
        _compromise_customers(cfg, s, window)
        parts = [window.popleft()]  # every card compromised on days up to s is done: day s is final
        if drift_day is not None and s >= drift_day and eligible.size and cfg.drift_night_burst_cards:
            parts.append(_night_burst(cfg, p, eligible, s))
        frame = _frame(cfg, s, parts, next_id)
        next_id += frame.height
        if frame.height:
            yield cfg.start_date + dt.timedelta(days=s), frame


def simulate(cfg: SimulateConfig) -> pl.DataFrame:
    """Simulate card transactions with fraud labels (docs/simulator.md), deterministic for ``cfg.seed``.

    Columns: TRANSACTION_ID (rank in time order), TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT,
    TX_FRAUD (0/1), TX_FRAUD_SCENARIO (0 genuine, 1–3 handbook scenarios, 4 drift night bursts);
    sorted by TX_DATETIME. In memory: for long simulations, :func:`simulate_days`.
    """
    frames = [frame for _, frame in simulate_days(cfg)]
    return pl.concat(frames, rechunk=True) if frames else pl.DataFrame(schema=SCHEMA)


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


class Summary:
    """Headline statistics, comparable with the handbook's published ones (docs/simulator.md), gathered
    from frames of distinct days one at a time (:meth:`add`), so that a streamed simulation needs no
    more memory than its days; :func:`summary` is the same for one frame.

    Per-day means are over every calendar day from the first to the last date; a compromised card is a
    customer with at least one fraud that day. Scenarios 2 and 3 need 28 days to ramp up, so the
    handbook's "about 85 frauds and 80 compromised cards a day" are the ``*_after_ramp_up`` figures
    (days from the 29th on; equal to the plain means for shorter data).
    """

    def __init__(self) -> None:
        self.n = self.frauds = 0
        self.scenarios: collections.Counter[int] = collections.Counter()
        self.customers: set[Any] = set()
        self.frauds_on: dict[dt.date, tuple[int, int]] = {}
        """Per date: frauds, distinct compromised cards."""
        self.dates: list[dt.date] = []

    def add(self, frame: pl.DataFrame) -> None:
        """Count a frame's rows (its days must not be in an earlier frame)."""
        if frame.height == 0:
            return
        self.n += frame.height
        self.frauds += int(frame[LABEL].sum())
        self.scenarios.update(dict(frame[SCENARIO].value_counts().iter_rows()))
        self.customers.update(frame[CUSTOMER].unique().to_list())
        dates = frame[TX_TIME].dt.date()
        self.dates += [dates.min(), dates.max()]  # type: ignore[list-item]
        per_day = (
            frame.filter(pl.col(LABEL) == 1)
            .group_by(pl.col(TX_TIME).dt.date().alias("date"))
            .agg(pl.len().alias("frauds"), pl.col(CUSTOMER).n_unique().alias("cards"))
        )
        self.frauds_on.update({day: (frauds, cards) for day, frauds, cards in per_day.iter_rows()})

    def _means(self, first: dt.date, n_days: int) -> tuple[float, float]:
        """Mean frauds and mean compromised cards per calendar day (days without fraud count 0)."""
        if n_days <= 0:
            return 0.0, 0.0
        last = first + dt.timedelta(days=n_days - 1)
        kept = [v for day, v in self.frauds_on.items() if first <= day <= last]
        return sum(f for f, _ in kept) / n_days, sum(c for _, c in kept) / n_days

    def result(self) -> dict[str, Any]:
        n = self.n
        n_frauds = sum(count for scenario, count in self.scenarios.items() if scenario > 0)
        out: dict[str, Any] = {
            "n_transactions": n,
            "n_frauds": n_frauds,
            "fraud_rate": n_frauds / n if n else 0.0,
        }
        for s in range(1, 5):
            out[f"n_scenario_{s}"] = self.scenarios.get(s, 0)
        out["n_customers_transacting"] = len(self.customers)
        first, last = (min(self.dates), max(self.dates)) if n else (dt.date.min, dt.date.min)
        n_days = (last - first).days + 1 if n else 0
        ramp = TERMINAL_DAYS if n_days > TERMINAL_DAYS else 0
        out["n_days"] = n_days
        out["frauds_per_day"], out["compromised_cards_per_day"] = self._means(first, n_days)
        out["frauds_per_day_after_ramp_up"], out["compromised_cards_per_day_after_ramp_up"] = (
            self._means(first + dt.timedelta(days=ramp), n_days - ramp) if n else (0.0, 0.0)
        )
        out["first_date"] = first
        out["last_date"] = last
        return out


def summary(df: pl.DataFrame) -> dict[str, Any]:
    """:class:`Summary` of one frame."""
    stats = Summary()
    stats.add(df)
    return stats.result()
