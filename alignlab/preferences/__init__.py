"""Preference sources: everything that judges two responses looks the same to its consumers
(online DPO, win-rate evaluation, self-play), beside the reward-source protocol of
`alignlab.rewards`. See `base` for the protocol and `spec` for the short names configs use."""

from alignlab.preferences.base import (
    AnnotatorPreference,
    PreferenceSource,
    RewardPreference,
    both_orders,
    check_probabilities,
)
from alignlab.preferences.spec import (
    build_preference_source,
    register_preference_family,
)

__all__ = ["AnnotatorPreference", "PreferenceSource", "RewardPreference", "both_orders",
           "build_preference_source", "check_probabilities", "register_preference_family"]
