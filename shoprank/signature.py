"""Names and input shapes of the exported model's serving signature (no TensorFlow import: the int8 server
needs none, and the CPU serving image has no TensorFlow)."""

from __future__ import annotations

from shoprank.config import FeatureConfig

SIGNATURE = "serving_default"
SCORE = "score"


def input_shapes(features: FeatureConfig) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each model input. Here rather than in shoprank.model so that the server can check tensor
    requests without importing TensorFlow."""
    return {
        "query_tokens": (features.query_len,),
        "title_tokens": (features.title_len,),
        "history_items": (features.history_len,),
        "history_categories": (features.history_len,),
        "history_brands": (features.history_len,),
        "item_id": (),
        "category": (),
        "brand": (),
        "price_bucket": (),
    }
