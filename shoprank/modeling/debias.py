"""Learning from position-biased clicks without inheriting the bias (`debias.method`).

Clicks in shop logs are relevance seen through examination: an item on top is looked at far more often than one
at position 20, and the logging policy put its favourites on top. A model fitted to clicks as if they were
relevance learns the old ranker's order. The methods here keep the served model position-blind (same graph, same
serving signature, `shoprank.modeling.model` untouched) and change only what training fits:

* "pal" -- Position-bias Aware Learning (Guo et al. 2019, "PAL: a position-bias aware learning framework for CTR
  prediction in live recommender systems"; the same idea as YouTube's shallow position tower, Zhao et al. 2019):
  training fits P(click | x, k) = sigmoid(w_k) * model(x), a position tower of one logit per position slot times
  the ranking model. The tower soaks up examination, the model learns relevance; serving drops the tower. The
  tower's curve (relative to the top) is saved as the log's propensities (`propensity.json`).
* "ipw" -- inverse propensity weighting (Joachims et al. 2017, "Unbiased learning-to-rank with biased
  feedback"): a click at position k counts 1 / theta_k times (sample weights), as Joachims et al. weigh the
  clicked documents of a list; unclicked rows count once. theta is re-estimated after every epoch by regression
  EM (Wang et al. 2018) with the relevance a binned function of the network's scores
  (`shoprank.modeling.propensity.regression_em`); the first epoch sees the clicks as they are (theta = 1).
  Propensities below `debias.propensity_floor` are raised to it (bounded weights).
* "none" -- clicks as they are (what shoprank did before), the default: on the synthetic shop, whose logging
  policy ranks by relevance, it measured best on true relevance (README, "Position bias", says why).
* "unbiased_labels" -- the unbiased-label bound: labels drawn from the generator's true relevance with every item
  examined (`shoprank.data.clicks.unbiased_labels`). Not a method for real logs (they have no oracle): the
  reference that says how much of the bias a method removed.

Data without positions (real logs without them, recommendation targets) train as "none" and the plan says so.
What is not tested here: that the methods *measure* well; `make bench-debias` measures that at the default
scale (README, "Position bias").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.data.clicks import unbiased_labels
from shoprank.errors import DataValidationError
from shoprank.features.dataset import SplitData
from shoprank.modeling._tf import keras, tf
from shoprank.modeling.propensity import Propensities, position_slots, regression_em
from shoprank.modeling.train import make_dataset

__all__ = ["POSITION_INPUT", "TOWER_LAYER", "TrainingPlan", "plan_training", "position_tower_theta",
           "save_propensities", "with_position_tower"]

POSITION_INPUT = "position"  # the training-only input of the position tower
TOWER_LAYER = "position_tower"
Progress = Callable[[str], None]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


TOP_LOGIT = 9.0  # the top slot's fixed tower logit: sigmoid(9) = 0.9999, "always examined"


class _PinTop(keras.constraints.Constraint):
    """Keeps the top slot's tower logit at `value`. For the examination tower, TOP_LOGIT (theta_0 = 1) pins the
    scale that clicks leave open (theta * r is all they show): the model's output is the relevance at the top
    and cannot drift to 1 while the tower takes the clicks (the degenerate split a free tower falls into: every
    item relevant, position explains all). For the logit tower, 0: the top is the reference."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, w):
        return tf.concat([tf.fill([1, 1], tf.constant(self.value, w.dtype)), w[1:]], axis=0)

    def get_config(self) -> dict:
        return {"value": self.value}


class _LogitShift(keras.layers.Layer):
    """sigmoid(logit(p) + b): the position's logit added to the model's (a shallow tower, Zhao et al. 2019)."""

    def call(self, inputs):
        p, b = inputs
        p = tf.clip_by_value(p, 1e-6, 1 - 1e-6)
        return tf.sigmoid(tf.math.log(p) - tf.math.log1p(-p) + b)


