"""Command-line options of the model server and the transformer, on top of KServe's own parser
(`kserve.model_server.parser`: ports, workers, model name, predictor host/protocol, ...)."""

from __future__ import annotations

import argparse

from kserve import model_server as kserve_model_server
from kserve.utils.utils import strtobool

from serving.batcher import BatchSettings
from serving.codec import Limits

__all__ = ["as_bool", "batch_settings", "build_parser", "limits", "server_kwargs"]


def as_bool(value: str) -> bool:
    return bool(strtobool(value))


def build_parser(description: str, default_model_dir: str = "/mnt/models") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, parents=[kserve_model_server.parser],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("shoprank")
    g.add_argument("--model_dir", default=default_model_dir,
                   help="the promoted bundle (towers/, items/, saved_model/, transform/)")
    g.add_argument("--unknown_candidates", choices=["last", "score"], default="last",
                   help="candidates the model does not know (not in the catalogue or the item vocabulary): last "
                        "ranks them after every known one (score 0.0); score ranks them by the model's score. "
                        "Both list them in the response's unknown_items")
    g.add_argument("--max_batch_size", type=int, default=BatchSettings.max_batch_rows,
                   help="micro-batcher: most candidate rows in one model call")
    g.add_argument("--max_batch_wait_ms", type=float, default=BatchSettings.max_wait_ms,
                   help="micro-batcher: how long a batch is held open to fill (0: batch only what is queued)")
    g.add_argument("--max_candidates", type=int, default=Limits.max_candidates,
                   help="most candidates (rows) in one request; more is a 400")
    g.add_argument("--max_query_chars", type=int, default=Limits.max_query_chars)
    g.add_argument("--max_body_bytes", type=int, default=64 << 20, help="larger request bodies get 413")
    g.add_argument("--access_log", type=as_bool, default=False, help="uvicorn's access log line per request")
    g.add_argument("--fast_infer", type=as_bool, default=True,
                   help="serve v2 infer with the lean REST path (serving/rest.py); false uses KServe's route")
    # KServe's default is a formatted latency line per request; off here, on with --enable_latency_logging true.
    parser.set_defaults(enable_latency_logging=False)
    return parser


def batch_settings(args: argparse.Namespace) -> BatchSettings:
    if args.max_batch_size < 1 or args.max_batch_wait_ms < 0:
        raise SystemExit("--max_batch_size must be >= 1 and --max_batch_wait_ms >= 0")
    return BatchSettings(max_batch_rows=args.max_batch_size, max_wait_ms=args.max_batch_wait_ms)


def limits(args: argparse.Namespace) -> Limits:
    if args.max_candidates < 1:
        raise SystemExit("--max_candidates must be >= 1")
    return Limits(max_candidates=args.max_candidates, max_query_chars=args.max_query_chars)


def server_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for ShoprankModelServer from the parsed options."""
    return {"http_port": args.http_port, "grpc_port": args.grpc_port, "workers": args.workers,
            "max_threads": args.max_threads, "max_asyncio_workers": args.max_asyncio_workers,
            "enable_grpc": args.enable_grpc, "enable_docs_url": args.enable_docs_url,
            "enable_latency_logging": args.enable_latency_logging, "access_log_format": args.access_log_format,
            "event_loop": args.event_loop, "timeout_keep_alive": args.timeout_keep_alive,
            "fast_infer": args.fast_infer, "max_body_bytes": args.max_body_bytes, "access_log": args.access_log,
            "trace_log": args.enable_latency_logging}
