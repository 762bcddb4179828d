"""The real server as a process on free loopback ports, called with real clients: kserve.InferenceRESTClient
(v2), kserve.InferenceGRPCClient and tritonclient.http. Scores equal the evaluator's for the golden rows; every
bad input gets its 4xx while the server keeps serving; two workers, with /metrics adding them up; the
transformer in front of the server as its predictor (REST and gRPC); a bundle that fails to load; SIGTERM with
requests in flight; SIGTERM under 8 keep-alive clients (none of the requests sent before it fails) and SIGKILL
of one worker (only its requests in flight fail, and it is replaced)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from serving.codec import SCORE
from serving.transformer import ShoprankTransformer
from shoprank.features.dataset import load_split
from shoprank.features.transform import INPUTS

ROOT = Path(__file__).resolve().parents[2]
NAME = "shoprank-ranker"
TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorflow_blocker(directory: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes TensorFlow (and tf_keras) unimportable: importing either raises
    ImportError and leaves a marker file, so a caller that catches the error is still found out."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tensorflow", "tf_keras"):
        (directory / f"{name}.py").write_text(
            "import os, pathlib\n"
            f"pathlib.Path(os.environ['SHOPRANK_TF_MARKER']).write_text('{name} imported by pid ' + str(os.getpid()))\n"
            f"raise ImportError('{name} is made unimportable by tests/serving/test_process.py')\n")
    return directory


class Server:
    def __init__(self, log: Path, *args: str, module: str = "serving", without_tensorflow: Path | None = None):
        """`without_tensorflow`: a tensorflow_blocker directory; the process then runs with TensorFlow
        unimportable and `tensorflow_marker` tells whether anything tried to import it."""
        self.http, self.grpc = free_port(), free_port()
        self.log = log
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.tensorflow_marker = log.with_suffix(".tensorflow-imported")
        if without_tensorflow is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(without_tensorflow), env.get("PYTHONPATH")]))
            env["SHOPRANK_TF_MARKER"] = str(self.tensorflow_marker)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--model_name", NAME, "--http_port", str(self.http),
             "--grpc_port", str(self.grpc), *args],
            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def wait(self, path: str = "/v2/health/ready", timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{path} not 200 after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.poll()


@pytest.fixture(scope="module")
def servers(tiny_bundle, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serving-logs")
    bundle = str(tiny_bundle["bundle_dir"])
    # The int8 and ONNX servers run with TensorFlow unimportable: the CPU serving path must never load it
    # (test_the_cpu_servers_never_import_tensorflow). Started together, waited for together.
    no_tf = tensorflow_blocker(logs / "no-tensorflow")
    one = Server(logs / "one.log", "--model_dir", bundle, "--max_candidates", "200", without_tensorflow=no_tf)
    two = Server(logs / "two.log", "--model_dir", bundle, "--workers", "2", "--max_batch_wait_ms", "1500",
                 "--enable_grpc", "false", without_tensorflow=no_tf)
    broken = Server(logs / "broken.log", "--model_dir", str(logs / "no-such-bundle"), "--enable_grpc", "false")
    # The ONNX export (the file Triton serves from the bundle's triton/ repository) on onnxruntime: the v2
    # predictor the transformer is tested against in place of Triton, which cannot run here.
    onnx = Server(logs / "onnx.log", "--model_dir", bundle, "--backend", "onnx", "--enable_grpc", "false",
                  without_tensorflow=no_tf)
    all_ = {"one": one, "two": two, "broken": broken, "onnx": onnx}
    try:
        one.wait()
        two.wait()
        onnx.wait()
        broken.wait("/v2/health/live")
        yield {**all_, "bundle": bundle}
    finally:
        for s in all_.values():
            s.stop()


@pytest.fixture(scope="module")
def golden(tiny_bundle):
    features, optimized = tiny_bundle["features_dir"], tiny_bundle["optimized_dir"]
    test = load_split(features, "test")
    return {"requests": json.loads((features / "golden_requests.json").read_text()),
            "scores": np.load(optimized / "scores_int8_tflite.npy"),
            "columns": {k: np.asarray(test.column(k)) for k in INPUTS}}


def ranking_request(g: dict, binary: bool = False) -> InferRequest:
    inputs = []
    for name, values in (("query", [g["query"]]), ("user_id", [g["user_id"]]), ("history", g["history"]),
                         ("candidates", g["candidates"])):
        i = InferInput(name, [len(values)], "BYTES")
        i.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
        inputs.append(i)
    return InferRequest(NAME, inputs, request_id="golden")


def expected(golden: dict, g: dict) -> np.ndarray:
    return golden["scores"][g["test_rows"][0]: g["test_rows"][1]]


def bundle_version(servers) -> str:
    return json.loads((Path(servers["bundle"]) / "manifest.json").read_text())["version"]


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_kserve_rest_client_v2(servers, golden):
    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        out = []
        for binary in (False, True):
            for g in golden["requests"]:
                out.append((g, await client.infer(servers["one"].url, ranking_request(g, binary), model_name=NAME)))
        return out

    for g, res in run(go()):
        scores = res.get_output_by_name("scores").as_numpy()
        np.testing.assert_allclose(scores, expected(golden, g), atol=TOL)
        ranking = [r.decode() if isinstance(r, bytes) else r for r in res.get_output_by_name("ranking").as_numpy()]
        assert sorted(ranking) == sorted(g["candidates"]) and res.parameters["unknown_count"] == 0


def test_kserve_grpc_client(servers, golden):
    async def go():
        client = InferenceGRPCClient(f"127.0.0.1:{servers['one'].grpc}", retries=0)
        try:
            assert await client.is_server_ready() and await client.is_model_ready(NAME)
            results = [(g, await client.infer(ranking_request(g))) for g in golden["requests"]]
            bad = ranking_request(golden["requests"][0])
            bad.inputs = [i for i in bad.inputs if i.name != "candidates"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.infer(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing" in err.value.details()
            results.append((golden["requests"][0], await client.infer(ranking_request(golden["requests"][0]))))
            return results
        finally:
            await client.close()

    version = bundle_version(servers)
    for g, res in run(go()):
        np.testing.assert_allclose(res.get_output_by_name("scores").as_numpy(), expected(golden, g), atol=TOL)
        assert res.model_version == version


def test_the_cpu_servers_never_import_tensorflow(servers, golden):
    """The int8 server (one and two workers) and the ONNX server answered every other test in this module with
    TensorFlow unimportable; here: a ranking request each, then no process left the import marker."""
    for name in ("one", "two", "onnx"):
        g = golden["requests"][0]
        body = {"inputs": [{"name": k, "datatype": "BYTES", "shape": [len(v)], "data": v} for k, v in (
            ("query", [g["query"]]), ("user_id", [g["user_id"]]), ("history", g["history"]),
            ("candidates", g["candidates"]))]}
        r = httpx.post(f"{servers[name].url}/v2/models/{NAME}/infer", json=body, timeout=30)
        assert r.status_code == 200, (name, r.text)
        scores = np.array(next(o for o in r.json()["outputs"] if o["name"] == "scores")["data"])
        if name != "onnx":  # the ONNX export scores like the SavedModel, not like the int8 model
            np.testing.assert_allclose(scores, expected(golden, g), atol=TOL)
        marker = servers[name].tensorflow_marker
        assert not marker.exists(), f"{name}: {marker.read_text()}"


def test_grpc_model_metadata_lists_the_bundle_version(servers):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    async def go():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['one'].grpc}") as channel:
            return await GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=NAME))

    meta = run(go())
    assert meta.name == NAME and list(meta.versions) == [bundle_version(servers)]
    assert {t.name for t in meta.inputs} >= {"query", "user_id", "history", "candidates", *INPUTS}


def test_tritonclient_http(servers, golden):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{servers['one'].http}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert {i["name"] for i in meta["inputs"]} >= {"query", "user_id", "history", "candidates", *INPUTS}
    for binary in (False, True):
        for g in golden["requests"]:
            inputs = []
            for name, values in (("query", [g["query"]]), ("user_id", [g["user_id"]]), ("history", g["history"]),
                                 ("candidates", g["candidates"])):
                i = triton.InferInput(name, [len(values)], "BYTES")
                i.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
                inputs.append(i)
            outputs = [triton.InferRequestedOutput("scores", binary_data=binary),
                       triton.InferRequestedOutput("ranking", binary_data=binary)]
            res = client.infer(NAME, inputs, outputs=outputs,
                               headers=None if binary else {"Content-Type": "application/json"})
            np.testing.assert_allclose(res.as_numpy("scores"), expected(golden, g), atol=TOL)
            assert sorted(v.decode() if isinstance(v, bytes) else v
                          for v in res.as_numpy("ranking")) == sorted(g["candidates"])
    # A tensor request (what a transformer sends), binary in and out.
    g = golden["requests"][1]
    lo, hi = g["test_rows"]
    inputs = []
    for name in INPUTS:
        arr = np.ascontiguousarray(golden["columns"][name][lo:hi], dtype=np.int32)
        i = triton.InferInput(name, list(arr.shape), "INT32")
        i.set_data_from_numpy(arr, binary_data=True)
        inputs.append(i)
    res = client.infer(NAME, inputs, outputs=[triton.InferRequestedOutput(SCORE, binary_data=True)])
    np.testing.assert_allclose(res.as_numpy(SCORE), golden["scores"][lo:hi], atol=TOL)
    client.close()


def test_every_bad_input_gets_a_4xx_and_the_server_keeps_serving(servers, golden):
    g = golden["requests"][0]
    good = {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [g["query"]]},
                       {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [g["user_id"]]},
                       {"name": "history", "datatype": "BYTES", "shape": [len(g["history"])], "data": g["history"]},
                       {"name": "candidates", "datatype": "BYTES", "shape": [len(g["candidates"])],
                        "data": g["candidates"]}]}

    def variant(**inputs) -> bytes:
        body = json.loads(json.dumps(good))
        body["inputs"] = [inputs.get(i["name"], i) for i in body["inputs"] if inputs.get(i["name"], i) is not None]
        return orjson.dumps(body)

    head = orjson.dumps({"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["q"]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u"]},
        {"name": "candidates", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]})
    binary = {"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"}
    tensors = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, *golden["columns"][n].shape[1:]],
                           "data": np.asarray(golden["columns"][n][:1]).reshape(-1).tolist()} for n in INPUTS]}
    strings_for_ids = json.loads(json.dumps(tensors))
    strings_for_ids["inputs"][5] = {"name": "item_id", "datatype": "INT32", "shape": [1], "data": ["i0000001"]}
    cases = {
        "malformed JSON": (b'{"inputs": [{"name": "query",', {}),
        "wrong name": (variant(user_id={"name": "user", "datatype": "BYTES", "shape": [1], "data": ["u"]}), {}),
        "wrong dtype": (variant(candidates={"name": "candidates", "datatype": "FP32", "shape": [1], "data": [1.0]}),
                        {}),
        "wrong shape": (variant(candidates={"name": "candidates", "datatype": "BYTES", "shape": [5],
                                            "data": ["a"]}), {}),
        "missing input": (variant(candidates=None), {}),
        "empty candidates": (variant(candidates={"name": "candidates", "datatype": "BYTES", "shape": [0],
                                                 "data": []}), {}),
        "oversized candidates": (variant(candidates={"name": "candidates", "datatype": "BYTES", "shape": [201],
                                                     "data": ["i0000001"] * 201}), {}),
        "strings where ids are expected": (orjson.dumps(strings_for_ids), {}),
        "truncated binary body": (head + b"\x04\x00\x00\x00ab", binary),
        "binary without header": (head + b"\x04\x00\x00\x00abcd", {"content-type": "application/octet-stream"}),
    }
    with httpx.Client(base_url=servers["one"].url, timeout=10) as client:  # one keep-alive connection
        url = f"/v2/models/{NAME}/infer"
        for case, (content, headers) in cases.items():
            res = client.post(url, content=content, headers={"content-type": "application/json", **headers})
            assert 400 <= res.status_code < 500, (case, res.status_code, res.text)
            assert res.json()["error"], case
            ok = client.post(url, content=orjson.dumps(good), headers={"content-type": "application/json"})
            assert ok.status_code == 200, (case, ok.text)
            np.testing.assert_allclose(ok.json()["outputs"][0]["data"], expected(golden, g), atol=TOL)
        assert client.post(url, content=head + b"\x04\x00\x00\x00abcd", headers=binary).status_code == 200
    assert servers["one"].proc.poll() is None


def test_two_workers_serve_and_batch(servers, golden):
    two = servers["two"]
    results: list = []

    def worker(g):
        with httpx.Client(base_url=two.url, timeout=30) as client:  # separate connections: both workers
            body = {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [g["query"]]},
                               {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [g["user_id"]]},
                               {"name": "history", "datatype": "BYTES", "shape": [len(g["history"])],
                                "data": g["history"]},
                               {"name": "candidates", "datatype": "BYTES", "shape": [len(g["candidates"])],
                                "data": g["candidates"]}]}
            results.append((g, client.post(f"/v2/models/{NAME}/infer", json=body)))

    threads = [threading.Thread(target=worker, args=(g,)) for g in golden["requests"] * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(threads)
    version = bundle_version(servers)
    for g, res in results:
        assert res.status_code == 200, res.text
        np.testing.assert_allclose(res.json()["outputs"][0]["data"], expected(golden, g), atol=TOL)
        assert res.json()["model_version"] == version
    for _ in range(4):  # every worker loaded the bundle itself: each reports its version
        meta = httpx.get(f"{two.url}/v2/models/{NAME}", headers={"connection": "close"}).json()
        assert meta["versions"] == [version]
    # /metrics adds up every process (serving.metrics), whichever worker answers the scrape: the same totals on
    # fresh connections (which reach both workers: one socket each), one model_info per process, and the
    # per-worker request gauge shows that both workers served.
    scrapes = [httpx.get(two.url + "/metrics", headers={"connection": "close"}).text for _ in range(8)]
    totals = {re.search(rf'shoprank_batch_requests_sum{{model_name="{NAME}"}} ([0-9.e+]+)', t).group(1)
              for t in scrapes}
    served_by = {pid: float(n) for pid, n in re.findall(
        rf'shoprank_worker_requests{{model_name="{NAME}",pid="(\d+)"}} ([0-9.e+]+)', scrapes[-1])}
    info_pids = set(re.findall(r'shoprank_model_info{[^}]*pid="(\d+)"', scrapes[-1]))
    assert len(totals) == 1 and float(totals.pop()) >= len(threads), scrapes[-1][-3000:]
    assert len(served_by) == 2 and all(n > 0 for n in served_by.values()), served_by
    assert set(served_by) < info_pids and len(info_pids) == 3  # two workers and the parent (gRPC)


@pytest.mark.parametrize("predictor, protocol", [("one", "v2"), ("one", "grpc-v2"), ("onnx", "v2")])
def test_transformer_scores_through_a_v2_predictor(servers, golden, tiny_bundle, predictor, protocol):
    """The transformer's ranking and tensor requests through a v2 predictor serving the int8 model (REST,
    gRPC) or the ONNX export; scores equal the evaluator's for that artefact."""
    one = servers[predictor]
    host = f"127.0.0.1:{one.http if protocol == 'v2' else one.grpc}"
    if predictor == "onnx":
        golden = {**golden, "scores": np.load(tiny_bundle["optimized_dir"] / "scores_onnx.npy")}
    transformer = ShoprankTransformer("shoprank-transformer", tiny_bundle["bundle_dir"],
                                      PredictorConfig(host, protocol), predictor_model_name=NAME)
    assert transformer.load(), transformer.load_error

    async def go():
        out = [(g, await transformer.predict(ranking_request(g))) for g in golden["requests"]]
        g = golden["requests"][0]
        lo, hi = g["test_rows"]
        tensors = []
        for name in INPUTS:
            i = InferInput(name, list(golden["columns"][name][lo:hi].shape), "INT32")
            i.set_data_from_numpy(np.ascontiguousarray(golden["columns"][name][lo:hi], np.int32), binary_data=False)
            tensors.append(i)
        req = InferRequest("shoprank-transformer", tensors, request_outputs=[RequestedOutput(SCORE)])
        tensor_res = await transformer.predict(req)
        await transformer.close()
        return out, tensor_res, golden["scores"][lo:hi]

    results, tensor_res, tensor_expected = run(go())
    for g, res in results:
        np.testing.assert_allclose(res.get_output_by_name("scores").as_numpy(), expected(golden, g), atol=TOL)
    np.testing.assert_allclose(tensor_res.get_output_by_name(SCORE).as_numpy(), tensor_expected, atol=TOL)


def test_a_bundle_that_fails_to_load_is_not_ready_and_does_not_crash(servers):
    broken = servers["broken"]
    assert httpx.get(broken.url + "/v2/health/live").status_code == 200
    assert httpx.get(broken.url + "/v2/health/ready").status_code == 503
    assert httpx.get(broken.url + f"/v2/models/{NAME}/ready").status_code == 503
    res = httpx.post(broken.url + f"/v2/models/{NAME}/infer", json={"inputs": []})
    assert res.status_code == 503
    time.sleep(0.5)
    assert broken.proc.poll() is None
    log = broken.log.read_text()
    assert "failed to load" in log and "no-such-bundle" in log


def test_sigterm_finishes_requests_in_flight_and_exits_cleanly(servers, golden):
    two = servers["two"]  # --max_batch_wait_ms 1500: requests are still in the batcher when SIGTERM arrives
    g = golden["requests"][0]
    body = {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [g["query"]]},
                       {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [g["user_id"]]},
                       {"name": "candidates", "datatype": "BYTES", "shape": [len(g["candidates"])],
                        "data": g["candidates"]}]}
    statuses: list = []

    def call():
        try:
            statuses.append(httpx.post(two.url + f"/v2/models/{NAME}/infer", json=body, timeout=30).status_code)
        except httpx.HTTPError as e:
            statuses.append(repr(e))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    two.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert statuses == [200] * 4
    assert two.proc.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 15
    for name in ("one", "broken"):
        assert servers[name].stop() == 0, servers[name].log.read_text()[-2000:]


class KeepAliveClient(threading.Thread):
    """A client on one keep-alive connection (http.client: no retries, unlike httpx and Go's client, so a reset
    is seen as one), sending ranking requests back to back and recording (sent at, outcome, when its connection
    was opened) for each; it reconnects after a `Connection: close` answer or an error."""

    def __init__(self, url: str, body: bytes, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port = url.removeprefix("http://").split(":")
        self.body, self.stop, self.records = body, stop, []

    def run(self) -> None:
        import http.client

        conn = None
        opened = 0.0
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
                opened = time.monotonic()  # connects on the first request, just after this
            sent = time.monotonic()
            try:
                conn.request("POST", f"/v2/models/{NAME}/infer", body=self.body,
                             headers={"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                self.records.append((sent, response.status, opened))
                if response.getheader("connection") == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.records.append((sent, type(e).__name__, opened))
                conn.close()
                conn = None
                time.sleep(0.02)


def dead(pid: int) -> bool:
    """The process is gone or a zombie (its file descriptors, sockets included, are closed)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def worker_pids(parent: int) -> list[int]:
    """The server's spawned workers (not multiprocessing's resource tracker)."""
    pids = []
    for p in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        try:
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                pids.append(int(p))
        except OSError:  # exited meanwhile
            pass
    return pids


def test_sigkill_loses_a_workers_requests_in_flight_only_and_sigterm_loses_none(tiny_bundle, golden, tmp_path):
    """SIGKILL of one of 2 workers under 8 keep-alive clients: only requests addressed to that worker fail (in
    flight on it, or sent to it before the kernel had closed its sockets), and the worker is replaced. Then
    SIGTERM: not a single request sent before the signal fails, none sent during the drain either (each answer
    says Connection: close); only connections attempted after the listening sockets closed are refused; the
    server exits 0 within its grace period. Not tested here: a pod's real endpoint removal (no cluster)."""
    grace, drain = 20, 2.0
    # --max_queue_ms 0: this test is about connections; on a loaded machine the queue's time bound could refuse
    # some of 8 clients' requests with 503 (test_serving.py tests that refusal).
    server = Server(tmp_path / "graceful.log", "--model_dir", str(tiny_bundle["bundle_dir"]), "--workers", "2",
                    "--enable_grpc", "false", "--grace_period", str(grace), "--drain_seconds", str(drain),
                    "--max_queue_ms", "0")
    try:
        server.wait()
        g = golden["requests"][0]
        body = orjson.dumps({"inputs": [
            {"name": "query", "datatype": "BYTES", "shape": [1], "data": [g["query"]]},
            {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [g["user_id"]]},
            {"name": "candidates", "datatype": "BYTES", "shape": [len(g["candidates"])], "data": g["candidates"]}]})
        # Each worker opens its socket once loaded: wait until both have served (ready means one has).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=body, timeout=30,
                       headers={"content-type": "application/json", "connection": "close"})
            metrics = httpx.get(server.url + "/metrics", headers={"connection": "close"}).text
            if len(re.findall(r"shoprank_worker_requests{[^}]*pid=", metrics)) == 2:
                break
        else:
            raise AssertionError(f"the second worker never served:\n{server.log.read_text()[-3000:]}")
        stop = threading.Event()
        clients = [KeepAliveClient(server.url, body, stop) for _ in range(8)]
        for c in clients:
            c.start()
        time.sleep(2)
        workers = worker_pids(server.proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() < killed_at + 30 and not dead(workers[0]):
            time.sleep(0.005)
        dead_at = time.monotonic()  # its sockets are closed: what is sent from now on goes to the other worker
        deadline = killed_at + 120

        def model_info_pids() -> set[str]:
            metrics = httpx.get(server.url + "/metrics", headers={"connection": "close"}).text
            return set(re.findall(r'shoprank_model_info{[^}]*pid="(\d+)"', metrics))

        while time.monotonic() < deadline:  # replaced, and the replacement has loaded the bundle (/metrics)
            now = worker_pids(server.proc.pid)
            try:
                if len(now) == 2 and workers[0] not in now and set(map(str, now)) <= model_info_pids():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"worker not replaced:\n{server.log.read_text()[-3000:]}")
        # The dead worker's live gauges are gone (serving.metrics.mark_dead).
        assert str(workers[0]) not in model_info_pids()
        time.sleep(2)
        lost = [r for c in clients for r in c.records if r[1] != 200]
        # Only requests addressed to the killed worker fail: in flight on it, sent to its listening socket before
        # the kernel had torn it down (up to ~0.2 s here under load), or sent on a keep-alive connection it had
        # accepted (after its death too: the client learns of the reset only by sending; CI on Python 3.12 saw one
        # sent 2 ms after the worker was dead). A connection opened after its death never fails.
        assert all(sent < dead_at or opened < dead_at for sent, _, opened in lost), (killed_at, dead_at, lost)
        for c in clients:  # a stale connection fails once after the death; the client then reaches a live worker
            assert sum(1 for sent, status, _ in c.records if status != 200 and sent >= dead_at) <= 1, c.records
        assert len(lost) <= 2 * len(clients), lost
        answered_before_term = sum(1 for c in clients for r in c.records if r[1] == 200)

        term_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=grace + 10)
        exit_s = time.monotonic() - term_at
        stop.set()
        for c in clients:
            c.join(timeout=30)
        records = [r for c in clients for r in c.records if r[0] >= killed_at + 1.0]
        before = [r for r in records if r[0] < term_at]
        draining = [r for r in records if term_at <= r[0] < term_at + drain - 0.5]
        after = [r for r in records if r[0] >= term_at + drain - 0.5]
        assert before and answered_before_term > 100, (len(before), answered_before_term)
        assert [r for r in before if r[1] != 200] == [], "requests sent before SIGTERM failed"
        assert draining and [r for r in draining if r[1] != 200] == [], "requests sent while draining failed"
        assert code == 0 and exit_s < grace, (code, exit_s, server.log.read_text()[-3000:])
        # After the drain, connections are refused (or, opened in the instant the socket closes, reset): those
        # requests were sent after the signal, when Kubernetes no longer routes to the pod.
        outcomes = Counter(str(r[1]) for r in after)
        print(f"SIGTERM: {len(before)} requests sent before it, all answered; {len(draining)} during the drain, "
              f"all answered; after the drain: {dict(outcomes)}; exit {code} after {exit_s:.1f}s")
    finally:
        server.stop()
