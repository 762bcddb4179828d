"""`python -m serving`: the shoprank KServe model server (v2 / Open Inference protocol, REST and gRPC).

    python -m serving --model_name shoprank-ranker --model_dir BUNDLE [--backend tflite|savedmodel|onnx]
                      [--http_port 8080] [--grpc_port 8081] [--workers N] [--max_batch_size ROWS]
                      [--max_batch_wait_ms MS] [--max_candidates N]

This is also the container command of the ServingRuntime in manifests/base/servingruntime.yaml.
"""

from __future__ import annotations

if __name__ == "__main__":  # before anything imports prometheus_client (KServe does): see serving.metrics
    from serving.metrics import use_multiprocess_metrics

    use_multiprocess_metrics()

import sys  # noqa: E402

from serving.batcher import CPU_MAX_BATCH_ROWS  # noqa: E402
from serving.logs import configure_logging  # noqa: E402
from serving.model import ShoprankModel  # noqa: E402
from serving.options import as_bool, batch_settings, build_parser, limits, server_kwargs  # noqa: E402
from serving.server import ShoprankModelServer  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser("shoprank model server (KServe v2)")
    parser.set_defaults(max_batch_size=CPU_MAX_BATCH_ROWS)  # serving/batcher.py says why, with measurements
    parser.add_argument("--backend", choices=["auto", "tflite", "savedmodel", "onnx"], default="auto",
                        help="auto: the int8 composition when the bundle has towers/ (int8 request tower, item "
                             "vectors from items/, float pair head), else the SavedModel (the whole graph); "
                             "onnx: the ONNX export (triton/, the whole graph) through onnxruntime")
    parser.add_argument("--num_threads", type=int, default=1,
                        help="LiteRT threads per worker process (the batch is the parallelism that pays here)")
    parser.add_argument("--batch_in_thread", type=as_bool, default=None,
                        help="run model calls on a dedicated thread instead of the event loop "
                             "(default: yes for savedmodel and onnx, no for tflite)")
    args = parser.parse_args(argv)
    configure_logging(access_log=args.access_log, trace_log=args.enable_latency_logging)
    model = ShoprankModel(args.model_name, args.model_dir, backend=None if args.backend == "auto" else args.backend,
                          batch=batch_settings(args), limits=limits(args), num_threads=args.num_threads,
                          batch_in_thread=args.batch_in_thread, token_cache_bytes=args.token_cache_bytes,
                          unknown_candidates=args.unknown_candidates)
    if args.workers <= 1:  # with workers, each loads the bundle itself; this process after spawning them
        model.load()
    host = "0.0.0.0"
    print(f"shoprank serving '{args.model_name}' ({model.backend or args.backend}) from {args.model_dir}\n"
          f"  REST  http://{host}:{args.http_port}/v2/models/{args.model_name}/infer   "
          f"(health /v2/health/ready, metadata /v2/models/{args.model_name}, metrics /metrics)\n"
          f"  gRPC  {host}:{args.grpc_port}  (inference.GRPCInferenceService)\n"
          f"  workers {args.workers}, micro-batch <= {args.max_batch_size} rows, wait {args.max_batch_wait_ms} ms, "
          f"queue <= {args.max_queue_rows} rows, body <= {args.max_body_bytes} bytes",
          file=sys.stderr, flush=True)
    ShoprankModelServer(**server_kwargs(args)).start([model], load_after_start=args.workers > 1)


if __name__ == "__main__":
    main()
