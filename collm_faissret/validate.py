"""The one place a config is checked, before any data, weight or prompt file is read.

Order: registry names first (so a typo is reported before anything is loaded),
then each component's section against its own schema (the CF model's
``Config`` for ``model.rec_config``; cold start, LoRA, the index), then the
ranges of ``run``, then the model's and the task's own rules (their
``check_config``). Every message names the key.

Nothing here imports a task or a runner: their classes are found through the
registry, which the entry points have filled.
"""
import os

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import registry
from .errors import ConfigError
from .models.backbone import BackboneError, LoraConfig, resolve_quantization
from .models.cf.base import CFConfig
from .models.cf.cold_start_config import ColdStartConfig, check_config
from .models.cf.factory import DEFAULT_CF
from .retrieval.index import index_settings

# run.<key> -> smallest valid value; None stays valid where the schema allows it.
RUN_MINIMUMS = {"batch_size_train": 1, "batch_size_eval": 1, "accum_grad_iters": 1, "max_epoch": 1,
                "iters_per_epoch": 1, "log_freq": 1, "patience": 1, "num_workers": 0, "max_eval_rows": 1,
                "save_every_n_steps": 0, "save_every_minutes": 0, "dist_timeout_s": 1}
# The splits a dataset entry names (its train_file / valid_file / test_file).
SPLITS = ("train", "valid", "test")


def _known(kind: str, name: str, key: str, label: str):
    if name not in registry.names(kind):
        raise ConfigError(f"{label}: {key}: unknown {kind} {name!r}; registered {kind}s: "
                          + ", ".join(registry.names(kind)))
    return registry.get(kind, name)


def check_names(cfg, label: str):
    """Every registry name the config uses exists; returns the CF model class it is about
    (None when only the weight file in ``rec_config.pretrained_path`` can tell)."""
    arch = cfg.model.arch
    if arch not in registry.names("model") and arch not in registry.names("cf_model"):
        raise ConfigError(f"{label}: model.arch: unknown model {arch!r}; registered models: "
                          f"{', '.join(registry.names('model'))}; CF models (baseline_train.py): "
                          f"{', '.join(registry.names('cf_model'))}")
    if len(cfg.datasets) != 1:
        raise ConfigError(f"{label}: datasets: expected exactly one dataset entry, found {len(cfg.datasets)}")
    _known("dataset", next(iter(cfg.datasets)), "datasets", label)
    _known("task", cfg.run.task, "run.task", label)
    _known("runner", cfg.run.runner, "run.runner", label)
    _known("lr_scheduler", cfg.run.lr_sched, "run.lr_sched", label)
    if arch in registry.names("cf_model"):
        return registry.get("cf_model", arch)
    if cfg.model.rec_model is not None:
        return _known("cf_model", cfg.model.rec_model, "model.rec_model", label)
    return None if cfg.model.rec_config.get("pretrained_path") else registry.get("cf_model", DEFAULT_CF)


