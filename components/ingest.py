"""The ingest step: raw shop data (synthetic, a directory of tables, or a real dataset) as the shoprank tables."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import COMPONENT_IMAGE

__all__ = ["ingest"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def ingest(source: str, preset: str, overrides: str, raw_data: Output[Dataset]):
    """Land raw shop data as the shoprank tables: the synthetic shop ('synthetic'), a directory of tables,
    or a real dataset converted by its loader ('esci:<path or URI>', 'events:<path or URI>?preset=...',
    'ubi:<path or URI>').

    Args:
        source: "synthetic", a path or storage URI (s3://, gs://) of a directory with the shoprank tables,
            "esci:<path or URI>[?locale=us]", "events:<path or URI>[?preset=retailrocket|taobao]" or
            "ubi:<path or URI>" (OpenSearch User Behavior Insights: ubi_queries + ubi_events).
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        raw_data: The shoprank tables (catalogue, events, impressions) as the source's loader writes them.
    """
    from shoprank.config import resolve_config
    from shoprank.data.ingest import ingest as run
    from shoprank.errors import retry_transient
    from shoprank.telemetry import stage

    config = resolve_config(preset, overrides)
    with stage("ingest") as rec:  # storage errors that pass are tried again here; refusals fail at once
        rec |= retry_transient(lambda: run(source, raw_data.path, config), what="ingest")
    raw_data.metadata.update({"source": source, "format": rec.get("format", ""), "rows": rec.get("rows", {})})
