"""Champion selection and rollback: challenger and champion scored on the same, most recent labelled window.

When the challenger was scored in the shadow of the endpoint (``serve.shadow``), that live comparison is
recorded with the decision as evidence (:mod:`fraudops.promotion.shadow`); the rule itself is unchanged.
Every decision is recorded with its reasons (version tags and a decision run) and applied through
:mod:`fraudops.promotion.journal`, so a crash at any call leaves a registry the next step completes.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from fraudops.config import RegistryConfig, Settings
from fraudops.context import StepContext, StepResult
from fraudops.data.schema import LABEL
from fraudops.errors import FraudopsError
from fraudops.features import table
from fraudops.modeling import evaluate
from fraudops.modeling.model import FraudModel
from fraudops.modeling.registry import load_version
from fraudops.modeling.splits import split
from fraudops.promotion import journal, reference
from fraudops.promotion.shadow import live_summary, shadow_comparison
from fraudops.tracking import registry
from fraudops.tracking.client import json_safe
from fraudops.workspace.storage import Storage


class ChampionResult(StepResult):
    """What champion selection (or a rollback) decided, and the aliases afterwards."""

    decision: Literal["promoted", "rejected", "unchanged", "rollback"]
    challenger_version: int | None
    champion_version: int | None
    previous_champion_version: int | None = None
    reasons: list[str]
    window: dict[str, str] = Field(default_factory=dict)


def promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, cfg: RegistryConfig
) -> tuple[bool, list[str]]:
    """The promotion rule, on metrics computed on the same window. Returns (promote, reasons).

    Every challenger must pass the absolute gate (ROC AUC and AP relative to the fraud rate). Against a
    champion it must add at least ``min_improvement`` average precision (a tie counts as a win only when
    min_improvement is 0) and lose at most ``recall_tolerance`` recall at its own threshold.
    """
    reasons: list[str] = []
    auc, ap, rate = challenger["roc_auc"], challenger["average_precision"], challenger["fraud_rate"]
    gate_ap = cfg.gate_ap_over_fraud_rate * rate
    gate_ok = auc >= cfg.gate_min_auc and ap >= gate_ap
    reasons.append(
        f"gate {'passed' if gate_ok else 'FAILED'}: ROC AUC {auc:.4f} (min {cfg.gate_min_auc}), "
        f"AP {ap:.4f} (min {gate_ap:.4f} = {cfg.gate_ap_over_fraud_rate} x fraud rate {rate:.4%})"
    )
    if not gate_ok:
        return False, reasons
    if champion is None:
        reasons.append("no champion yet: the first model that passes the gate is promoted")
        return True, reasons
    gain = ap - champion["average_precision"]
    ap_ok = gain >= cfg.min_improvement
    reasons.append(
        f"AP {ap:.4f} vs champion {champion['average_precision']:.4f}: {gain:+.4f} "
        f"({'>=' if ap_ok else '<'} min_improvement {cfg.min_improvement})"
    )
    recall_loss = champion["recall"] - challenger["recall"]
    recall_ok = recall_loss <= cfg.recall_tolerance
    reasons.append(
        f"recall at threshold {challenger['recall']:.4f} vs champion {champion['recall']:.4f}: loss "
        f"{max(recall_loss, 0):.4f} ({'within' if recall_ok else 'beyond'} tolerance {cfg.recall_tolerance})"
    )
    return ap_ok and recall_ok, reasons


def score_window(
    model: FraudModel, window: pl.DataFrame, settings: Settings
) -> tuple[np.ndarray, dict[str, float]]:
    p = model.predict_proba(window)
    y = window[LABEL].to_numpy()
    metrics = evaluate.evaluate(
        y, p, model.threshold, costs=settings.train.threshold, frame=window, k=settings.train.top_k
    )
    return p, metrics


class Window:
    """The most recent labelled test window: for metrics (known-compromised cards removed, as in training's
    test), whole (the drift reference: production data has those cards), and the labelled data it is from."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.labelled = table.labelled(storage, settings)  # on the Dask engine, the table train built
        n = self.labelled.rows if isinstance(self.labelled, table.FeatureTable) else self.labelled.height
        if n == 0:
            raise FraudopsError(
                "no labelled data to compare models on (data/raw/, monitoring_inputs/current_data/)"
            )
        parts = split(self.labelled, settings, latest=True)
        self.test, self.windows = parts.test, parts.windows
        self.whole = parts.test if parts.test_all is None else parts.test_all


def _decision_tags(decision: str, reasons: list[str]) -> dict[str, str]:
    return {registry.DECISION_TAG: decision, registry.DECISION_REASONS_TAG: "; ".join(reasons)}


