"""v2 tensors <-> shoprank requests: parsing and validation of both request kinds, and the responses.

Works on KServe's `InferRequest` / `InferResponse`, so REST (JSON or the binary tensor extension) and gRPC
requests share one validation path. Everything a client can get wrong raises `kserve.errors.InvalidInput`
(HTTP 400 / gRPC INVALID_ARGUMENT) with a message that names the input and says what is wrong.

Two request kinds on one model:
  ranking  query (BYTES, one value, may be ""), user_id (BYTES or INT, one value), history (BYTES or INT,
           optional), candidates (BYTES or INT, 1..max_candidates)  ->  scores (FP32), ranking (BYTES)
  tensor   the model's own input tensors (shoprank.features.transform.INPUTS, INT32)  ->  score (FP32)
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

from shoprank.features.transform import INPUTS, FeatureTransform, input_shapes

__all__ = [
    "INT_DTYPES",
    "RANKING_INPUTS",
    "RANKING_OUTPUTS",
    "REQUIRED_RANKING",
    "SCORE",
    "TENSOR_OUTPUTS",
    "Limits",
    "RankingRequest",
    "TensorRequest",
    "TensorSpec",
    "integers",
    "join_bytes_tensor",
    "parse_request",
    "ranking_metadata",
    "ranking_response",
    "score_of",
    "split_bytes_tensor",
    "strings",
    "tensor_request",
    "tensor_response",
]

# shoprank.modeling.model imports TensorFlow; it is imported where needed so that a worker process can unpickle the
# model (and answer KServe's liveness ping) before paying for that import.
SCORE = "score"  # == shoprank.layout.SCORE, checked by tests/serving/test_serving.py

QUERY, USER_ID, HISTORY, CANDIDATES = "query", "user_id", "history", "candidates"
RANKING_INPUTS = (QUERY, USER_ID, HISTORY, CANDIDATES)
REQUIRED_RANKING = (QUERY, USER_ID, CANDIDATES)
SCORES, RANKING = "scores", "ranking"
RANKING_OUTPUTS = (SCORES, RANKING)
TENSOR_OUTPUTS = (SCORE,)

INT_DTYPES = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
              "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64}
# Which vocabulary bounds each model input. Checked per request, before batching: LiteRT fails the whole
# call on an index past an embedding table, which would fail every request in the batch.
_VOCAB_OF = {"query_tokens": "token", "title_tokens": "token", "history_items": "item", "item_id": "item",
             "history_categories": "category", "category": "category", "history_brands": "brand",
             "brand": "brand", "price_bucket": "price", "item_popularity": "popularity",
             "category_price": "category_price", "query_affinity": "affinity"}


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 1000  # rows per request, both kinds
    max_query_chars: int = 1024  # the transform caches tokenised text: unbounded text would be a memory leak
    max_history: int = 10_000  # only the last history_len items are used; a longer list is a client bug


@dataclass(frozen=True)
class TensorSpec:
    """Names, shapes and index bounds of the model's input tensors (from the transform's config)."""

    shapes: dict[str, tuple[int, ...]]
    upper: dict[str, int]  # exclusive upper bound of each input's values

    @classmethod
    def from_transform(cls, transform: FeatureTransform) -> TensorSpec:
        sizes = transform.sizes
        return cls(shapes=input_shapes(transform.config), upper={k: int(sizes[v]) for k, v in _VOCAB_OF.items()})

    def metadata(self) -> list[dict]:
        return [{"name": k, "datatype": "INT32", "shape": [-1, *self.shapes[k]]} for k in INPUTS]


@dataclass
class RankingRequest:
    query: str
    user_id: str
    history: list[str]
    candidates: list[str]

    @property
    def rows(self) -> int:
        return len(self.candidates)


@dataclass
class TensorRequest:
    tensors: dict[str, np.ndarray]  # int32, C-contiguous, in INPUTS order
    rows: int


def ranking_metadata() -> tuple[list[dict], list[dict]]:
    inputs = [{"name": QUERY, "datatype": "BYTES", "shape": [1]},
              {"name": USER_ID, "datatype": "BYTES", "shape": [1]},
              {"name": HISTORY, "datatype": "BYTES", "shape": [-1]},
              {"name": CANDIDATES, "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": SCORES, "datatype": "FP32", "shape": [-1]},
               {"name": RANKING, "datatype": "BYTES", "shape": [-1]}]
    return inputs, outputs


# --- low-level tensor access ------------------------------------------------------------------------------
def _raw(inp: InferInput) -> bytes | None:
    # KServe keeps binary-extension / gRPC raw_input_contents here; there is no public getter.
    return getattr(inp, "_raw_data", None)


def _numel(inp: InferInput) -> int:
    shape = inp.shape
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"input '{inp.name}': shape must be a list of non-negative integers, got {shape!r}")
    return math.prod(shape)


def _flatten(data) -> list:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).tolist()
    if not isinstance(data, list):
        data = list(data)  # protobuf repeated fields (gRPC contents)
    if data and isinstance(data[0], list):  # row-major nested lists, as the v2 JSON format allows
        out: list = []
        for v in data:
            if isinstance(v, list):
                out.extend(_flatten(v))
            else:
                out.append(v)
        return out
    return data


def split_bytes_tensor(raw: bytes, name: str, count: int) -> list[bytes]:
    """Length-prefixed (uint32 little-endian) elements of a BYTES tensor, with bounds checks."""
    out, off, n = [], 0, len(raw)
    mv = memoryview(raw)
    while off < n:
        if off + 4 > n:
            raise InvalidInput(f"input '{name}': binary BYTES data is truncated (length prefix at byte {off})")
        (size,) = struct.unpack_from("<I", raw, off)
        off += 4
        if off + size > n:
            raise InvalidInput(f"input '{name}': binary BYTES element of {size} bytes runs past the end of the data")
        out.append(bytes(mv[off: off + size]))
        off += size
    if len(out) != count:
        raise InvalidInput(f"input '{name}': shape needs {count} elements, the binary data holds {len(out)}")
    return out


def join_bytes_tensor(values: Sequence[str | bytes]) -> bytes:
    parts = []
    for v in values:
        b = v.encode("utf-8") if isinstance(v, str) else v
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def strings(inp: InferInput) -> list[str]:
    """The elements of a BYTES input as str."""
    count = _numel(inp)
    raw = _raw(inp)
    items = split_bytes_tensor(raw, inp.name, count) if raw is not None else _flatten(inp.data)
    if raw is None and len(items) != count:
        raise InvalidInput(f"input '{inp.name}': shape {list(inp.shape)} needs {count} elements, got {len(items)}")
    if all(type(v) is str for v in items):
        return items
    out = []
    for v in items:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, bytes | bytearray):
            try:
                out.append(bytes(v).decode("utf-8"))
            except UnicodeDecodeError as e:
                raise InvalidInput(f"input '{inp.name}': element is not valid UTF-8 ({e})") from None
        else:
            raise InvalidInput(f"input '{inp.name}' is BYTES but holds {type(v).__name__} values such as {v!r}: "
                               "send strings")
    return out


def integers(inp: InferInput) -> np.ndarray:
    """The elements of an INT* input as a flat integer array (never silently cast from strings or floats)."""
    count = _numel(inp)
    dtype = INT_DTYPES[inp.datatype]
    raw = _raw(inp)
    if raw is not None:
        need = count * np.dtype(dtype).itemsize
        if len(raw) != need:
            raise InvalidInput(f"input '{inp.name}': shape {list(inp.shape)} of {inp.datatype} needs {need} bytes "
                               f"of binary data, got {len(raw)}")
        return np.frombuffer(raw, dtype=dtype)
    data = inp.data
    flat = None
    try:
        if isinstance(data, np.ndarray):
            arr = data
        else:
            flat = _flatten(data) if data is not None else []
            arr = np.asarray(flat)
    except (ValueError, OverflowError, TypeError) as e:
        raise InvalidInput(f"input '{inp.name}': data is not a regular array of integers ({e})") from None
    arr = arr.reshape(-1)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            items = flat if flat is not None else arr.tolist()
            example = next((v for v in items if type(v) is not int), items[0])
            raise InvalidInput(f"input '{inp.name}' is {inp.datatype} but holds non-integer values such as "
                               f"{example!r}: send integers (ids given as strings belong in a BYTES input)")
    if arr.size != count:
        raise InvalidInput(f"input '{inp.name}': shape {list(inp.shape)} needs {count} elements, got {arr.size}")
    return arr


def _ids(inp: InferInput) -> list[str]:
    if inp.datatype == "BYTES":
        return strings(inp)
    if inp.datatype in INT_DTYPES:
        return [str(v) for v in integers(inp).tolist()]
    raise InvalidInput(f"input '{inp.name}' must be BYTES (or an INT type for numeric ids), got {inp.datatype}")


def _single(inp: InferInput, values: list[str]) -> str:
    if len(values) != 1:
        raise InvalidInput(f"input '{inp.name}' must hold exactly one value (shape [1]), got {len(values)}")
    return values[0]


def _check_list_shape(inp: InferInput) -> None:
    shape = list(inp.shape)
    if len(shape) == 1 or (len(shape) == 2 and shape[0] == 1):
        return
    raise InvalidInput(f"input '{inp.name}': shape must be [N] or [1, N] (one ranking request per call), got {shape}")


# --- request parsing --------------------------------------------------------------------------------------
def parse_request(payload: InferRequest, spec: TensorSpec, limits: Limits) -> RankingRequest | TensorRequest:
    """Decide the request kind from the input names and validate it."""
    inputs = payload.inputs
    if not inputs:
        raise InvalidInput("the request has no inputs")
    by_name: dict[str, InferInput] = {}
    for inp in inputs:
        if inp.name in by_name:
            raise InvalidInput(f"input '{inp.name}' is given twice")
        by_name[inp.name] = inp
    names = set(by_name)
    unknown = names - set(RANKING_INPUTS) - set(INPUTS)
    if unknown:
        raise InvalidInput(f"unknown input(s) {sorted(unknown)}: send a ranking request ({', '.join(REQUIRED_RANKING)}"
                           f", optional {HISTORY}) or the model tensors ({', '.join(INPUTS)})")
    if names & set(RANKING_INPUTS) and names & set(INPUTS):
        raise InvalidInput("the request mixes ranking inputs and model tensors: send one kind per request")
    if names & set(RANKING_INPUTS):
        return _parse_ranking(by_name, limits)
    return _parse_tensors(by_name, spec, limits)


def _parse_ranking(by_name: dict[str, InferInput], limits: Limits) -> RankingRequest:
    missing = [n for n in REQUIRED_RANKING if n not in by_name]
    if missing:
        raise InvalidInput(f"missing input(s) {missing} for a ranking request "
                           f"(required: {', '.join(REQUIRED_RANKING)}; optional: {HISTORY})")
    q = by_name[QUERY]
    if q.datatype != "BYTES":
        raise InvalidInput(f"input '{QUERY}' must be BYTES (the search text, may be empty), got {q.datatype}")
    query = _single(q, strings(q))
    if len(query) > limits.max_query_chars:
        raise InvalidInput(f"input '{QUERY}' is {len(query)} characters long; the limit is {limits.max_query_chars}")
    u = by_name[USER_ID]
    user_id = _single(u, _ids(u))
    c = by_name[CANDIDATES]
    _check_list_shape(c)
    candidates = _ids(c)
    if not candidates:
        raise InvalidInput(f"input '{CANDIDATES}' is empty: send at least one item id to rank")
    if len(candidates) > limits.max_candidates:
        raise InvalidInput(f"input '{CANDIDATES}' has {len(candidates)} items; the limit is {limits.max_candidates}")
    history: list[str] = []
    if HISTORY in by_name:
        h = by_name[HISTORY]
        _check_list_shape(h)
        history = _ids(h)
        if len(history) > limits.max_history:
            raise InvalidInput(f"input '{HISTORY}' has {len(history)} items; the limit is {limits.max_history}")
    return RankingRequest(query, user_id, history, candidates)


def _parse_tensors(by_name: dict[str, InferInput], spec: TensorSpec, limits: Limits) -> TensorRequest:
    missing = [n for n in INPUTS if n not in by_name]
    if missing:
        raise InvalidInput(f"missing model tensor(s) {missing}: a tensor request needs all of {list(INPUTS)}")
    rows = None
    tensors = {}
    for name in INPUTS:
        inp = by_name[name]
        if inp.datatype not in INT_DTYPES:
            raise InvalidInput(f"input '{name}' must be INT32, got {inp.datatype}")
        want = spec.shapes[name]
        shape = list(inp.shape)
        _numel(inp)
        ok = (len(shape) == 1 + len(want) and tuple(shape[1:]) == want) or (not want and shape[1:] == [1]
                                                                             and len(shape) == 2)
        if not ok:
            raise InvalidInput(f"input '{name}': shape must be {[-1, *want]}, got {shape}")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise InvalidInput(f"input '{name}' has {shape[0]} rows, other inputs have {rows}")
        arr = integers(inp)
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= spec.upper[name]:
                raise InvalidInput(f"input '{name}': values must be in [0, {spec.upper[name]}), "
                                   f"got min {lo} and max {hi}")
        tensors[name] = np.ascontiguousarray(arr, dtype=np.int32).reshape(rows, *want)
    if not rows:
        raise InvalidInput("the model tensors have no rows")
    if rows > limits.max_candidates:
        raise InvalidInput(f"the model tensors have {rows} rows; the limit is {limits.max_candidates}")
    return TensorRequest(tensors, rows)


# --- responses --------------------------------------------------------------------------------------------
def _wanted(payload: InferRequest, available: Sequence[str]) -> list[tuple[str, bool]]:
    """(output name, binary?) in response order. A per-output `binary_data` parameter wins over the request's
    `binary_data_output` (the Triton semantics); gRPC raw inputs get raw outputs."""
    default = bool(payload.use_binary_outputs)
    requested: list[RequestedOutput] | None = payload.request_outputs
    if not requested:
        return [(name, default) for name in available]
    out = []
    for ro in requested:
        if ro.name not in available:
            raise InvalidInput(f"unknown output '{ro.name}' requested; this request kind has {list(available)}")
        flag = ro.binary_data
        out.append((ro.name, default if flag is None else bool(flag)))
    return out


def _output(name: str, datatype: str, arr: np.ndarray | list[str], binary: bool) -> InferOutput:
    out = InferOutput(name=name, shape=[len(arr)], datatype=datatype)
    if binary:
        if datatype == "BYTES":
            # Our own join: KServe's serialize_byte_tensor walks the array with nditer (slow).
            raw = join_bytes_tensor(arr)
            out._raw_data = raw  # no public setter for raw bytes
            out.parameters = {"binary_data_size": len(raw)}
        else:
            out.set_data_from_numpy(np.ascontiguousarray(arr), binary_data=True)
    else:
        out.data = arr.tolist() if isinstance(arr, np.ndarray) else list(arr)
    return out


def _response_id(payload: InferRequest) -> str:
    return payload.id if payload.id else uuid.uuid4().hex


def ranking_response(model_name: str, payload: InferRequest, scores: np.ndarray, ranking: list[str],
                     unknown_items: list[str], model_version: str | None = None) -> InferResponse:
    values = {SCORES: ("FP32", np.asarray(scores, dtype=np.float32)), RANKING: ("BYTES", ranking)}
    outputs = [_output(name, *values[name], binary) for name, binary in _wanted(payload, RANKING_OUTPUTS)]
    # v2 parameters are scalars: the list of unknown ids travels as a JSON string.
    params = {"unknown_count": len(unknown_items), "unknown_items": orjson.dumps(unknown_items).decode()}
    return InferResponse(response_id=_response_id(payload), model_name=model_name, infer_outputs=outputs,
                         parameters=params, model_version=model_version or None)


def tensor_response(model_name: str, payload: InferRequest, score: np.ndarray,
                    model_version: str | None = None) -> InferResponse:
    arr = np.asarray(score, dtype=np.float32).reshape(-1)
    outputs = [_output(name, "FP32", arr, binary) for name, binary in _wanted(payload, TENSOR_OUTPUTS)]
    return InferResponse(response_id=_response_id(payload), model_name=model_name, infer_outputs=outputs,
                         model_version=model_version or None)


def tensor_request(model_name: str, tensors: dict[str, np.ndarray], binary: bool = True) -> InferRequest:
    """An InferRequest carrying model tensors (what the transformer sends to a separate v2 predictor)."""
    inputs = []
    for name in INPUTS:
        arr = np.ascontiguousarray(tensors[name], dtype=np.int32)
        inp = InferInput(name=name, shape=list(arr.shape), datatype="INT32")
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=uuid.uuid4().hex,
                        request_outputs=[RequestedOutput(SCORE, {"binary_data": binary})])


def score_of(response: InferResponse, rows: int) -> np.ndarray:
    """The `score` output of a predictor's response, checked."""
    out = response.get_output_by_name(SCORE)
    if out is None:
        raise RuntimeError(f"the predictor's response has no '{SCORE}' output")
    arr = np.asarray(out.as_numpy(), dtype=np.float32).reshape(-1)
    if arr.size != rows:
        raise RuntimeError(f"the predictor returned {arr.size} scores for {rows} rows")
    return arr