class _PositionDropout(keras.layers.Layer):
    """In training, replaces a row's position slot by the unknown slot with probability `rate` (Zhao et al.
    2019's dropout on the position feature): those rows' clicks must be explained by the model alone, so it
    cannot leave to the tower all the relevance the logging policy encoded in the position."""

    def __init__(self, rate: float, unknown_slot: int, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.unknown_slot = float(rate), int(unknown_slot)

    def call(self, slots, training=None):
        if not training or self.rate <= 0:
            return slots
        drop = tf.random.uniform(tf.shape(slots)) < self.rate
        return tf.where(drop, tf.fill(tf.shape(slots), tf.constant(self.unknown_slot, slots.dtype)), slots)

    def get_config(self) -> dict:
        return super().get_config() | {"rate": self.rate, "unknown_slot": self.unknown_slot}


def with_position_tower(model: keras.Model, n_slots: int, initial_theta: np.ndarray | None = None,
                        dropout: float = 0.0, trainable: bool = True, additive: bool = False) -> keras.Model:
    """A training model: `model`'s inputs plus an int32 `position` slot (0 .. n_slots - 1), output
    model(x) * sigmoid(w[position]) with the top slot fixed at "examined" (PAL), or, `additive`,
    sigmoid(logit(model(x)) + w[position]) with the top slot at 0 (a shallow tower). It shares `model`'s layers,
    so fitting it trains `model`; `model` itself (what is exported and served) does not change. `initial_theta`
    (per slot) starts an examination tower; by default every slot below the top starts at 0.5, on the side of
    too little position bias (the model starts out learning the clicks as they are and the tower takes the bias
    from it). `dropout`: the share of training rows whose slot is replaced by the last (unknown) one."""
    theta = np.full(n_slots, 0.5) if initial_theta is None else np.asarray(initial_theta, dtype=np.float64)
    init = _logit(theta).reshape(n_slots, 1)
    init[0, 0] = 0.0 if additive else TOP_LOGIT
    if additive:
        init[1:, 0] = 0.0
    position = keras.Input(shape=(), dtype="int32", name=POSITION_INPUT)
    slots = _PositionDropout(dropout, n_slots - 1, name="position_dropout")(position) if dropout > 0 else position
    tower = keras.layers.Embedding(n_slots, 1, embeddings_initializer=keras.initializers.Constant(init),
                                   embeddings_constraint=_PinTop(0.0 if additive else TOP_LOGIT),
                                   trainable=trainable,
                                   name=TOWER_LAYER)(slots)
    if additive:
        clicked = _LogitShift(name="click")([model.output, tower])
    else:
        examined = keras.layers.Activation("sigmoid", name="examination")(tower)  # [batch, 1]
        clicked = keras.layers.Multiply(name="click")([model.output, examined])
    return keras.Model(inputs={**model.input, POSITION_INPUT: position}, outputs=clicked,
                       name=f"{model.name}_with_position_tower")


def position_tower_theta(training_model: keras.Model) -> np.ndarray:
    """The examination probability per slot that a model built by `with_position_tower` has learned."""
    w = training_model.get_layer(TOWER_LAYER).get_weights()[0][:, 0]
    return 1.0 / (1.0 + np.exp(-w.astype(np.float64)))


@dataclass
class TrainingPlan:
    """What `fit` runs for a debiasing method: the model to fit (the ranking model, or it wrapped with a
    position tower), its data, its callbacks, and the propensities it ends with."""

    method: str  # the method used (may be "none" when the data have no positions)
    fit_model: keras.Model
    train_data: tf.data.Dataset
    val_data: tf.data.Dataset
    callbacks: list = field(default_factory=list)
    note: str = ""  # why the method differs from the setting, when it does
    propensities: Callable[[], Propensities | None] = lambda: None
    # Epochs early stopping ignores: their validation loss is not comparable with the later ones (ipw's first
    # epoch validates against labels before any propensity was estimated).
    warmup_epochs: int = 0

    def summary(self) -> dict:
        p = self.propensities()
        return {"method": self.method, "note": self.note,
                "propensities": None if p is None else {"source": p.source, "theta": list(p.theta)}}


class _ExaminationEM(keras.callbacks.Callback):
    """After each epoch: the network's scores on a fixed sample of training rows, then regression EM for theta
    with the relevance a binned function of those scores (`regression_em`), relative to the top slot. Only the
    network's order is used, not its calibration: EM with the network's probabilities held fixed would stay where
    it starts (a click model's predictions already explain the clicks with theta = 1)."""

    def __init__(self, model: keras.Model, split: SplitData, slots: np.ndarray, clicks: np.ndarray, n_slots: int,
                 rows: int, batch: int, seed: int, theta: np.ndarray, val_theta: np.ndarray, progress: Progress):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.rows = np.sort(rng.choice(slots.size, size=min(rows, slots.size), replace=False))
        self.ranker, self.split, self.n_slots, self.batch, self.progress = model, split, n_slots, batch, progress
        self.slots, self.clicks = slots[self.rows], clicks[self.rows]
        self.theta = theta  # shared with the training labels: updated in place after every epoch
        self.val_theta = val_theta  # shared with the validation labels: set once, so epochs compare
        self.updates = 0

    def on_epoch_end(self, epoch, logs=None):
        features = self.split.features(self.rows)
        relevance = np.concatenate([
            np.asarray(self.ranker({k: v[i: i + self.batch] for k, v in features.items()}, training=False)).reshape(-1)
            for i in range(0, self.rows.size, self.batch)])
        theta, _ = regression_em(self.clicks, self.slots, relevance, self.n_slots)
        self.theta[:] = np.clip(theta, 1e-6, 1.0)
        if self.updates == 0:
            self.val_theta[:] = self.theta
        self.updates += 1
        shown = ", ".join(f"{t:.3f}" for t in self.theta[: min(self.n_slots, 6)])
        self.progress(f"[train] ipw: propensities re-estimated on {self.rows.size:,} rows: {shown}, ...")


def plan_training(model: keras.Model, train_split: SplitData, val_split: SplitData, config: ShoprankConfig,
                  batch: int, compile_fn: Callable[..., None], progress: Progress = print,
                  initial_theta: np.ndarray | None = None, learning_rate: float | None = None,
                  seed: int | None = None) -> TrainingPlan:
    """The fit of `config.debias.method` for `model` (built, not compiled; compiled here with `compile_fn`,
    inside the caller's distribution scope). `initial_theta` (absolute, per position) starts from propensities
    learned before: the optimise step's fine-tuning continues the trained model's tower or EM."""
    dc, tc, fc = config.debias, config.train, config.features
    lr = tc.learning_rate if learning_rate is None else learning_rate
    seed = tc.seed if seed is None else seed
    method, note = dc.method, ""
    label = tc.label

    def datasets(labels_train=None, labels_val=None, extra_train=None, extra_val=None):
        return (make_dataset(train_split, label, batch, True, seed, fc, labels_train, extra_train),
                make_dataset(val_split, label, batch, False, tc.seed, fc, labels_val, extra_val))

    if method == "unbiased_labels":
        oracle_t, oracle_v = (np.asarray(s.column("oracle"), dtype=np.float64) for s in (train_split, val_split))
        if not (np.isfinite(oracle_t).all() and np.isfinite(oracle_v).all()):
            raise DataValidationError("debias.method=unbiased_labels needs the generator's true relevance (the "
                                      "impressions' oracle column); these data have none: choose pal, ipw or none")
        compile_fn(model, lr)
        train_data, val_data = datasets(unbiased_labels(oracle_t, dc.label_seed),
                                        unbiased_labels(oracle_v, dc.label_seed + 1))
        return TrainingPlan(method, model, train_data, val_data)

    pos_t, pos_v = train_split.positions(), val_split.positions()
    if method != "none" and (pos_t is None or pos_v is None):
        note = (f"debias.method={method} needs the positions items were shown at; these data have none "
                "(trained on clicks as they are)")
        progress(f"[train] {note}")
        method = "none"
    if method == "none" or label != "clicked":
        if method != "none":  # carts and purchases follow a click: the click's position bias is not theirs alone
            note = f"debias.method={method} debiases clicks; train.label={label} is trained as it is"
            progress(f"[train] {note}")
            method = "none"
        compile_fn(model, lr)
        train_data, val_data = datasets()
        return TrainingPlan(method, model, train_data, val_data, note=note)

    n_slots = dc.max_positions + 1  # the last slot: rows whose position is unknown (-1)
    seen = int(min(pos_t.max() + 1, dc.max_positions))  # propensities are reported for the positions trained on
    slots_t = _slots(pos_t, dc.max_positions)
    slots_v = _slots(pos_v, dc.max_positions)
    clicks_t = np.asarray(train_split.column("clicked"), dtype=np.float64)
    theta0 = np.full(n_slots, 0.5)
    if initial_theta is not None:  # learned before, for positions 0 .. len - 1; the unknown slot keeps its start
        known = np.asarray(initial_theta, dtype=np.float64)[: n_slots - 1]
        theta0[: known.size] = known

    if method == "pal":
        fit_model = with_position_tower(model, n_slots, theta0 if initial_theta is not None else None,
                                        dc.position_dropout, additive=dc.tower == "logit")
        compile_fn(fit_model, lr)
        train_data, val_data = datasets(extra_train={POSITION_INPUT: slots_t}, extra_val={POSITION_INPUT: slots_v})

        def pal_propensities() -> Propensities | None:
            if dc.tower == "logit":  # position logits shift clicks, they are not examination probabilities
                return None
            return Propensities.relative(position_tower_theta(fit_model)[:seen], "pal")

        return TrainingPlan(method, fit_model, train_data, val_data, propensities=pal_propensities)

    # ipw: clicked rows weigh 1 / max(theta, floor), theta updated in place by the EM callback after every epoch.
    # The first epoch, unless propensities were learned before, sees no position bias (theta = 1): the click rate
    # by position would be far too steep a start (it credits the logging policy's choice to examination).
    theta = np.ones(n_slots) if initial_theta is None else np.array(theta0, dtype=np.float64)
    val_theta = theta.copy()
    clicks_v = np.asarray(val_split.column("clicked"), dtype=np.float64)

    def ipw_weights(clicks: np.ndarray, slots: np.ndarray, th: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda idx: np.where(clicks[idx] > 0, 1.0 / np.maximum(th[slots[idx]], dc.propensity_floor), 1.0)

    compile_fn(model, lr)
    train_data = make_dataset(train_split, label, batch, True, seed, fc, weights=ipw_weights(clicks_t, slots_t, theta))
    val_data = make_dataset(val_split, label, batch, False, tc.seed, fc, weights=ipw_weights(clicks_v, slots_v,
                                                                                             val_theta))
    em = _ExaminationEM(model, train_split, slots_t, clicks_t, n_slots, dc.em_rows, batch, seed, theta, val_theta,
                        progress)
    return TrainingPlan(method, model, train_data, val_data, [em],
                        propensities=lambda: Propensities.relative(theta[:seen], "ipw-em"),
                        warmup_epochs=1 if initial_theta is None else 0)


def _slots(positions: np.ndarray, max_positions: int) -> np.ndarray:
    """Tower slots: positions capped at max_positions - 1; unknown positions (-1) get slot max_positions."""
    pos = np.asarray(positions)
    return np.where(pos >= 0, position_slots(pos, max_positions), max_positions).astype(np.int32)


def save_propensities(plan: TrainingPlan, model_dir: str | Path) -> Propensities | None:
    """Write the plan's propensities beside the trained model (the evaluation's counterfactual estimates and
    the optimise step's fine-tuning read them); returns them, or None for methods without any."""
    p = plan.propensities()
    if p is not None:
        p.save(model_dir)
    return p
