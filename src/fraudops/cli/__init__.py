"""The ``fraudops`` command: one Typer sub-app per area, each a thin layer over the stage packages."""

from __future__ import annotations

import typer

from fraudops.cli import aws, dashboard, data, demo, models, pipeline, serve, shadow, workspace


def build() -> typer.Typer:
    """The command tree (built on demand: importing this package registers nothing)."""
    app = typer.Typer(
        help="fraudops: card-fraud MLOps — simulate, train, register, score, monitor, serve.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode="rich",
    )
    for name, fn in (
        ("version", workspace.version),
        ("init", workspace.init),
        ("config", workspace.show_config),
        ("train", models.train),
        ("tune", models.tune),
        ("register", models.register),
        ("select-champion", models.select_champion),
        ("run", pipeline.run_pipeline),
        ("trigger", pipeline.trigger),
        ("batch", pipeline.batch),
        ("reset", workspace.reset),
        ("ui", workspace.ui),
        ("demo", demo.demo),
        ("serve", serve.serve),
        ("dashboard", dashboard.dashboard),
    ):
        app.command(name)(fn)
    app.add_typer(data.app, name="data")
    app.add_typer(models.champion_app, name="champion")
    app.add_typer(pipeline.executions_app, name="executions")
    app.add_typer(pipeline.monitor_app, name="monitor")
    app.add_typer(aws.export_app, name="export")
    app.add_typer(aws.sagemaker_app, name="sagemaker")
    app.add_typer(shadow.shadow_app, name="shadow")
    return app


def main() -> None:
    """The console script: configure the process once, then run the command."""
    from fraudops import process

    process.configure()
    build()(prog_name="fraudops")
