"""``cf_model.pth``: a trained CF model's weights and what the model is.

baseline_train.py writes it; stage 2, retrieve-then-rank and cold start build
their CF model from it (``model.rec_config.pretrained_path``). The file is the
source of truth for what it holds: the registry name (``cf_model``), the full
``rec_config`` the model was built with, and its table sizes (``n_users``,
``n_items``). Everything in it is a tensor or a plain Python value, so safe
(``weights_only``) loading reads it back.

Files written before ``rec_config`` was stored carry it inside the run's YAML
(``config``); CoLLM's MF weight file carries no config at all, and then the
YAML's ``model.rec_config`` describes the model.
"""
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ...checkpoint import read_payload
from ...compat.collm_checkpoint import collm_cf_payload

# Where the file's path comes from, as error messages name it.
PATH_KEY = "model.rec_config.pretrained_path"
# A location, not a property of the model: never stored, never compared.
NOT_STORED = ("pretrained_path",)


class CFWeightsError(ValueError):
    """A CF weight file that does not fit the configured model or the data."""


def plain_section(section) -> dict:
    """A rec_config (typed DictConfig, dataclass or dict) as plain Python values, without
    ``pretrained_path``; choices as their strings (what a checkpoint may hold)."""
    if isinstance(section, DictConfig):
        out = OmegaConf.to_container(section, resolve=True, enum_to_str=True)
    elif is_dataclass(section):
        out = {f.name: getattr(section, f.name) for f in fields(section)}
    else:
        out = dict(section)
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in out.items() if k not in NOT_STORED}


@dataclass
class CFWeights:
    """One weight file, read. ``rec_config`` is None for a file that carries no config."""
    path: str
    name: str
    n_users: int
    n_items: int
    dim: int
    state_dict: dict
    rec_config: Optional[dict] = None


def saved_rec_config(payload: dict, path: str) -> Optional[dict]:
    """The rec_config a payload stores, or the one inside its run YAML (older files)."""
    if payload.get("rec_config") is not None:
        return dict(payload["rec_config"])
    text = payload.get("config")
    if not text:
        return None
    try:
        rec = OmegaConf.create(text).model.rec_config
    except (OmegaConfBaseException, AttributeError, ValueError):
        raise CFWeightsError(f"{path}: its stored run config cannot be read back as YAML") from None
    return plain_section(rec)


def read_cf_weights(path: str, key: str = PATH_KEY) -> CFWeights:
    """A baseline_train.py cf_model.pth (or CoLLM's MF weight file), read safely; errors name
    ``key``, the config key that gave the path."""
    try:
        payload = read_payload(path, key, "cf_model", CFWeightsError,
                               origin="CF weight (baseline_train.py cf_model.pth)")
    except CFWeightsError:
        payload = collm_cf_payload(path)
        if payload is None:
            raise
    return CFWeights(path, payload["cf_model"], int(payload["n_users"]), int(payload["n_items"]),
                     int(payload["dim"]), payload["state_dict"], saved_rec_config(payload, path))


def _typed(schema, values: dict, what: str):
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as err:
        raise CFWeightsError(f"{what}: {str(err).splitlines()[0]}") from None


def resolve_section(cls, given, weights: CFWeights):
    """The model's rec_config: the file's, with the config's keys checked against it.

    ``given``: the keys the config states (``model.rec_config``). A value that
    differs from the file's is an error naming the key and both values; a file
    without a config (CoLLM's MF) takes the config's values, and its embedding
    size must agree with them.
    """
    schema = cls.Config
    stated = plain_section(given)
    mine = plain_section(_typed(schema, stated, "model.rec_config"))
    if weights.rec_config is None:
        section = _typed(schema, stated, "model.rec_config")
        if section.embedding_size != weights.dim:
            raise CFWeightsError(f"model.rec_config.embedding_size: the config says {section.embedding_size}, "
                                 f"{weights.path} holds {weights.dim}-dimensional embeddings")
        return section
    saved = plain_section(_typed(schema, weights.rec_config, weights.path))
    for key in stated:
        if key in saved and mine[key] != saved[key]:
            raise CFWeightsError(f"model.rec_config.{key}: the config says {mine[key]!r}, {weights.path} was "
                                 f"trained with {saved[key]!r} (leave the key out to take the file's)")
    return _typed(schema, {**saved, "pretrained_path": weights.path}, weights.path)


def check_fits(weights: CFWeights, n_users: int, n_items: int) -> None:
    """The data's ids must index the file's tables (a subset of the training data does)."""
    for what, n_data, n_table in (("user", n_users, weights.n_users), ("item", n_items, weights.n_items)):
        if n_data > n_table:
            raise CFWeightsError(f"{weights.path}: the data's largest {what} id is {n_data - 1}, beyond the CF "
                                 f"model's {what} table ({n_table} rows, ids 0..{n_table - 1})")


def load_into(model, weights: CFWeights) -> None:
    """Copy the file's weights into ``model`` (built with the file's name, sizes and config)."""
    if weights.name != model.name:
        raise CFWeightsError(f"{weights.path}: holds {weights.name} weights, but rec_model is {model.name}")
    for key, mine in (("n_users", model.n_users), ("n_items", model.n_items), ("dim", model.dim)):
        theirs = getattr(weights, key)
        if theirs != mine:
            raise CFWeightsError(f"{weights.path}: {key}={theirs} but the data/config give {mine}")
    try:
        missing, unexpected = model.load_state_dict(weights.state_dict, strict=False)
    except RuntimeError as err:  # a tensor of another shape: other rec_config settings
        raise CFWeightsError(f"{weights.path}: weights do not fit this {model.name} configuration "
                             f"({str(err).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise CFWeightsError(f"{weights.path}: weights do not match {model.name}: "
                             f"missing {missing}, unexpected {unexpected}")


def weights_payload(model, config_yaml: str = "") -> dict:
    """What baseline_train.py saves: weights, registry name, full rec_config and table sizes
    (plain ints and strings: safe loading accepts them)."""
    return {"cf_model": model.name, "n_users": int(model.n_users), "n_items": int(model.n_items),
            "dim": int(model.dim), "rec_config": plain_section(model.rec_cfg), "state_dict": model.state_dict(),
            "config": config_yaml}
