"""A lean REST path for `POST /v2/models/{name}/infer` (JSON and the binary tensor extension).

KServe's own route parses the body into pydantic models, converts them to an InferRequest, and on the way out
builds a pydantic response that FastAPI walks with `jsonable_encoder` (one Python call per number), behind two
route matches per request. On this 2-core machine that was most of a request's server time. This ASGI
middleware answers the same protocol with orjson straight to and from KServe's `InferRequest` /
`InferResponse`, then calls KServe's DataPlane exactly as the stock route does (same model registry,
readiness, pre/predict/post handlers and Prometheus histograms). Every other route (health, metadata,
/metrics, versioned infer, v1) is KServe's, untouched.

Every failure is answered here with a JSON `{"error": ...}` and a 4xx/5xx status: nothing propagates to
uvicorn, so a bad request never costs the client its keep-alive connection. Overload is refused before the body
is decoded (`model.check_admission()`, when the model has one): 503 with Retry-After, the cheapest answer there
is, so that a burst costs the server as little as possible.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.logging import logger
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput, to_http_parameters

from serving.errors import BodyTooLarge, ServiceUnavailable

__all__ = ["FastInferMiddleware", "decode_request", "encode_response"]

_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")
_DTYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
           "FP64", "BYTES"}
_JSON = [(b"content-type", b"application/json")]


def _as_params(value: Any, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    return value


def decode_request(body: bytes, json_length: int | None, model_name: str) -> InferRequest:
    """v2 REST request bytes (JSON, optionally followed by binary tensors) -> KServe InferRequest."""
    if json_length is None:
        json_part, end = body, len(body)
    else:
        if not 0 < json_length <= len(body):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} is {json_length} but the body has {len(body)} "
                               "bytes")
        json_part, end = body[:json_length], json_length
    try:
        obj = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        hint = "" if json_length else f" (binary tensors need the {INFERENCE_CONTENT_LENGTH_HEADER} header)"
        raise InvalidInput(f"malformed JSON in the request body: {e}{hint}") from None
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    inputs = []
    offset = end
    for i, d in enumerate(raw_inputs):
        if not isinstance(d, dict):
            raise InvalidInput(f"inputs[{i}] must be a JSON object")
        name, datatype, shape = d.get("name"), d.get("datatype"), d.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name' string")
        if not isinstance(datatype, str) or datatype.upper() not in _DTYPES:
            raise InvalidInput(f"input '{name}': unknown datatype {datatype!r}; one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
        params = _as_params(d.get("parameters"), f"input '{name}'")
        inp = InferInput(name=name, shape=shape, datatype=datatype, parameters=params)
        if "data" in d:
            if not isinstance(d["data"], list):
                raise InvalidInput(f"input '{name}': 'data' must be a JSON array")
            if inp.datatype == "FP16":
                raise InvalidInput(f"input '{name}': FP16 data must use the binary tensor extension")
            inp.data = d["data"]
        elif params and "binary_data_size" in params:
            size = params["binary_data_size"]
            if json_length is None:
                raise InvalidInput(f"input '{name}' has binary_data_size but the request has no "
                                   f"{INFERENCE_CONTENT_LENGTH_HEADER} header")
            if type(size) is not int or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(body):
                raise InvalidInput(f"truncated binary body: input '{name}' needs {size} bytes at offset {offset}, "
                                   f"the body has {len(body)} bytes")
            inp._raw_data = body[offset: offset + size]  # as KServe's InferRequest.from_bytes does
            offset += size
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter")
        inputs.append(inp)
    if json_length is not None and offset != len(body):
        raise InvalidInput(f"the body has {len(body) - offset} bytes after the last binary input")
    outputs = obj.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        requested = [RequestedOutput(o["name"], _as_params(o.get("parameters"), f"output '{o['name']}'"))
                     for o in outputs]
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=request_id,
                        parameters=_as_params(obj.get("parameters"), "request"), request_outputs=requested)


def encode_response(response: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """InferResponse -> body and headers. Outputs go out as they are: data as JSON (numpy arrays serialised
    by orjson directly) or, where a model set raw bytes, as binary tensors after the JSON."""
    if isinstance(response, InferResponse) and (response._requested_outputs or response._use_binary_outputs):
        # A model that left output selection / binary encoding to KServe: use KServe's encoder.
        response, json_length = response.to_rest()
        if json_length is not None:
            return response, [(b"content-type", b"application/octet-stream"),
                              (INFERENCE_CONTENT_LENGTH_HEADER.encode(), str(json_length).encode())]
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), _JSON
    if not isinstance(response, InferResponse):
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), _JSON
    outputs, raws = [], []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        params = to_http_parameters(out.parameters) if out.parameters else None
        raw = getattr(out, "_raw_data", None)
        if raw is not None:
            params = {**(params or {}), "binary_data_size": len(raw)}
            raws.append(raw)
        else:
            data = out.data
            if hasattr(data, "dtype") and data.dtype.kind in "OSU":  # orjson serialises numeric arrays only
                data = [v.decode() if isinstance(v, bytes) else v for v in data.reshape(-1).tolist()]
            entry["data"] = data
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    res: dict[str, Any] = {"id": response.id, "model_name": response.model_name, "outputs": outputs}
    if response.model_version:
        res["model_version"] = response.model_version
    if response.parameters:
        res["parameters"] = to_http_parameters(response.parameters)
    head = orjson.dumps(res, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return head, _JSON
    return b"".join([head, *raws]), [(b"content-type", b"application/octet-stream"),
                                     (INFERENCE_CONTENT_LENGTH_HEADER.encode(), str(len(head)).encode())]


class FastInferMiddleware:
    """ASGI middleware: serves unversioned v2 infer requests, passes everything else on."""

    def __init__(self, app: Any, dataplane: DataPlane, max_body_bytes: int = 1 << 20):
        self.app, self.dataplane, self.max_body_bytes = app, dataplane, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        m = _INFER.match(scope["path"])
        if m is None:
            return await self.app(scope, receive, send)
        status, headers, body = await self._infer(m.group(1), scope, receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ConnectionAbortedError("client disconnected")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _infer(self, model_name: str, scope: dict, receive: Any
                     ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            body = await self._read_body(receive)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not await self.dataplane.model_ready(model_name, True):
                raise ModelNotReady(model_name)
            check = getattr(self.dataplane.model_registry.get_model(model_name), "check_admission", None)
            if check is not None:
                check()
            length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
            if length is not None:
                try:
                    length = int(length)
                except ValueError:
                    raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be an integer") from None
            request = decode_request(body, length, model_name)
            response, response_headers = await self.dataplane.infer(model_name=model_name, request=request,
                                                                     headers=headers)
            payload, out_headers = encode_response(response)
            extra = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in response_headers.items()
                     if k.lower() not in ("content-length", "content-type")]
            return 200, out_headers + extra, payload
        except InvalidInput as e:
            return self._error(400, str(e))
        except BodyTooLarge as e:
            return self._error(413, str(e))
        except ServiceUnavailable as e:
            return e.http_status, [*_JSON, (b"retry-after", str(e.retry_after_s).encode())], \
                orjson.dumps({"error": e.reason})
        except ModelNotFound as e:
            return self._error(404, str(e))
        except ModelNotReady as e:
            return self._error(503, str(e))
        except NotImplementedError as e:
            return self._error(501, str(e))
        except ConnectionAbortedError as e:
            return self._error(499, str(e))
        except InferenceError as e:
            logger.error("inference error on model '%s': %s", model_name, e)
            return self._error(500, str(e))
        except Exception as e:  # a bug, not the client's fault: log it, answer, keep the connection
            logger.exception("unexpected error serving model '%s'", model_name)
            return self._error(500, f"{type(e).__name__}: {e}")

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return status, _JSON, orjson.dumps({"error": message})

