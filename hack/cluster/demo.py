"""`make cluster-demo`: the whole serving path on the running local cluster, in one command.

    python hack/cluster/demo.py [--runs runs] [--namespace shoprank-demo]

1. `make deploy OVERLAY=cpu` into the namespace, with the serving image the cluster built from this checkout
   and the `shoprank-storage` secret for the cluster's S3 store;
2. the promote step (shoprank.release.kserve.rollout.promote_to_kserve, profile cpu, smoke request on) with the
   promoted bundle of `runs/latest` (from `make run`): upload to s3://shoprank-models/demo/, roll the
   InferenceService, wait for Ready, smoke-test;
3. one ranking request to the predictor Service (through the API server's service proxy), printed as JSON.

The deployment stays up afterwards; `make undeploy OVERLAY=cpu NAMESPACE=shoprank-demo KFP_UPLOAD=0` removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from hack.cluster import localcluster as lc  # noqa: E402

BUCKET = "shoprank-models"
NAME = "shoprank-ranker"


def fail(msg: str) -> int:
    print(f"[demo] ERROR: {msg}", file=sys.stderr)
    return 1


def ranking_request(bundle: Path, count: int = 5) -> dict[str, Any]:
    """A ranking request over the first catalogue items of the bundle (the first one as the user's history)."""
    import pyarrow.parquet as pq

    ids = [str(v) for v in pq.read_table(bundle / "transform" / "catalogue.parquet").column(0).to_pylist()[:count]]
    return {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["running shoes"]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["demo-user"]},
        {"name": "history", "datatype": "BYTES", "shape": [1], "data": [ids[0]]},
        {"name": "candidates", "datatype": "BYTES", "shape": [len(ids)], "data": ids},
    ]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--namespace", default="shoprank-demo")
    args = parser.parse_args(argv)
    state = lc.load_state()
    if state is None or not state.get("up") or not state.get("s3"):
        return fail("no local cluster with a real node is up: run `make cluster-up` first")
    summary = Path(args.runs) / "latest" / "summary.json"
    if not summary.is_file():
        return fail(f"{summary} not found: run `make run` (e.g. SCALE=tiny) first")
    bundle_dir = json.loads(summary.read_text()).get("bundle_dir")
    if not bundle_dir or not Path(bundle_dir).is_dir():
        return fail(f"the latest run promoted no model (bundle_dir {bundle_dir!r} in {summary})")
    bundle = Path(bundle_dir)
    env = dict(os.environ, KUBECONFIG=state["kubeconfig"])
    ns = args.namespace

    def kubectl(*cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *cmd], input=stdin, capture_output=True, text=True, env=env, check=False)

    kubectl("create", "namespace", ns)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(lc.storage_secret(state, ns)))
    print(f"[demo] make deploy OVERLAY=cpu NAMESPACE={ns} SERVING_IMAGE={state['images']['serving']}", flush=True)
    deployed = subprocess.run(["make", "--no-print-directory", "deploy", "OVERLAY=cpu", f"NAMESPACE={ns}",
                               "KFP_UPLOAD=0", f"SERVING_IMAGE={state['images']['serving']}"], cwd=REPO, env=env,
                              check=False)
    if deployed.returncode != 0:
        return fail("make deploy failed (above)")

    s3 = lc.s3_client(state)
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    proxy = subprocess.Popen(["kubectl", "proxy", "--port=0", "--address=127.0.0.1"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proxy.stdout.readline() if proxy.stdout else ""
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            return fail(f"kubectl proxy did not start: {line!r}")
        service = f"http://127.0.0.1:{match.group(1)}/api/v1/namespaces/{ns}/services/{NAME}-predictor:80/proxy"

        from shoprank.release.kserve import client, profiles, rollout
        from shoprank.release.model_store import S3Store

        print(f"[demo] promoting {bundle} (smoke request through {service})", flush=True)
        record = rollout.promote_to_kserve(
            bundle, bundle / "transform", bundle / "summary.json", model_root=f"s3://{BUCKET}/demo",
            model_name=NAME, api=client.KServeApi(lc_api_client(state)),
            params=profiles.PromoteParams(profile="cpu", namespace=ns, smoke="ranking", smoke_url=service,
                                         ready_timeout_s=600),
            store=S3Store(BUCKET, s3), config=rollout.RolloutConfig(poll_s=2))
        if record["outcome"] not in ("promoted", "unchanged"):
            return fail(f"promotion {record['outcome']}: {record['reason']}")
        body = json.dumps(ranking_request(bundle)).encode()
        request = urllib.request.Request(f"{service}/v2/models/{NAME}/infer", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback kubectl proxy
            answer = json.loads(response.read())
        print(json.dumps(answer, indent=1))
        print(f"[demo] {NAME} {record['version']} serves in namespace {ns} on the real node; remove it with "
              f"`make undeploy OVERLAY=cpu NAMESPACE={ns} KFP_UPLOAD=0`", flush=True)
        return 0
    finally:
        proxy.terminate()
        proxy.wait(10)


def lc_api_client(state: dict[str, Any]) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=state["kubeconfig"])


if __name__ == "__main__":
    sys.exit(main())
