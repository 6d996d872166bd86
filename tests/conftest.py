"""Test-wide settings and the real servers the stack tests share.

A wide terminal, so that messages with long temporary paths are not wrapped. The S3 API server, PostgreSQL
and the MLflow server start once per session, when a test first asks for them, and are stopped by pid at
the end; one that cannot start fails the tests that need it (never a skip).
"""

import os
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import BUCKET, MlflowServer, Postgres, S3Server, start_mlflow, start_postgres, start_s3

if TYPE_CHECKING:
    from distributed import Client

os.environ["COLUMNS"] = "250"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most slow tests first (collection order otherwise): `make test` hands files to
    two processes (pytest-xdist) in this order, so they end together instead of one running the slowest
    files alone at the end."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3-server"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process (and the processes it starts) pointed at the S3 API server, with no cached clients."""
    import s3fs

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FRAUDOPS_STORAGE__ENDPOINT_URL", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A new empty bucket of its own for one test: ``s3://<name>``."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=s3_env.endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def dask_client() -> Iterator["Client"]:
    """A real Dask cluster for the session: two worker processes of one thread (a worker can be killed)."""
    from fraudops.compute import local_client, local_cluster

    with local_cluster(2, "2GB") as cluster, local_client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = start_postgres()
    yield pg
    pg.remove()


@pytest.fixture(scope="session")
def mlflow_server(
    postgres: Postgres, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    server = start_mlflow(postgres, s3_server, tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture
def stack_env(s3_env: S3Server, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process (and those it starts) pointed at the whole stack, with an experiment and a registered
    model of its own on the shared MLflow server; returns a new workspace URL in the stack's bucket."""
    name = uuid.uuid4().hex[:12]
    monkeypatch.setenv("FRAUDOPS_REGISTRY__TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("FRAUDOPS_REGISTRY__EXPERIMENT", f"exp-{name}")
    monkeypatch.setenv("FRAUDOPS_REGISTRY__MODEL_NAME", f"model-{name}")
    return f"s3://{BUCKET}/ws-{name}"
