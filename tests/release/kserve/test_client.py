"""What KServeApi (shoprank.release.kserve.client) sends, checked against a recording HTTP server on loopback.

It checks the requests the client makes, nothing about how an API server would treat them (tests/cluster does).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shoprank.release.kserve.client import ApplyConflict, KServeApi
from shoprank.release.kserve.names import FIELD_MANAGER
from shoprank.release.kserve.plan import apply_body
from shoprank.release.kserve.wait import DeploymentUnreadable
from tests.release.kserve.support import NAME, NS, STATUS_409, desired


class Recorder(BaseHTTPRequestHandler):
    """Records requests and answers from `Recorder.answers` (path prefix -> (code, JSON)). It checks what the
    client sends, nothing about how an API server would treat it."""

    seen: list[dict[str, Any]] = []
    answers: dict[str, tuple[int, dict[str, Any]]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        Recorder.seen.append({"method": self.command, "path": self.path, "headers": headers,
                              "body": json.loads(body) if body else None})
        code, payload = next((v for k, v in Recorder.answers.items() if self.path.startswith(k)), (404, {}))
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = _answer  # noqa: N815


@pytest.fixture
def recorder():
    from kubernetes import client

    Recorder.seen, Recorder.answers = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}",
                                  api_key={"authorization": "t0ken"}, api_key_prefix={"authorization": "Bearer"})
    yield KServeApi(client.ApiClient(config))
    server.shutdown()
    server.server_close()


def test_apply_is_a_server_side_apply_request(recorder):
    path = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{NAME}"
    body = apply_body(desired())
    Recorder.answers = {path: (200, body)}
    assert recorder.apply(body, field_manager=FIELD_MANAGER) == body
    recorder.apply(body, field_manager=FIELD_MANAGER, force=True)
    first, forced = Recorder.seen
    assert first["method"] == "PATCH" and first["path"] == f"{path}?fieldManager=shoprank-promote"
    assert first["headers"]["content-type"] == "application/apply-patch+yaml"
    assert first["headers"]["authorization"] == "Bearer t0ken" and first["body"] == body
    assert forced["path"].endswith("fieldManager=shoprank-promote&force=true")


def test_a_409_becomes_apply_conflict_and_404_none(recorder):
    path = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{NAME}"
    Recorder.answers = {path: (409, STATUS_409)}
    with pytest.raises(ApplyConflict) as err:
        recorder.apply(apply_body(desired()), field_manager=FIELD_MANAGER)
    assert {c.manager for c in err.value.conflicts} == {"shoprank-deploy", "kubectl-edit"}
    Recorder.answers = {}
    assert recorder.get(NS, NAME) is None
    with pytest.raises(DeploymentUnreadable, match="404"):
        recorder.get_predictor_deployment(NS, NAME)
    assert Recorder.seen[-1]["path"] == f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}-predictor"
