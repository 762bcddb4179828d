"""Modeling: the TensorFlow (tf_keras) ranking model, its training, its optimisation (pruning + int8) and its
ONNX export. The only stage that imports TensorFlow at module level (through `_tf`, which picks tf_keras).
"""

__all__ = ["model", "onnx_export", "optimize", "train"]
