"""The smoke request (shoprank.release.kserve.smoke): where it goes, what a correct answer is, the item ids it
takes from the bundle's catalogue, and the request itself over real HTTP on loopback.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoprank.layout import CATALOGUE_FILE, TRANSFORM_DIR
from shoprank.release.kserve.smoke import (
    SmokeContext,
    catalogue_items,
    check_ranking_response,
    ranking_smoke,
    smoke_url,
)
from tests.release.kserve.support import ADDRESS, NAME, FakeClock, ready

ITEMS = ("sku-104", "sku-220", "sku-318")  # as a catalogue names them: nothing like the synthetic i0000001


def context(url: str | None, version: str, timeout_s: float, items: tuple[str, ...] = ITEMS) -> SmokeContext:
    return SmokeContext(url, NAME, version, timeout_s, "rollout", items)


def test_smoke_url_choice():
    assert smoke_url({"status": ready()}, "service") == ADDRESS
    assert smoke_url({"status": ready("Knative", "r2", "http://latest-x")}, "latest") == "http://latest-x"
    assert smoke_url({"status": ready("Knative", "r2")}, "latest") == ADDRESS  # no tag: the service
    assert smoke_url({"status": {"url": "http://ext"}}, "service") == "http://ext"
    assert smoke_url(None, "service") is None


def good_response(candidates=ITEMS) -> dict[str, Any]:
    return {"model_name": NAME, "outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [3], "data": [0.1, 0.7, 0.2]},
        {"name": "ranking", "datatype": "BYTES", "shape": [3], "data": [candidates[1], candidates[2], candidates[0]]},
    ], "parameters": {"unknown_count": 0, "unknown_items": "[]"}}


def test_check_ranking_response():
    assert check_ranking_response(good_response(), ITEMS) is None
    bad = good_response()
    bad["outputs"][0]["data"] = [0.1, float("nan"), 0.2]
    assert "finite" in check_ranking_response(bad, ITEMS)
    assert "no 'ranking'" in check_ranking_response({"outputs": bad["outputs"][:1]}, ITEMS)
    bad = good_response()
    bad["outputs"][1]["data"] = ["x", "y", "z"]
    assert "permutation" in check_ranking_response(bad, ITEMS)


def test_a_server_that_does_not_know_the_bundles_items_fails_the_check():
    """The ids come from the promoted bundle's catalogue: a server that reports them unknown serves another one."""
    other = good_response()
    other["parameters"] = {"unknown_count": 2, "unknown_items": json.dumps(list(ITEMS[:2]))}
    problem = check_ranking_response(other, ITEMS)
    assert "does not know 2" in problem and "another catalogue" in problem and ITEMS[0] in problem


def write_catalogue(bundle: Path, ids: list[str], row_group_size: int | None = None) -> Path:
    (bundle / TRANSFORM_DIR).mkdir(parents=True, exist_ok=True)
    table = pa.table({"item_id": ids, "title": ["t"] * len(ids), "category": ["c"] * len(ids),
                      "brand": ["b"] * len(ids), "price": [1.0] * len(ids)})
    pq.write_table(table, bundle / TRANSFORM_DIR / CATALOGUE_FILE, row_group_size=row_group_size)
    return bundle


def test_catalogue_items_are_distinct_ids_of_the_bundle(tmp_path):
    ids = [f"sku-{i}" for i in range(1000)]
    items = catalogue_items(write_catalogue(tmp_path / "a", ids, row_group_size=100))
    assert len(items) == 3 and len(set(items)) == 3 and set(items) <= set(ids[:100])  # first row group only
    assert catalogue_items(write_catalogue(tmp_path / "b", ["only", "only", "two"])) == ("only", "two")
    with pytest.raises(ValueError, match="no items"):
        catalogue_items(write_catalogue(tmp_path / "c", []))


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
        result = ranking_smoke(context(server.url, "v000000000002", 60), clock=clock, sleep=clock.sleep)
    assert result.ok, result.detail
    method, path, body = server.requests[-1]
    assert (method, path) == ("POST", f"/v2/models/{NAME}/infer")
    assert {i["name"]: i["datatype"] for i in body["inputs"]} == {
        "query": "BYTES", "user_id": "BYTES", "history": "BYTES", "candidates": "BYTES"}
    assert next(i["data"] for i in body["inputs"] if i["name"] == "candidates") == list(ITEMS)
    assert clock.now == 10


def test_ranking_smoke_fails_on_a_refused_request_and_on_old_pods_that_stay():
    with V2Server([[]], status=400) as server:
        result = ranking_smoke(context(server.url, "v000000000002", 60))
    assert not result.ok and "HTTP 400" in result.detail
    clock = FakeClock()
    with V2Server([["v000000000001"]]) as server:
        result = ranking_smoke(context(server.url, "v000000000002", 20), clock=clock, sleep=clock.sleep)
    assert not result.ok and "answered by version v000000000001" in result.detail


def test_ranking_smoke_without_a_url_items_or_server():
    assert "no URL" in ranking_smoke(context(None, "v1", 5)).detail
    assert "no item ids" in ranking_smoke(context("http://127.0.0.1:9", "v1", 5, items=())).detail
    clock = FakeClock()
    result = ranking_smoke(context("http://127.0.0.1:9", "v1", 10), clock=clock, sleep=clock.sleep,
                           request_timeout_s=1)
    assert not result.ok and "within 10s" in result.detail
