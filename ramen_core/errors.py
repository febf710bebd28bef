"""Error hierarchy of ramen.

Every error that a user can cause derives from :class:`RamenError`, so the command line
can print its message without a traceback. Subclasses also inherit the matching builtin
(an I/O problem is also an ``OSError``), so callers can catch either.
"""


class RamenError(Exception):
    """Base class of every error that ramen raises on purpose."""


class InputError(RamenError, ValueError):
    """An argument, tensor or file content is invalid."""


class ConfigError(RamenError, ValueError):
    """A recipe, model config or sensor definition is invalid."""


class WeightsError(RamenError, ValueError):
    """A checkpoint cannot be read or does not match the model."""


class CatalogError(RamenError, OSError):
    """A STAC catalog cannot be reached or returned an unusable answer."""


class EmptyResultError(RamenError, LookupError):
    """A search or a selection matched nothing."""


class OutputError(RamenError, OSError):
    """An output cannot be written."""
