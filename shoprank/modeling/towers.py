"""The served composition, cut from the one trained graph at export (issue 11).

The model (`shoprank.modeling.model`) is written as request tower -> pair head <- item tower, so the export cuts
it at those seams without a second definition of any layer:

    request tower   query tokens + behaviour history -> query, history (F each), request_hidden (H)
    item tower      title tokens, item id, category, brand, price bucket, popularity, category price
                    -> title, candidate (F each), item_hidden (H)
    pair head       relu(request_hidden + item_hidden + (query . title) w_qt + (history . candidate) w_hi
                         + mean of A[query_affinity]) . w + b

Each side's share of the hidden layer is the sum of its branches' projections (plus the bias, on the request
side), so what is left for a (request, candidate) pair is two dot products of F numbers, two scaled adds of H
numbers, a ReLU and one dot product: a request computes the request tower once, gathers its candidates' item
vectors from tables made when the bundle is made (`shoprank.scoring.item_tables`), and runs the head on its N rows.

What is written to `<optimised model>/towers/`:
    request_tower.tflite  full-int8 (LiteRT), calibrated on training requests: the int8 body of the CPU path. Its
                          three outputs keep their own int8 scales (one concatenated output would force one).
    item_tower.tflite     int8 weights, float32 activations (`optimize.item_tower_weights`; "float32" keeps it
                          float). It runs once per catalogue item when the tables are made and, on the server, only
                          for tensor requests, so it costs nothing per ranking request; its weights were most of
                          the bundle's bytes (float: 274 of 373 KB gzip at the default scale, issue 14).
    head.npz              the pair head's float32 weights (w_query_title, w_history_item [H]; w_score [H];
                          b_score []; affinity_hidden [affinity size, H], pre-divided by the input's width so
                          that the head sums the looked-up rows). The head stays float: it is ~4H multiply-adds
                          per pair, so int8 saves nothing measurable while its 256-level output was what tied the
                          int8 scores (issue 11).
    towers.json           the vector layout (names and widths) and the files.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from shoprank.config import FeatureConfig, ShoprankConfig
from shoprank.features.affinity import AFFINITY_WIDTH
from shoprank.features.dataset import SplitData
from shoprank.features.transform import INPUTS, ITEM_INPUTS, REQUEST_INPUTS, input_shapes
from shoprank.layout import (
    HEAD_FILE,
    ITEM_TOWER_FILE,
    REQUEST_TOWER_FILE,
    SCORE,
    SIGNATURE,
    TOWERS_DIR,
    TOWERS_META,
)
from shoprank.modeling._tf import keras, tf
from shoprank.modeling.model import ITEM_VECTORS, REQUEST_VECTORS, item_side, model_layers, request_side

__all__ = ["export_towers", "head_weights", "representative_batches", "tower_models", "tower_tflite"]


def representative_batches(split: SplitData, n_batches: int, batch_size: int = 64, seed: int = 0):
    """Random training batches for calibrating int8 activation ranges."""
    rng = np.random.default_rng(seed)
    cols = {k: split.column(k) for k in INPUTS}
    for _ in range(n_batches):
        idx = np.sort(rng.choice(split.rows, size=min(batch_size, split.rows), replace=False))
        yield {k: np.asarray(v[idx], dtype=np.int32) for k, v in cols.items()}


def tower_models(model: keras.Model, fc: FeatureConfig) -> tuple[keras.Model, keras.Model]:
    """(request tower, item tower) over the trained model's own layer objects (so its weights): Keras models whose
    outputs are dicts of REQUEST_VECTORS / ITEM_VECTORS."""
    layers = model_layers(model)
    shapes = input_shapes(fc)
    req = {k: keras.Input(shape=shapes[k], dtype="int32", name=k) for k in REQUEST_INPUTS}
    item = {k: keras.Input(shape=shapes[k], dtype="int32", name=k) for k in ITEM_INPUTS}
    return (keras.Model(req, request_side(layers, req), name="request_tower"),
            keras.Model(item, item_side(layers, item), name="item_tower"))


def head_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The pair head's weights as float32 arrays (what `shoprank.scoring.composed.PairHead` computes with)."""
    layers = model_layers(model)
    w_score, b_score = layers[SCORE].get_weights()
    return {"w_query_title": layers["hidden_query_title"].get_weights()[0].reshape(-1).astype(np.float32),
            "w_history_item": layers["hidden_history_item"].get_weights()[0].reshape(-1).astype(np.float32),
            "w_score": w_score.reshape(-1).astype(np.float32),
            # The graph averages the input's columns' rows (GlobalAveragePooling1D); the head sums them.
            "affinity_hidden": (layers["affinity_hidden"].get_weights()[0] / AFFINITY_WIDTH).astype(np.float32),
            "b_score": np.float32(b_score.reshape(())).reshape(())}


