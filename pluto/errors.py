"""Errors pluto raises for bad input.

Every message names the problem and the fix; front ends print them without a
stack trace (see ``pluto.cli`` and ``pluto.train``).
"""


class PlutoError(Exception):
    """Base class: a user-facing problem with a message that says how to fix it."""


class TableError(PlutoError):
    """A latency/energy table is missing, corrupt, of the wrong schema or device, or lacks an entry."""


class ConfigError(PlutoError):
    """A configuration value or override cannot be honoured."""


class DataError(PlutoError):
    """A dataset is missing or malformed."""


class UnsupportedModelError(PlutoError):
    """A model or layer that a transform (tracing, pruning, export) cannot handle."""


class InfeasibleConstraintError(PlutoError):
    """A constraint target lies below the cheapest model the search space can produce."""
