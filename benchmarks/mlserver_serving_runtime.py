"""The peer for the serving benchmark: the same ranking function (shoprank.scoring.ranker.Ranker on the int8 model)
as a small custom MLServer runtime. Runs only in MLServer's own virtualenv (build/venv-mlserver, made by
`make bench-serve`), because MLServer pins a FastAPI that KServe's does not accept.

Requests are one ranking each, with a leading batch dimension so that MLServer's adaptive batching can merge
them: query [1, 1], user_id [1, 1], history [1, H], candidates [1, N] (BYTES). A merged batch of B requests is
ranked with one `Ranker.rank` call, as the shoprank server's micro-batcher does; outputs are scores FP32
[B, N] and ranking BYTES [B, N]. (Merged requests must have equal H and N: MLServer concatenates flat data.)
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from shoprank.scoring.ranker import Ranker


def _strings(data) -> list[str]:
    values = data.root if hasattr(data, "root") else data
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class RankerRuntime(MLModel):
    async def load(self) -> bool:
        self.ranker = Ranker.load(self.settings.parameters.uri, "tflite", num_threads=1)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: i for i in payload.inputs}
        if "candidates" not in inputs or "query" not in inputs:
            raise InferenceError("a ranking request needs query and candidates")
        cand = inputs["candidates"]
        batch, n = (cand.shape[0], cand.shape[-1]) if len(cand.shape) == 2 else (1, cand.shape[0])
        flat = _strings(cand.data)
        candidates = [flat[b * n: (b + 1) * n] for b in range(batch)]
        queries = _strings(inputs["query"].data)
        if "history" in inputs:
            h_flat, h = _strings(inputs["history"].data), inputs["history"].shape[-1]
            histories = [h_flat[b * h: (b + 1) * h] for b in range(batch)]
        else:
            histories = [[] for _ in range(batch)]
        ranked = self.ranker.rank(queries, histories, candidates)
        scores = np.concatenate([r.scores for r in ranked]).astype(np.float32)
        ranking = [c for r in ranked for c in r.ranking]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[
            ResponseOutput(name="scores", shape=[batch, n], datatype="FP32", data=scores.tolist()),
            ResponseOutput(name="ranking", shape=[batch, n], datatype="BYTES", data=ranking)])
