"""Process-wide settings, applied once where a fraudops process starts (the CLI, each server worker).

Nothing here runs on import: :func:`configure` is called by ``fraudops.cli.main`` and the endpoint's
worker factory, before any stage imports XGBoost or MLflow.
"""

from __future__ import annotations

import logging
import os


def configure() -> None:
    """Environment defaults the libraries read when they load, and their log levels.

    - ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads (XGBoost, scikit-learn) sleep rather than spin while they
      wait; on a busy 2-core machine spinning threads fight for the cores, and a 2-thread fit of a 3-week
      window took 112 s instead of 23 s (benchmarks/bench_train.py). OpenMP reads it when it loads.
    - MLflow's HTTP client retries a failing server 7 times with a growing backoff (minutes); fraudops
      retries each call itself (:mod:`fraudops.retries`), so MLflow's own retries are kept short.
    - MLflow's INFO logging and the run links it prints for a tracking server are silenced (fraudops
      prints its own).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def use_s3_endpoint(endpoint_url: str | None) -> None:
    """Point MLflow's S3 artifact client at the workspace's ``storage.endpoint_url`` (MLflow reads only
    ``MLFLOW_S3_ENDPOINT_URL`` or the AWS configuration); a value already in the environment wins."""
    if endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint_url)
