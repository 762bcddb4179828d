"""`python -m serving.transformer`: the shoprank request path as a KServe transformer in front of a separate v2
predictor (for example KServe's Triton runtime serving an ONNX export of the ranker, manifests/overlays/
gpu-triton).

Same code path as the model server (serving.model.ShoprankModel): the same parsing and validation, the same
micro-batcher, the same `Ranker.features` (catalogue look-up + the pipeline's transform) and `split_ranked`.
Only the scoring step differs: a batch's model tensors go to the predictor as one v2 request (binary tensors,
REST or gRPC) and its `score` output comes back. Tensor requests are passed through the same way.

When the predictor cannot be reached (connection refused or reset, timeout, its 502/503/504, gRPC UNAVAILABLE,
DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED), the batch fails as a whole with `PredictorUnavailable` (the clients
get 503 with Retry-After): retrying it request by request, as the batcher does for a failure that may be one
request's fault, would only send N more requests to a predictor that is down.

    python -m serving.transformer --model_name shoprank-ranker --predictor_host HOST:PORT --protocol v2 \\
        [--model_dir /mnt/models] [--predictor_model_name NAME] [--http_port 8080]

The transformer needs the bundle's transform/ and items/ folders (transform.json; the per-item tables) at
--model_dir. The predictor runs the whole graph per candidate (the ONNX export: Triton's model repository); the
request/item split is the CPU backend's (issue 11): on a GPU the towers cost little, and the whole graph's inputs
(79 int32 per row) are fewer bytes per candidate than the item vectors (2F + H floats) the head would need.
"""

from __future__ import annotations

if __name__ == "__main__":  # before anything imports prometheus_client (KServe does): see serving.metrics
    from serving.metrics import use_multiprocess_metrics

    use_multiprocess_metrics()

import asyncio  # noqa: E402
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.logging import logger
from kserve.predictor_config import PredictorConfig

from serving.batcher import BatchSettings
from serving.codec import Limits, score_of, tensor_request
from serving.errors import PredictorUnavailable
from serving.model import Item, ShoprankModel

__all__ = ["UNREACHABLE_GRPC", "UNREACHABLE_HTTP", "ShoprankTransformer", "main", "predictor_config", "unreachable"]

