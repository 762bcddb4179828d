"""The shoprank KServe model: ranking requests and model-tensor requests on one v2 model.

The request path is shared with the transformer (serving.transformer): codec.parse_request -> the
micro-batcher -> `Ranker.features` (the pipeline's catalogue look-up and feature transform, imported from
shoprank) -> scores -> `split_ranked` -> codec.*_response. Here the scores come from the local scorer (int8
LiteRT or the SavedModel); in the transformer they come from a separate v2 predictor.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.logging import logger
from kserve.protocol.infer_type import InferRequest, InferResponse
from prometheus_client import Gauge

from serving.batcher import CPU_MAX_BATCH_ROWS, BatchSettings, MicroBatcher, retry_singly
from serving.codec import (
    SCORE,
    Limits,
    RankingRequest,
    TensorRequest,
    TensorSpec,
    parse_request,
    ranking_metadata,
    ranking_response,
    tensor_response,
)
from shoprank.features.transform import INPUTS

__all__ = ["MODEL_INFO", "Item", "ShoprankModel", "detect_backend"]

# One series per live process: in multiprocess mode (serving.metrics) prometheus_client adds the `pid` label.
MODEL_INFO = Gauge("shoprank_model_info", "The bundle this process serves (value 1)",
                   ["model_name", "backend", "version"], multiprocess_mode="liveall")

# shoprank.scoring.ranker (numpy, pyarrow, the scorers' runtimes) is imported in load(), not here, so that a spawned
# worker unpickles this class quickly and answers KServe's 5-second liveness ping while it loads.
Item = RankingRequest | TensorRequest


def detect_backend(model_dir: str | Path) -> str:
    """The int8 composition when the bundle has its towers (the CPU default), else the SavedModel."""
    from shoprank.scoring.ranker import BACKENDS

    d = Path(model_dir)
    if (d / BACKENDS["tflite"]).is_dir():
        return "tflite"
    if (d / BACKENDS["savedmodel"]).is_dir():
        return "savedmodel"
    raise FileNotFoundError(f"{d} holds neither {BACKENDS['tflite']}/ nor {BACKENDS['savedmodel']}/ "
                            "(expected a shoprank bundle, see shoprank/layout.py)")


class ShoprankModel(Model):
    """A kserve.Model over a shoprank bundle. Picklable for `--workers > 1`: a worker reloads the bundle."""

    def __init__(self, name: str, model_dir: str | Path, backend: str | None = None,
                 batch: BatchSettings | None = None, limits: Limits | None = None, num_threads: int | None = 1,
                 batch_in_thread: bool | None = None, token_cache_bytes: int | None = None,
                 unknown_candidates: str = "last"):
        super().__init__(name)
        self.model_dir = str(model_dir)
        self.backend = backend
        self.batch_settings = batch or BatchSettings(max_batch_rows=CPU_MAX_BATCH_ROWS)
        self.limits = limits or Limits()
        self.num_threads = num_threads
        # None: decided by the backend at load time. LiteRT calls are short and the transform holds the GIL,
        # so handing batches to a thread only adds switches (measured: inline is 10-30% faster); TensorFlow
        # releases the GIL while it runs, so the SavedModel backend gets its own thread.
        self.batch_in_thread = batch_in_thread
        self.token_cache_bytes = token_cache_bytes  # None: the transform's default (TOKEN_CACHE_BYTES)
        # shoprank.scoring.ranker.UNKNOWN_POLICIES: "last" (default) ranks candidates the model does not know after
        # every known one; "score" lets the model's score rank them. Both report them in `unknown_items`.
        self.unknown_candidates = unknown_candidates
        self.ranker: Any = None  # shoprank.scoring.ranker.Ranker once loaded
        self.spec: TensorSpec | None = None
        self.load_error: str | None = None
        self._batcher: MicroBatcher[Item] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._split_ranked: Any = None
        self.version = ""  # the bundle's version (manifest.json), reported in metadata and infer responses
        self.needs_load = False  # set in a worker process: load before serving (see ShoprankRESTServer.run)

    # --- pickling for worker processes ------------------------------------------------------------------
    def _init_args(self) -> dict:
        return {"name": self.name, "model_dir": self.model_dir, "backend": self.backend,
                "batch": self.batch_settings, "limits": self.limits, "num_threads": self.num_threads,
                "batch_in_thread": self.batch_in_thread, "token_cache_bytes": self.token_cache_bytes,
                "unknown_candidates": self.unknown_candidates}

    def __getstate__(self) -> dict:
        # Native handles (LiteRT interpreter, TF functions), the executor and asyncio objects stay behind.
        return {"init": self._init_args(), "enable_latency_logging": self.enable_latency_logging}

    def __setstate__(self, state: dict) -> None:
        # Cheap on purpose: the worker loads the bundle once it is running (ShoprankRESTServer.run).
        self.__init__(**state["init"])
        self.enable_latency_logging = state["enable_latency_logging"]
        self.needs_load = True

    # --- lifecycle --------------------------------------------------------------------------------------
    def _load_ranker(self) -> Any:
        from shoprank.scoring.ranker import Ranker

        backend = self.backend or detect_backend(self.model_dir)
        self.backend = backend
        return Ranker.load(self.model_dir, backend, self.num_threads, self.unknown_candidates)

    def load(self) -> bool:
        """Load the bundle; on failure log why and stay not ready (the server keeps running)."""
        t0 = time.perf_counter()
        self.needs_load = False
        try:
            from shoprank.scoring.ranker import split_ranked

            self._split_ranked = split_ranked
            self.version = self.bundle_version()
            self.ranker = self._load_ranker()
            if self.token_cache_bytes is not None:
                self.ranker.transform.token_cache_bytes = self.token_cache_bytes
            self.spec = TensorSpec.from_transform(self.ranker.transform)
            self._warm_up()
        except Exception as e:  # anything: a bad bundle must not crash-loop the pod
            self.ranker, self.ready, self.version = None, False, ""
            self.load_error = f"{type(e).__name__}: {e}"
            logger.error("model '%s' failed to load from %s (backend %s): %s", self.name, self.model_dir,
                         self.backend or "auto", self.load_error)
            return False
        self.load_error, self.ready = None, True
        MODEL_INFO.labels(self.name, self.backend, self.version).set(1)
        logger.info("model '%s' ready: backend %s, %d catalogue items, bundle %s, loaded in %.2fs", self.name,
                    self.backend, len(self.ranker.items), self.model_dir, time.perf_counter() - t0)
        return True

    def bundle_version(self) -> str:
        """The version promotion gave the bundle (manifest.json), or "" for a bundle without one."""
        try:
            return str(json.loads((Path(self.model_dir) / "manifest.json").read_text()).get("version", ""))
        except (OSError, ValueError):
            return ""

    def _warm_up(self) -> None:
        """One ranking through the whole path: checks the bundle end to end and pays one-time costs now."""
        items = self.ranker.items.some_ids(4) or ["warm-up"]
        scores, _ = self.ranker.score(["warm up"], [items[:1]], [items])
        if scores.shape != (len(items),):
            raise RuntimeError(f"the scorer returned shape {scores.shape} for {len(items)} rows")

    def start(self) -> None:
        # kserve.Model.start() sets ready=True unconditionally; readiness here is the outcome of load().
        pass

    def stop(self) -> None:
        self.ready = False
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def close(self) -> None:
        """Finish queued requests and stop the batcher (for embedding the model in an application or a test)."""
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
            await asyncio.sleep(0)  # let the cancelled worker task finish

    async def healthy(self) -> bool:
        return self.ready

    # --- admission --------------------------------------------------------------------------------------
    def retry_singly(self, error: Exception) -> bool:
        """Whether a batch that failed with `error` is retried request by request (see serving.batcher)."""
        return retry_singly(error)

    def check_admission(self) -> None:
        """Raise serving.errors.Overloaded when the batcher's queue is full: called by the lean REST path
        before it decodes the body, so a refusal under overload costs almost nothing."""
        if self._batcher is not None and self._batcher.full():
            self._batcher.refuse()

    def _new_batcher(self) -> MicroBatcher[Item]:
        return MicroBatcher(self._run_batch, self.batch_settings, self.name, retry_singly=self.retry_singly)

    # --- metadata ---------------------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        inputs, _ = ranking_metadata()
        return inputs + (self.spec.metadata() if self.spec else [])

    def get_output_types(self) -> list[dict]:
        _, outputs = ranking_metadata()
        return outputs + [{"name": SCORE, "datatype": "FP32", "shape": [-1]}]

    # --- inference --------------------------------------------------------------------------------------
    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this model speaks the v2 (Open Inference) protocol: POST /v2/models/"
                               f"{self.name}/infer")
        if not self.ready or self.ranker is None:
            raise ModelNotReady(self.name, self.load_error)
        req = parse_request(payload, self.spec, self.limits)
        if self._batcher is None:
            self._batcher = self._new_batcher()
        if isinstance(req, RankingRequest):
            ranked = await self._batcher.submit(req, req.rows)
            return ranking_response(self.name, payload, ranked.scores, ranked.ranking, ranked.unknown_items,
                                    model_version=self.version)
        score = await self._batcher.submit(req, req.rows)
        return tensor_response(self.name, payload, score, model_version=self.version)

    def batch_tensors(self, items: list[Item]) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """The whole model tensors for a batch (what a separate whole-graph predictor scores: the transformer):
        all ranking requests through one `Ranker.features` call (the pipeline's transform), then the tensor
        requests. Returns tensors, the unknown-candidate mask of the ranking rows, and the number of ranking rows
        (which come first)."""
        rankings = [it for it in items if isinstance(it, RankingRequest)]
        parts, unknown, n_rank = [], np.zeros(0, bool), 0
        if rankings:
            t, unknown = self.ranker.features([r.query for r in rankings], [r.history for r in rankings],
                                              [r.candidates for r in rankings])
            parts.append(t)
            n_rank = len(unknown)
        parts += [it.tensors for it in items if isinstance(it, TensorRequest)]
        tensors = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in INPUTS}
        return tensors, unknown, n_rank

    def split_results(self, items: list[Item], scores: np.ndarray, unknown: np.ndarray, n_rank: int) -> list:
        """One result per item, in item order: a RankedList for a ranking (all rankings of the batch sorted by
        one `split_ranked` call), scores for tensors."""
        rankings = [it.candidates for it in items if isinstance(it, RankingRequest)]
        ranked = iter(self._split_ranked(scores[:n_rank], unknown, rankings, self.unknown_candidates)
                      if rankings else ())
        out, t_off = [], n_rank
        for it in items:
            if isinstance(it, RankingRequest):
                out.append(next(ranked))
            else:
                out.append(scores[t_off: t_off + it.rows])
                t_off += it.rows
        return out

    def _score(self, tensors: dict[str, np.ndarray], rows: int) -> np.ndarray:
        scores = self.ranker.scorer.score(tensors)
        if scores.shape != (rows,):
            raise RuntimeError(f"the scorer returned shape {scores.shape} for {rows} rows")
        return scores

    def _batch_sync(self, items: list[Item]) -> list:
        """Ranking requests through one `Ranker.score` call (the composed backend: the request tower once per
        request, item vectors from the tables, the pair head per candidate), tensor requests through the scorer on
        their whole input tensors; then one result per item."""
        rankings = [it for it in items if isinstance(it, RankingRequest)]
        tensor_items = [it for it in items if isinstance(it, TensorRequest)]
        parts, unknown, n_rank = [], np.zeros(0, bool), 0
        if rankings:
            scores, unknown = self.ranker.score([r.query for r in rankings], [r.history for r in rankings],
                                                [r.candidates for r in rankings])
            parts.append(scores)
            n_rank = len(unknown)
        if tensor_items:
            tensors = tensor_items[0].tensors if len(tensor_items) == 1 else {
                k: np.concatenate([it.tensors[k] for it in tensor_items]) for k in INPUTS}
            parts.append(self._score(tensors, sum(it.rows for it in tensor_items)))
        scores = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if scores.shape != (sum(it.rows for it in items),):
            raise RuntimeError(f"the scorer returned shape {scores.shape} for {sum(it.rows for it in items)} rows")
        return self.split_results(items, scores, unknown, n_rank)

    async def _run_batch(self, items: list[Item]) -> list:
        # TensorFlow and onnxruntime release the GIL while they run: a thread lets the loop parse meanwhile.
        in_thread = self.batch_in_thread if self.batch_in_thread is not None else self.backend != "tflite"
        if not in_thread:
            return self._batch_sync(items)
        if self._executor is None:
            # One thread: the LiteRT interpreter is not thread-safe, so calls are serialised per model.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoprank-batch")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._batch_sync, items)
