"""Registered versions as :class:`~fraudops.modeling.model.FraudModel` objects (downloaded once a process)."""

from __future__ import annotations

from fraudops.config import Settings
from fraudops.errors import FraudopsError
from fraudops.modeling import model as models
from fraudops.modeling.pyfunc import artifact_folder
from fraudops.tracking import registry
from fraudops.tracking.client import tracking_uri

_cache: dict[tuple[str, str, str], models.FraudModel] = {}


def load_version(settings: Settings, version: str | int) -> models.FraudModel:
    """The model of a registered version."""
    key = (tracking_uri(settings), settings.registry.model_name, str(version))
    if key not in _cache:
        _cache[key] = models.load(artifact_folder(registry.download_version(settings, version)))
    return _cache[key]


def champion(settings: Settings) -> tuple[int, models.FraudModel]:
    """The champion's version and model; a clear error when there is none yet."""
    mv = registry.version_by_alias(settings, registry.CHAMPION)
    if mv is None:
        raise FraudopsError(
            f"no champion yet: run select_champion (`fraudops select-champion`) so that a version of "
            f"{settings.registry.model_name} carries the '{registry.CHAMPION}' alias"
        )
    return int(mv.version), load_version(settings, mv.version)
