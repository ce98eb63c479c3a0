"""Reading a config: YAML (with base-file includes) + ``--options key=value`` overrides,
merged onto the schema (config.py) and validated (validate.py) before any data, weight
or prompt file is read.
"""
import os
from typing import List, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import Config
from .errors import ConfigError
from .validate import validate

__all__ = ["INCLUDE_KEY", "load_config", "parse_options", "read_yaml"]

INCLUDE_KEY = "include"  # top-level YAML key: base file(s) merged first, relative to the including file


def _path_of(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    return key if key else "?"


def parse_options(options: Optional[List[str]]) -> List[str]:
    """Check ``key=value`` syntax of CLI overrides; return them unchanged."""
    options = list(options or [])
    for opt in options:
        if "=" not in opt or opt.startswith("="):
            raise ConfigError(f"bad --options entry {opt!r}: expected key=value, e.g. run.init_lr=3e-4")
    return options


def read_yaml(path: str, seen=()) -> DictConfig:
    """A YAML file with its ``include`` base files merged under it (recursively; paths
    relative to the including file; later includes and the file itself win)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}" + (f" (included by {seen[-1]})" if seen else ""))
    if os.path.abspath(path) in seen:
        raise ConfigError(f"{path}: includes itself (through {' -> '.join(seen)})")
    try:
        raw = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections (model, datasets, run, ...)")
    bases = raw.pop(INCLUDE_KEY, None) if INCLUDE_KEY in raw else None
    if bases is None:
        return raw
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = os.path.join(os.path.dirname(path), str(base))
        merged = OmegaConf.merge(merged, read_yaml(base_path, tuple(seen) + (os.path.abspath(path),)))
    return OmegaConf.merge(merged, raw)


# choices spelled `on` / `off` (and `auto`), which YAML would read as booleans
ON_OFF_CHOICES = ("run.shared_prefix", "run.frozen_prefix", "run.amp_scoring", "run.compile")


def load_config(cfg_path: str, options: Optional[List[str]] = None) -> DictConfig:
    """Load a YAML file (and its includes), apply overrides, validate; a read-only config.

    Relative paths inside the config stay relative to the working directory,
    as in CoLLM.
    """
    raw = read_yaml(cfg_path)
    overrides = OmegaConf.from_dotlist(parse_options(options))
    schema = OmegaConf.structured(Config)
    for source, label in ((raw, cfg_path), (overrides, "--options")):
        # YAML reads a bare `off` / `on` as false / true: run.shared_prefix=off means the choice `off`
        for key in ON_OFF_CHOICES:
            value = OmegaConf.select(source, key)
            if isinstance(value, bool):
                OmegaConf.update(source, key, "on" if value else "off")
        try:
            schema = OmegaConf.merge(schema, source)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(f"{label}: key {_path_of(err)}: {reason}") from None
    missing = sorted(OmegaConf.missing_keys(schema))
    if missing:
        raise ConfigError(f"{cfg_path}: missing required key(s): {', '.join(missing)}")
    validate(schema, cfg_path)
    OmegaConf.set_readonly(schema, True)
    return schema
