"""A run directory as a Recommender reads it: the resolved ``config.yaml`` the run wrote, the
checkpoint to score with, and the files the config names, checked before anything loads.

The config is loaded as evaluate-only loads one (``run.evaluate: true``, ``model.ckpt`` the
run's best checkpoint), with the caller's overrides last, so that building the model takes
the same route as ``collm-train`` evaluate-only. Paths inside the config are relative to the
working directory, as for training: a run made elsewhere, or whose files moved, gets an error
naming the key to override.
"""
import json
import os
from typing import Dict, List

from omegaconf import OmegaConf

from .. import registry
from ..config import dataset_config
from ..config_loader import load_config, read_yaml
from ..models.cf import read_cf_weights
from .errors import RecommendError

CONFIG_FILE = "config.yaml"
BEST_CHECKPOINT = "checkpoint_best.pth"
CF_FILE_KEY = "model.rec_config.pretrained_path"


def option_strings(overrides: Dict[str, object]) -> List[str]:
    """{key: value} -> ["key=value"] as ``--options`` takes them. A key may spell its dots as
    ``__`` (a Python keyword argument: ``run__device="cpu"``); a value that is not a string is
    written as JSON (None -> null, True -> true, lists), which YAML reads back as that value."""
    out = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out.append(f"{key.replace('__', '.')}={text}")
    return out


def checkpoint_of(run_dir: str, raw) -> str:
    """The checkpoint that holds the run's weights: its checkpoint_best.pth or, for an
    evaluate-only run, the checkpoint it evaluated (its model.ckpt)."""
    best = os.path.join(run_dir, BEST_CHECKPOINT)
    if os.path.isfile(best):
        return best
    scored = OmegaConf.select(raw, "model.ckpt")
    if OmegaConf.select(raw, "run.evaluate") and scored:
        if not os.path.isfile(scored):
            raise RecommendError(f"{run_dir}: an evaluate-only run of {scored}, which is not there: override "
                                 "model.ckpt=PATH")
        return scored
    raise RecommendError(f"{run_dir}: no {BEST_CHECKPOINT} (a run that has not finished an epoch, or failed?)")


def load_run_config(run_dir: str, options: List[str] = ()):
    """(config, checkpoint path) of ``run_dir``, ``options`` (``key=value``) applied last."""
    if not os.path.isdir(run_dir):
        raise RecommendError(f"run directory not found: {run_dir}")
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise RecommendError(f"{run_dir}: no {CONFIG_FILE}: not a run directory (collm-train and collm-baseline "
                             "write one)")
    raw = read_yaml(path)
    ckpt = checkpoint_of(run_dir, raw)
    # tensorboard off: nothing of this is a training curve, and the run's directory stays as it was
    # run.fit_blend off: a fit run's checkpoint holds the fitted weights, to be scored as they are
    cfg = load_config(path, [f"model.ckpt={ckpt}", "run.evaluate=true", "run.tensorboard=false", "run.fit_blend=null",
                             *cf_file_options(raw, options), *options])
    check_paths(cfg, path)
    return cfg, cfg.model.ckpt


def cf_file_options(raw, options) -> List[str]:
    """``model.rec_config`` keys of a CF weight file given by override to a run that had none (a
    stage-1 run: its prompt has no ID slot, and retrieval needs a CF model). The run's
    config.yaml holds the schema's defaults there, which the file, stating its own model,
    would contradict; the file's values replace them (options given later still win)."""
    given = [o.split("=", 1)[1] for o in options if o.startswith(CF_FILE_KEY + "=")]
    section = OmegaConf.select(raw, "model.rec_config") or {}
    if not given or section.get("pretrained_path") or not os.path.isfile(given[-1]):
        return []
    stated = read_cf_weights(given[-1]).rec_config or {}
    return [f"model.rec_config.{key}={json.dumps(stated[key])}" for key in section if key in stated]


def check_paths(cfg, label: str) -> None:
    """RecommendError naming the key of the first file or directory the config names that is not there."""
    name, ds = dataset_config(cfg)
    wanted = [(f"datasets.{name}.path", ds.path, os.path.isdir)]
    m = cfg.model
    if m.arch not in registry.names("cf_model"):
        wanted += [("model.llama_model", m.llama_model, os.path.isdir),
                   ("model.prompt_path", m.prompt_path, os.path.isfile)]
    wanted += [("model.rec_config.pretrained_path", m.rec_config.get("pretrained_path"), os.path.isfile),
               ("model.hybrid_cf_path", m.get("hybrid_cf_path"), os.path.isfile),
               ("model.ckpt", m.ckpt, os.path.isfile)]
    for key, value, exists in wanted:
        if value and not exists(value):
            raise RecommendError(f"{label}: {key} {value} is not there (the run was made in another directory, or "
                                 f"its files moved?): override {key}=NEW_PATH")
