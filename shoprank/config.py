"""One typed configuration object for sizes, thresholds and budgets.

Every component receives the preset name plus a JSON string of overrides and resolves the same
`ShoprankConfig`; no other module keeps numbers of its own.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """Synthetic shop size. `n_impressions` is the one scale knob; the rest derive from it."""

    n_impressions: int = 1_000_000
    list_size: int = 20  # candidates shown per search request
    n_items: int = 5_000
    n_top_categories: int = 8
    n_leaves_per_top: int = 6
    n_brands: int = 96
    sessions_per_user: float = 6.0
    queries_per_session: float = 2.0
    browse_events_per_session: float = 3.0
    days: int = 28
    start_timestamp: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    chunk_impressions: int = 200_000  # rows generated and written per parquet row group
    bad_row_share: float = 0.001  # corrupt rows injected to exercise the quarantine
    seed: int = 7

    @property
    def n_requests(self) -> int:
        return max(1, self.n_impressions // self.list_size)

    @property
    def n_users(self) -> int:
        per_user = self.sessions_per_user * self.queries_per_session
        return max(20, int(self.n_requests / per_user))

    @property
    def end_timestamp(self) -> int:
        return self.start_timestamp + self.days * 86_400


@dataclass(frozen=True)
class ValidationConfig:
    max_bad_share: float = 0.02  # fail the step when a table has more bad rows than this
    min_timestamp: int = 946_684_800  # 2000-01-01: anything earlier is a broken clock
    max_clock_skew_seconds: int = 3_600  # timestamps may run this far past "now"


@dataclass(frozen=True)
class FeatureConfig:
    query_len: int = 6
    title_len: int = 12
    history_len: int = 16
    oov_buckets: int = 8
    min_token_count: int = 2
    max_items: int = 200_000
    price_buckets: int = 12
    train_share: float = 0.8
    validation_share: float = 0.1
    golden_requests: int = 16


@dataclass(frozen=True)
class SourceConfig:
    """Reading real data (`shoprank.sources`): chunking and the label mapping of the ESCI format."""

    chunk_rows: int = 1_000_000  # rows per parquet row-group batch / CSV block batch read and written
    esci_positive_labels: str = "E"  # ESCI labels that count as the binary training label: "E" or "ES"
    esci_locale: str = ""  # keep one product_locale ("us", "es", "jp"); "" keeps every locale


@dataclass(frozen=True)
class RecommendConfig:
    """Event logs without search impressions: next-interaction ranking with sampled negatives.

    Every event of a `target_events` type is a request: its item is the positive, `negatives` items are
    drawn from the training-period popularity (or uniformly from the catalogue), and the behaviour sequence
    holds the user's `history_events` strictly before it.
    """

    negatives: int = 4
    negative_sampling: str = "popularity"  # or "uniform"
    target_events: tuple[str, ...] = ("click", "cart", "purchase")
    history_events: tuple[str, ...] = ("view", "click", "cart", "purchase")
    max_targets: int = 0  # sample about this many targets (deterministically); 0 keeps all
    seed: int = 13


@dataclass(frozen=True)
class PreprocessConfig:
    """Streaming preprocessing: bounded working set, whatever the data size."""

    partition_rows: int = 1_000_000  # rows per on-disk hash partition (one is in memory at a time)
    bucket_rows: int = 500_000  # output rows transformed and written per step


@dataclass(frozen=True)
class ModelConfig:
    token_dim: int = 32
    item_dim: int = 32
    price_dim: int = 8
    conv_filters: int = 48
    kernel_size: int = 3
    hidden_units: int = 96
    dropout: float = 0.2
    embedding_l2: float = 1e-5  # L2 on embedding tables: without it item ids overfit (val AUC -0.02)


@dataclass(frozen=True)
class TrainConfig:
    label: str = "clicked"  # or "purchased"
    batch_size: int = 1024
    epochs: int = 10  # an upper bound: early stopping on validation loss ends most runs sooner
    learning_rate: float = 5e-3
    patience: int = 1
    seed: int = 11


@dataclass(frozen=True)
class OptimizeConfig:
    target_sparsity: float = 0.8
    # Layers smaller than this stay dense: pruning them saves nothing and costs accuracy.
    min_prunable_params: int = 2048
    finetune_epochs: int = 2
    finetune_learning_rate: float = 3e-4
    pruning_end: float = 0.5  # share of fine-tuning steps over which sparsity ramps up to the target
    pruning_frequency: int = 50
    representative_batches: int = 256
    latency_repeats: int = 30
    # ONNX export of the optimised SavedModel (tf2onnx) for KServe's Triton runtime (onnxruntime backend).
    export_onnx: bool = True
    onnx_opset: int = 17


@dataclass(frozen=True)
class TritonConfig:
    """The Triton model configuration (config.pbtxt) written beside the ONNX export.

    max_batch_size 0: Triton does not batch on its own, the tensors keep the shapes this server's tensor
    requests use ([rows] and [rows, length]), and the shoprank transformer in front of Triton does the
    micro-batching. TensorRT runs as onnxruntime's execution provider; its engine is built at load time by
    warm-up requests of 1 and `warmup_rows` rows (the transformer's largest batch, --max_batch_size), so no
    client request waits for an engine build, and cached under `engine_cache_path` (a writable emptyDir).
    """

    tensorrt: bool = True
    # FP32: what the blessing gate checked (ONNX on CPU vs the SavedModel) is what the GPU computes. FP16 is
    # faster on tensor cores but its scores are not checked here (no GPU on the build machines).
    precision: str = "FP32"  # TensorRT precision_mode: FP32 | FP16
    workspace_bytes: int = 1 << 30
    engine_cache_path: str = "/tmp/trt-cache"
    instance_count: int = 1
    warmup_rows: int = 8192


@dataclass(frozen=True)
class EvaluationConfig:
    threshold: float = 0.5
    top_k: int = 10
    batch_size: int = 4096
    roc_points: int = 200
    max_slices: int = 24  # per-category slices reported (the largest); real catalogues have thousands


@dataclass(frozen=True)
class BlessingConfig:
    max_auc_drop: float = 0.003
    max_ndcg_drop: float = 0.005
    min_auc: float = 0.6  # absolute quality floor: a model that learned nothing is never blessed
    max_tflite_gzip_bytes: int = 8_000_000
    max_tflite_latency_ms_b256: float = 100.0
    golden_tolerance: float = 1e-4
    # |ONNX score - optimised SavedModel score| over the test set (both float32; measured ~1e-7).
    onnx_tolerance: float = 1e-4


@dataclass(frozen=True)
class ShoprankConfig:
    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    sources: SourceConfig = field(default_factory=SourceConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    blessing: BlessingConfig = field(default_factory=BlessingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# Presets are overrides on top of the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # Unit and integration tests: seconds, not minutes.
    "tiny": {
        "data": {"n_impressions": 20_000, "n_items": 600, "n_brands": 24, "chunk_impressions": 8_000},
        "features": {"min_token_count": 1, "golden_requests": 4},
        "model": {"token_dim": 8, "item_dim": 8, "price_dim": 4,
                  "conv_filters": 8, "hidden_units": 16, "embedding_l2": 0.0},
        "train": {"batch_size": 128, "epochs": 3, "learning_rate": 0.01},
        "optimize": {"finetune_epochs": 1, "pruning_frequency": 5, "representative_batches": 4,
                     "latency_repeats": 3},
        # A 2,000-row test set is noisy: wider budgets, so tests check the mechanics, not luck.
        "blessing": {"min_auc": 0.55, "max_auc_drop": 0.02, "max_ndcg_drop": 0.03},
    },
    # A quick look: about a minute end to end.
    "small": {
        "data": {"n_impressions": 100_000, "n_items": 1_500, "chunk_impressions": 50_000},
        "train": {"epochs": 4},
    },
    "default": {},
    # What a GPU training job would run: millions of items, wide embeddings.
    "large": {
        "data": {"n_impressions": 50_000_000, "n_items": 2_000_000, "n_brands": 2_000,
                 "n_top_categories": 24, "n_leaves_per_top": 20, "chunk_impressions": 1_000_000},
        "features": {"max_items": 2_000_000},
        "model": {"token_dim": 64, "item_dim": 64,
                  "conv_filters": 128, "hidden_units": 256},
        "train": {"batch_size": 8192, "epochs": 8},
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise ValueError(f"unknown config key '{where}'")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key '{where}' needs a mapping, got {value!r}")
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def _build(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            value = _build(f.default_factory, value)  # type: ignore[arg-type]
        elif isinstance(f.default, tuple) and isinstance(value, list):
            value = tuple(value)  # JSON has lists; the config keeps tuples (frozen, comparable)
        kwargs[f.name] = value
    return cls(**kwargs)


def resolve_config(preset: str = "default", overrides: str | dict[str, Any] | None = None) -> ShoprankConfig:
    """The config for `preset`, with `overrides` (a nested dict or its JSON) applied on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}', choose one of {sorted(PRESETS)}")
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip() else {}
    values = _merge(ShoprankConfig().to_dict(), PRESETS[preset])
    values = _merge(values, overrides or {})
    values["preset"] = preset
    config = _build(ShoprankConfig, values)
    if config.train.label not in ("clicked", "purchased"):
        raise ValueError(f"train.label must be 'clicked' or 'purchased', got {config.train.label!r}")
    if not 0.0 <= config.optimize.target_sparsity < 1.0:
        raise ValueError("optimize.target_sparsity must lie in [0, 1)")
    check_config(config)
    return config


