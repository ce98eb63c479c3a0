"""Shared command-line plumbing of train_collm.py and baseline_train.py.

Heavy imports (torch, transformers, peft) happen after argument parsing, so
``--help`` is instant. Known bad-input errors end the process with one line
on stderr and exit status 2.
"""
import argparse
import sys


def parse_args(description: str, argv=None):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cfg-path", required=True, help="YAML config (see train_configs/)")
    ap.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override config keys, e.g. run.init_lr=3e-4 model.lora_config.r=16")
    return ap.parse_args(argv)


def known_errors():
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .datasets.collm_data import DataError
    from .models.backbone import BackboneError
    from .models.cf.base import CFWeightsError
    from .models.collm import StageError
    from .prompts import PromptError
    from .registry import RegistryError
    from .runners.runner_base import RunError
    return (CheckpointError, ConfigError, DataError, BackboneError, CFWeightsError, StageError, PromptError,
            RegistryError, RunError, FileNotFoundError)


def run_main(args, forced_options=(), after=None) -> int:
    """Load config, build task and runner, run; ``after(runner, result)`` runs on success."""
    from . import datasets, dist, models, registry, runners, tasks  # noqa: F401  (fill the registries)
    from .config import load_config

    errors = known_errors()
    try:
        cfg = load_config(args.cfg_path, list(forced_options) + list(args.options))
        device = dist.init(cfg.run.device)
        task = registry.get("task", cfg.run.task)(cfg)
        runner = registry.get("runner", cfg.run.runner)(cfg, task, device)
        result = runner.run()
        if after is not None:
            after(runner, result)
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
    return 0
