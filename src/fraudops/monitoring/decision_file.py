"""Reading ``retrain_decision.csv``: the rules shared by the local trigger and the AWS Lambda.

The monitor writes the file (:func:`fraudops.monitoring.decision.decision_csv`); ``fraudops trigger`` reads
it from the workspace and the retraining Lambda reads it from S3 with boto3. Both parse the bytes here, so
they accept and refuse the same files. Standard library only: the Lambda's bundle carries this module
without the rest of fraudops' dependencies.
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

from fraudops.errors import FraudopsError

HEADER = "retraining_required"
VALUES = ("YES", "NO")


def parse_decision(data: bytes, where: str, written: object = None) -> dict[str, Any]:
    """The decision in ``data``: YES/NO in the first column of the second row (the seed Lambda's
    ``rows[1][0]``), its reasons, the whole row, and ``key``: a hash of the content and of ``written``
    (when the file was written), so a decision is acted on once even when the same YES is written again."""
    try:
        text = data.decode("utf-8-sig")
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise FraudopsError(f"{where} is not a readable CSV: {e}") from e
    if not rows or not rows[0] or rows[0][0].strip().lower() != HEADER:
        first = rows[0][0] if rows and rows[0] else "nothing"
        raise FraudopsError(f"{where}: the first column must be {HEADER}, found {first!r}")
    if len(rows) < 2 or not rows[1]:
        raise FraudopsError(f"{where}: no decision row under the header")
    value = rows[1][0].strip().upper()
    if value not in VALUES:
        raise FraudopsError(f"{where}: {HEADER} must be YES or NO, found {rows[1][0]!r}")
    row = dict(zip([h.strip() for h in rows[0]], rows[1], strict=False))
    reasons = [r.strip() for r in (row.get("reasons") or "").split(";") if r.strip()]
    return {
        HEADER: value,
        "reasons": reasons,
        "row": row,
        "key": hashlib.sha256(data + f"|{written}".encode()).hexdigest(),
        "written": str(written),
        "file": where,
    }
