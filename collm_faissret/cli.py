"""Shared command-line plumbing of train_collm.py and baseline_train.py.

Heavy imports (torch, transformers, peft) happen after argument parsing, so
``--help`` is instant. Known bad-input errors end the process with one line
on stderr and exit status 2.
"""
import argparse
import os
import sys
import warnings


def parse_args(description: str, argv=None):
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg-path", required=True, help="YAML config (see train_configs/)")
    ap.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override config keys, e.g. run.init_lr=3e-4 model.lora_config.r=16")
    return ap.parse_args(argv)


# transformers / peft modules, as warnings' ``module`` filter sees them.
_HF_MODULES = r"(transformers|peft)(\.|$)"


def quiet_third_party():
    """Keep transformers / peft to errors and known-noisy warnings out of the log.

    Their deprecation notices (e.g. peft reading ``is_gradient_checkpointing``)
    are about library internals a user cannot act on; their UserWarnings are
    shown once per run, not once per call site. Environment variables the user
    set explicitly win.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the per-load "Loading weights" bar
    if "transformers" in sys.modules:  # already imported (e.g. by a test): its env vars were read then
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_HF_MODULES)
    warnings.filterwarnings("once", category=UserWarning, module=_HF_MODULES)


def known_errors():
    # Deferred, as every import of the package below: they load torch, and ``--help`` stays instant.
    from .checkpoint import CheckpointError
    from .errors import ConfigError, DataError
    from .models.backbone import BackboneError
    from .models.cf.weights import CFWeightsError
    from .models.collm_build import StageError
    from .prompts import PromptError
    from .recommend.errors import RecommendError
    from .registry import RegistryError
    from .retrieval.index_files import IndexMismatchError
    from .runners.nonfinite import NonFiniteLoss
    from .runners.run_files import RunError
    return (CheckpointError, ConfigError, DataError, BackboneError, CFWeightsError, StageError, PromptError,
            RegistryError, RunError, NonFiniteLoss, IndexMismatchError, RecommendError, FileNotFoundError)


def run_main(args, forced_options=(), after=None) -> int:
    """Load config, build task and runner, run; ``after(runner, result)`` runs on success."""
    quiet_third_party()
    from . import dist, registry  # deferred: see known_errors
    from .config_loader import load_config

    errors = known_errors()
    finished = False
    try:
        cfg = load_config(args.cfg_path, list(forced_options) + list(args.options))
        device = dist.init(cfg.run.device, cfg.run.dist_timeout_s)
        task = registry.get("task", cfg.run.task)(cfg)
        runner = registry.get("runner", cfg.run.runner)(cfg, task, device)
        result = runner.run()
        if after is not None:
            after(runner, result)
        finished = True
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown(wait_for_peers=finished)
    return 0
