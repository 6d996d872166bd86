"""The batch_inference step: every file of ``prod_inputs/`` scored with the champion (Batch Transform)."""

from __future__ import annotations

import datetime as dt
import posixpath
import time

import polars as pl
from pydantic import BaseModel

from fraudops import compute, features
from fraudops.batch.scoring import FileScore, peer_rows, score_file
from fraudops.config import Settings
from fraudops.context import Progress, StepContext, StepResult
from fraudops.data.loading import table_files
from fraudops.data.schema import TX_ID
from fraudops.errors import FraudopsError, StorageError
from fraudops.features import table
from fraudops.features.table import FeatureTable
from fraudops.modeling.explain import Explainer
from fraudops.modeling.model import FraudModel
from fraudops.modeling.registry import champion
from fraudops.promotion import journal
from fraudops.tracking.client import client, step_run
from fraudops.workspace.layout import PREDICTIONS, PROD_INPUTS
from fraudops.workspace.storage import Storage

STEP = "batch_inference"


class BatchTotals(BaseModel):
    files: int
    failed_files: int
    rows_scored: int
    rows_rejected: int
    rows_flagged: int
    seconds: float
    rows_per_second: int


class BatchResult(StepResult):
    """What the step scored, file by file, and with which version."""

    model: str
    model_version: int
    scored_at: str
    files: list[FileScore]
    failed: dict[str, str]
    totals: BatchTotals


class BatchError(FraudopsError):
    """Some files could not be scored; ``result`` holds what the run did score."""

    def __init__(self, message: str, result: BatchResult) -> None:
        super().__init__(message)
        self.result = result


def score_partition(
    rel: str,
    storage: Storage,
    model: FraudModel,
    settings: Settings,
    version: int,
    scored_at: dt.datetime,
    history: pl.DataFrame | FeatureTable | None,
    progress: Progress | None,
    explainer: Explainer | None = None,
    peers: pl.DataFrame | None = None,
) -> tuple[FileScore | None, str | None]:
    """One file scored (here or on a worker): its score, or why it failed."""
    try:
        score = score_file(
            storage,
            rel,
            model,
            settings,
            version=version,
            scored_at=scored_at,
            history=history,
            peers=peers,
            progress=progress,
            explainer=explainer,
        )
    except (FraudopsError, StorageError) as e:
        return None, str(e)
    return score, None


def peer_history(
    files: list[str], storage: Storage, model: FraudModel, settings: Settings, eng: compute.Engine | None
) -> pl.DataFrame | None:
    """Every input file's valid rows, each file's features' view of the others (read by the workers on
    the Dask engine); a repeated transaction id is the later file's row."""
    frames = (
        [peer_rows(rel, storage, model, settings) for rel in files]
        if eng is None
        else eng.map(peer_rows, files, storage, shared={"model": model}, settings=settings)
    )
    kept = [f for f in frames if f is not None]
    if not kept:
        return None
    rows = pl.concat(kept, how="diagonal_relaxed")
    return rows.unique(TX_ID, keep="last", maintain_order=True) if TX_ID in rows.columns else rows


def batch_step(ctx: StepContext) -> BatchResult:
    """Score every file of prod_inputs/ with the champion; log the same to an MLflow run.

    When some files fail, the others are still scored and :class:`BatchError` (with the result) is raised
    at the end.
    """
    import mlflow

    settings, storage = ctx.settings, ctx.storage
    started = time.perf_counter()
    files = table_files(storage, PROD_INPUTS)
    if not files:
        raise FraudopsError(
            f"no files to score in {storage.uri(PROD_INPUTS)}: add CSV or Parquet files there"
        )
    client(settings)  # fail fast on an unreachable tracking server
    journal.complete_pending(settings)
    storage.remove_leftovers(PREDICTIONS)
    version, model = champion(settings)
    eng = compute.current()
    # on the workers each task runs on one thread: the model, and the explainer's, predict with one
    model = model.with_threads(settings.train.n_jobs if eng is None else 1)
    if settings.data.kind == "transactions":
        unknown = [n for n in model.feature_names if n not in features.feature_names(settings.features)]
        if unknown:
            raise FraudopsError(
                f"champion version {version} needs features the features configuration does not produce: "
                f"{', '.join(unknown)}"
            )
    history: pl.DataFrame | FeatureTable | None = None
    peers: pl.DataFrame | None = None
    if settings.data.kind == "transactions":
        loaded = table.history(storage, settings)  # on the Dask engine, built by the workers
        history = loaded if (loaded.rows if isinstance(loaded, FeatureTable) else loaded.height) else None
        peers = peer_history(files, storage, model, settings, eng)
    explainer = Explainer(model) if settings.batch.reasons != "off" else None
    scored_at = dt.datetime.now(dt.UTC)
    results: list[FileScore] = []
    failures: dict[str, str] = {}
    with step_run(settings, STEP, ctx.execution_id, ctx.parent_run_id) as run:
        mlflow.log_params(
            {
                "model_name": settings.registry.model_name,
                "model_version": version,
                "model_kind": model.kind,
                "threshold": model.threshold,
                "data_kind": settings.data.kind,
                "n_files": len(files),
                "files": ",".join(posixpath.basename(f) for f in files)[:6000],
                "on_invalid": settings.batch.on_invalid,
                "chunk_rows": settings.batch.chunk_rows,
                "join_columns": "all"
                if settings.batch.join_columns is None
                else ",".join(settings.batch.join_columns),
                "n_jobs": settings.train.n_jobs,
            }
        )
        if eng is None:
            for rel in files:
                score, error = score_partition(
                    rel, storage, model, settings, version, scored_at, history, ctx.progress, explainer, peers
                )
                if score is not None:
                    results.append(score)
                if error is not None:
                    failures[rel] = error
        else:
            # files are the partitions; the model and the history go to each worker once, not per file
            done = eng.map(
                score_partition,
                files,
                storage,
                shared={
                    "model": model,
                    "history": history,
                    "peers": peers,
                    "explainer": explainer,
                },
                settings=settings,
                version=version,
                scored_at=scored_at,
                progress=None,
            )
            storage.remove_leftovers(PREDICTIONS)  # what attempts on a lost worker left (never a live writer)
            for rel, (score, error) in zip(files, done, strict=True):
                if score is not None:
                    results.append(score)
                if error is not None:
                    failures[rel] = error
        seconds = time.perf_counter() - started
        rows = sum(r.rows for r in results)
        totals = BatchTotals(
            files=len(results),
            failed_files=len(failures),
            rows_scored=rows,
            rows_rejected=sum(r.rejected for r in results),
            rows_flagged=sum(r.flagged for r in results),
            seconds=round(seconds, 3),
            rows_per_second=round(rows / seconds) if seconds > 0 else 0,
        )
        mlflow.log_metrics({k: float(v) for k, v in totals.model_dump().items()})
        result = BatchResult(
            run_id=str(run.info.run_id),
            model=settings.registry.model_name,
            model_version=version,
            scored_at=scored_at.isoformat(),
            files=results,
            failed=failures,
            totals=totals,
        )
        mlflow.log_dict(result.model_dump(mode="json"), "batch_summary.json")
        if failures:
            mlflow.set_tag("fraudops.failed_files", ", ".join(failures)[:5000])
            lines = "\n".join(f"- {msg}" for msg in failures.values())
            raise BatchError(
                f"{len(failures)} of {len(files)} files could not be scored"
                f"{' (the others were)' if results else ''}:\n{lines}",
                result,
            )
    return result
