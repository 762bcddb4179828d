"""Names of the exported model's serving signature (no TensorFlow import: the int8 server needs none)."""

SIGNATURE = "serving_default"
SCORE = "score"
