"""Registering a trained model as the challenger: one version per train run, by lineage."""

from __future__ import annotations

from fraudops.config import Settings
from fraudops.context import StepContext, StepResult
from fraudops.errors import FraudopsError
from fraudops.promotion import journal
from fraudops.tracking import registry
from fraudops.tracking.client import (
    EXECUTION_TAG,
    STEP_TAG,
    call,
    client,
    experiment_id,
    step_run,
    tracking_uri,
)


class RegisterResult(StepResult):
    """The version created (or completed) from a train run, aliased challenger."""

    model: str
    version: int
    alias: str
    source_run_id: str


def latest_unregistered_train_run(settings: Settings) -> str:
    """The newest finished train run that has no registered version yet (by tracking lineage)."""
    c = client(settings)
    runs = call(
        settings,
        "train runs",
        lambda: c.search_runs(
            [experiment_id(settings)],
            filter_string=f"tags.`{STEP_TAG}` = 'train' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        ),
    )
    for run in runs:
        if registry.REGISTERED_TAG not in run.data.tags:
            return str(run.info.run_id)
    raise FraudopsError("no trained, unregistered model: run `fraudops train` first (or pass --run-id)")


def register(settings: Settings, run_id: str, execution_id: str | None = None) -> RegisterResult:
    """A new version of the registered model from a train run, aliased ``challenger``.

    Never two versions for one run: a version an interrupted attempt created is found and completed.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registry.model_name
    try:
        run = call(settings, "train run", lambda: c.get_run(run_id))
    except MlflowException as e:
        raise FraudopsError(f"run {run_id} not found in {tracking_uri(settings)}") from e
    if run.data.tags.get(STEP_TAG) != "train":
        raise FraudopsError(f"run {run_id} is not a train run")
    if registry.REGISTERED_TAG in run.data.tags:
        raise FraudopsError(
            f"run {run_id} is already registered as version {run.data.tags[registry.REGISTERED_TAG]}"
        )
    tags = {
        f"metric.{k.removeprefix('test_')}": f"{v:.6g}"
        for k, v in run.data.metrics.items()
        if k.startswith("test_")
    }
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith("data.")})
    tags[registry.SOURCE_RUN_TAG] = run_id
    tags["fraudops.threshold"] = run.data.params.get("threshold", "")
    if execution_id:
        tags[EXECUTION_TAG] = execution_id
    mv = registry.create_version(settings, run_id, tags)
    registry.set_alias(settings, registry.CHALLENGER, int(mv.version))
    call(settings, "mark run registered", lambda: c.set_tag(run_id, registry.REGISTERED_TAG, str(mv.version)))
    return RegisterResult(
        model=name, version=int(mv.version), alias=registry.CHALLENGER, source_run_id=run_id
    )


def register_step(ctx: StepContext) -> RegisterResult:
    """Register the run trained in this execution (or the newest unregistered one) as challenger."""
    import mlflow

    settings = ctx.settings
    journal.complete_pending(settings)
    trained = ctx.handover("train", StepResult)
    run_id = (trained.run_id if trained else None) or latest_unregistered_train_run(settings)
    out = register(settings, run_id, ctx.execution_id)
    with step_run(settings, "register", ctx.execution_id, ctx.parent_run_id) as run:
        mlflow.log_params({"version": out.version, "source_run_id": run_id})
        out.run_id = str(run.info.run_id)
    return out
