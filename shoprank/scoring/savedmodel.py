"""The SavedModel backend: the optimised SavedModel's serving signature through TensorFlow (the GPU path).

The only module of `shoprank.scoring` that imports TensorFlow, and only when a SavedModel scorer is made:
the int8 (LiteRT) and ONNX backends, and so the CPU model server, never load it (`make lint` checks the
import rule; tests/serving/test_process.py serves a request with TensorFlow unimportable).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shoprank.features.transform import INPUTS
from shoprank.layout import SCORE, SIGNATURE

__all__ = ["SavedModelScorer"]


def _tensorflow():
    """TensorFlow, imported only when the SavedModel backend is asked for (the int8 and ONNX paths never load it),
    with the same Keras choice as shoprank.modeling._tf (which this layer may not import)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


class SavedModelScorer:
    backend = "savedmodel"

    def __init__(self, path: str | Path):
        tf = _tensorflow()
        self.path = Path(path)
        self._tf = tf
        self._loaded = tf.saved_model.load(str(self.path))
        self._fn = self._loaded.signatures[SIGNATURE]

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        tf = self._tf
        out = self._fn(**{k: tf.convert_to_tensor(features[k], tf.int32) for k in INPUTS})
        return out[SCORE].numpy().astype(np.float32, copy=False)
