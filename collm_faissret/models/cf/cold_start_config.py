"""The ``model.cold_start`` settings (``ColdStartConfig``) and their checks: which CF models can
borrow vectors (``supported_models``, ``cold_items_only``) and the ranges of the keys.

Apart from the wrappers in ``cold_start.py`` because the schema (``config.py``) and config
validation need only these, before any data or CF weights exist; the wrappers import them.
"""
from dataclasses import dataclass

from ... import registry
from ...errors import ConfigError
from ...schema import Choice, setting


class ColdStartError(ConfigError):
    """Cold-start settings that cannot work; the message names the model.cold_start key."""


class UserRepr(Choice):
    tfidf = "tfidf"  # TF-IDF over the history's item ids
    item_mean = "item_mean"  # mean CF embedding of the history's items


@dataclass
class ColdStartConfig:
    """``model.cold_start``: embeddings for users/items unseen in training, borrowed from warm ones.

    "Warm" means occurring in the training split. A cold user's vector mixes
    (weights normalised to sum 1): the similarity-weighted mean of its
    ``n_neighbors`` nearest warm users (neighbors_weight), the mean embedding of
    its history items (history_weight), the mean warm user (global_weight) and
    the fitted history map (map_weight).
    """
    enabled: bool = setting(False, "replace cold users' (and items') embeddings by ones borrowed from warm "
                                   "neighbours (CF models with a per-uid user table)")
    neighbors_weight: float = setting(1.0, "weight of the similarity-weighted mean of the nearest warm users")
    history_weight: float = setting(0.0, "weight of the mean embedding of the user's history items")
    global_weight: float = setting(0.0, "weight of the mean warm user (weights are normalised to sum 1)")
    map_weight: float = setting(0.0, "weight of the fitted history map: ridge regression from the bag of the row's "
                                     "history items to the trained user vector, fitted on warm users' training rows")
    map_ridge: float = setting(10.0, "L2 penalty of the history map's ridge fit")
    user_repr: UserRepr = setting(UserRepr.tfidf, "how histories are compared: `tfidf` (of item ids) or "
                                                  "`item_mean` (of CF embeddings)")
    n_neighbors: int = setting(50, "nearest warm users averaged for a cold user")
    history_len: int = setting(50, "most recent history items read per row")
    warm_alpha: float = setting(0.0, "warm users become (1 - warm_alpha) * own + warm_alpha * history mean")
    cold_items: bool = setting(True, "also give cold items the mean of their nearest warm items by title text")
    item_neighbors: int = setting(10, "nearest warm items averaged for a cold item")
    title_dim: int = setting(128, "TF-IDF title vectors reduced to this many SVD components (0: keep all)")
    match_norm: bool = setting(False, "scale each borrowed cold-user vector to the mean norm of warm users "
                                      "(averages are shorter than the vectors a model was trained on)")
    simulate_cold: float = setting(0.0, "CoLLM stage-2 training only: this share of warm-user rows gets a vector "
                                        "borrowed from other users, so the projector learns to read borrowed vectors")

    def __post_init__(self):
        check_ranges(self)


def cold_items_only(cls) -> bool:
    """The class reads its user from the history (nothing cold about users) but has an item table
    whose cold rows can be borrowed: its class says ``supports_cold_items``."""
    return not cls.supports_cold_start and getattr(cls, "supports_cold_items", False)


def supported_models():
    """Registered CF models whose class says ``supports_cold_start`` (a per-uid user table: cold
    users and items) or ``supports_cold_items`` (SASRec, DIN: users come from the row's history
    already, so only items can be cold)."""
    return [n for n in registry.names("cf_model")
            if registry.get("cf_model", n).supports_cold_start or cold_items_only(registry.get("cf_model", n))]


def check_config(cs, model_name: str) -> None:
    """Raise ColdStartError for an unsupported model or an out-of-range setting."""
    if model_name not in supported_models():
        raise ColdStartError(f"model.cold_start.enabled: {model_name} has no per-user or item table to fill; "
                             "supported: " + ", ".join(supported_models()))
    check_ranges(cs)


def check_ranges(cs) -> None:
    """Raise ColdStartError for a setting outside its range (names the model.cold_start key)."""
    if cs.user_repr not in [r.value for r in UserRepr]:
        raise ColdStartError(f"model.cold_start.user_repr {str(cs.user_repr)!r}: use one of "
                             + ", ".join(r.value for r in UserRepr))
    weights = (cs.neighbors_weight, cs.history_weight, cs.global_weight, cs.map_weight)
    if min(weights) < 0 or sum(weights) <= 0:
        raise ColdStartError("model.cold_start.neighbors_weight/history_weight/global_weight/map_weight must be "
                             f">= 0 with a positive sum, got {weights}")
    if cs.map_ridge <= 0:
        raise ColdStartError(f"model.cold_start.map_ridge must be > 0, got {cs.map_ridge}")
    for key in ("warm_alpha", "simulate_cold"):
        if not 0.0 <= getattr(cs, key) <= 1.0:
            raise ColdStartError(f"model.cold_start.{key} must be in [0, 1], got {getattr(cs, key)}")
    for key in ("n_neighbors", "item_neighbors", "history_len"):
        if getattr(cs, key) < 1:
            raise ColdStartError(f"model.cold_start.{key} must be >= 1, got {getattr(cs, key)}")
    if cs.title_dim < 0:
        raise ColdStartError(f"model.cold_start.title_dim must be >= 0, got {cs.title_dim}")
