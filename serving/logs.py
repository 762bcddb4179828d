"""Logging: KServe's format, with the per-request lines (uvicorn access log, KServe's timing trace) off unless
asked for. Each of those costs a formatted line per request, which at a few thousand requests/s is a visible
share of a 2-core machine; /metrics keeps the counts and latency histograms either way."""

from __future__ import annotations

import logging
import warnings

from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import logging as kserve_logging

__all__ = ["configure_logging"]

_state = {"access_log": False, "trace_log": False}


def configure_logging(access_log: bool | None = None, trace_log: bool | None = None) -> None:
    """Idempotent; called in the main process and again in each spawned worker."""
    if access_log is not None:
        _state["access_log"] = access_log
    if trace_log is not None:
        _state["trace_log"] = trace_log
    kserve_logging.configure_logging()  # no-op when KServe's loggers already have handlers
    # KServe 0.21 still passes ORJSONResponse to FastAPI, which warns on the first request of each worker.
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if _state["access_log"] else logging.WARNING)
    logging.getLogger(kserve_logging.KSERVE_TRACE_LOGGER_NAME).setLevel(
        logging.INFO if _state["trace_log"] else logging.WARNING)
