"""Import TensorFlow with legacy (tf_keras) Keras, the only Keras that tfmot accepts.

`TF_USE_LEGACY_KERAS` must be set before TensorFlow is first imported (importing tfmot sets it too,
so import order would otherwise silently change what `tf.keras` is). Every module that needs
TensorFlow imports it from here.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
