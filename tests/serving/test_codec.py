"""Serving units without a model: request parsing and validation, the REST wire codec, the micro-batcher."""

from __future__ import annotations

import asyncio
import re
import struct

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from serving.batcher import BatchSettings, MicroBatcher
from serving.codec import (
    Limits,
    RankingRequest,
    TensorRequest,
    TensorSpec,
    join_bytes_tensor,
    parse_request,
    ranking_response,
    split_bytes_tensor,
    tensor_response,
)
from serving.errors import ShuttingDown
from serving.rest import decode_request, encode_response
from shoprank.features.transform import INPUTS

SHAPES = {"query_tokens": (4,), "title_tokens": (5,), "history_items": (3,), "history_categories": (3,),
          "history_brands": (3,), "item_id": (), "category": (), "brand": (), "price_bucket": (), "item_popularity": (),
          "category_price": (), "query_affinity": (7,)}
SPEC = TensorSpec(shapes=SHAPES, upper={k: 50 for k in INPUTS})
LIMITS = Limits(max_candidates=10, max_query_chars=20, max_history=8)


def inp(name, datatype, data, shape=None):
    shape = shape if shape is not None else [len(data)]
    return InferInput(name, shape, datatype, data=data)


def ranking(**overrides):
    fields = {"query": inp("query", "BYTES", ["red shoe"]), "user_id": inp("user_id", "BYTES", ["u1"]),
              "history": inp("history", "BYTES", ["i1", "i2"]), "candidates": inp("candidates", "BYTES", ["a", "b"])}
    fields.update(overrides)
    return InferRequest("m", [v for v in fields.values() if v is not None])


def tensors(rows=2, **overrides):
    fields = {}
    for name, shape in SHAPES.items():
        arr = np.ones((rows, *shape), np.int32)
        fields[name] = inp(name, "INT32", arr.reshape(-1).tolist(), [rows, *shape])
    fields.update(overrides)
    return InferRequest("m", [v for v in fields.values() if v is not None])


def test_parses_a_ranking_request():
    req = parse_request(ranking(), SPEC, LIMITS)
    assert isinstance(req, RankingRequest)
    assert (req.query, req.user_id, req.history, req.candidates) == ("red shoe", "u1", ["i1", "i2"], ["a", "b"])


def test_ranking_accepts_integer_ids_bytes_and_missing_history():
    req = parse_request(ranking(candidates=inp("candidates", "INT64", [7, 8], [1, 2]), history=None,
                                user_id=inp("user_id", "INT32", [3]), query=inp("query", "BYTES", [b""])),
                        SPEC, LIMITS)
    assert (req.query, req.user_id, req.history, req.candidates) == ("", "3", [], ["7", "8"])


def test_parses_binary_bytes_and_int_inputs():
    c = InferInput("candidates", [2], "BYTES")
    c._raw_data = join_bytes_tensor(["a", "bé"])
    req = parse_request(ranking(candidates=c), SPEC, LIMITS)
    assert req.candidates == ["a", "bé"]
    t = tensors()
    raw = InferInput("item_id", [2], "INT64")
    raw._raw_data = np.array([3, 4], np.int64).tobytes()
    t = tensors(item_id=raw)
    req = parse_request(t, SPEC, LIMITS)
    assert isinstance(req, TensorRequest) and req.rows == 2
    assert req.tensors["item_id"].tolist() == [3, 4] and req.tensors["item_id"].dtype == np.int32
    assert req.tensors["query_tokens"].shape == (2, 4)


