"""Training: tf.data from the preprocessed files, under a tf.distribute strategy from the environment."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.features.dataset import SplitData, load_split
from shoprank.features.transform import INPUTS, FeatureTransform, input_shapes
from shoprank.modeling import distributed
from shoprank.modeling._tf import keras, tf
from shoprank.modeling.model import build_model, save_model_bundle

__all__ = ["Progress", "ProgressLogger", "compile_model", "make_dataset", "pick_strategy", "train"]

Progress = Callable[[str], None]


def pick_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names a cluster (a Kubeflow training job sets it), Mirrored on
    several local GPUs, otherwise the default strategy. The training code is the same for all three."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def make_dataset(split: SplitData, label: str, batch_size: int, shuffle: bool, seed: int,
                 fc, labels: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
                 extra_inputs: dict[str, np.ndarray] | None = None,
                 weights: Callable[[np.ndarray], np.ndarray] | None = None) -> tf.data.Dataset:
    """Batches read from the memory-mapped split files; reshuffled every epoch when `shuffle`.

    `labels` replaces the split's `label` column: an array per row, or a function of the batch's row indices
    that is called when the batch is read (debiased training changes its labels between epochs);
    `extra_inputs` adds int32 per-row inputs beside the model's (the position of position-aware training);
    `weights`, a function of the batch's row indices, adds per-row sample weights (inverse propensities)."""
    n = split.rows
    columns = {name: split.column(name) for name in INPUTS} | dict(extra_inputs or {})
    if labels is None:
        labels = split.column(label)
    label_of = labels if callable(labels) else (lambda idx, y=labels: y[idx])
    epoch = {"n": 0}

    def batches():
        order = np.arange(n)
        if shuffle:
            np.random.default_rng([seed, epoch["n"]]).shuffle(order)
            epoch["n"] += 1
        for lo in range(0, n, batch_size):
            idx = np.sort(order[lo: lo + batch_size])  # sorted reads are faster on a memory map
            x, y = {k: v[idx] for k, v in columns.items()}, np.asarray(label_of(idx), dtype=np.float32)
            yield (x, y) if weights is None else (x, y, np.asarray(weights(idx), dtype=np.float32))

    shapes = input_shapes(fc)
    signature = ({k: tf.TensorSpec((None, *shapes.get(k, ())), tf.int32) for k in columns},
                 tf.TensorSpec((None,), tf.float32))
    if weights is not None:
        signature = (*signature, tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(2)


class ProgressLogger(keras.callbacks.Callback):
    """Epoch, losses, validation AUC, rows/s; a line every quarter epoch so long epochs show life."""

    def __init__(self, progress: Progress, rows: int, batch_size: int, stage: str = "train"):
        super().__init__()
        self.progress, self.rows, self.batch_size, self.stage = progress, rows, batch_size, stage
        self.steps = max(1, -(-rows // batch_size))
        self.history: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        quarter = max(1, self.steps // 4)
        if (batch + 1) % quarter == 0 and batch + 1 < self.steps:
            self.progress(f"[{self.stage}] epoch {self.epoch + 1}: {(batch + 1) * self.batch_size:,}/"
                          f"{self.rows:,} rows, loss {logs.get('loss', float('nan')):.4f} "
                          f"({time.perf_counter() - self.t0:.0f}s)")

    def on_epoch_end(self, epoch, logs=None):
        secs = time.perf_counter() - self.t0
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, "seconds": round(secs, 2)} | logs)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
        self.progress(f"[{self.stage}] epoch {epoch + 1} done: {shown} ({secs:.1f}s, {self.rows / secs:,.0f} rows/s)")


def compile_model(model: keras.Model, learning_rate: float, with_auc: bool = True) -> None:
    """Adam on binary cross-entropy; `with_auc=False` for labels outside [0, 1]."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc")] if with_auc else [])


def train(features_dir: str | Path, transform_dir: str | Path, model_dir: str | Path, config: ShoprankConfig,
          progress: Progress = print) -> dict:
    """Train, early-stop on validation loss, export the SavedModel bundle; returns the history.

    What is fitted follows `config.debias` (shoprank.modeling.debias): the exported model is the position-blind
    ranking model whatever the method; the log's propensities, when the method learns them, go beside it."""
    from shoprank.modeling.debias import plan_training, save_propensities  # it imports this module

    t0 = time.perf_counter()
    tc, fc = config.train, config.features
    keras.utils.set_random_seed(tc.seed)
    sizes = FeatureTransform.load(transform_dir).sizes
    train_split, val_split = load_split(features_dir, "train"), load_split(features_dir, "validation")
    strategy = pick_strategy()
    progress(f"[train] strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s); "
             f"{train_split.rows:,} train rows, {val_split.rows:,} validation rows, label '{tc.label}'")
    task = distributed.task_info()
    batch = tc.batch_size * strategy.num_replicas_in_sync
    if task.workers > 1 and not tc.scale_batch_with_workers:
        batch = tc.batch_size  # the one-process global batch, split over the workers (train.scale_batch_with_workers)
    with strategy.scope():
        model = build_model(sizes, config.model, fc)
        plan = plan_training(model, train_split, val_split, config, batch, compile_model, progress)
    progress(f"[train] model has {model.count_params():,} parameters; debiasing: {plan.method}")
    logger = ProgressLogger(progress, train_split.rows, batch)
    early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=tc.patience, restore_best_weights=True,
                                          start_from_epoch=plan.warmup_epochs)
    plan.fit_model.fit(plan.train_data, validation_data=plan.val_data, epochs=tc.epochs,
                       callbacks=[logger, *plan.callbacks, early], verbose=0)
    # Every worker saves (saving may run collectives); only the chief keeps it (distributed.write_dir).
    target = distributed.write_dir(model_dir, task)
    save_model_bundle(model, sizes, config.model, fc, target)
    save_propensities(plan, target)
    result = {"epochs": logger.history, "parameters": int(model.count_params()),
              "best_val_loss": min((h.get("val_loss", np.inf) for h in logger.history), default=None),
              "seconds": round(time.perf_counter() - t0, 2), "strategy": type(strategy).__name__,
              "label": tc.label, "debias": plan.summary(), "workers": task.workers, "train_rows": train_split.rows}
    # Steady-state throughput: the median epoch after the first (which also builds the graph and, with several
    # workers, sets up the collectives).
    steady = sorted(h["seconds"] for h in logger.history[1:]) or [logger.history[0]["seconds"]]
    result["samples_per_second"] = round(train_split.rows / steady[len(steady) // 2], 1)
    if not task.is_chief:
        distributed.discard(target, task)
        progress(f"[train] {task.name} done in {result['seconds']}s (not the chief: its save was discarded)")
        return result
    (Path(model_dir) / "training.json").write_text(json.dumps(result, indent=2))
    progress(f"[train] done in {result['seconds']}s -> {model_dir}")
    return result
