"""The smoke request (shoprank.release.kserve.smoke): where it goes, what a correct answer is, and the request
itself over real HTTP on loopback.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shoprank.release.kserve.smoke import (
    SMOKE_CANDIDATES,
    SmokeContext,
    check_ranking_response,
    ranking_smoke,
    smoke_url,
)
from tests.release.kserve.support import ADDRESS, NAME, FakeClock, ready


def test_smoke_url_choice():
    assert smoke_url({"status": ready()}, "service") == ADDRESS
    assert smoke_url({"status": ready("Knative", "r2", "http://latest-x")}, "latest") == "http://latest-x"
    assert smoke_url({"status": ready("Knative", "r2")}, "latest") == ADDRESS  # no tag: the service
    assert smoke_url({"status": {"url": "http://ext"}}, "service") == "http://ext"
    assert smoke_url(None, "service") is None


def good_response(candidates=SMOKE_CANDIDATES) -> dict[str, Any]:
    return {"model_name": NAME, "outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [3], "data": [0.1, 0.7, 0.2]},
        {"name": "ranking", "datatype": "BYTES", "shape": [3], "data": [candidates[1], candidates[2], candidates[0]]},
    ]}


def test_check_ranking_response():
    assert check_ranking_response(good_response()) is None
    bad = good_response()
    bad["outputs"][0]["data"] = [0.1, float("nan"), 0.2]
    assert "finite" in check_ranking_response(bad)
    assert "no 'ranking'" in check_ranking_response({"outputs": bad["outputs"][:1]})
    bad = good_response()
    bad["outputs"][1]["data"] = ["x", "y", "z"]
    assert "permutation" in check_ranking_response(bad)


class V2Server:
    """A loopback HTTP server answering the v2 model metadata and infer paths from a script."""

    def __init__(self, versions: list[list[str]], infer: dict[str, Any] | None = None, status: int = 200):
        self.versions, self.infer, self.status, self.requests = versions, infer or good_response(), status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(("GET", self.path, None))
                versions = outer.versions.pop(0) if len(outer.versions) > 1 else outer.versions[0]
                self._send(200, {"name": NAME, "versions": versions, "platform": "shoprank"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", self.path, body))
                self._send(outer.status, outer.infer if outer.status == 200 else {"error": "bad input"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> V2Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_ranking_smoke_waits_for_the_new_version_to_answer():
    clock = FakeClock()
    with V2Server([["v000000000001"], ["v000000000001"], ["v000000000002"]]) as server:
        result = ranking_smoke(SmokeContext(server.url, NAME, "v000000000002", 60, "rollout"),
                                       clock=clock, sleep=clock.sleep)
    assert result.ok, result.detail
    method, path, body = server.requests[-1]
    assert (method, path) == ("POST", f"/v2/models/{NAME}/infer")
    assert {i["name"]: i["datatype"] for i in body["inputs"]} == {
        "query": "BYTES", "user_id": "BYTES", "history": "BYTES", "candidates": "BYTES"}
    assert clock.now == 10


def test_ranking_smoke_fails_on_a_refused_request_and_on_old_pods_that_stay():
    with V2Server([[]], status=400) as server:
        result = ranking_smoke(SmokeContext(server.url, NAME, "v000000000002", 60, "rollout"))
    assert not result.ok and "HTTP 400" in result.detail
    clock = FakeClock()
    with V2Server([["v000000000001"]]) as server:
        result = ranking_smoke(SmokeContext(server.url, NAME, "v000000000002", 20, "rollout"),
                                       clock=clock, sleep=clock.sleep)
    assert not result.ok and "answered by version v000000000001" in result.detail


def test_ranking_smoke_without_a_url_or_server():
    assert "no URL" in ranking_smoke(SmokeContext(None, NAME, "v1", 5, "rollout")).detail
    clock = FakeClock()
    result = ranking_smoke(SmokeContext("http://127.0.0.1:9", NAME, "v1", 10, "rollout"),
                                   clock=clock, sleep=clock.sleep, request_timeout_s=1)
    assert not result.ok and "within 10s" in result.detail