def tower_tflite(tower: keras.Model, names: tuple[str, ...], fc: FeatureConfig, representative=None,
                 int8_weights: bool = False) -> bytes:
    """A tower as a TFLite model with one `serving_default` signature (inputs by name, outputs by vector name).
    With `representative` (a callable yielding input dicts): full-int8 post-training quantisation, int token inputs
    staying int32 and outputs dequantised to float32 (as the whole-graph int8 model was made); with `int8_weights`:
    int8 weights, float32 activations (dynamic-range quantisation: no calibration); otherwise float32."""
    shapes = input_shapes(fc)
    specs = {k: tf.TensorSpec((None, *shapes[k]), tf.int32, name=k) for k in names}

    @tf.function(input_signature=[specs])
    def serve(features):
        return tower(features, training=False)

    with tempfile.TemporaryDirectory() as d:
        tf.saved_model.save(tower, d, signatures={SIGNATURE: serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=[SIGNATURE])
        if representative is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif int8_weights:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` with fixed zip entry times: numpy stamps each entry with the wall clock, so the same weights
    written a minute apart made different bytes, hence a different content-addressed bundle version (seen as the
    container and host runs of one pipeline disagreeing). Readable by `np.load` as any .npz."""
    # writestr with the whole entry in memory (the head is a few hundred bytes): the headers then carry known
    # sizes, no streaming zip64 markers, whose form differs between Python patch releases (3.11.2 in the image).
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[name]), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def export_towers(model: keras.Model, split: SplitData, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """Write `out_dir/towers/` (see the module doc) from a trained (optimised) model; `split` (training) supplies
    the int8 calibration requests. Returns towers.json's content."""
    fc = config.features
    d = Path(out_dir) / TOWERS_DIR
    d.mkdir(parents=True, exist_ok=True)
    request, item = tower_models(model, fc)

    def calibration():
        for b in representative_batches(split, config.optimize.representative_batches, seed=config.train.seed):
            yield {k: b[k] for k in REQUEST_INPUTS}

    (d / REQUEST_TOWER_FILE).write_bytes(tower_tflite(request, REQUEST_INPUTS, fc, calibration))
    item_int8 = config.optimize.item_tower_weights == "int8"
    (d / ITEM_TOWER_FILE).write_bytes(tower_tflite(item, ITEM_INPUTS, fc, int8_weights=item_int8))
    write_npz(d / HEAD_FILE, head_weights(model))
    widths = {k: int(v.shape[-1]) for k, v in {**request.output, **item.output}.items()}
    meta = {"request_vectors": {k: widths[k] for k in REQUEST_VECTORS},
            "item_vectors": {k: widths[k] for k in ITEM_VECTORS},
            "request_inputs": list(REQUEST_INPUTS), "item_inputs": list(ITEM_INPUTS),
            "request_tower": REQUEST_TOWER_FILE, "request_tower_precision": "int8",
            "item_tower": ITEM_TOWER_FILE, "item_tower_precision": "int8 weights" if item_int8 else "float32",
            "head": HEAD_FILE, "head_precision": "float32",
            "item_vectors_dtype": config.optimize.item_vectors_dtype}
    (d / TOWERS_META).write_text(json.dumps(meta, indent=1))
    return meta
