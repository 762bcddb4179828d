"""The model server in process (ASGI transport, no ports): every v2 endpoint (versioned ones included), both
request kinds, both backends, the binary tensor extension, micro-batching, every kind of bad input (400, and the
next request is served), the body limit on every route (413), overload (503 with Retry-After) and the
transformer in front of a predictor that drops its connections. Scores must equal the pipeline evaluator's for
the golden requests."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import orjson
import pytest
from kserve import model_server as kserve_model_server
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from serving.batcher import BatchSettings
from serving.codec import SCORE, Limits, join_bytes_tensor
from serving.model import ShoprankModel, detect_backend
from serving.rest import FastInferMiddleware, encode_response
from serving.server import ShoprankModelServer, ShoprankRESTServer
from shoprank.features.dataset import load_split
from shoprank.features.transform import INPUTS

NAME, SAVEDMODEL_NAME = "shoprank-ranker", "shoprank-savedmodel"
MAX_CANDIDATES = 200
TOL = 1e-5


@pytest.fixture(scope="module")
def served(tiny_bundle):
    """One app per process (KServe's FastAPI app is a module global): both backends registered on it."""
    bundle = tiny_bundle["bundle_dir"]
    server = ShoprankModelServer(enable_grpc=False)
    models = [ShoprankModel(NAME, bundle, "tflite", limits=Limits(max_candidates=MAX_CANDIDATES)),
              ShoprankModel(SAVEDMODEL_NAME, bundle, "savedmodel")]
    for m in models:
        assert m.load(), m.load_error
        server.register_model(m)
    ShoprankRESTServer(kserve_model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane,
                       server.model_repository_extension, 0).create_application()
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=kserve_model_server.app), base_url="http://test")
    yield {"loop": loop, "client": client, "models": {m.name: m for m in models}, "server": server}
    for m in models:
        loop.run_until_complete(m.close())
    loop.run_until_complete(client.aclose())
    loop.close()


def call(served, method: str, path: str, **kwargs) -> httpx.Response:
    return served["loop"].run_until_complete(served["client"].request(method, path, **kwargs))


def infer(served, body, model: str = NAME, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return call(served, "POST", f"/v2/models/{model}/infer", content=content,
                headers=headers or {"content-type": "application/json"})


def ranking_body(query, user_id, history, candidates, **extra) -> dict:
    inputs = [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [query]},
              {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user_id]},
              {"name": "candidates", "datatype": "BYTES", "shape": [len(candidates)], "data": candidates}]
    if history is not None:
        inputs.append({"name": "history", "datatype": "BYTES", "shape": [len(history)], "data": history})
    return {"inputs": inputs, **extra}


@pytest.fixture(scope="module")
def golden(tiny_bundle):
    features, optimized = tiny_bundle["features_dir"], tiny_bundle["optimized_dir"]
    requests = json.loads((features / "golden_requests.json").read_text())
    assert requests
    test = load_split(features, "test")
    return {"requests": requests, "tflite": np.load(optimized / "scores_int8_tflite.npy"),
            "savedmodel": np.load(optimized / "scores_optimized_savedmodel.npy"),
            "columns": {k: np.asarray(test.column(k)) for k in INPUTS}}


