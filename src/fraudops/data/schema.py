"""Dataset kinds and the column mapping: canonical names inside, the user's names in files.

Inside fraudops every table uses the canonical names below (the handbook's); the config maps them to the
names in users' files, so handbook and Kaggle files work without renaming.

Two kinds of data:

* ``transactions`` — raw card transactions (id, timestamp, customer, terminal, amount, optional label and
  scenario); fraudops engineers the features.
* ``features`` — an already-engineered table such as Kaggle's ``creditcard.csv`` (``Time, V1..V28,
  Amount, Class``); its numeric columns are the model inputs under their own names.

The features kind's time column is optional: without it training splits the rows stratified at random.

Missing values: a null in a required column (id, timestamp, customer, terminal, amount, and every
feature column of the features kind) makes the row invalid. A null label means "not labelled yet": such
rows are scored, and left out of training and evaluation. NaN and ±inf count as missing.
"""

from __future__ import annotations

import polars as pl

from fraudops.config import DataConfig

TX_ID = "TRANSACTION_ID"
TX_TIME = "TX_DATETIME"
CUSTOMER = "CUSTOMER_ID"
TERMINAL = "TERMINAL_ID"
AMOUNT = "TX_AMOUNT"
LABEL = "TX_FRAUD"
SCENARIO = "TX_FRAUD_SCENARIO"
ROW_ERROR = "_row_error"

# role in Columns -> canonical name
ROLES = {
    "transaction_id": TX_ID,
    "timestamp": TX_TIME,
    "customer_id": CUSTOMER,
    "terminal_id": TERMINAL,
    "amount": AMOUNT,
    "label": LABEL,
    "scenario": SCENARIO,
}


def role_columns(cfg: DataConfig) -> dict[str, str]:
    """File column name -> canonical name, for the roles the config maps."""
    roles = cfg.columns.model_dump()
    if cfg.kind == "features":
        roles = {k: v for k, v in roles.items() if k in ("transaction_id", "timestamp", "label", "scenario")}
    return {v: ROLES[k] for k, v in roles.items() if v}


def to_file_columns(df: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Canonical names back to the configured file names (what the simulator writes)."""
    back = {canon: name for name, canon in role_columns(cfg).items() if canon in df.columns}
    return df.rename(back)


def model_inputs(df: pl.DataFrame, cfg: DataConfig) -> list[str]:
    """Features kind: the model's input columns of a canonical frame."""
    if cfg.feature_columns:
        return list(cfg.feature_columns)
    skip = {TX_ID, TX_TIME, LABEL, SCENARIO, ROW_ERROR}
    return [c for c, t in df.schema.items() if c not in skip and t.is_numeric()]
