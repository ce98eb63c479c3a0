"""Name -> class registries, one per kind (model, cf_model, dataset, task, runner,
lr_scheduler).

A YAML file names components by string; the registry turns the string into the
class. Lookups never return None: an unknown name raises with the valid names,
and registering a name twice is an error (two classes silently sharing a name
is how a config ends up running code nobody meant).

The project's own components register themselves when their package is
imported; :data:`BUILTIN` is the one list of those packages, imported on the
first lookup. This module sits at the bottom of the layers: the packages are
named here as strings, so no layer imports one above it just to fill a table.
"""
import importlib
from typing import Callable, Dict

KINDS = ("model", "cf_model", "dataset", "task", "runner", "lr_scheduler")

# Packages whose import registers the built-in components (one list, read on the first lookup).
BUILTIN = ("collm_faissret.datasets", "collm_faissret.models", "collm_faissret.tasks", "collm_faissret.runners")
_filled = False


class RegistryError(KeyError):
    """Unknown kind, unknown name, or a name registered twice."""

    def __str__(self):  # KeyError quotes its message; keep it one readable line
        return str(self.args[0])


_REGISTRY: Dict[str, Dict[str, object]] = {kind: {} for kind in KINDS}


def fill() -> None:
    """Import the built-in component packages (once): their ``@register`` lines fill the tables."""
    global _filled
    if not _filled:
        _filled = True
        for module in BUILTIN:
            importlib.import_module(module)


def _table(kind: str) -> Dict[str, object]:
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
    return _REGISTRY[kind]


def register(kind: str, name: str) -> Callable:
    """Decorator: ``@register("cf_model", "MF")``. A registered class gets ``name`` as its
    ``name`` attribute, so it knows the name configs use for it without repeating it."""
    table = _table(kind)

    def wrap(obj):
        if name in table:
            raise RegistryError(f"{kind} {name!r} is already registered (by {table[name]!r})")
        table[name] = obj
        if isinstance(obj, type):
            obj.name = name
        return obj

    return wrap


def get(kind: str, name: str):
    """Return the class registered as ``name``; raise listing the valid names otherwise."""
    fill()
    table = _table(kind)
    if name not in table:
        valid = ", ".join(sorted(table)) or "(none)"
        raise RegistryError(f"unknown {kind} {name!r}; registered {kind}s: {valid}")
    return table[name]


def names(kind: str):
    """Sorted registered names of one kind."""
    fill()
    return sorted(_table(kind))
