"""Features: the handbook's windows plus fraudops' own, one definition for every stage that scores."""

from fraudops.features.definitions import feature_names, handbook_feature_names, lookback_days
from fraudops.features.scaled import add_features, features_for

__all__ = ["add_features", "feature_names", "features_for", "handbook_feature_names", "lookback_days"]
