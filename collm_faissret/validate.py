"""The one place a config is checked, before any data, weight or prompt file is read.

Order: registry names first (so a typo is reported before anything is loaded),
then each component's section against its own schema (the CF model's
``Config`` for ``model.rec_config``; cold start, LoRA, the index), then the
ranges of ``run``, then the task's own rules. Every message names the key.
"""
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import registry
from .errors import ConfigError

# run.<key> -> smallest valid value; None stays valid where the schema allows it.
RUN_MINIMUMS = {"batch_size_train": 1, "batch_size_eval": 1, "accum_grad_iters": 1, "max_epoch": 1,
                "iters_per_epoch": 1, "log_freq": 1, "patience": 1, "num_workers": 0, "max_eval_rows": 1,
                "save_every_n_steps": 0, "dist_timeout_s": 1}


def _fill_registries():
    from . import datasets, models, runners, tasks  # noqa: F401  (each registers its components)


def _known(kind: str, name: str, key: str, label: str):
    if name not in registry.names(kind):
        raise ConfigError(f"{label}: {key}: unknown {kind} {name!r}; registered {kind}s: "
                          + ", ".join(registry.names(kind)))
    return registry.get(kind, name)


def check_names(cfg, label: str):
    """Every registry name the config uses exists; returns the CF model class it is about."""
    _fill_registries()
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
    return _known("cf_model", cfg.model.rec_model, "model.rec_model", label)


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


def validate(cfg, label: str) -> None:
    """Raise ConfigError for the first problem; types the CF model's ``rec_config`` in place."""
    cf_cls = check_names(cfg, label)
    cfg.model.rec_config = _section(cfg.model.rec_config, cf_cls.Config, "model.rec_config", label)
    from .config import index_settings
    from .models.backbone import LoraConfig
    from .models.cf.cold_start import ColdStartConfig, check_config

    _section(cfg.model.lora_config, LoraConfig, "model.lora_config", label)
    _section(cfg.model.cold_start, ColdStartConfig, "model.cold_start", label)  # ranges checked as it is made
    if cfg.model.cold_start.enabled and not cf_cls.supports_cold_start:
        check_config(cfg.model.cold_start, cf_cls.name)

    from .models.backbone import BackboneError, resolve_quantization
    from .runners.parallel import STRATEGIES

    try:
        resolve_quantization(cfg.model)
    except BackboneError as err:
        raise ConfigError(f"{label}: {err}") from None
    if cfg.run.distributed not in STRATEGIES:
        raise ConfigError(f"{label}: run.distributed: unknown {cfg.run.distributed!r}; use "
                          f"{' or '.join(STRATEGIES)}")
    for split, n in next(iter(cfg.datasets.values())).get("sample_rows", {}).items():
        if n < 1:
            raise ConfigError(f"{label}: datasets.*.sample_rows.{split} must be >= 1, got {n}")
    index_settings(cfg)
    for key, low in RUN_MINIMUMS.items():
        value = cfg.run.get(key)
        if value is not None and value < low:
            raise ConfigError(f"{label}: run.{key} must be >= {low}, got {value}")
    registry.get("task", cfg.run.task).check_config(cfg)
