"""The library's exceptions, under one base, so that callers tell "refused" from a bug.

Every error shoprank raises on purpose (bad settings, data too broken to train on, a source that cannot be
read, a promotion that cannot be planned) is a `ShoprankError`; its message names what was refused and why.
Anything else escaping the library is a defect. The pipeline's components use the split to decide what is
worth retrying: a `ShoprankError` is deterministic, the same input fails the same way.

The specific classes also keep `ValueError` as a base: existing callers that catch ValueError still do.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataValidationError", "PlanError", "ShoprankError", "SourceError"]


class ShoprankError(Exception):
    """Refused on purpose: the message says what and why. Retrying the same input gives the same error."""


class ConfigError(ShoprankError, ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names the key and the valid values."""


class DataValidationError(ShoprankError, ValueError):
    """The data are too broken to train on; the message names the table and the problem."""


class SourceError(ShoprankError, ValueError):
    """The source cannot be read; the message names the file (and column) and what to do."""


class PlanError(ShoprankError, ValueError):
    """The current InferenceService cannot be moved to the desired one by a patch (needs a human or a delete)."""
