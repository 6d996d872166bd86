"""Feature engineering: the one module used by training, batch scoring and monitoring.

Input is a table of canonical transactions (:mod:`fraudops.data` names): ``TX_DATETIME`` (Datetime; a
Date is read as midnight), ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT`` and, optionally,
``TRANSACTION_ID`` and ``TX_FRAUD`` (1 = fraud; null or a missing column = unknown, counted as genuine).
Any other column passes through untouched.

Output rows keep the **input order**; the feature columns are appended (an input column with a feature's
name is replaced; ``TX_AMOUNT`` is cast to Float64 and is itself the first model input).

Windows are measured on the absolute time line at microsecond resolution (``n`` days = ``n`` x 24 h, also
for time-zone-aware columns); weekend and night use the column's local wall-clock time. Every window
is open at its old end. ``t`` is the current transaction's timestamp, ``d`` = ``cfg.delay_days``.

The handbook's 15 (simulator.md "Baseline features"), in :func:`feature_names` order:

- ``TX_AMOUNT``: the amount.
- ``TX_DURING_WEEKEND``: 1 if Saturday or Sunday, else 0.
- ``TX_DURING_NIGHT``: 1 if the hour is <= 6 (00:00-06:59), else 0.
- for n in ``customer_windows``: ``CUSTOMER_ID_NB_TX_{n}DAY_WINDOW`` and
  ``CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW``, number and mean amount of the customer's transactions in
  (t - n days, t]. The current transaction is included, and so are **all** of the customer's
  transactions with the same timestamp (ties are simultaneous: they count for each other, whatever
  their row order). Never empty, so no fill.
- for n in ``terminal_windows``: ``TERMINAL_ID_NB_TX_{n}DAY_WINDOW``, number of the terminal's
  transactions in (t - (n + d) days, t - d days], and ``TERMINAL_ID_RISK_{n}DAY_WINDOW``, frauds among
  them / that number, 0 when there are none. Only labels at least ``d`` days old are read (a fraud
  exactly ``d`` days before counts). With ``delay_days = 0`` the window is (t - n, t] and includes the
  current transaction's own label: only use that for analysis, never for training.

``cfg.extra`` adds (no labels, nothing after ``t``; all finite):

- ``CUSTOMER_ID_NB_TX_1HOUR_WINDOW``: the customer's transactions in (t - 1 h, t], ties included.
- ``CUSTOMER_ID_SECONDS_SINCE_PREV_TX``: seconds since the customer's latest transaction strictly
  before ``t`` within 30 days; 2 592 000 (30 days) when there is none (first transaction, or a gap).
- ``CUSTOMER_ID_AMOUNT_RATIO_30DAY``: ``TX_AMOUNT / max(mean, 1)``, where mean is the mean amount of the
  customer's transactions strictly before ``t`` in (t - 30 days, t) (the current one and simultaneous
  ones excluded); 1 when there is none.
- ``CUSTOMER_ID_AMOUNT_ZSCORE_30DAY``: ``(TX_AMOUNT - mean) / max(std, 1)`` over the same previous
  transactions (sample std, ddof = 1), clipped to [-100, 100]; 0 when there are fewer than 2.
- ``CUSTOMER_ID_NEW_TERMINAL_30DAY``: 1 if the customer made no transaction at this terminal strictly
  before ``t`` in (t - 30 days, t), else 0. (Windowed rather than "ever", so training and scoring agree
  once 30 days of history are given.)

Dtypes: flags Int8, counts Int32, everything else Float64.

:func:`features_for` computes the features of new rows over ``history`` + ``new``; history is first
trimmed to the :func:`lookback_days` that can matter, which changes no count and moves floats only in
their last bits (rolling sums are incremental). Results do not depend on the input row order, and
repeated runs give identical bits.

Implementation: times become integer microseconds, customers/terminals dense Int64 codes, and each
entity's rows one sorted Int64 key (code x stride + time), so every window is a single
``rolling_*_by`` pass without ``over`` (groups go in batches only if the key could overflow). About
2.5 CPU-seconds and < 1 GB for the handbook's 1.75 M transactions (benchmarks/bench_features.py).
"""

from __future__ import annotations

from fraudops.config import FeaturesConfig
from fraudops.data.schema import AMOUNT

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
EXTRA_DAYS = 30  # lookback of the extra customer features
NO_PREV_SECONDS = float(EXTRA_DAYS * 86_400)
RATIO_FLOOR = 1.0  # currency units: guards the amount ratio against a zero mean
STD_FLOOR = 1.0  # currency units: guards the z-score against a zero std
Z_CLIP = 100.0

NB_TX_1HOUR = "CUSTOMER_ID_NB_TX_1HOUR_WINDOW"
SECONDS_SINCE_PREV = "CUSTOMER_ID_SECONDS_SINCE_PREV_TX"
AMOUNT_RATIO = "CUSTOMER_ID_AMOUNT_RATIO_30DAY"
AMOUNT_ZSCORE = "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"
NEW_TERMINAL = "CUSTOMER_ID_NEW_TERMINAL_30DAY"
EXTRA_FEATURES = [NB_TX_1HOUR, SECONDS_SINCE_PREV, AMOUNT_RATIO, AMOUNT_ZSCORE, NEW_TERMINAL]


def handbook_feature_names(cfg: FeaturesConfig | None = None) -> list[str]:
    """The handbook's baseline inputs (15 with its windows, 1, 7 and 30 days; 19 with the default ones)."""
    cfg = cfg or FeaturesConfig()
    names = [AMOUNT, "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    for n in cfg.customer_windows:
        names += [f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"]
    for n in cfg.terminal_windows:
        names += [f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW", f"TERMINAL_ID_RISK_{n}DAY_WINDOW"]
    return names


def feature_names(cfg: FeaturesConfig | None = None) -> list[str]:
    """The model inputs, in a fixed order: the handbook's, then fraudops' extras when ``cfg.extra``."""
    cfg = cfg or FeaturesConfig()
    names = handbook_feature_names(cfg)
    if cfg.extra:
        names += EXTRA_FEATURES
    return names


def lookback_days(cfg: FeaturesConfig | None = None) -> int:
    """History (days before a transaction) that can change its features."""
    cfg = cfg or FeaturesConfig()
    days = [*cfg.customer_windows, *(n + cfg.delay_days for n in cfg.terminal_windows), 1]
    if cfg.extra:
        days.append(EXTRA_DAYS)
    return max(days)


def check_windows(cfg: FeaturesConfig) -> None:
    for key in ("customer_windows", "terminal_windows"):
        windows = getattr(cfg, key)
        if any(n <= 0 for n in windows):
            raise ValueError(f"features.{key}: windows must be positive days, got {windows}")
        if len(set(windows)) != len(windows):
            raise ValueError(f"features.{key}: duplicate windows {windows}")
