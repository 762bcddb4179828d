"""The smoke request: after Ready, does the new version answer a ranking request correctly?

Why on its own: Ready says the pods run, not that they serve the new model (Standard mode keeps old pods during a
rolling update; a model can load and answer garbage). `ranking_smoke` sends the shoprank server's v2 ranking
request over plain HTTP (urllib, no client library) and checks the answer and the served bundle version; the
rollout takes any `SmokeCheck` callable, so tests and the cluster tests (`smoke=none`) plug in their own.

The request's item ids come from the bundle being promoted (`catalogue_items`: its catalogue), so the server
must know every one of them: an answer that reports any as unknown (`unknown_count` > 0) comes from a server
with another catalogue, and fails the check. (Synthetic ids such as i0000001 meant nothing to a real catalogue.)
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shoprank.layout import CATALOGUE_FILE, TRANSFORM_DIR
from shoprank.release.kserve.wait import predictor_status

__all__ = [
    "SMOKE_ITEMS",
    "SmokeCheck",
    "SmokeContext",
    "SmokeResult",
    "catalogue_items",
    "check_ranking_response",
    "no_smoke",
    "ranking_request",
    "ranking_smoke",
    "served_versions",
    "smoke_url",
]


@dataclass(frozen=True)
class SmokeContext:
    """What a smoke check gets: where to send it (None when the status has no URL), the served model's name,
    the version that should answer, how long it may keep retrying, and item ids of that version's catalogue
    (the candidates of the ranking request)."""

    url: str | None
    model_name: str
    version: str
    timeout_s: float
    phase: str
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class SmokeResult:
    """The answer of a smoke check: passed or not, and what was seen."""

    ok: bool
    detail: str


SmokeCheck = Callable[[SmokeContext], SmokeResult]
_BUNDLE_VERSION_RE = re.compile(r"^v[0-9a-f]{12}$")  # shoprank.release.bundle.bundle_version
SMOKE_ITEMS = 3  # candidates in the smoke request


def catalogue_items(bundle_dir: str | Path, n: int = SMOKE_ITEMS) -> tuple[str, ...]:
    """`n` distinct item ids of the bundle's catalogue (transform/catalogue.parquet), spread over its first row
    group: reads one column of one row group, so a catalogue of millions of items costs milliseconds."""
    import pyarrow.parquet as pq

    path = Path(bundle_dir) / TRANSFORM_DIR / CATALOGUE_FILE
    catalogue = pq.ParquetFile(path)
    if catalogue.metadata.num_rows == 0 or catalogue.metadata.num_row_groups == 0:
        raise ValueError(f"{path} has no items: nothing to send in the smoke request")
    ids = catalogue.read_row_group(0, columns=["item_id"]).column(0).to_pylist()
    distinct = list(dict.fromkeys(str(i) for i in ids if i))
    if not distinct:
        raise ValueError(f"{path} has no item ids: nothing to send in the smoke request")
    step = max(1, len(distinct) // n)
    return tuple(distinct[::step][:n])


def smoke_url(isvc: Mapping[str, Any] | None, target: Literal["latest", "service"]) -> str | None:
    """Where the smoke request goes: the new revision's tagged URL for a Knative canary (tag routing), else the
    cluster-local address (reachable from a pipeline pod), else the external URL."""
    status = (isvc or {}).get("status") or {}
    predictor = predictor_status(isvc)
    if target == "latest":
        for entry in predictor.get("traffic") or []:
            if entry.get("tag") == "latest" and entry.get("url"):
                return entry["url"]
    candidates = [((status.get("address") or {}).get("url")), status.get("url"),
                  ((predictor.get("address") or {}).get("url")), predictor.get("url")]
    return next((c for c in candidates if c), None)


def ranking_request(candidates: Iterable[str]) -> dict[str, Any]:
    """A v2 ranking request (the shoprank server's BYTES interface) over `candidates`, the first one also the
    history."""
    items = list(candidates)
    return {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["running shoes"]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["shoprank-smoke-test"]},
        {"name": "history", "datatype": "BYTES", "shape": [1], "data": [items[0]]},
        {"name": "candidates", "datatype": "BYTES", "shape": [len(items)], "data": items},
    ]}


def check_ranking_response(response: Mapping[str, Any], candidates: Iterable[str]) -> str | None:
    """None when the v2 response is a ranking of the candidates with finite scores, none of them unknown to the
    server (they come from the bundle's catalogue); else what is wrong."""
    items = list(candidates)
    outputs = {o.get("name"): o for o in response.get("outputs") or []}
    for name in ("scores", "ranking"):
        if name not in outputs:
            return f"response has no '{name}' output (outputs: {sorted(outputs)})"
    scores, ranking = outputs["scores"].get("data") or [], outputs["ranking"].get("data") or []
    if len(scores) != len(items) or not all(isinstance(s, int | float) and math.isfinite(s) for s in scores):
        return f"'scores' should be {len(items)} finite numbers, got {scores!r:.200}"
    if sorted(ranking) != sorted(items):
        return f"'ranking' should be a permutation of the candidates, got {ranking!r:.200}"
    unknown = (response.get("parameters") or {}).get("unknown_count", 0)
    if unknown:
        return (f"the server does not know {unknown} of the bundle's catalogue items "
                f"({(response.get('parameters') or {}).get('unknown_items', '?')}): it serves another catalogue")
    return None


def served_versions(metadata: Mapping[str, Any]) -> list[str]:
    """Bundle versions a v2 model-metadata answer reports (`versions`), if it reports shoprank versions."""
    return [v for v in metadata.get("versions") or [] if isinstance(v, str) and _BUNDLE_VERSION_RE.match(v)]


def _http_json(url: str, payload: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (URL from the cluster)
        return json.loads(response.read())


def ranking_smoke(ctx: SmokeContext, *, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep, request_timeout_s: float = 10.0) -> SmokeResult:
    """Send a v2 ranking request until it is answered correctly by the new version, or the time is up.

    When the model's metadata (`GET /v2/models/NAME`) reports shoprank bundle versions, the answer must come
    from `ctx.version`; an old version answering means old pods still serve (Standard mode mid-rollout), so
    it retries. Errors are retried too: the first requests after Ready may meet a cold model.
    """
    if not ctx.url:
        return SmokeResult(False, "no URL for the smoke request in the InferenceService status (set smoke_url)")
    if not ctx.items:
        return SmokeResult(False, "no item ids for the smoke request (the bundle's catalogue gave none)")
    base = ctx.url.rstrip("/") + f"/v2/models/{ctx.model_name}"
    deadline, last = clock() + ctx.timeout_s, "no attempt"
    while True:
        try:
            versions = served_versions(_http_json(base, None, request_timeout_s))
            if versions and ctx.version not in versions:
                last = f"answered by version {', '.join(versions)}, waiting for {ctx.version}"
            else:
                answer = _http_json(base + "/infer", ranking_request(ctx.items), request_timeout_s)
                problem = check_ranking_response(answer, ctx.items)
                if problem is None:
                    return SmokeResult(True, f"v2 ranking request to {base}/infer answered correctly")
                return SmokeResult(False, problem)  # a wrong answer is not transient
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode(errors="replace")
            last = f"HTTP {exc.code} from {exc.url}: {body}"
            if 400 <= exc.code < 500 and exc.code not in (404, 408, 429):
                return SmokeResult(False, last)  # the request is refused: retrying will not help
        except (OSError, ValueError) as exc:  # connection refused, timeouts, DNS, bad JSON
            last = f"{type(exc).__name__}: {exc}"
        if clock() >= deadline:
            return SmokeResult(False, f"no correct answer within {ctx.timeout_s:.0f}s: {last}")
        sleep(min(5.0, max(0.0, deadline - clock())))


def no_smoke(ctx: SmokeContext) -> SmokeResult:
    """`smoke=none`: no request is sent (the cluster tests' simulated nodes run no model server)."""
    return SmokeResult(True, "skipped: smoke=none")
