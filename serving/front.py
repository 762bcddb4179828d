"""The REST front door: what applies to every HTTP route before KServe's routes or the lean infer path see it.

- **Body limit** on every route (v1, v2 unversioned and versioned, anything else): a `Content-Length` over
  `--max_body_bytes` is answered 413 at once, without reading the body (a client sending `Expect:
  100-continue`, as curl does for large bodies, never sends it; otherwise uvicorn discards the rest and the
  keep-alive connection stays usable); a chunked body is counted as it is read and the read raises
  `BodyTooLarge` at the limit, which the lean infer path and the FastAPI exception handler answer with 413.
- **Versioned v2 routes** (`/v2/models/{m}/versions/{v}`, `.../ready`, `.../infer`): the version the bundle has
  (its manifest; what the metadata lists) is served exactly as the unversioned route (the path is rewritten, so
  the lean infer path, KServe's handlers and the metrics are the same); any other version, or any version of a
  model without one, is a 404 that names the version served. KServe's own versioned routes answer 501.
- **/metrics** (GET): every worker process added up (serving.metrics), instead of KServe's route, which shows
  the process that happens to answer.
- **Draining** (see serving.shutdown): once the process has been told to stop, every response carries
  `Connection: close`, so a keep-alive client finishes its request and then reconnects, to another replica.

Pure ASGI, no Starlette request objects: it runs on every request, and at a few thousand requests per second on
2 cores a middleware layer's cost is visible.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from kserve.protocol.dataplane import DataPlane

from serving.errors import BodyTooLarge
from serving.metrics import metrics_text
from serving.shutdown import DRAIN

__all__ = ["FrontDoorMiddleware", "versioned_target"]

_VERSIONED = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/ready|/infer)?/?$")
_JSON = (b"content-type", b"application/json")


def versioned_target(path: str, dataplane: DataPlane) -> tuple[str | None, str | None]:
    """For a versioned v2 path: (the unversioned path to serve, None) when the version is the bundle's, or
    (None, why not) for a 404. (None, None) for any other path."""
    m = _VERSIONED.match(path)
    if m is None:
        return None, None
    name, version, suffix = m.group(1), m.group(2), m.group(3) or ""
    model = dataplane.model_registry.get_model(name)
    if model is None:
        return f"/v2/models/{name}{suffix}", None  # KServe answers an unknown model with its own 404
    served = getattr(model, "version", "") or ""
    if version != served:
        has = f"serves version '{served}'" if served else "has no versions (its bundle has no manifest)"
        return None, f"model '{name}' {has}; version '{version}' is not served here"
    return f"/v2/models/{name}{suffix}", None


def _content_length(scope: dict) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class FrontDoorMiddleware:
    """ASGI middleware: body limit, versioned routes, /metrics, Connection: close while draining (module
    docstring)."""

    def __init__(self, app: Any, dataplane: DataPlane, max_body_bytes: int = 1 << 20):
        self.app, self.dataplane, self.max_body_bytes = app, dataplane, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if DRAIN.active:
            send = _closing(send)
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return await _answer(send, 413, str(BodyTooLarge(self.max_body_bytes, length)))
        path = scope["path"]
        if path == "/metrics" and scope["method"] == "GET":
            accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
            body, content_type = metrics_text(accept)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        if "/versions/" in path:
            target, problem = versioned_target(path, self.dataplane)
            if problem is not None:
                return await _answer(send, 404, problem)
            if target is not None:
                scope = {**scope, "path": target, "raw_path": target.encode()}
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            receive = _counting(receive, self.max_body_bytes)
        return await self.app(scope, receive, send)


async def _answer(send: Any, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _closing(send: Any) -> Any:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped


def _counting(receive: Any, limit: int) -> Any:
    """A receive that raises BodyTooLarge once a body without Content-Length (chunked) passes the limit."""
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped
