"""The serving image run as the cluster runs it, serving the bundle that the containerised pipeline promoted.

Settings come from the rendered manifests, not from this file: the cpu overlay's predictor container (the
ServingRuntime's command, args and /tmp emptyDir, the InferenceService's args, securityContext and limits) and
the gpu-triton overlay's transformer container. So the container runs as uid 1000 with a read-only root
filesystem, no privilege escalation, every capability dropped and /tmp as its only writable path; the bundle is
mounted read-only at /mnt/models, as KServe's storage initializer leaves it. Scores are compared with the
in-process ranker (shoprank.scoring.ranker.Ranker) on the same bundle: ranking requests over v2 REST and gRPC, and a
tensor request. Then the transformer entry point in front of the ONNX backend (the stand-in for Triton, which
cannot run here), its predictor reached at the predictor container's own address as a Service would route it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.images import PodContainer, predictor_container, rendered_manifests, run_flags, transformer_container
from shoprank.features.transform import INPUTS
from shoprank.scoring.ranker import Ranker

NAME = "shoprank-ranker"
TOL = 1e-5
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    """One detached container with the pod's settings, its ports published on loopback."""

    def __init__(self, tool, image: str, pod: PodContainer, bundle: Path, extra_args: list[str] = ()):
        self.tool, self.image, self.pod, self.bundle = tool, image, pod, bundle
        self.name = f"shoprank-test-{uuid.uuid4().hex[:8]}"
        self.http, self.grpc = free_port(), free_port()
        self.args = [*pod.args, *extra_args]
        self.started = 0.0

    def start(self) -> Container:
        self.started = time.monotonic()
        self.tool.run("run", "-d", "--name", self.name, *run_flags(self.pod),
                      "-v", f"{self.bundle}:/mnt/models:ro",
                      "-p", f"127.0.0.1:{self.http}:8080", "-p", f"127.0.0.1:{self.grpc}:8081",
                      self.image, *self.pod.command, *self.args, capture=True)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def logs(self) -> str:
        proc = self.tool.run("logs", self.name, check=False, capture=True)
        return (proc.stdout + proc.stderr)[-4000:]

    def wait_ready(self) -> float:
        """Seconds from `run` to the first 200 on /v2/health/ready (what a readiness probe waits for)."""
        deadline = self.started + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            state = self.inspect()["State"]
            if not state.get("Running", False):
                raise AssertionError(f"{self.name} exited ({state.get('ExitCode')}):\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {READY_TIMEOUT_S}s:\n{self.logs()}")

    def cpu_seconds(self) -> float:
        """CPU time the server process (pid 1) has used: start-up cost independent of the machine's load."""
        fields = self.exec("cat", "/proc/1/stat").rsplit(")", 1)[1].split()
        ticks = int(self.exec("getconf", "CLK_TCK").strip())
        return (int(fields[11]) + int(fields[12])) / ticks

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.tool.run("inspect", self.name, capture=True).stdout)[0]

    def exec(self, *cmd: str) -> str:
        return self.tool.run("exec", self.name, *cmd, capture=True).stdout

    def ip(self) -> str:
        networks = self.inspect()["NetworkSettings"].get("Networks") or {}
        ips = [n.get("IPAddress") for n in networks.values() if n.get("IPAddress")]
        assert ips, f"{self.name} has no address on a container network"
        return ips[0]

    def remove(self) -> None:
        self.tool.run("rm", "-f", self.name, check=False, capture=True)


@pytest.fixture(scope="module")
def cpu_predictor() -> PodContainer:
    return predictor_container(rendered_manifests("cpu"), NAME)


@pytest.fixture(scope="module")
def predictor(tool, serving_image, bundle, cpu_predictor, measured):
    c = Container(tool, serving_image, cpu_predictor, bundle).start()
    try:
        measured["serving image (tflite), start-up to ready (s)"] = round(c.wait_ready(), 2)
        measured["serving image (tflite), CPU seconds to ready"] = round(c.cpu_seconds(), 2)
        yield c
    finally:
        c.remove()


@pytest.fixture(scope="module")
def onnx_predictor_and_transformer(tool, serving_image, bundle, cpu_predictor, measured):
    onnx_pod = PodContainer(cpu_predictor.command, [a for a in cpu_predictor.args if not a.startswith("--backend")]
                            + ["--backend=onnx"], cpu_predictor.env, cpu_predictor.security, cpu_predictor.tmp_size,
                            cpu_predictor.limits)
    onnx = Container(tool, serving_image, onnx_pod, bundle).start()
    transformer = None
    try:
        measured["serving image (onnx), start-up to ready (s)"] = round(onnx.wait_ready(), 2)
        measured["serving image (onnx), CPU seconds to ready"] = round(onnx.cpu_seconds(), 2)
        pod = transformer_container(rendered_manifests("gpu-triton"), NAME)
        # What KServe appends to a transformer's args: the model name and the predictor's address (a Service
        # there; the predictor container's own address on the container network here).
        transformer = Container(tool, serving_image, pod, bundle,
                                [f"--model_name={NAME}", f"--predictor_host={onnx.ip()}:8080"]).start()
        measured["serving image (transformer), start-up to ready (s)"] = round(transformer.wait_ready(), 2)
        measured["serving image (transformer), CPU seconds to ready"] = round(transformer.cpu_seconds(), 2)
        yield onnx, transformer
    finally:
        for c in (transformer, onnx):
            if c is not None:
                c.remove()


def ranking_body(g: dict) -> dict:
    return {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [g["query"]]},
                       {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [g["user_id"]]},
                       {"name": "history", "datatype": "BYTES", "shape": [len(g["history"])], "data": g["history"]},
                       {"name": "candidates", "datatype": "BYTES", "shape": [len(g["candidates"])],
                        "data": g["candidates"]}]}


def tensor_body(tensors: dict[str, np.ndarray]) -> dict:
    return {"inputs": [{"name": k, "datatype": "INT32", "shape": list(tensors[k].shape),
                        "data": tensors[k].reshape(-1).astype(int).tolist()} for k in INPUTS]}


def in_process(bundle: Path, backend: str, golden: list[dict]) -> tuple[list[np.ndarray], dict, np.ndarray]:
    """The in-process ranker's scores for every golden request, and one tensor request with its scores."""
    ranker = Ranker.load(bundle, backend)
    scores = [ranker.rank([g["query"]], [g["history"]], [g["candidates"]])[0].scores for g in golden]
    tensors, _ = ranker.features([golden[0]["query"]], [golden[0]["history"]], [golden[0]["candidates"]])
    return scores, tensors, ranker.scorer.score(tensors)


def check_rest(url: str, golden: list[dict], expected: list[np.ndarray], tensors: dict, tensor_scores: np.ndarray):
    with httpx.Client(base_url=url, timeout=30) as client:
        for g, want in zip(golden, expected, strict=True):
            res = client.post(f"/v2/models/{NAME}/infer", json=ranking_body(g))
            assert res.status_code == 200, res.text
            out = {o["name"]: o["data"] for o in res.json()["outputs"]}
            np.testing.assert_allclose(out["scores"], want, atol=TOL)
            assert sorted(out["ranking"]) == sorted(g["candidates"])
        res = client.post(f"/v2/models/{NAME}/infer", json=tensor_body(tensors))
        assert res.status_code == 200, res.text
        np.testing.assert_allclose(res.json()["outputs"][0]["data"], tensor_scores, atol=TOL)


def check_grpc(port: int, golden: list[dict], expected: list[np.ndarray]) -> None:
    from kserve import InferenceGRPCClient
    from kserve.protocol.infer_type import InferInput, InferRequest

    async def go() -> list:
        client = InferenceGRPCClient(f"127.0.0.1:{port}", retries=0)
        try:
            assert await client.is_server_ready() and await client.is_model_ready(NAME)
            out = []
            for g in golden:
                inputs = []
                for name, values in (("query", [g["query"]]), ("user_id", [g["user_id"]]),
                                     ("history", g["history"]), ("candidates", g["candidates"])):
                    i = InferInput(name, [len(values)], "BYTES")
                    i.set_data_from_numpy(np.array(values, dtype=object))
                    inputs.append(i)
                out.append(await client.infer(InferRequest(NAME, inputs, request_id=g["request_id"])))
            return out
        finally:
            await client.close()

    for res, want in zip(asyncio.new_event_loop().run_until_complete(go()), expected, strict=True):
        np.testing.assert_allclose(res.get_output_by_name("scores").as_numpy(), want, atol=TOL)


