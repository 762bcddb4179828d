"""Names on disk and in the exported model: the one place that says where things are.

Every stage reads and writes these paths; the serving process needs them without importing TensorFlow or
the modelling code, so they live here, in the base of the library (no imports from other shoprank modules).

Bundle layout (what promotion publishes to <model_root>/<model_name>/<version>/ and the server loads):
    saved_model/                      optimised SavedModel, the whole graph (the GPU / savedmodel backend)
    towers/request_tower.tflite       full-int8 request tower: query + history -> request vectors (CPU default)
    towers/item_tower.tflite          float item tower: item fields -> item vectors (tensor requests; the tables)
    towers/head.npz, towers.json      the pair head's float weights; the towers' vector layout
    items/                            per-item tables, memory-mapped by the server (shoprank.scoring.item_tables):
                                      ids (sorted), rows, flags, the transform's item inputs and the item
                                      tower's vectors (float16) for every catalogue row and unknown-id row
    transform/transform.json          vocabularies and price edges (shoprank.features.transform)
    transform/catalogue.parquet       item fields by id
    triton/<model_name>/config.pbtxt  Triton model repository of the ONNX export (gpu-triton profile)
    triton/<model_name>/1/model.onnx
    summary.json, manifest.json       the run summary; the file list, written last
"""

from __future__ import annotations

__all__ = [
    "CATALOGUE_FILE",
    "CONFIG_FILE",
    "HEAD_FILE",
    "ITEMS_DIR",
    "ITEMS_META",
    "ITEM_TOWER_FILE",
    "LATEST",
    "MANIFEST",
    "MODEL_FILE",
    "ONNX_DIR",
    "REQUEST_TOWER_FILE",
    "SAVED_MODEL_DIR",
    "SCORE",
    "SIGNATURE",
    "SUMMARY_FILE",
    "TFLITE_FILE",
    "TOWERS_DIR",
    "TOWERS_META",
    "TRANSFORM_DIR",
    "TRANSFORM_FILE",
    "TRITON_DIR",
    "TRITON_VERSION",
]

# The exported model's serving signature and its output.
SIGNATURE = "serving_default"
SCORE = "score"

# The optimised-model artefact and the bundle.
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"  # the whole graph in int8: bundles before issue 11 (no longer written)
# The served composition (issue 11): the graph cut into a request tower, an item tower and a pair head.
TOWERS_DIR = "towers"
REQUEST_TOWER_FILE = "request_tower.tflite"
ITEM_TOWER_FILE = "item_tower.tflite"
HEAD_FILE = "head.npz"
TOWERS_META = "towers.json"
ITEMS_DIR = "items"  # per-item tables (memory-mapped .npy files) under the optimised model and in the bundle
ITEMS_META = "items.json"
ONNX_DIR = "onnx"  # the ONNX export under the optimised-model artefact
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"  # Triton's model configuration beside the ONNX model
TRITON_DIR = "triton"  # the Triton model repository inside a published bundle
TRITON_VERSION = "1"  # one version per repository: the bundle itself is the version
TRANSFORM_DIR = "transform"
TRANSFORM_FILE = "transform.json"
CATALOGUE_FILE = "catalogue.parquet"
SUMMARY_FILE = "summary.json"
MANIFEST = "manifest.json"  # written last: its presence marks a complete version
LATEST = "LATEST"  # file beside the versions naming the version in service