UNREACHABLE_HTTP = (502, 503, 504)
UNREACHABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def unreachable(error: BaseException) -> bool:
    """True when a predictor call failed for a reason that is the predictor's (or the network's), not the
    request's."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in UNREACHABLE_HTTP
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code() in UNREACHABLE_GRPC
    return isinstance(error, httpx.TransportError | OSError | asyncio.TimeoutError)


class ShoprankTransformer(ShoprankModel):
    """ShoprankModel whose scores come from a v2 predictor instead of a local scorer."""

    def __init__(self, name: str, model_dir: str | Path, predictor: PredictorConfig | None = None,
                 predictor_model_name: str | None = None, batch: BatchSettings | None = None,
                 limits: Limits | None = None, token_cache_bytes: int | None = None,
                 unknown_candidates: str = "last"):
        super().__init__(name, model_dir, backend="remote", batch=batch, limits=limits,
                         token_cache_bytes=token_cache_bytes, unknown_candidates=unknown_candidates)
        self.predictor = predictor
        self.predictor_model_name = predictor_model_name or name
        self._rest: InferenceRESTClient | None = None
        self._grpc: InferenceGRPCClient | None = None

    def _init_args(self) -> dict:
        return {"name": self.name, "model_dir": self.model_dir, "predictor": self.predictor,
                "predictor_model_name": self.predictor_model_name, "batch": self.batch_settings,
                "limits": self.limits, "token_cache_bytes": self.token_cache_bytes,
                "unknown_candidates": self.unknown_candidates}

    def _load_ranker(self) -> Any:
        from shoprank.scoring.ranker import Ranker

        # No local scorer: Ranker is used for its feature path (`features`: the item tables' input tensors), and
        # the scores come from the predictor, which runs the whole graph (the ONNX export on Triton).
        return Ranker.load(self.model_dir, backend=None, unknown_candidates=self.unknown_candidates)

    def _warm_up(self) -> None:
        items = self.ranker.items.some_ids(4) or ["warm-up"]
        self.ranker.features(["warm up"], [items[:1]], [items])

    def _client_protocol(self) -> str:
        if self.predictor is None or not self.predictor.predictor_host:
            raise RuntimeError("the transformer needs --predictor_host")
        return self.predictor.predictor_protocol

    async def _remote_score(self, tensors: dict[str, np.ndarray], rows: int) -> np.ndarray:
        try:
            return await self._call_predictor(tensors, rows)
        except Exception as e:
            if unreachable(e):
                raise PredictorUnavailable(f"the predictor at {self.predictor.predictor_host} did not answer: "
                                           f"{type(e).__name__}: {e}") from e
            raise

    async def _call_predictor(self, tensors: dict[str, np.ndarray], rows: int) -> np.ndarray:
        p = self.predictor
        request = tensor_request(self.predictor_model_name, tensors, binary=True)
        if self._client_protocol() == "grpc-v2":
            if self._grpc is None:
                self._grpc = InferenceGRPCClient(url=p.predictor_host, use_ssl=p.predictor_use_ssl,
                                                 timeout=p.predictor_request_timeout_seconds,
                                                 retries=p.predictor_request_retries)
            response = await self._grpc.infer(request)
        else:
            if self._rest is None:
                self._rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=p.predictor_request_retries,
                                                            timeout=p.predictor_request_timeout_seconds))
            response = await self._rest.infer(p.predictor_base_url, request, model_name=self.predictor_model_name)
        return score_of(response, rows)

    async def close(self) -> None:
        await super().close()
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = None
        if self._rest is not None:
            await self._rest.close()
            self._rest = None

    async def _run_batch(self, items: list[Item]) -> list:
        tensors, unknown, n_rank = self.batch_tensors(items)
        rows = sum(it.rows for it in items)
        t0 = time.perf_counter()
        scores = await self._remote_score(tensors, rows)
        logger.debug("predictor scored %d rows in %.1f ms", rows, (time.perf_counter() - t0) * 1000)
        return self.split_results(items, scores, unknown, n_rank)


def predictor_config(args: Any) -> PredictorConfig:
    # KServe appends --protocol (the deprecated spelling, used by manifests/overlays/gpu-triton) to a transformer;
    # ModelServer itself reads only --predictor_protocol, so take whichever says v2.
    protocol = args.predictor_protocol if args.predictor_protocol != "v1" else args.protocol
    if protocol not in ("v2", "grpc-v2"):
        raise SystemExit(f"the predictor must speak v2 or grpc-v2 (got '{protocol}'): pass --protocol v2")
    if not args.predictor_host:
        raise SystemExit("--predictor_host is required")
    return PredictorConfig(predictor_host=args.predictor_host, predictor_protocol=protocol,
                           predictor_use_ssl=args.predictor_use_ssl,
                           predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
                           predictor_request_retries=args.predictor_request_retries,
                           predictor_health_check=args.enable_predictor_health_check)


def main(argv: list[str] | None = None) -> None:
    from serving.logs import configure_logging
    from serving.options import batch_settings, build_parser, limits, server_kwargs
    from serving.server import ShoprankModelServer

    parser = build_parser("shoprank transformer (KServe v2) in front of a v2 predictor")
    parser.add_argument("--predictor_model_name", default=None,
                        help="the model's name on the predictor (default: --model_name)")
    args = parser.parse_args(argv)
    configure_logging(access_log=args.access_log, trace_log=args.enable_latency_logging)
    config = predictor_config(args)
    model = ShoprankTransformer(args.model_name, args.model_dir, config, args.predictor_model_name,
                                batch=batch_settings(args), limits=limits(args),
                                token_cache_bytes=args.token_cache_bytes, unknown_candidates=args.unknown_candidates)
    if args.workers <= 1:  # with workers, each loads the bundle itself; this process after spawning them
        model.load()
    ShoprankModelServer(predictor_config=config, **server_kwargs(args)).start([model],
                                                                              load_after_start=args.workers > 1)


if __name__ == "__main__":
    main()