@pytest.mark.parametrize("request_, message", [
    (InferRequest("m", []), "no inputs"),
    (ranking(extra=inp("extra", "BYTES", ["x"])), "unknown input"),
    (ranking(candidates=None), "missing input"),
    (ranking(query=None), "missing input"),
    (ranking(user_id=None), "missing input"),
    (ranking(candidates=inp("candidates", "FP32", [1.0, 2.0])), "must be BYTES"),
    (ranking(query=inp("query", "INT64", [1])), "must be BYTES"),
    (ranking(candidates=inp("candidates", "INT64", ["i0001", "i0002"])), "non-integer"),
    (ranking(candidates=inp("candidates", "INT64", [1.5, 2.0])), "non-integer"),
    (ranking(candidates=inp("candidates", "BYTES", [1, 2])), "send strings"),
    (ranking(candidates=inp("candidates", "BYTES", [])), "is empty"),
    (ranking(candidates=inp("candidates", "BYTES", [f"c{i}" for i in range(11)])), "limit is 10"),
    (ranking(history=inp("history", "BYTES", [f"h{i}" for i in range(9)])), "limit is 8"),
    (ranking(query=inp("query", "BYTES", ["x" * 21])), "limit is 20"),
    (ranking(query=inp("query", "BYTES", ["a", "b"])), "exactly one value"),
    (ranking(candidates=inp("candidates", "BYTES", ["a", "b", "c", "d"], [2, 2])), "one ranking request per call"),
    (ranking(candidates=inp("candidates", "BYTES", ["a", "b"], [3])), "needs 3 elements"),
    (ranking(candidates=inp("candidates", "BYTES", ["a"], [-1])), "non-negative"),
    (ranking(query=inp("query", "BYTES", [b"\xff\xfe"])), "UTF-8"),
    (InferRequest("m", [inp("candidates", "BYTES", ["a"]), inp("candidates", "BYTES", ["b"])]), "given twice"),
    (InferRequest("m", [inp("candidates", "BYTES", ["a"]), inp("item_id", "INT32", [1])]), "mixes"),
    (tensors(item_id=None), "missing model tensor"),
    (tensors(item_id=inp("item_id", "BYTES", ["i1", "i2"])), "must be INT32"),
    (tensors(item_id=inp("item_id", "FP32", [1.0, 2.0])), "must be INT32"),
    (tensors(item_id=inp("item_id", "INT32", ["1", "2"])), "non-integer"),
    (tensors(query_tokens=inp("query_tokens", "INT32", [1] * 6, [2, 3])), "shape must be [-1, 4]"),
    (tensors(item_id=inp("item_id", "INT32", [1, 2, 3])), "rows"),
    (tensors(item_id=inp("item_id", "INT32", [1, -1])), "values must be in [0, 50)"),
    (tensors(item_id=inp("item_id", "INT32", [1, 50])), "values must be in [0, 50)"),
    (tensors(item_id=inp("item_id", "INT32", [[1, 2], [3]], [2])), "needs 2 elements, got 3"),
    (tensors(rows=11), "limit is 10"),
    (tensors(rows=0), "no rows"),
])
def test_bad_requests_raise_invalid_input(request_, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_request(request_, SPEC, LIMITS)


def test_truncated_binary_bytes_tensor():
    with pytest.raises(InvalidInput, match="truncated|runs past"):
        split_bytes_tensor(struct.pack("<I", 5) + b"abc", "candidates", 1)
    with pytest.raises(InvalidInput, match="holds 1"):
        split_bytes_tensor(join_bytes_tensor(["abc"]), "candidates", 2)


def test_responses_honour_requested_outputs_and_binary_flags():
    payload = InferRequest("m", [], request_id="r1",
                           request_outputs=[RequestedOutput("ranking", {"binary_data": True})])
    res = ranking_response("m", payload, np.array([0.1, 0.9], np.float32), ["b", "a"], ["a"])
    assert [o.name for o in res.outputs] == ["ranking"] and res.id == "r1"
    assert res.parameters == {"unknown_count": 1, "unknown_items": '["a"]'}
    body, headers = encode_response(res)
    length = int(dict(headers)[b"inference-header-content-length"])
    head = orjson.loads(body[:length])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(body) - length
    assert split_bytes_tensor(body[length:], "ranking", 2) == [b"b", b"a"]
    with pytest.raises(InvalidInput, match="unknown output"):
        tensor_response("m", payload, np.zeros(2))
    plain = tensor_response("m", InferRequest("m", []), np.array([0.5, 0.25], np.float32))
    body, headers = encode_response(plain)
    assert dict(headers)[b"content-type"] == b"application/json"
    assert orjson.loads(body)["outputs"][0]["data"] == [0.5, 0.25]


def test_rest_decoder_reads_json_and_binary_and_rejects_bad_bodies():
    head = orjson.dumps({"id": "x", "inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["q"]},
        {"name": "candidates", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 12}}],
        "outputs": [{"name": "scores"}], "parameters": {"binary_data_output": True}})
    body = head + join_bytes_tensor(["ab", "cd"])
    req = decode_request(body, len(head), "m")
    assert req.id == "x" and req.use_binary_outputs and [o.name for o in req.request_outputs] == ["scores"]
    assert req.inputs[1]._raw_data == join_bytes_tensor(["ab", "cd"])
    bad = [
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b"{}", None, "non-empty 'inputs'"),
        (orjson.dumps({"inputs": [{"name": "a", "datatype": "WORD", "shape": [1], "data": [1]}]}), None,
         "unknown datatype"),
        (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": ["1"], "data": [1]}]}), None,
         "shape"),
        (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1]}]}), None, "neither"),
        (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": 5}]}), None,
         "JSON array"),
        (body[:-3], len(head), "truncated binary body"),
        (body + b"zz", len(head), "after the last binary input"),
        (body, None, "need the inference-header-content-length header"),
        (body, len(body) + 5, "the body has"),
        (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1]}], "id": 3}),
         None, "'id' must be a string"),
    ]
    for raw, length, message in bad:
        with pytest.raises(InvalidInput, match=message):
            decode_request(raw, length, "m")


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_micro_batcher_batches_concurrent_requests_within_limits():
    calls = []

    async def model(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    async def scenario():
        b = MicroBatcher(model, BatchSettings(max_batch_rows=30, max_wait_ms=0))
        results = await asyncio.gather(*[b.submit(i, 10) for i in range(8)])
        big = await b.submit(99, 100)  # larger than the limit: runs alone
        await b.close()
        return b, results, big

    b, results, big = run(scenario())
    assert results == [i * 10 for i in range(8)] and big == 990
    assert all(len(c) <= 3 for c in calls[:-1]) and calls[-1] == [99]
    assert b.batches == len(calls) < 9 and b.requests == 9


def test_micro_batcher_waits_to_fill_and_survives_a_failing_batch():
    async def model(items):
        if "boom" in items:
            raise ValueError("model failed")
        return items

    async def scenario():
        b = MicroBatcher(model, BatchSettings(max_batch_rows=100, max_wait_ms=30))
        first = asyncio.ensure_future(b.submit("a", 1))
        await asyncio.sleep(0.005)  # within the wait window: joins the same batch
        second = asyncio.ensure_future(b.submit("b", 1))
        assert await first == "a" and await second == "b"
        assert b.batches == 1
        with pytest.raises(ValueError, match="model failed"):
            await b.submit("boom", 1)
        # A request that breaks the model call fails alone; the others in its batch are answered.
        results = await asyncio.gather(b.submit("x", 1), b.submit("boom", 1), b.submit("y", 1),
                                       return_exceptions=True)
        assert results[0] == "x" and isinstance(results[1], ValueError) and results[2] == "y"
        assert await b.submit("c", 1) == "c"  # the worker is still alive
        await b.close()
        with pytest.raises(ShuttingDown, match="shutting down"):
            await b.submit("d", 1)

    run(scenario())


def test_transformer_options_accept_the_deprecated_protocol_flag():
    from serving.options import build_parser
    from serving.transformer import predictor_config

    parser = build_parser("t")
    parser.add_argument("--predictor_model_name", default=None)
    config = predictor_config(parser.parse_args(["--predictor_host", "triton:8000", "--protocol", "v2"]))
    assert (config.predictor_host, config.predictor_protocol) == ("triton:8000", "v2")
    config = predictor_config(parser.parse_args(["--predictor_host", "h:8001", "--predictor_protocol", "grpc-v2"]))
    assert config.predictor_protocol == "grpc-v2"
    with pytest.raises(SystemExit, match="v2"):
        predictor_config(parser.parse_args(["--predictor_host", "h"]))
    args = parser.parse_args(["--max_batch_size", "64", "--max_batch_wait_ms", "2", "--max_candidates", "50"])
    assert not args.enable_latency_logging and args.fast_infer and not args.access_log
