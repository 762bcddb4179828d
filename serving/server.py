"""The KServe ModelServer, adjusted for shoprank.

What differs from `kserve.ModelServer` and why:
- A model that failed to load is registered anyway: the process stays up, `/v2/health/ready` and the model's
  ready endpoint answer 503, and the reason is in the log (KServe would raise NoModelReady and exit, which on a
  cluster is a crash loop).
- Server readiness is "every registered model is ready" (KServe's DataPlane.ready() is always true).
- Malformed bodies on KServe's own routes get 400 instead of FastAPI's 422.
- The unversioned v2 infer route is served by serving.rest.FastInferMiddleware (see there), unless disabled.
- With `--workers > 1` each worker listens on its own SO_REUSEPORT socket (see BalancedRESTServerMultiProcess).
- Once the models are loaded, the heap is frozen out of the garbage collector (`freeze_heap`).
- Model metadata (`GET /v2/models/NAME`, gRPC ModelMetadata) lists the bundle's version in `versions` (KServe's
  DataPlane leaves it out and its gRPC servicer drops the field); infer responses carry it as `model_version`.
- Every REST route goes through serving.front.FrontDoorMiddleware: the body limit (413), the versioned v2 routes
  (the bundle's version served, any other 404), `Connection: close` while draining. Refusals (serving.errors)
  have exception handlers: 413, and 503 with Retry-After.
- `/metrics` adds up every worker process (serving.metrics: Prometheus multiprocess mode; answered by the front
  door, since FastAPI 0.165 keeps included routers as opaque routes that a replaced route cannot shadow).
- Shutdown is graceful (serving.shutdown): not ready first, then every accepted request answered, idle
  connections closed cleanly, all within `--grace_period`; the models are unloaded only after the servers
  stopped (KServe unloads them as the signal arrives, under requests still running).
The REST server class is pickled into each worker process with `--workers > 1`, so these changes apply there too.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from concurrent import futures
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from grpc import aio
from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.logging import logger
from kserve.model import BaseKServeModel
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess, RESTServerProcess
from kserve.protocol.rest.server import RESTServer
from kserve.utils.inference_client_factory import InferenceClientFactory

from serving.errors import BodyTooLarge, ServiceUnavailable, error_response, service_unavailable_handler
from serving.front import FrontDoorMiddleware
from serving.logs import configure_logging
from serving.metrics import mark_dead
from serving.rest import FastInferMiddleware
from serving.shutdown import DRAIN, GracefulServer

__all__ = [
    "BalancedRESTServerMultiProcess",
    "ShoprankDataPlane",
    "ShoprankGRPCServer",
    "ShoprankModelServer",
    "ShoprankRESTServer",
    "ShoprankServicer",
    "WorkerProcess",
    "freeze_heap",
    "reuseport_socket",
]


def freeze_heap() -> None:
    """Move every object alive now (the loaded bundle, TensorFlow's and KServe's modules: ~400k objects) out of
    the cyclic garbage collector's reach. A full collection over them took ~200 ms on this machine, a pause of
    every request in flight whenever it ran; objects created while serving are still collected as before."""
    gc.collect()
    gc.freeze()


class ShoprankDataPlane(DataPlane):
    async def ready(self) -> bool:
        if DRAIN.active:  # shutting down: out of the Service's endpoints first (serving.shutdown)
            return False
        if not await super().ready():  # the predictor's health, for a transformer with health checks on
            return False
        models = self.model_registry.get_models()
        return bool(models) and all([await m.healthy() for m in models.values()])

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        version = getattr(self.get_model_from_registry(model_name), "version", "")
        if version:  # the bundle's version (shoprank.release.kserve.rollout.served_versions reads it from here)
            metadata["versions"] = [version]
        return metadata


class ShoprankServicer(InferenceServicer):
    """KServe's gRPC servicer, with the model versions in ModelMetadata (KServe's copies four fields only)."""

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(name=metadata["name"], versions=metadata.get("versions") or [],
                                        platform=metadata["platform"], inputs=metadata["inputs"],
                                        outputs=metadata["outputs"])


class ShoprankGRPCServer(GRPCServer):
    """KServe's GRPCServer.start, with ShoprankServicer (KServe builds its servicer class inside start()) and
    `max_receive_bytes` (the REST body limit unless --grpc_max_receive_message_length is given)."""

    def __init__(self, *args: Any, max_receive_bytes: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_receive_bytes = max_receive_bytes or self._kwargs.get("grpc_max_receive_message_length")

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length", self.max_receive_bytes)])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            ShoprankServicer(self._data_plane, self._model_repository_extension), self._server)
        listen_addr = f"[::]:{self._port}"
        self._server.add_insecure_port(listen_addr)
        logger.info("Starting gRPC server on %s with %s workers", listen_addr, max_workers)
        await self._server.start()
        await self._server.wait_for_termination()


async def _validation_error(_: Any, exc: RequestValidationError) -> Response:
    errors = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    return Response(orjson.dumps({"error": "invalid request: " + "; ".join(errors)}), status_code=400,
                    media_type="application/json")


async def _body_too_large(_: Any, exc: BodyTooLarge) -> Response:
    return error_response(413, str(exc))


class ShoprankRESTServer(RESTServer):
    def __init__(self, *args: Any, fast_infer: bool = True, max_body_bytes: int = 1 << 20,
                 access_log: bool = False, trace_log: bool = False, drain_s: float = 0.0,
                 shutdown_timeout_s: float = 25.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fast_infer, self.max_body_bytes = fast_infer, max_body_bytes
        self.access_log, self.trace_log = access_log, trace_log
        self.drain_s, self.shutdown_timeout_s = drain_s, shutdown_timeout_s
        self._server = GracefulServer(self.config, drain_s=drain_s, timeout_s=shutdown_timeout_s)

    def create_application(self) -> None:
        super().create_application()
        app = kserve_model_server.app
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(BodyTooLarge, _body_too_large)
        app.add_exception_handler(ServiceUnavailable, service_unavailable_handler)
        if self.fast_infer:
            app.add_middleware(FastInferMiddleware, dataplane=self.dataplane, max_body_bytes=self.max_body_bytes)
        # Added last, so it is the outermost user middleware: every request passes it first.
        app.add_middleware(FrontDoorMiddleware, dataplane=self.dataplane, max_body_bytes=self.max_body_bytes)

    def run(self, sockets: Any = None) -> None:
        # Entry point of a worker process (--workers > 1): same log settings as the main process, then load
        # the models' native handles here (they were dropped when the models were pickled), and only then open
        # this worker's listening socket (see BalancedRESTServerMultiProcess).
        configure_logging(self.access_log, self.trace_log)
        self._server.reraise_signals = False  # the parent stops the worker; its exit code should be 0
        for model in self.dataplane.model_registry.get_models().values():
            if getattr(model, "needs_load", False):
                model.load()
        freeze_heap()
        super().run(sockets or [reuseport_socket(self.config.host, self.config.port, self.config.backlog)])


def reuseport_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket that shares its port with the other workers' (SO_REUSEPORT: the kernel spreads new
    connections over the sockets)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class WorkerProcess(RESTServerProcess):
    """KServe's worker process, with a start-up allowance for its liveness ping.

    KServe pings every worker each half second and kills one that does not answer within 5 s. A spawned worker
    answers only once it has unpickled the server and imported KServe, numpy, pyarrow and LiteRT, which took
    longer than 5 s on this machine under load (load average 15 on 2 cores): every worker was killed before it
    answered, and replaced, forever. Until its first answer (at most `startup_s`), a live worker is only asked,
    without blocking the parent's event loop (which also serves gRPC); after it, KServe's 5 s check applies.
    """

    def __init__(self, *args: Any, startup_s: float = 120.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.startup_s = startup_s
        self.started_at: float | None = None
        self.answered = False

    def start(self) -> None:
        super().start()
        self.started_at = time.monotonic()
        self._parent_conn.send(b"ping")

    def starting(self) -> bool:
        """True while the worker is still coming up: alive, not answered yet, within its allowance."""
        if self.answered or not self._process.is_alive():
            return False
        if self._parent_conn.poll(0):
            self._parent_conn.recv()
            self.answered = True
            return False
        return time.monotonic() - (self.started_at or 0.0) < self.startup_s


class BalancedRESTServerMultiProcess(RESTServerMultiProcess):
    """KServe's multi-process REST server, with one SO_REUSEPORT listening socket per worker, opened by the
    worker itself once it has loaded the bundle.

    KServe shares one listening socket between the workers. asyncio and libuv accept connections in a loop, so
    the worker that wakes first takes a whole burst of new connections; with keep-alive clients one worker then
    serves most of the traffic (measured here: 2 workers no faster than 1, bimodal latency). Separate sockets
    on one port let the kernel spread connections over the workers.

    Each worker binds its socket only when it is ready to serve, and the parent holds none: a socket opened
    earlier (or kept by the parent for a replacement) takes its share of new connections while nobody accepts
    them, so when a worker was killed, a new connection could wait for the whole start-up of its replacement
    (measured: a client timed out after 30 s). Now the kernel routes new connections to the sockets that exist,
    those of the live workers, and a dead worker's socket dies with it (connections in its backlog at that
    moment are reset, like its requests in flight).
    """

    def __init__(self, rest_server: ShoprankRESTServer, **kwargs: Any):
        super().__init__(**kwargs)
        self._rest_server = rest_server  # the object each worker process runs (pickled into it)

    @property
    def worker_stop_s(self) -> float:
        """How long a worker may take after SIGTERM: its drain and its shutdown timeout, plus a second."""
        return self._rest_server.drain_s + self._rest_server.shutdown_timeout_s + 1.0

    def _spawn(self) -> WorkerProcess:
        process = WorkerProcess([], self._rest_server.run, log_config_file=self.log_config_file)
        process.start()
        return process

    async def start(self) -> None:
        workers = self._rest_server.config.workers
        logger.info("Starting uvicorn with %s workers on port %s (one SO_REUSEPORT socket each, opened once the "
                    "worker is loaded), parent [%s]", workers, self._rest_server.config.port, os.getpid())
        for _ in range(workers):
            self._processes.append(self._spawn())
            logger.info("Started child process [%s]", self._processes[-1].pid)
        while not self.should_exit.is_set():
            await asyncio.sleep(0.5)
            await self.keep_subprocess_alive([])
        await self.terminate_all()

    async def keep_subprocess_alive(self, sockets: list[socket.socket]) -> None:
        # As KServe's, but a starting worker is given time to start (WorkerProcess) and opens its own socket.
        for idx, process in enumerate(self._processes):
            if self.should_exit.is_set():
                return
            if isinstance(process, WorkerProcess) and process.starting():
                continue
            if not process.is_alive():
                process.kill()
                await process.wait_for_termination()
                if self.should_exit.is_set():
                    return
                logger.info("Child process [%s] died", process.pid)
                mark_dead(process.pid)
                self._processes[idx] = self._spawn()
                logger.info("Started new child process [%s]", self._processes[idx].pid)

    async def stop(self, sig: int | None = None) -> None:
        self.should_exit.set()  # the loop in start() then terminates the workers, which drain on their own

    async def terminate_all(self) -> None:
        """SIGTERM to every worker, then wait for each up to its drain and shutdown timeout; kill what is left."""
        for p in self._processes:
            p.terminate()

        async def wait(process: RESTServerProcess) -> None:
            try:
                await process.wait_for_termination(self.worker_stop_s)
                logger.info("Terminated child process [%s]", process.pid)
            except TimeoutError:
                logger.warning("Child process [%s] took too long to terminate: killed", process.pid)
                process.kill()

        await asyncio.gather(*(wait(p) for p in self._processes))
        logger.info("Stopping parent process [%s]", os.getpid())


class ShoprankModelServer(ModelServer):
    def __init__(self, *, fast_infer: bool = True, max_body_bytes: int = 1 << 20, access_log: bool = False,
                 trace_log: bool = False, drain_s: float = 0.0, shutdown_timeout_s: float = 25.0,
                 grpc_max_receive_bytes: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.dataplane = ShoprankDataPlane(model_registry=self.registered_models)
        self._rest_options = {"fast_infer": fast_infer, "max_body_bytes": max_body_bytes,
                              "access_log": access_log, "trace_log": trace_log, "drain_s": drain_s,
                              "shutdown_timeout_s": shutdown_timeout_s}
        self.grpc_max_receive_bytes = grpc_max_receive_bytes
        self._load_after_start: list[BaseKServeModel] = []

    async def _serve(self) -> None:
        servers = [asyncio.ensure_future(s) for s in self.servers]
        if self._load_after_start:
            await asyncio.sleep(0)  # the REST supervisor spawns the workers before its first await
            for model in self._load_after_start:
                await asyncio.to_thread(model.load)
            freeze_heap()
        await asyncio.gather(*servers)
    def _register_and_check_atleast_one_model_is_ready(self, models: list[BaseKServeModel]) -> None:
        for model in models:
            if not isinstance(model, BaseKServeModel):
                raise RuntimeError("Model type should be 'BaseKServeModel'")
            self.register_model(model)
            model.enable_latency_logging = self.enable_latency_logging
            model.start()
            if not model.ready and model in self._load_after_start:
                logger.info("model '%s' loads in this process once the workers are started", model.name)
            elif not model.ready:
                logger.error("model '%s' is NOT ready (%s); serving anyway with /v2/health/ready = 503",
                             model.name, getattr(model, "load_error", None) or "load() returned False")

    def _make_rest_server(self, workers: int) -> ShoprankRESTServer:
        return ShoprankRESTServer(
            kserve_model_server.FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
            self.http_port, access_log_format=self.access_log_format, workers=workers,
            grace_period=self.grace_period, event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile, **self._rest_options)

    def start(self, models: list[BaseKServeModel], load_after_start: bool = False) -> None:
        """As ModelServer.start, with the REST server above (one process, or `workers` spawned processes).

        `load_after_start` (with workers): the models, not loaded yet, are loaded in this process (which serves
        gRPC) only once the workers are spawned. Each worker loads the bundle itself anyway, so loading here
        first only delayed them: with a large catalogue, start-up to ready took two load times instead of one."""
        self._load_after_start = [m for m in models if not m.ready] if load_after_start and self.workers > 1 else []
        self._register_and_check_atleast_one_model_is_ready(models)
        if self.workers > 1:
            multi = BalancedRESTServerMultiProcess(
                self._make_rest_server(self.workers), app=kserve_model_server.FASTAPI_APP_IMPORT_STRING,
                data_plane=self.dataplane, model_repository_extension=self.model_repository_extension,
                http_port=self.http_port, access_log_format=self.access_log_format, workers=self.workers,
                grace_period=self.grace_period, log_config_file=kserve_model_server.args.log_config_file,
                event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
                ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
            self._rest_multiprocess_server = multi
            self.servers.append(multi.start())
        else:
            self._rest_server = self._make_rest_server(1)
            self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = ShoprankGRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                                   kwargs=vars(kserve_model_server.args),
                                                   grace_period=self.grace_period,
                                                   max_receive_bytes=self.grpc_max_receive_bytes)
            self.servers.append(self._grpc_server.start(self.max_threads))
            if self._rest_server is not None:  # one process: gRPC stops beside REST, after the drain
                self._rest_server._server.after_drain = self._grpc_server.stop
        self.setup_event_loop()
        self.register_signal_handler()
        freeze_heap()
        asyncio.run(self._serve())

    def stop(self, sig: int) -> None:
        """As ModelServer.stop, but graceful: not ready at once, the servers stop (REST workers drain, gRPC
        finishes its calls within the grace period), and only then are the models unloaded."""
        DRAIN.begin(sig)

        async def shutdown() -> None:
            await InferenceClientFactory().close()
            logger.info("Stopping the model server")
            stopping = []
            if self._rest_multiprocess_server:
                stopping.append(self._rest_multiprocess_server.stop(sig))
            if self._grpc_server:
                stopping.append(self._stop_grpc_after_drain(sig))
            await asyncio.gather(*stopping)  # the REST workers stop on their own (terminate_all, in start())
            for model_name in list(self.registered_models.get_models().keys()):
                self.registered_models.unload(model_name)

        asyncio.create_task(shutdown())

    async def _stop_grpc_after_drain(self, sig: int) -> None:
        # gRPC is served by this process: it keeps serving through the REST workers' drain (a SIGTERM's), then
        # finishes its calls in progress within the grace period KServe gives it.
        drain_s = self._rest_options["drain_s"]
        if sig == signal.SIGTERM and drain_s > 0 and self._rest_multiprocess_server:
            await asyncio.sleep(drain_s)
        await self._grpc_server.stop(sig)