def _section(node, schema, key: str, label: str):
    """``node`` merged onto ``schema`` (a dataclass) and instantiated once, so the
    dataclass's own checks (__post_init__) run; returns the typed node."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), node)
        OmegaConf.to_object(typed)
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None)
        raise ConfigError(f"{label}: key {key}.{sub}: {str(err).splitlines()[0]}" if sub else
                          f"{label}: {key}: {str(err).splitlines()[0]}") from None
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{label}: {key}: {err}") from None
    return typed


def check_rec_config(cfg, cf_cls, label: str) -> None:
    """``model.rec_config`` against its model's schema.

    Without ``pretrained_path`` the section is typed in place (defaults filled).
    With one, the weight file states the model, so the section keeps only the
    keys the config gives (build_cf checks them against the file); when the
    model is not named (``rec_model`` unset) only the keys every CF model has
    can be checked here.
    """
    rec = cfg.model.rec_config
    if not rec.get("pretrained_path"):
        cfg.model.rec_config = _section(rec, cf_cls.Config, "model.rec_config", label)
        return
    if cf_cls is None:
        common = set(CFConfig.__dataclass_fields__)
        for key in rec:
            if key not in common:
                raise ConfigError(f"{label}: model.rec_config.{key}: not a key every CF model has; set "
                                  "model.rec_model to say which model's key it is")
    _section(rec, (cf_cls or registry.get("cf_model", DEFAULT_CF)).Config, "model.rec_config", label)


def validate(cfg, label: str) -> None:
    """Raise ConfigError for the first problem; types the CF model's ``rec_config`` in place
    (unless a weight file states it)."""
    cf_cls = check_names(cfg, label)
    check_rec_config(cfg, cf_cls, label)
    _section(cfg.model.lora_config, LoraConfig, "model.lora_config", label)
    _section(cfg.model.cold_start, ColdStartConfig, "model.cold_start", label)  # ranges checked as it is made
    if cfg.model.cold_start.enabled and cf_cls is not None and not cf_cls.supports_cold_start:
        check_config(cfg.model.cold_start, cf_cls.name)
    try:
        resolve_quantization(cfg.model)
    except BackboneError as err:
        raise ConfigError(f"{label}: {err}") from None
    for split, n in next(iter(cfg.datasets.values())).get("sample_rows", {}).items():
        if split not in SPLITS:
            raise ConfigError(f"{label}: datasets.*.sample_rows: no split {split!r} (have {', '.join(SPLITS)})")
        if n < 1:
            raise ConfigError(f"{label}: datasets.*.sample_rows.{split} must be >= 1, got {n}")
    negatives = next(iter(cfg.datasets.values())).get("train_negatives", 0)
    if negatives < 0:
        raise ConfigError(f"{label}: datasets.*.train_negatives must be >= 0, got {negatives}")
    check_out_of_fold(cfg, label)
    try:
        index_settings(cfg.retrieval)
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None
    for key, low in RUN_MINIMUMS.items():
        value = cfg.run.get(key)
        if value is not None and value < low:
            raise ConfigError(f"{label}: run.{key} must be >= {low}, got {value}")
    arch = cfg.model.arch
    if arch in registry.names("cf_model"):
        if cfg.run.evaluate and not cfg.model.ckpt:
            raise ConfigError(f"{label}: run.evaluate is true but model.ckpt is not set: which checkpoint of "
                              f"{arch} to evaluate?")
        if cfg.run.get("fit_blend"):
            raise ConfigError(f"{label}: run.fit_blend fits the weights of an LLM's hybrid score (model.arch "
                              f"collm); model.arch {arch} is a CF model alone")
    else:
        rules = getattr(registry.get("model", arch), "check_config", None)
        if rules is not None:
            _labelled(rules, cfg, label)
        _labelled(check_fit_blend, cfg, label)
    _labelled(registry.get("task", cfg.run.task).check_config, cfg, label)


def check_out_of_fold(cfg, label: str) -> None:
    """run.oof_folds (a CF baseline writing out-of-fold logits) and datasets.*.cf_logits (a hybrid
    score reading them): each where it means something."""
    ds = next(iter(cfg.datasets.values()))
    folds, cf_run = cfg.run.get("oof_folds", 0), cfg.model.arch in registry.names("cf_model")
    weights = cfg.model.rec_config.get("pretrained_path")
    if folds:
        if folds < 2:
            raise ConfigError(f"{label}: run.oof_folds must be 0 (none) or >= 2, got {folds}")
        if not cf_run or cfg.run.evaluate:
            raise ConfigError(f"{label}: run.oof_folds is for training a CF model with baseline_train.py, not "
                              f"for model.arch {cfg.model.arch}{' with run.evaluate' if cf_run else ''}")
        if "train" in ds.get("sample_rows", {}) or ds.get("train_negatives", 0):
            raise ConfigError(f"{label}: run.oof_folds gives a logit to every row of the whole training split: "
                              "drop datasets.*.sample_rows.train and datasets.*.train_negatives from this run")
        if cfg.model.ckpt or weights:
            # a fold model starting from weights (or, LightGCN, a graph) that saw its held-out rows
            raise ConfigError(f"{label}: run.oof_folds trains every fold model from scratch: drop "
                              f"{'model.ckpt' if cfg.model.ckpt else 'model.rec_config.pretrained_path'}")
    if ds.get("cf_logits"):
        if cf_run or str(cfg.model.answer_score) != "hybrid":
            raise ConfigError(f"{label}: datasets.*.cf_logits is read by model.answer_score hybrid only "
                              f"(model.arch {cfg.model.arch}, answer_score {cfg.model.answer_score})")
        if not cfg.model.get("hybrid_cf_path") and (not weights or not cfg.model.freeze_rec):
            # scoring reads the CF model's own logits: the same, fixed model the file was made beside
            raise ConfigError(f"{label}: datasets.*.cf_logits needs the CF weight file its logits were made "
                              "beside in model.rec_config.pretrained_path, kept fixed (model.freeze_rec: true), "
                              "or in model.hybrid_cf_path")


def check_fit_blend(cfg) -> None:
    """run.fit_blend's rules: it refits the two weights of a hybrid score over a trained checkpoint,
    in an evaluate-only run, on a split it then does not report as a test."""
    split, m, run = cfg.run.get("fit_blend"), cfg.model, cfg.run
    if not split:
        return
    if str(m.answer_score) != "hybrid" or m.hybrid_llm_weight is None:
        raise ConfigError(f"run.fit_blend {split} fits the weights of a hybrid score: set model.answer_score "
                          "hybrid and model.hybrid_llm_weight (any number: the fit replaces it)")
    if not run.evaluate or not m.ckpt:
        raise ConfigError(f"run.fit_blend {split} fits over a trained model without training it: set "
                          "run.evaluate true and model.ckpt (the trained checkpoint)")
    if split not in ("valid", "test") or split in run.test_splits:
        raise ConfigError(f"run.fit_blend {split}: fit on a split neither model trained on and that is not in "
                          "run.test_splits (valid): on training rows the CF logit is in-sample, and test "
                          "scores from weights fitted on the test rows would be too")
    if run.task != "rec":
        raise ConfigError(f"run.fit_blend {split} fits on the split's own rows (run.task rec), not on "
                          f"run.task {run.task}'s")
    if os.path.abspath(os.path.dirname(str(m.ckpt))) == os.path.abspath(run.output_dir):
        raise ConfigError(f"run.fit_blend writes checkpoint_best.pth to run.output_dir {run.output_dir}, where "
                          f"model.ckpt {m.ckpt} is: set another run.output_dir")


def _labelled(rules, cfg, label: str) -> None:
    """Run a component's ``check_config``; its ConfigError names the config file too."""
    try:
        rules(cfg)
    except ConfigError as err:
        if str(err).startswith(f"{label}:"):
            raise
        raise type(err)(f"{label}: {err}") from None
