"""Building blocks of the config schema, which each component declares on its own.

``setting(default, "help")`` is a dataclass field whose help text lives in its
metadata (docs/config_reference.md is generated from it); ``Choice`` is the base
of the enums a key's choices are, so omegaconf rejects any other value with the
key's path and the valid names. Kept free of heavy imports.
"""
import dataclasses
from enum import Enum

_NO_DEFAULT = object()


class Choice(str, Enum):
    """A config choice: compares, hashes, prints and serialises as its plain string value."""

    def __str__(self):
        return str(self.value)

    def __repr__(self):
        return repr(self.value)

    def __format__(self, spec):
        return format(str(self.value), spec)


def setting(default=_NO_DEFAULT, help: str = "", factory=None):
    """A schema field: ``default`` (or ``factory()`` for lists and sections) and its help text."""
    if not help:
        raise ValueError("every config key needs its help text")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    if default is _NO_DEFAULT:
        raise ValueError("a config key needs a default (omegaconf.MISSING for a required one)")
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")
