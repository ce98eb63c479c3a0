"""Errors shared by otherwise independent parts (config, components, data scripts, loaders).

Kept free of imports, so ``collm-prepare`` stays light.
"""


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file."""


class PrepareError(Exception):
    """A problem the user can fix (bad input, refused output): reported in one line, exit 2."""


class DataError(ValueError):
    """Bad input data; the message names the file and, where known, the line or row.

    ``DataError(message)``, or ``DataError(source, lineno, what)`` for a line of
    a raw text file (message ``source:lineno: what``).
    """

    def __init__(self, *parts):
        if len(parts) == 3:
            self.source, self.lineno, what = parts
            message = f"{self.source}:{self.lineno}: {what}"
        else:
            (message,) = parts
            self.source = self.lineno = None
        super().__init__(message)
