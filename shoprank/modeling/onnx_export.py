"""ONNX export of the optimised SavedModel (tf2onnx) and its Triton model configuration.

The GPU variant behind KServe's Triton runtime (manifests/overlays/gpu-triton) serves this export on Triton's
onnxruntime backend with the TensorRT execution provider; Triton's TensorFlow backend is gone (STACK.md).
The optimise step writes `onnx/model.onnx` and `onnx/config.pbtxt` beside the SavedModel; the promote step
lays them out as a Triton model repository (`shoprank.release.bundle.triton_repository`); the blessing gate
checks the export's scores against the SavedModel's on the whole test set.

The export keeps the whole graph (issue 11 split it into towers for the CPU backend only, shoprank.modeling.towers):
on a GPU the towers' convolutions per candidate cost little, while the split would make the transformer send each
candidate's item vectors (2F + H = 192 floats) instead of its input ids (79 int32), or put a catalogue-sized item
table inside the Triton model and tie the predictor to one catalogue. The transformer computes the whole input
tensors from the bundle's item tables (shoprank.scoring.ranker.Ranker.features) and Triton scores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shoprank.config import TritonConfig
from shoprank.features.transform import INPUTS
from shoprank.layout import CONFIG_FILE, MODEL_FILE, SCORE, SIGNATURE

__all__ = ["TensorInfo", "export_for_triton", "export_onnx", "tensor_infos", "triton_config"]

# ONNX tensor element types (onnx.TensorProto) -> Triton data types.
_TRITON_TYPES = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16", 9: "TYPE_BOOL"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    triton_type: str
    dims: tuple[int, ...]  # -1 where the size is dynamic (the rows)


def export_onnx(saved_model_dir: str | Path, out_path: str | Path, opset: int) -> list[TensorInfo]:
    """Convert the SavedModel's serving signature to ONNX at out_path. Inputs keep the signature's names and
    order (INPUTS), the output is `score`: the same tensors this server's tensor requests use."""
    try:
        import tf2onnx  # imports TensorFlow; only the optimise step needs it
    except ImportError as exc:
        raise RuntimeError("the ONNX export needs tf2onnx (pip install 'shoprank[pipeline]'), or set "
                           "optimize.export_onnx to false") from exc

    from shoprank.modeling._tf import tf

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep it referenced: the signature uses its variables
    fn = loaded.signatures[SIGNATURE]
    sig = fn.structured_input_signature[1]
    missing = [k for k in INPUTS if k not in sig]
    if missing:
        raise ValueError(f"the SavedModel signature lacks inputs {missing}")
    spec = [tf.TensorSpec(sig[k].shape, sig[k].dtype, name=k) for k in INPUTS]

    @tf.function(input_signature=spec)
    def positional(*args):  # tf2onnx traces positional arguments; the signature takes keywords
        return {SCORE: fn(**dict(zip(INPUTS, args)))[SCORE]}

    proto, _ = tf2onnx.convert.from_function(positional, input_signature=spec, opset=opset)
    del loaded
    outputs = [o.name for o in proto.graph.output]
    if outputs != [SCORE]:
        raise ValueError(f"the ONNX export's outputs are {outputs}, expected ['{SCORE}']")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())
    return tensor_infos(proto)


def tensor_infos(proto) -> list[TensorInfo]:
    """Inputs then outputs of an ONNX ModelProto, as Triton sees them."""
    infos = []
    for value in (*proto.graph.input, *proto.graph.output):
        t = value.type.tensor_type
        if t.elem_type not in _TRITON_TYPES:
            raise ValueError(f"ONNX tensor {value.name} has element type {t.elem_type}, which the Triton config "
                             "writer does not map")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        infos.append(TensorInfo(value.name, _TRITON_TYPES[t.elem_type], dims))
    return infos


def _tensor_block(info: TensorInfo) -> str:
    dims = ", ".join(str(d) for d in info.dims)
    return f'  {{\n    name: "{info.name}"\n    data_type: {info.triton_type}\n    dims: [ {dims} ]\n  }}'


def triton_config(inputs: list[TensorInfo], outputs: list[TensorInfo], tc: TritonConfig) -> str:
    """config.pbtxt for the onnxruntime backend (protobuf text format of Triton's ModelConfig).

    No `name`: Triton takes the model's directory name, which the promote step sets to the InferenceService
    name (KServe's Triton runtime serves /v2/models/<InferenceService name>).
    """
    lines = [
        "# Written by shoprank's optimise step (shoprank/onnx_export.py); the model's name is its directory's.",
        'backend: "onnxruntime"',
        "max_batch_size: 0  # no Triton batching: the shoprank transformer micro-batches; shapes stay [rows, ...]",
        "input [", ",\n".join(_tensor_block(i) for i in inputs), "]",
        "output [", ",\n".join(_tensor_block(o) for o in outputs), "]",
        "instance_group [",
        f"  {{\n    kind: KIND_GPU\n    count: {tc.instance_count}\n  }}",
        "]",
    ]
    if tc.tensorrt:
        params = {"precision_mode": tc.precision, "max_workspace_size_bytes": str(tc.workspace_bytes),
                  "trt_engine_cache_enable": "1", "trt_engine_cache_path": tc.engine_cache_path}
        body = "\n".join(f'          parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator [",
                  "      {", '          name: "tensorrt"', body, "      }", "    ]", "  }", "}"]
    if tc.warmup_rows:
        # Two requests, of 1 row and of the largest batch: TensorRT's engine is then built at load time for the
        # whole range of row counts the transformer sends, and no client request waits for a rebuild. Zero ids
        # are the padding / first bucket of every input: valid requests.
        samples = []
        for rows in sorted({1, tc.warmup_rows}):
            warm = []
            for i in inputs:
                dims = ", ".join(str(rows if d < 0 else d) for d in i.dims)
                warm.append(f'    inputs {{\n      key: "{i.name}"\n      value {{\n'
                            f'        data_type: {i.triton_type}\n        dims: [ {dims} ]\n'
                            '        zero_data: true\n      }\n    }')
            samples.append("\n".join(["  {", f'    name: "rows_{rows}"', "    batch_size: 1", *warm, "  }"]))
        lines += ["model_warmup [", ",\n".join(samples), "]"]
    return "\n".join(lines) + "\n"


def export_for_triton(saved_model_dir: str | Path, out_dir: str | Path, opset: int, tc: TritonConfig) -> Path:
    """`out_dir/model.onnx` and `out_dir/config.pbtxt`; returns out_dir."""
    out = Path(out_dir)
    infos = export_onnx(saved_model_dir, out / MODEL_FILE, opset)
    n_in = len(INPUTS)
    (out / CONFIG_FILE).write_text(triton_config(infos[:n_in], infos[n_in:], tc))
    return out