def test_manifest_settings_reach_the_container(cpu_predictor, predictor):
    """The securityContext is what the manifests say, and the running container really has it."""
    s = cpu_predictor.security
    assert (s["runAsUser"], s["runAsGroup"], s["readOnlyRootFilesystem"], s["allowPrivilegeEscalation"]) == \
        (1000, 1000, True, False)
    assert s["capabilities"]["drop"] == ["ALL"] and cpu_predictor.tmp_size
    assert "--model_dir=/mnt/models" in predictor.args and "--backend=tflite" in predictor.args
    status = dict(line.split(":\t", 1) for line in predictor.exec("cat", "/proc/1/status").splitlines()
                  if ":\t" in line)
    assert status["Uid"].split()[:2] == ["1000", "1000"] and status["Gid"].split()[0] == "1000"
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    probe = ("import os\n"
             "for p in ('/opt/x', '/mnt/models/x', '/home/x', '/tmp/x'):\n"
             "    try:\n        open(p, 'w').close(); print(p, 'writable')\n"
             "    except OSError as e:\n        print(p, e.strerror)\n")
    writable = {line.split()[0]: line.split(None, 1)[1] for line in predictor.exec("python", "-c", probe).splitlines()}
    assert writable["/tmp/x"] == "writable", writable
    assert all(writable[p] == "Read-only file system" for p in ("/opt/x", "/mnt/models/x", "/home/x")), writable


def test_serving_image_has_no_tensorflow(predictor):
    out = predictor.exec("python", "-c", "import importlib.util as u, json; print(json.dumps("
                         "{m: u.find_spec(m) is not None for m in ('tensorflow', 'tf_keras', 'matplotlib', "
                         "'ai_edge_litert', 'onnxruntime', 'kserve')}))")
    assert json.loads(out) == {"tensorflow": False, "tf_keras": False, "matplotlib": False, "ai_edge_litert": True,
                               "onnxruntime": True, "kserve": True}


def test_predictor_rest_and_grpc_match_the_in_process_ranker(predictor, bundle, golden):
    expected, tensors, tensor_scores = in_process(bundle, "tflite", golden)
    check_rest(predictor.url, golden, expected, tensors, tensor_scores)
    check_grpc(predictor.grpc, golden, expected)
    meta = httpx.get(f"{predictor.url}/v2/models/{NAME}").json()
    assert meta["versions"] == [bundle.name]


def test_transformer_in_front_of_the_onnx_backend(onnx_predictor_and_transformer, bundle, golden):
    onnx, transformer = onnx_predictor_and_transformer
    expected, tensors, tensor_scores = in_process(bundle, "onnx", golden)
    check_rest(onnx.url, golden, expected, tensors, tensor_scores)  # the predictor on its own
    check_rest(transformer.url, golden, expected, tensors, tensor_scores)  # through the transformer
    check_grpc(transformer.grpc, golden, expected)
    assert "--protocol=v2" in transformer.args and "--model_dir=/mnt/models" in transformer.args


def test_every_module_the_server_imports_has_bytecode(tool, serving_image, bundle, cpu_predictor):
    """A read-only root filesystem cannot cache bytecode, so the image must carry it for every module the server
    imports (serving/Dockerfile, PRECOMPILE): run it writable with bytecode writing on, serve a request, and look
    for .pyc files written since start. Any is a module compiled at every start of every pod."""
    writable = PodContainer(["sh", "-c", 'touch /tmp/started && exec "$@"', "sh", *cpu_predictor.command],
                            cpu_predictor.args, {**cpu_predictor.env, "PYTHONDONTWRITEBYTECODE": ""},
                            {"runAsUser": 0}, "", {})
    c = Container(tool, serving_image, writable, bundle).start()
    try:
        c.wait_ready()
        assert httpx.get(f"{c.url}/v2/models/{NAME}").status_code == 200
        compiled = c.exec("find", "/opt", "-newer", "/tmp/started", "-name", "*.pyc").split()
    finally:
        c.remove()
    assert compiled == [], f"{len(compiled)} modules compiled at start, e.g. {compiled[:10]}"
