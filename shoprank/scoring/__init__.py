"""Scoring: model tensors -> scores (`backends`: int8 LiteRT, ONNX Runtime, and `savedmodel`, the only one that
loads TensorFlow) and ranking requests -> ranked lists (`ranker`, the model server's code path).

May import `shoprank.features.transform` and the base only, so the CPU model server carries neither the
training stages nor TensorFlow (`make lint` enforces it).
"""

__all__ = ["backends", "ranker", "savedmodel"]
