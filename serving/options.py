"""Command-line options of the model server and the transformer, on top of KServe's own parser
(`kserve.model_server.parser`: ports, workers, model name, predictor host/protocol, ...).

Limits that bound memory and time are options with defaults sized for the cpu profile (one worker in a 1-2 GiB
container, Kubernetes' default 30 s termination grace period): the request body (1 MiB), the batcher's queue,
the token cache, the drain and the grace period.
"""

from __future__ import annotations

import argparse

from kserve import model_server as kserve_model_server
from kserve.constants.constants import MAX_GRPC_MESSAGE_LENGTH
from kserve.utils.utils import strtobool

from serving.batcher import BatchSettings
from serving.codec import Limits
from shoprank.features.transform import TOKEN_CACHE_BYTES

__all__ = ["DEFAULT_MAX_BODY_BYTES", "as_bool", "batch_settings", "build_parser", "limits", "server_kwargs",
           "shutdown_timeout"]

# Larger than any valid request: 1000 candidates of 32-character ids with a long history and query are ~60 KB
# of JSON; 1 MiB leaves room for binary tensor requests of ~2,500 rows (transformer -> predictor).
DEFAULT_MAX_BODY_BYTES = 1 << 20


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
    g.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="larger request bodies get 413, on every REST route; also gRPC's receive limit unless "
                        "--grpc_max_receive_message_length is given")
    g.add_argument("--max_queue_rows", type=int, default=BatchSettings.max_queue_rows,
                   help="micro-batcher: most candidate rows waiting; a request beyond it gets 503 + Retry-After")
    g.add_argument("--max_queue_ms", type=float, default=BatchSettings.max_queue_ms,
                   help="micro-batcher: longest wait the queue may mean at the model's recent speed; a request "
                        "beyond it gets 503 + Retry-After (0: rows bound only)")
    g.add_argument("--token_cache_bytes", type=int, default=TOKEN_CACHE_BYTES,
                   help="bound of the query token cache per worker, in bytes (0: no cache)")
    g.add_argument("--grace_period", type=float, default=30.0,
                   help="seconds from SIGTERM to exit, at most (the pod's terminationGracePeriodSeconds)")
    g.add_argument("--drain_seconds", type=float, default=3.0,
                   help="after SIGTERM: seconds of not-ready while still serving, before the listening sockets "
                        "close (time for the endpoints to drop the pod)")
    g.add_argument("--access_log", type=as_bool, default=False, help="uvicorn's access log line per request")
    g.add_argument("--fast_infer", type=as_bool, default=True,
                   help="serve v2 infer with the lean REST path (serving/rest.py); false uses KServe's route")
    # KServe's default is a formatted latency line per request; off here, on with --enable_latency_logging true.
    parser.set_defaults(enable_latency_logging=False)
    return parser


def batch_settings(args: argparse.Namespace) -> BatchSettings:
    if args.max_batch_size < 1 or args.max_batch_wait_ms < 0 or args.max_queue_rows < 1 or args.max_queue_ms < 0:
        raise SystemExit("--max_batch_size and --max_queue_rows must be >= 1, --max_batch_wait_ms and "
                         "--max_queue_ms >= 0")
    return BatchSettings(max_batch_rows=args.max_batch_size, max_wait_ms=args.max_batch_wait_ms,
                         max_queue_rows=args.max_queue_rows, max_queue_ms=args.max_queue_ms)


def limits(args: argparse.Namespace) -> Limits:
    if args.max_candidates < 1:
        raise SystemExit("--max_candidates must be >= 1")
    return Limits(max_candidates=args.max_candidates, max_query_chars=args.max_query_chars)


def shutdown_timeout(args: argparse.Namespace) -> float:
    """Seconds a REST process has, after its drain, to answer what it accepted: the grace period less the drain
    and 2 s for the process to exit (never below 1 s)."""
    return max(1.0, args.grace_period - args.drain_seconds - 2.0)


def server_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for ShoprankModelServer from the parsed options."""
    if args.max_body_bytes < 1 or args.grace_period <= 0 or args.drain_seconds < 0:
        raise SystemExit("--max_body_bytes and --grace_period must be > 0 and --drain_seconds >= 0")
    grpc_receive = (args.max_body_bytes if args.grpc_max_receive_message_length == MAX_GRPC_MESSAGE_LENGTH
                    else args.grpc_max_receive_message_length)
    return {"http_port": args.http_port, "grpc_port": args.grpc_port, "workers": args.workers,
            "max_threads": args.max_threads, "max_asyncio_workers": args.max_asyncio_workers,
            "enable_grpc": args.enable_grpc, "enable_docs_url": args.enable_docs_url,
            "enable_latency_logging": args.enable_latency_logging, "access_log_format": args.access_log_format,
            "event_loop": args.event_loop, "timeout_keep_alive": args.timeout_keep_alive,
            "fast_infer": args.fast_infer, "max_body_bytes": args.max_body_bytes, "access_log": args.access_log,
            "trace_log": args.enable_latency_logging, "grace_period": max(1, int(shutdown_timeout(args))),
            "drain_s": args.drain_seconds, "shutdown_timeout_s": shutdown_timeout(args),
            "grpc_max_receive_bytes": grpc_receive}