def outputs(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


# --- endpoints ----------------------------------------------------------------------------------------------
def test_health_metadata_and_metrics(served):
    assert call(served, "GET", "/v2/health/live").json() == {"live": True}
    assert call(served, "GET", "/v2/health/ready").json() == {"ready": True}
    assert call(served, "GET", f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    meta = call(served, "GET", "/v2").json()
    assert meta["name"] and meta["version"] and isinstance(meta["extensions"], list)
    model = call(served, "GET", f"/v2/models/{NAME}").json()
    inputs = {t["name"]: t for t in model["inputs"]}
    assert inputs["candidates"] == {"name": "candidates", "datatype": "BYTES", "shape": [-1]}
    assert inputs["query"]["datatype"] == "BYTES" and {"user_id", "history"} <= set(inputs)
    fc = served["models"][NAME].ranker.transform.config
    assert inputs["query_tokens"] == {"name": "query_tokens", "datatype": "INT32", "shape": [-1, fc.query_len]}
    assert inputs["item_id"]["shape"] == [-1] and set(INPUTS) <= set(inputs)
    assert {(o["name"], o["datatype"]) for o in model["outputs"]} == {("scores", "FP32"), ("ranking", "BYTES"),
                                                                     (SCORE, "FP32")}
    assert call(served, "GET", "/v2/models").json()["models"] == [NAME, SAVEDMODEL_NAME]
    assert call(served, "GET", "/v2/models/nope/ready").status_code == 404
    infer(served, ranking_body("", "u", [], ["x"]))
    metrics = call(served, "GET", "/metrics").text
    assert "request_predict_seconds" in metrics and "shoprank_batch_rows" in metrics


def test_library_constants_match():
    from shoprank.modeling.model import SCORE as LIBRARY_SCORE

    assert SCORE == LIBRARY_SCORE


# --- ranking requests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, backend", [(NAME, "tflite"), (SAVEDMODEL_NAME, "savedmodel")])
def test_ranking_requests_reproduce_the_evaluator_scores(served, golden, model, backend):
    for g in golden["requests"]:
        out = outputs(infer(served, ranking_body(g["query"], g["user_id"], g["history"], g["candidates"]), model))
        scores = np.asarray(out["scores"]["data"], np.float64)
        expected = golden[backend][g["test_rows"][0]: g["test_rows"][1]]
        assert out["scores"]["shape"] == [len(g["candidates"])]
        np.testing.assert_allclose(scores, expected, rtol=0, atol=TOL)
        ranking = out["ranking"]["data"]
        assert sorted(ranking) == sorted(g["candidates"])
        by_id = dict(zip(g["candidates"], scores))
        assert [by_id[c] for c in ranking] == sorted(scores, reverse=True)


def test_unknown_ids_are_reported_and_integer_ids_accepted(served, golden):
    g = golden["requests"][0]
    body = ranking_body(g["query"], g["user_id"], ["nope-1", *g["history"]], [*g["candidates"][:3], "nope-2"])
    res = infer(served, body)
    assert res.status_code == 200
    params = res.json()["parameters"]
    assert params["unknown_count"] == 1 and json.loads(params["unknown_items"]) == ["nope-2"]
    # The default policy (--unknown_candidates last): after every known candidate, scored 0.0.
    out = outputs(res)
    assert out["ranking"]["data"][-1] == "nope-2" and out["scores"]["data"][3] == 0.0
    assert min(out["scores"]["data"][:3]) > 0.0
    body["inputs"][2] = {"name": "candidates", "datatype": "INT64", "shape": [1, 3], "data": [[1, 2, 3]]}
    res = infer(served, body)
    assert res.status_code == 200 and json.loads(res.json()["parameters"]["unknown_items"]) == ["1", "2", "3"]
    empty_query = infer(served, ranking_body("", g["user_id"], None, g["candidates"]))
    assert len(outputs(empty_query)["scores"]["data"]) == len(g["candidates"])


def test_binary_tensor_extension_in_and_out(served, golden):
    g = golden["requests"][1]
    inputs = []
    for name, values in (("query", [g["query"]]), ("user_id", [g["user_id"]]), ("history", g["history"]),
                         ("candidates", g["candidates"])):
        i = InferInput(name, [len(values)], "BYTES")
        i.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        inputs.append(i)
    body, json_length = InferRequest(NAME, inputs, parameters={"binary_data_output": True}).to_rest()
    res = infer(served, body, headers={"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(json_length)})
    assert res.status_code == 200, res.text
    parsed = InferResponse.from_bytes(res.content, int(res.headers["inference-header-content-length"]))
    scores = parsed.get_output_by_name("scores").as_numpy()
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, golden["tflite"][g["test_rows"][0]: g["test_rows"][1]], atol=TOL)
    assert sorted(parsed.get_output_by_name("ranking").as_numpy().tolist()) == sorted(g["candidates"])
    # One output, binary only for it.
    res = infer(served, ranking_body(g["query"], g["user_id"], g["history"], g["candidates"],
                                     outputs=[{"name": "ranking", "parameters": {"binary_data": False}}]))
    assert list(outputs(res)) == ["ranking"]


# --- tensor requests ----------------------------------------------------------------------------------------
def tensor_body(columns: dict, lo: int, hi: int, binary: bool = False) -> tuple[bytes, dict]:
    inputs = []
    for name in INPUTS:
        arr = np.ascontiguousarray(columns[name][lo:hi], dtype=np.int32)
        i = InferInput(name, list(arr.shape), "INT32")
        i.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(i)
    body, json_length = InferRequest(NAME, inputs).to_rest()
    if json_length is None:
        return orjson.dumps(body), {"content-type": "application/json"}
    return body, {"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)}


@pytest.mark.parametrize("binary", [False, True])
def test_tensor_requests_score_model_tensors(served, golden, binary):
    g = golden["requests"][2]
    lo, hi = g["test_rows"]
    body, headers = tensor_body(golden["columns"], lo, hi, binary)
    out = outputs(infer(served, body, headers=headers))
    assert list(out) == [SCORE]
    np.testing.assert_allclose(out[SCORE]["data"], golden["tflite"][lo:hi], atol=TOL)


# --- micro-batching -----------------------------------------------------------------------------------------
def test_concurrent_requests_share_model_calls(served, golden):
    model = served["models"][NAME]
    infer(served, _good(served))
    before_batches, before_requests = model._batcher.batches, model._batcher.requests
    gs = golden["requests"]

    async def burst():
        bodies = [ranking_body(g["query"], g["user_id"], g["history"], g["candidates"]) for g in gs] * 6
        return await asyncio.gather(*[served["client"].post(f"/v2/models/{NAME}/infer", content=orjson.dumps(b))
                                      for b in bodies])

    responses = served["loop"].run_until_complete(burst())
    assert all(r.status_code == 200 for r in responses)
    for r, g in zip(responses, gs * 6):
        np.testing.assert_allclose(outputs(r)["scores"]["data"],
                                   golden["tflite"][g["test_rows"][0]: g["test_rows"][1]], atol=TOL)
    batches = model._batcher.batches - before_batches
    assert model._batcher.requests - before_requests == len(responses)
    assert batches < len(responses)  # batched: fewer model calls than requests


# --- bad input ----------------------------------------------------------------------------------------------
def _good(served) -> dict:
    return ranking_body("red shoe", "u1", ["i1"], ["i1", "i2"])


def _with_input(served, **replace) -> dict:
    body = _good(served)
    body["inputs"] = [replace.get(i["name"], i) for i in body["inputs"] if replace.get(i["name"], i) is not None]
    return body


BAD = {
    "malformed JSON": (b'{"inputs": [', {}, "malformed JSON"),
    "not an object": (b"[1, 2, 3]", {}, "JSON object"),
    "no inputs": (b'{"id": "x"}', {}, "inputs"),
    "unknown input": ({"extra": True}, {}, "unknown input"),
    "missing candidates": ({"candidates": None}, {}, "missing input"),
    "missing query": ({"query": None}, {}, "missing input"),
    "float candidates": ({"candidates": {"name": "candidates", "datatype": "FP32", "shape": [2],
                                         "data": [1.0, 2.0]}}, {}, "must be BYTES"),
    "strings where ids are INT": ({"candidates": {"name": "candidates", "datatype": "INT64", "shape": [2],
                                                  "data": ["i1", "i2"]}}, {}, "non-integer"),
    "numbers in BYTES": ({"user_id": {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [7]}}, {},
                         "send strings"),
    "shape mismatch": ({"candidates": {"name": "candidates", "datatype": "BYTES", "shape": [3],
                                       "data": ["a", "b"]}}, {}, "needs 3 elements"),
    "batched ranking shape": ({"candidates": {"name": "candidates", "datatype": "BYTES", "shape": [2, 1],
                                              "data": ["a", "b"]}}, {}, "one ranking request per call"),
    "empty candidates": ({"candidates": {"name": "candidates", "datatype": "BYTES", "shape": [0], "data": []}}, {},
                         "is empty"),
    "too many candidates": ({"candidates": {"name": "candidates", "datatype": "BYTES", "shape": [MAX_CANDIDATES + 1],
                                            "data": ["i1"] * (MAX_CANDIDATES + 1)}}, {}, "limit is 200"),
    "unknown datatype": ({"query": {"name": "query", "datatype": "STRING", "shape": [1], "data": ["q"]}}, {},
                         "unknown datatype"),
    "unknown output": ({"outputs": [{"name": "nope"}]}, {}, "unknown output"),
    "bad header": (None, {"inference-header-content-length": "ten"}, "must be an integer"),
    "header past body": (None, {"inference-header-content-length": "99999"}, "the body has"),
}


def _bad_body(served, spec) -> bytes:
    if spec is None:
        return orjson.dumps(_good(served))
    if isinstance(spec, bytes):
        return spec
    body = _good(served)
    if "extra" in spec:
        body["inputs"].append({"name": "extra", "datatype": "BYTES", "shape": [1], "data": ["x"]})
    elif "outputs" in spec:
        body["outputs"] = spec["outputs"]
    else:
        return orjson.dumps(_with_input(served, **spec))
    return orjson.dumps(body)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_and_the_next_request_is_served(served, case):
    spec, headers, message = BAD[case]
    res = infer(served, _bad_body(served, spec), headers={"content-type": "application/json", **headers})
    assert res.status_code == 400, (case, res.status_code, res.text)
    assert message in res.json()["error"], res.json()
    assert infer(served, _good(served)).status_code == 200


def test_bad_binary_bodies_and_tensor_requests(served, golden):
    head = orjson.dumps({"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["q"]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u"]},
        {"name": "candidates", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 12}}]})
    raw = join_bytes_tensor(["ab", "cd"])
    binary = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}
    assert infer(served, head + raw, headers=binary).status_code == 200
    cases = [
        (head + raw[:-3], binary, "truncated binary body"),
        (head + raw, {"content-type": "application/octet-stream"}, "malformed JSON"),
        (head + join_bytes_tensor(["", "", ""]), binary, "the binary data holds 3"),
        (head + raw[:4] + b"\x00" * 8, binary, "truncated"),
    ]
    body, headers = tensor_body(golden["columns"], 0, 4)
    obj = orjson.loads(body)
    for i in obj["inputs"]:
        if i["name"] == "item_id":
            i["data"] = [-5, 1, 2, 3]
    cases.append((orjson.dumps(obj), headers, "values must be in"))
    for i in obj["inputs"]:
        if i["name"] == "item_id":
            i.update(datatype="BYTES", data=["i1", "i2", "i3", "i4"])
    cases.append((orjson.dumps(obj), headers, "must be INT32"))
    obj["inputs"] = [i for i in obj["inputs"] if i["name"] != "item_id"]
    cases.append((orjson.dumps(obj), headers, "missing model tensor"))
    bin_body, bin_headers = tensor_body(golden["columns"], 0, 4, binary=True)
    cases.append((bin_body[:-2], bin_headers, "truncated binary body"))
    for content, hdrs, message in cases:
        res = infer(served, content, headers=hdrs)
        assert res.status_code == 400, (message, res.text)
        assert message in res.json()["error"]
        assert infer(served, _good(served)).status_code == 200