# INT8 would need a TensorRT calibration table, which the export does not produce.
TRITON_PRECISIONS = ("FP32", "FP16")


def check_config(config: ShoprankConfig) -> None:
    """Refuse settings of the data sources that cannot work, naming the key."""
    from shoprank.schema import EVENT_TYPES

    labels = config.sources.esci_positive_labels
    if labels not in ("E", "ES"):
        raise ValueError(f"sources.esci_positive_labels must be 'E' or 'ES', got {labels!r}")
    tc = config.triton
    if tc.precision not in TRITON_PRECISIONS:
        raise ValueError(f"triton.precision must be one of {list(TRITON_PRECISIONS)}, got {tc.precision!r}")
    if tc.instance_count < 1 or tc.warmup_rows < 0 or tc.workspace_bytes < 1:
        raise ValueError("triton.instance_count and triton.workspace_bytes must be >= 1, triton.warmup_rows >= 0")
    rc = config.recommend
    if rc.negative_sampling not in ("popularity", "uniform"):
        raise ValueError(f"recommend.negative_sampling must be 'popularity' or 'uniform', got {rc.negative_sampling!r}")
    if rc.negatives < 1:
        raise ValueError("recommend.negatives must be at least 1")
    for key in ("target_events", "history_events"):
        values = getattr(rc, key)
        if isinstance(values, str) or not set(values) <= set(EVENT_TYPES) or not values:
            raise ValueError(f"recommend.{key} must be a non-empty list of {list(EVENT_TYPES)}, got {values!r}")
    if config.preprocess.partition_rows < 1 or config.preprocess.bucket_rows < 1 or config.sources.chunk_rows < 1:
        raise ValueError("preprocess.partition_rows, preprocess.bucket_rows and sources.chunk_rows must be >= 1")


def config_from_json(text: str) -> ShoprankConfig:
    values = json.loads(text)
    return _build(ShoprankConfig, values)
