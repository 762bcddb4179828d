"""Features: the shop tables -> model tensors, the same way in training and in serving.

`transform` (the one feature transform, its vocabularies, the model's input names and shapes), `preprocess`
(validate, split by time, fit the transform on the training period, write tensors per split) and `dataset`
(reading a split back). Imports data and the base; serving may import `transform` only.
"""

__all__ = ["dataset", "preprocess", "transform"]