def test_other_routes_answer_4xx_not_5xx(served):
    assert infer(served, _good(served), model="nope").status_code == 404
    # KServe's own v1 route and the FastAPI validation of the stock v2 route: a 400, not FastAPI's 422.
    version = served["models"][NAME].version
    res = call(served, "POST", f"/v2/models/{NAME}/versions/{version}/infer", content=b"{oops",
               headers={"content-type": "application/json"})
    assert res.status_code == 400 and "error" in res.json()
    v1 = call(served, "POST", f"/v1/models/{NAME}:predict", json={"instances": [[1, 2]]})
    assert v1.status_code == 400 and "v2" in v1.json()["error"]


# --- loading ------------------------------------------------------------------------------------------------
def test_a_model_that_fails_to_load_is_not_ready_and_says_why(tmp_path, tiny_bundle):
    broken = ShoprankModel("broken", tmp_path)
    assert broken.load() is False and not broken.ready
    assert "neither towers/ nor saved_model/" in broken.load_error
    (tmp_path / "towers").mkdir()
    (tmp_path / "towers" / "request_tower.tflite").write_bytes(b"not a model")
    assert ShoprankModel("broken", tmp_path).load() is False
    assert detect_backend(tiny_bundle["bundle_dir"]) == "tflite"
    broken.start()  # kserve.Model.start() would flip this to ready
    assert not broken.ready


