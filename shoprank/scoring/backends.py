"""Scoring backends over model tensors: the served composition (int8 request tower via LiteRT + item vectors + a
float pair head, the CPU default: shoprank.scoring.composed), the SavedModel signature (GPU path), the ONNX export
via onnxruntime (what Triton runs) and a whole-graph int8 TFLite model (bundles made before issue 11). The
evaluator, the blessing gate and the model server all score through these."""

from __future__ import annotations

import gzip
import io
import os
import statistics
import tarfile
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from shoprank.features.transform import INPUTS
from shoprank.layout import SCORE, SIGNATURE, TOWERS_META

__all__ = [
    "OnnxScorer",
    "Scorer",
    "TFLiteScorer",
    "TFLiteTower",
    "artefact_size",
    "latency_ms",
    "load_scorer",
    "score_in_batches",
]


class Scorer(Protocol):
    backend: str

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray: ...


class TFLiteTower:
    """LiteRT interpreter over one tower of the served composition (shoprank.modeling.towers): named int32 inputs in,
    named float32 vectors out. Not thread-safe: callers serialise calls per instance. Picklable
    (the interpreter is a native handle): a worker process reloads it from `path`."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.path = Path(path)
        self.num_threads = num_threads
        self._load()

    def _load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        threads = self.num_threads or min(4, os.cpu_count() or 1)
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        self.inputs = tuple(self._runner.get_input_details())

    def __getstate__(self) -> dict:
        return {"path": self.path, "num_threads": self.num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    def __call__(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner(**{k: np.ascontiguousarray(features[k], dtype=np.int32) for k in self.inputs})


class TFLiteScorer(TFLiteTower):
    """The int8 whole-graph model as a tower whose one output is the score (its signature's inputs are the
    transform's INPUTS): a float32 score per row. Threading and pickling as TFLiteTower."""

    backend = "tflite"

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self(features)[SCORE], dtype=np.float32).reshape(-1)


class OnnxScorer:
    """onnxruntime on CPU over the ONNX export: what Triton's onnxruntime backend runs, minus the GPU."""

    backend = "onnx"

    def __init__(self, path: str | Path, num_threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or min(4, os.cpu_count() or 1)
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        out = self._session.run([SCORE], {k: np.ascontiguousarray(features[k], dtype=np.int32) for k in INPUTS})
        return np.asarray(out[0], dtype=np.float32).reshape(-1)


def load_scorer(path: str | Path, num_threads: int | None = None) -> Scorer:
    """The scorer of a model artefact: an int8 whole-graph .tflite, an .onnx export, a towers/ directory (the
    served composition, shoprank.scoring.composed) or a SavedModel directory."""
    p = Path(path)
    if (p / TOWERS_META).is_file():
        from shoprank.scoring.composed import ComposedScorer

        return ComposedScorer(p, num_threads)
    if p.suffix == ".tflite":
        return TFLiteScorer(p, num_threads)
    if p.suffix == ".onnx":
        return OnnxScorer(p, num_threads)
    from shoprank.scoring.savedmodel import SavedModelScorer  # the only scoring path that loads TensorFlow

    return SavedModelScorer(p)


def score_in_batches(scorer: Scorer, columns: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    n = len(columns[INPUTS[0]])
    out = np.empty(n, dtype=np.float32)
    for lo in range(0, n, batch_size):
        out[lo: lo + batch_size] = scorer.score({k: np.asarray(v[lo: lo + batch_size]) for k, v in columns.items()})
    return out


def latency_ms(scorer: Scorer, columns: dict[str, np.ndarray], batch_size: int, repeats: int) -> float:
    """Median wall time of one call at `batch_size` rows, after warm-up (never Keras predict())."""
    batch = {k: np.ascontiguousarray(v[:batch_size]) for k, v in columns.items()}
    for _ in range(3):
        scorer.score(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        scorer.score(batch)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def artefact_size(path: str | Path) -> dict[str, int]:
    """Bytes on disk and gzip bytes (a directory is tarred in a fixed order, without owners or times, first)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        raw = sum(f.stat().st_size for f in files)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in files:
                info = tar.gettarinfo(str(f), arcname=str(f.relative_to(p)))
                # Only the names and bytes count: owner and mode differ between a container step (uid 1000)
                # and the host, and moved the gzip size by a few bytes.
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
        data = buf.getvalue()
    else:
        data = p.read_bytes()
        raw = len(data)
    return {"bytes": raw, "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}
