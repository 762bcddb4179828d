"""The library's exceptions, under one base, so that callers tell "refused" from a bug.

Every error shoprank raises on purpose (bad settings, data too broken to train on, a source that cannot be
read, a promotion that cannot be planned) is a `ShoprankError`; its message names what was refused and why.
Anything else escaping the library is a defect. The pipeline's components use the split to decide what is
worth retrying: a `ShoprankError` is deterministic, the same input fails the same way, so no step is retried
by Kubeflow (its retry policy cannot tell one exception from another). The steps that talk to storage or a
cluster (ingest, promote) retry in process instead, with backoff, and only what `is_transient` accepts: a
dropped connection, a timeout, a 5xx or 429 answer.

The specific classes also keep `ValueError` as a base: existing callers that catch ValueError still do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["ConfigError", "DataValidationError", "PlanError", "ShoprankError", "SourceError", "is_transient",
           "retry_transient"]

T = TypeVar("T")
# HTTP answers worth another try: request timeout, too many requests, server errors that pass.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# OSErrors that say the same thing on every try.
_PERMANENT_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# Client libraries' connection errors that are not OSErrors (checked by name: none of them is imported here).
_TRANSIENT_NAMES = frozenset({"MaxRetryError", "ProtocolError", "NewConnectionError", "ConnectTimeoutError",
                              "ReadTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                              "ReadTimeout", "ConnectTimeout", "ServiceUnavailable", "TooManyRequests",
                              "InternalServerError", "BadGateway", "GatewayTimeout", "RetryError"})


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


def _status(exc: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            return v
    response = getattr(exc, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        v = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(v, int):
            return v
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether another try may succeed: never for a ShoprankError (or any ValueError/TypeError, a bug or a
    refusal); yes for connection errors and timeouts (builtin, urllib3, botocore, google-api-core), OSErrors
    other than not-found/permission, and HTTP 408/429/5xx answers. Looks through `raise ... from` chains."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ShoprankError | ValueError | TypeError | KeyError | AttributeError):
            return False
        status = _status(e)
        if status is not None:
            return status in TRANSIENT_STATUS
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        if isinstance(e, OSError) and not isinstance(e, _PERMANENT_OS):
            return True
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_transient(call: Callable[[], T], *, attempts: int = 3, first_delay_s: float = 5.0,
                    what: str = "step", log: Callable[[str], None] = print,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again after a transient error (`is_transient`) up to `attempts` times in all, waiting
    `first_delay_s`, then twice as long each time. Anything else, and the last transient error, is raised
    at once: a refusal fails the step once, with its message."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log(f"[{what}] transient error ({type(exc).__name__}: {exc}); try {attempt + 1} of {attempts} in "
                f"{delay:.0f}s")
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