def test_models_pickle_without_native_handles_and_reload(served):
    import pickle

    model = served["models"][NAME]
    clone = pickle.loads(pickle.dumps(model))
    assert clone.needs_load and clone.ranker is None and clone.limits == model.limits
    assert clone.load() and clone.ready


# --- the bundle's version -----------------------------------------------------------------------------------
def test_the_bundle_version_is_in_the_metadata_and_every_infer_response(served, golden, tiny_bundle):
    from shoprank.release.kserve.smoke import served_versions

    version = json.loads((tiny_bundle["bundle_dir"] / "manifest.json").read_text())["version"]
    assert re.fullmatch(r"v[0-9a-f]{12}", version)
    meta = call(served, "GET", f"/v2/models/{NAME}").json()
    assert meta["versions"] == [version] and served_versions(meta) == [version]
    g = golden["requests"][0]
    body = ranking_body(g["query"], g["user_id"], g["history"], g["candidates"])
    # The lean route, JSON and binary outputs.
    assert infer(served, body).json()["model_version"] == version
    res = infer(served, {**body, "parameters": {"binary_data_output": True}})
    head = orjson.loads(res.content[: int(res.headers["inference-header-content-length"])])
    assert head["model_version"] == version
    tensors, headers = tensor_body(golden["columns"], 0, 3, binary=False)
    assert infer(served, tensors, headers=headers).json()["model_version"] == version
    # KServe's own route: the app below the lean middleware (the rest of the middleware stack and the router).
    inner = kserve_model_server.app.middleware_stack
    while not isinstance(inner, FastInferMiddleware):
        inner = inner.app
    inner = inner.app

    async def stock():
        transport = httpx.ASGITransport(app=inner)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(f"/v2/models/{NAME}/infer", content=orjson.dumps(body),
                                     headers={"content-type": "application/json"})
    res = served["loop"].run_until_complete(stock())
    assert res.status_code == 200, res.text
    assert res.json()["model_version"] == version
    np.testing.assert_allclose(res.json()["outputs"][0]["data"], outputs(infer(served, body))["scores"]["data"])
    assert served["models"][NAME].version == version
    assert served_versions({"versions": [version, "1", None]}) == [version]