def _result(settings: Settings, change: journal.Change, run_id: str, *notes: str) -> ChampionResult:
    """What a (possibly interrupted, now complete) selection or rollback decided, and the aliases after it."""
    current = registry.aliases(settings)
    return ChampionResult(
        run_id=run_id,
        decision=change.decision,
        challenger_version=None
        if change.decision == "rollback"
        else (change.record.get("challenger") or {}).get("version"),
        champion_version=current.get(registry.CHAMPION),
        previous_champion_version=current.get(registry.PREVIOUS),
        reasons=[*change.record.get("reasons", []), *notes],
        window=change.record.get("window", {}),
    )


def _commit(
    ctx: StepContext,
    decision: Literal["promoted", "rejected", "rollback"],
    aliases: dict[str, int | None],
    version_tags: dict[int, dict[str, str]],
    record: dict[str, Any],
) -> ChampionResult:
    step = "rollback" if decision == "rollback" else "select_champion"
    change = journal.new_change(
        decision,
        step,
        aliases=aliases,
        version_tags=version_tags,
        record=json_safe(record),
        execution_id=ctx.execution_id,
        parent_run_id=ctx.parent_run_id,
    )
    return _result(ctx.settings, change, journal.commit(ctx.settings, change))


def select_champion_step(ctx: StepContext) -> ChampionResult:
    """Score challenger and champion on the same recent window; promote by the rule; record why.

    Run again after it was interrupted (``--resume``), it completes that decision rather than deciding anew.
    """
    settings, storage = ctx.settings, ctx.storage
    completed = journal.complete_pending(settings)
    if completed is not None and completed[0].step == "select_champion":
        return _result(settings, *completed, "completed after an interruption")
    challenger = registry.version_by_alias(settings, registry.CHALLENGER)
    if challenger is None:
        raise FraudopsError(
            f"no '{registry.CHALLENGER}' version of {settings.registry.model_name}: run `fraudops register`"
        )
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    ch_v = int(challenger.version)
    old = int(champion.version) if champion is not None else None
    if old == ch_v:
        return ChampionResult(
            decision="unchanged",
            challenger_version=ch_v,
            champion_version=ch_v,
            previous_champion_version=registry.aliases(settings).get(registry.PREVIOUS),
            reasons=[f"version {ch_v} is already champion"],
        )
    window = Window(settings, storage)
    ch_model = load_version(settings, ch_v)
    _, m_ch = score_window(ch_model, window.test, settings)
    m_champ = None if old is None else score_window(load_version(settings, old), window.test, settings)[1]
    promote, reasons = promotion_decision(m_ch, m_champ, settings.registry)
    live = shadow_comparison(storage, settings, ch_v)
    if live.rows:
        reasons.append(f"evidence, not part of the rule: {live_summary(live)}")
    decision: Literal["promoted", "rejected"] = "promoted" if promote else "rejected"
    record: dict[str, Any] = {
        "decision": decision,
        "promoted": promote,
        "reasons": reasons,
        "window": window.windows,
        "challenger": {"version": ch_v, "metrics": m_ch},
        "champion": {"version": old, "metrics": m_champ} if old is not None else None,
        "shadow": live.model_dump() if live.rows else None,
    }
    aliases: dict[str, int | None] = {}
    if promote:
        reference.write(
            storage, settings, ch_v, ch_model, window.whole, m_ch, window.windows, window.labelled
        )
        aliases = {registry.CHAMPION: ch_v, registry.PREVIOUS: old, registry.CHALLENGER: None}
    return _commit(ctx, decision, aliases, {ch_v: _decision_tags(decision, reasons)}, record)


def rollback(ctx: StepContext) -> ChampionResult:
    """Make the previous champion champion again (the demoted one becomes previous_champion).

    Asked again after a rollback was interrupted, it completes that rollback rather than undoing it.
    """
    settings, storage = ctx.settings, ctx.storage
    completed = journal.complete_pending(settings)
    if completed is not None and completed[0].decision == "rollback":
        return _result(settings, *completed, "completed after an interruption")
    current = registry.aliases(settings)
    previous, champion = current.get(registry.PREVIOUS), current.get(registry.CHAMPION)
    if previous is None:
        raise FraudopsError(
            f"no '{registry.PREVIOUS}' version of {settings.registry.model_name}: nothing to roll back to"
        )
    window = Window(settings, storage)
    model = load_version(settings, previous)
    _, metrics = score_window(model, window.test, settings)
    reference.write(
        storage, settings, previous, model, window.whole, metrics, window.windows, window.labelled
    )
    reasons = [
        f"rollback requested: version {previous} restored"
        + (f", version {champion} demoted" if champion is not None else "")
    ]
    record = {
        "decision": "rollback",
        "promoted": True,
        "reasons": reasons,
        "window": window.windows,
        "challenger": {"version": previous, "metrics": metrics},
        "champion": {"version": champion} if champion is not None else None,
    }
    aliases = {registry.CHAMPION: previous, registry.PREVIOUS: champion}
    return _commit(ctx, "rollback", aliases, {previous: {registry.DECISION_TAG: "rolled_back_to"}}, record)
