"""The ONNX export for KServe's Triton runtime: scores, the Triton model configuration, the repository layout.

Triton itself does not run here (no GPU, no container engine). What Triton checks when it loads a model is
checked instead: config.pbtxt parses as Triton's own ModelConfig message (tritonclient's model_config_pb2,
in a subprocess: it cannot share a process with kserve's protos), and its inputs and outputs match the ONNX
graph's names, types and shapes. The scores are onnxruntime's on CPU, the same runtime Triton's onnxruntime
backend embeds; TensorRT's GPU kernels are not exercised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from shoprank.config import BlessingConfig, TritonConfig, resolve_config
from shoprank.evaluation.blessing import bless
from shoprank.features.dataset import load_split
from shoprank.features.transform import INPUTS
from shoprank.layout import SCORE, TRITON_DIR
from shoprank.modeling.onnx_export import TensorInfo, tensor_infos, triton_config
from shoprank.release.bundle import triton_repository
from shoprank.scoring.backends import OnnxScorer, score_in_batches

NAME = "shoprank-ranker"

PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
"""


def parse_model_config(path: Path) -> dict:
    """config.pbtxt as Triton reads it (protobuf text format of inference.ModelConfig); raises on any
    field or value Triton's schema does not have."""
    done = subprocess.run([sys.executable, "-c", PARSE, str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise ValueError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def repository(tiny_bundle) -> Path:
    return tiny_bundle["bundle_dir"] / TRITON_DIR


def test_the_bundle_holds_a_triton_model_repository(repository):
    assert sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*") if p.is_file()) == [
        f"{NAME}/1/model.onnx", f"{NAME}/config.pbtxt"]
    onnx.checker.check_model(str(repository / NAME / "1" / "model.onnx"))


def test_onnx_scores_equal_the_savedmodel_scores(tiny_bundle, repository, tiny_config):
    test = load_split(tiny_bundle["features_dir"], "test")
    scorer = OnnxScorer(repository / NAME / "1" / "model.onnx")
    scores = score_in_batches(scorer, {k: test.column(k) for k in INPUTS}, 512)
    reference = np.load(tiny_bundle["optimized_dir"] / "scores_optimized_savedmodel.npy")
    assert scores.shape == reference.shape == (test.rows,)
    assert np.abs(scores - reference).max() <= tiny_config.blessing.onnx_tolerance
    # compare_artefacts scored it the same way and recorded it for the blessing gate
    assert np.array_equal(np.load(tiny_bundle["optimized_dir"] / "scores_onnx.npy"), scores)


def test_triton_config_is_a_model_config_that_matches_the_onnx_graph(repository):
    config = parse_model_config(repository / NAME / "config.pbtxt")
    graph = onnx.load(str(repository / NAME / "1" / "model.onnx"))
    infos = tensor_infos(graph)
    assert "name" not in config  # Triton names it after its folder: the InferenceService's name
    assert config["backend"] == "onnxruntime"
    assert int(config.get("max_batch_size", 0)) == 0
    described = [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"] + config["output"]]
    assert described == [(i.name, i.triton_type, list(i.dims)) for i in infos]
    assert [t["name"] for t in config["input"]] == list(INPUTS)
    assert [t["name"] for t in config["output"]] == [SCORE]
    assert all(d[0] == -1 for _, _, d in described)  # rows are dynamic: the transformer sends any batch
    assert config["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    [trt] = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert trt["name"] == "tensorrt" and trt["parameters"]["precision_mode"] == "FP32"
    small, large = config["model_warmup"]  # the engine's shape range: 1 row to the transformer's largest batch
    for warmup, rows in ((small, 1), (large, TritonConfig().warmup_rows)):
        assert warmup["batch_size"] == 1 and sorted(warmup["inputs"]) == sorted(INPUTS)
        for i in infos[:len(INPUTS)]:
            value = warmup["inputs"][i.name]
            assert [int(d) for d in value["dims"]] == [rows, *i.dims[1:]] and value["zero_data"]


def test_the_config_parser_refuses_what_triton_would(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('backend: "onnxruntime"\nmax_batch_sise: 0\n')
    with pytest.raises(ValueError, match="max_batch_sise"):
        parse_model_config(bad)


def test_triton_config_settings(tmp_path):
    inputs = [TensorInfo("item_id", "TYPE_INT32", (-1,)), TensorInfo("query_tokens", "TYPE_INT32", (-1, 6))]
    outputs = [TensorInfo(SCORE, "TYPE_FP32", (-1,))]
    plain = tmp_path / "plain.pbtxt"
    plain.write_text(triton_config(inputs, outputs, TritonConfig(tensorrt=False, warmup_rows=0, instance_count=2)))
    config = parse_model_config(plain)
    assert "optimization" not in config and "model_warmup" not in config
    assert config["instance_group"] == [{"kind": "KIND_GPU", "count": 2}]
    fp16 = tmp_path / "fp16.pbtxt"
    fp16.write_text(triton_config(inputs, outputs, TritonConfig(precision="FP16", warmup_rows=64)))
    config = parse_model_config(fp16)
    [trt] = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert trt["parameters"]["precision_mode"] == "FP16"
    assert [int(d) for d in config["model_warmup"][1]["inputs"]["query_tokens"]["dims"]] == [64, 6]
    with pytest.raises(ValueError, match="triton.precision"):
        resolve_config("tiny", {"triton": {"precision": "INT8"}})


def test_repository_layout_needs_the_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX export"):
        triton_repository(tmp_path / "missing", tmp_path / "repo", NAME)


def test_an_export_that_scores_differently_is_not_blessed():
    base = {"auc": 0.8, "ndcg_at_10": 0.6, "gzip_bytes": 100, "latency_ms": {"1": 0.1, "256": 1.0}}
    artefacts = {"baseline_savedmodel": base, "optimized_savedmodel": base, "int8_tflite": base,
                 "onnx": {**base, "max_abs_diff_vs_optimized_savedmodel": 0.0}}
    config = BlessingConfig()
    assert bless(artefacts, {"tflite": 0.0}, config).blessed
    artefacts["onnx"] = {**base, "max_abs_diff_vs_optimized_savedmodel": 10 * config.onnx_tolerance}
    verdict = bless(artefacts, {"tflite": 0.0}, config)
    assert not verdict.blessed and "ONNX export" in verdict.reasons[0]
    assert bless(artefacts, {"tflite": 0.0}, config.model_copy(update={"onnx_tolerance": 1.0})).blessed