def test_a_bundle_without_a_manifest_reports_no_version(tmp_path, tiny_bundle, golden):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle_dir"], copy)
    (copy / "manifest.json").unlink()
    model = ShoprankModel("no-manifest", copy, "tflite")
    assert model.load(), model.load_error
    assert model.version == ""
    g = golden["requests"][0]
    inputs = []
    for name, values in (("query", [g["query"]]), ("user_id", [g["user_id"]]), ("candidates", g["candidates"])):
        inputs.append(InferInput(name, [len(values)], "BYTES", data=values))
    loop = asyncio.new_event_loop()
    try:
        response = loop.run_until_complete(model.predict(InferRequest("no-manifest", inputs, request_id="x")))
        loop.run_until_complete(model.close())
    finally:
        loop.close()
    assert isinstance(response, InferResponse) and response.model_version is None
    assert "model_version" not in orjson.loads(encode_response(response)[0])


# --- versioned routes, limits, overload ---------------------------------------------------------------------
def test_the_versioned_routes_serve_the_bundles_version_and_404_any_other(served, golden):
    version = served["models"][NAME].version
    assert version
    base, versioned = f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/{version}"
    assert call(served, "GET", versioned).json() == call(served, "GET", base).json()
    assert call(served, "GET", versioned + "/ready").json() == {"name": NAME, "ready": True}
    g = golden["requests"][0]
    body = ranking_body(g["query"], g["user_id"], g["history"], g["candidates"])
    res = call(served, "POST", versioned + "/infer", content=orjson.dumps(body),
               headers={"content-type": "application/json"})
    assert res.json()["model_version"] == version
    np.testing.assert_allclose(outputs(res)["scores"]["data"], golden["tflite"][g["test_rows"][0]: g["test_rows"][1]],
                               atol=TOL)
    for suffix, method in (("", "GET"), ("/ready", "GET"), ("/infer", "POST")):
        res = call(served, method, f"{base}/versions/v000000000000{suffix}", content=orjson.dumps(body))
        assert res.status_code == 404 and f"serves version '{version}'" in res.json()["error"], suffix
    res = call(served, "GET", f"/v2/models/nope/versions/{version}")
    assert res.status_code == 404  # KServe's own unknown-model answer
    # A model without a bundle version (no manifest) has no versioned routes.
    res = call(served, "GET", f"/v2/models/{SAVEDMODEL_NAME}/versions/1")
    assert res.status_code == (200 if served["models"][SAVEDMODEL_NAME].version == "1" else 404)


