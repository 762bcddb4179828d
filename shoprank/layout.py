"""Names on disk and in the exported model: the one place that says where things are.

Every stage reads and writes these paths; the serving process needs them without importing TensorFlow or
the modelling code, so they live here, in the base of the library (no imports from other shoprank modules).

Bundle layout (what promotion publishes to <model_root>/<model_name>/<version>/ and the server loads):
    saved_model/                      optimised SavedModel (the GPU / savedmodel backend)
    model.tflite                      full-int8 model (the CPU default, LiteRT)
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
    "LATEST",
    "MANIFEST",
    "MODEL_FILE",
    "ONNX_DIR",
    "SAVED_MODEL_DIR",
    "SCORE",
    "SIGNATURE",
    "SUMMARY_FILE",
    "TFLITE_FILE",
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
TFLITE_FILE = "model.tflite"
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