def test_the_body_limit_holds_on_every_route_and_the_connection_stays_usable(served):
    from serving.options import DEFAULT_MAX_BODY_BYTES

    version = served["models"][NAME].version
    big = b'{"inputs": [' + b" " * DEFAULT_MAX_BODY_BYTES + b"]}"
    routes = [f"/v2/models/{NAME}/infer", f"/v2/models/{NAME}/versions/{version}/infer",
              f"/v1/models/{NAME}:predict", f"/v2/repository/models/{NAME}/load", "/v2/anything"]

    async def chunked():  # no Content-Length: counted as it is read
        for i in range(0, len(big), 64 << 10):
            yield big[i: i + (64 << 10)]

    for route in routes:
        res = call(served, "POST", route, content=big, headers={"content-type": "application/json"})
        assert res.status_code == 413 and "exceeds the limit of 1048576 bytes" in res.json()["error"], route
    for route in routes[:3]:
        res = call(served, "POST", route, content=chunked(), headers={"content-type": "application/json"})
        assert res.status_code == 413 and "--max_body_bytes" in res.json()["error"], route
    assert outputs(infer(served, _good(served)))["scores"]  # and the next request is served


def test_overload_is_a_503_with_retry_after_and_the_queue_never_grows_past_its_bound(served, tiny_bundle):
    name = "shoprank-small-queue"
    model = ShoprankModel(name, tiny_bundle["bundle_dir"], "tflite", batch=BatchSettings(max_queue_rows=20))
    assert model.load(), model.load_error
    served["server"].register_model(model)
    body = orjson.dumps(ranking_body("red shoe", "u1", [], [f"x{i}" for i in range(10)]))

    async def burst(n: int) -> list[httpx.Response]:
        client = served["client"]
        return await asyncio.gather(*(client.post(f"/v2/models/{name}/infer", content=body,
                                                  headers={"content-type": "application/json"}) for _ in range(n)))

    try:
        responses = served["loop"].run_until_complete(burst(8))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503, 503, 503, 503, 503, 503], codes  # 2 x 10 rows queued, then refused
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["error"]
        assert model._batcher.queued_rows_peak <= 20 and model._batcher.refused == 6
        assert infer(served, orjson.loads(body), model=name).status_code == 200  # served again once drained
        metrics = call(served, "GET", "/metrics").text
        assert re.search(rf'shoprank_refused_requests_total{{model_name="{name}"}} 6\.0', metrics), metrics[-2000:]
    finally:
        served["loop"].run_until_complete(model.close())


def test_the_transformer_fails_a_batch_once_when_the_predictor_drops_connections(tiny_bundle):
    """A real TCP predictor that accepts and closes every connection: the batch of 4 concurrent requests costs
    one predictor call, not 1 + 4 (the one-by-one retry is for failures that can be one request's fault), and
    the clients get 503 with Retry-After."""
    import socket
    import threading

    from kserve.predictor_config import PredictorConfig

    from serving.errors import PredictorUnavailable
    from serving.transformer import ShoprankTransformer

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    transformer = ShoprankTransformer("t", tiny_bundle["bundle_dir"], PredictorConfig(host, "v2"),
                                      predictor_model_name=NAME)
    assert transformer.load(), transformer.load_error
    request = lambda: InferRequest("t", [InferInput("query", [1], "BYTES", data=["q"]),  # noqa: E731
                                         InferInput("user_id", [1], "BYTES", data=["u"]),
                                         InferInput("candidates", [2], "BYTES", data=["a", "b"])])

    async def go():
        first = asyncio.ensure_future(transformer.predict(request()))
        await asyncio.sleep(0)
        results = await asyncio.gather(first, *(transformer.predict(request()) for _ in range(3)),
                                       return_exceptions=True)
        await transformer.close()
        return results

    loop = asyncio.new_event_loop()
    try:
        results = loop.run_until_complete(go())
    finally:
        loop.close()
        listener.close()
    assert all(isinstance(r, PredictorUnavailable) for r in results), results
    assert "did not answer" in str(results[0]) and results[0].http_status == 503
    assert 1 <= len(accepted) <= 2, len(accepted)  # one call per batch (the first request may run alone)
