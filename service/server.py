"""The composition root: builds the repository, data plane, the gRPC front ends (OIP v2 and TF
Serving's API, on one port) and the HTTP port (both protocols' REST APIs, health, metrics), and
owns start-up, signals and shutdown. Nothing else constructs the world.

`Server` is created and used inside a running event loop (grpc.aio). Tests run it in-process on
port 0; `serve` is what `plexserve serve` runs until SIGTERM or SIGINT.

Start-up (`Server.start`), in order: the HTTP port listens (live; not ready), the models the
server starts with load and warm up, and only once each is AVAILABLE or FAILED does the gRPC
port open, as TF Serving and Triton do: a gRPC client never reaches a server that does not know
its model yet. A busy gRPC port stops the server before anything loads (SO_REUSEPORT is off, so
a second server cannot take half of the connections silently).

Shutdown (`Server.stop`), in three steps:
1. lame duck: health and readiness (gRPC health, OIP ServerReady, /v2/health/ready) go
   NOT_SERVING at once, and new requests are still answered for `lame_duck` seconds, so that
   endpoint controllers and health-checking clients move away first;
2. GOAWAY: the gRPC server stops listening and tells every client to send new calls elsewhere;
   the HTTP port answers new POSTs 503 and closes its connections; every request already
   accepted gets the grace period to be answered (then UNAVAILABLE "Cancelling all calls");
3. HTTP stops, the models unload, the spans still queued for export are sent (tracing on:
   service/otel.py, within a few seconds), and `serve` returns (exit status 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from plexserve.dataplane import DataPlane
from plexserve.errors import ServingError
from plexserve.frontend import MirrorRepository, ModelLink
from plexserve.grpc.limits import connection_options
from plexserve.grpc.oip import InferenceServicer
from plexserve.grpc.tfserving import ModelServicer, PredictionServicer
from plexserve.loop import freeze_startup_objects
from plexserve.metrics import Metrics
from plexserve.model_process import HopServer
from plexserve.proto import grpc_service_pb2, grpc_service_pb2_grpc
from plexserve.proto.tfserving import tf_serving_pb2, tf_serving_pb2_grpc
from plexserve.repository import ModelRepository, ModelState, ModelVersion, SingleModel
from plexserve.rest.app import HttpSettings, RestServer
from plexserve.settings import ServerConfig, SettingsError
from plexserve.threads import name_thread
from plexserve.tls import CertificateReloader, TlsFiles, server_credentials
from plexserve.tracing import TracingSettings, start_tracing

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Once the last accepted request is answered, the gRPC server gets this long to send the last
# responses and to end the calls that never end by themselves (health Watch streams, an idle
# ModelStreamInfer) before it cancels them: a drained server exits in about this time.
FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    config: ServerConfig = field(default_factory=ServerConfig)
    model_flags: Mapping[str, Any] = field(default_factory=dict)  # settings for every model
    host: str = "0.0.0.0"
    grpc_port: int = 8500
    max_message_bytes: int = 64 * 1024 * 1024
    grace_period: float = 25.0
    # After SIGTERM, seconds new requests are still answered while health says NOT_SERVING.
    lame_duck: float = 5.0
    # Connections older than this are closed gracefully (GOAWAY), so clients that balance
    # round-robin over a headless Service reconnect and find pods added since. 0: never.
    max_connection_age: float = 300.0
    # A gRPC connection with no call open for this long is closed (GOAWAY), so that idle
    # clients do not hold file descriptors; they reconnect on their next call. 0: never.
    max_connection_idle: float = 120.0
    intra_op_threads: int | None = None  # None: all cores but one; 0: TensorFlow's default
    inter_op_threads: int = 1
    device: str = "auto"  # auto | cpu | gpu:N
    http_port: int | None = 8501  # None: no HTTP listener
    # A request's head must arrive, and its body keep arriving, within this; also the idle
    # keep-alive timeout.
    http_read_timeout: float = 30.0
    http_max_connections: int | None = None  # None: 1024, or less under a low open-file limit
    ready_when: str = "all"  # all: every expected model AVAILABLE; any: at least one
    access_log_sample: float = 0.0
    registry: CollectorRegistry | None = None  # None: a new one for this server
    model_control: str = "none"  # none | poll | explicit
    poll_interval: float = 5.0
    load_models: tuple[str, ...] = ()  # explicit mode: loaded at start
    tls: TlsFiles | None = None  # None: plaintext gRPC (HTTP is always plain)
    # Set: serve this one model from its own folder (KServe's /mnt/models), not a repository.
    single_model: SingleModel | None = None
    tracing: TracingSettings = field(default_factory=TracingSettings)  # default: off
    # `plexserve serve --workers N` (service/supervisor.py): "model" is the process with the
    # models and the HTTP port, "frontend" one of the worker processes on the gRPC port; they
    # speak over the Unix socket `hop`. "single": one process does everything.
    role: str = "single"
    hop: str = ""


def server_version() -> str:
    try:
        return metadata.version("plexserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def _reflection_pool(files: list[FileDescriptor]) -> DescriptorPool:
    """One pool holding every service's file and what it imports, for server reflection: TF
    Serving's stubs live in a pool of their own (plexserve.proto.tfserving), the others in
    protobuf's default pool."""
    pool = DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name not in added:
            added.add(file.name)
            for dependency in file.dependencies:
                add(dependency)
            pool.AddSerializedFile(file.serialized_pb)

    for file in files:
        add(file)
    return pool


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        # None when off: then OpenTelemetry is not even imported.
        self.tracing = start_tracing(settings.tracing, server_version())
        self.registry = settings.registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.hop: HopServer | None = None  # the model process of worker mode
        self.link: ModelLink | None = None  # a worker process
        if settings.role == "frontend":
            mirror = MirrorRepository()
            mirror.on_change = self._on_mirror_change
            self.link = ModelLink(settings.hop, mirror)
            self.repository: ModelRepository = mirror
            self.dataplane = DataPlane(mirror, mirror, settings.access_log_sample, self.tracing)
        else:
            self.repository = ModelRepository(
                settings.repository,
                settings.config,
                dict(settings.model_flags),
                single_model=settings.single_model,
                tracing=self.tracing,
            )
            self.repository.listeners.append(self.metrics.on_state_change)
            self.dataplane = DataPlane(
                self.repository, self.metrics, settings.access_log_sample, self.tracing
            )
        if settings.role == "model":
            self.hop = HopServer(
                settings.hop, self.repository, self.metrics, self.ready, lambda: self._serving
            )
            self.repository.flush_counters = self.hop.flush
        self.http = RestServer(
            self.dataplane,
            self.registry,
            self.ready,
            self.live,
            server_version(),
            HttpSettings(
                max_body_bytes=settings.max_message_bytes,  # one message limit for both ports
                read_timeout=settings.http_read_timeout,
                max_connections=settings.http_max_connections,
            ),
            before_scrape=self.hop.flush if self.hop is not None else None,
        )
        self._health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._published: set[str] = set()
        self.certificates: CertificateReloader | None = None  # TLS: reloads renewed files
        self._serving = False  # the gRPC port is open: the start-up models are settled
        self._stopping = False
        self.grpc_port = 0
        self.repository.listeners.append(self._on_state_change)

    def live(self) -> bool:
        return not self._stopping

    def ready(self) -> bool:
        """Ready to take traffic: the one rule of every front end (gRPC health "", OIP
        ServerReady, /v2/health/ready). The gRPC port is open, the server is not shutting down,
        and the models that should serve do (--ready-when: all of them, or any)."""
        return (
            self._serving
            and not self._stopping
            and self.repository.ready(self.settings.ready_when == "any")
        )

    async def start(self) -> None:
        """HTTP first (live, not ready), then the start-up models, then the gRPC port."""
        settings = self.settings
        credentials = None
        if settings.tls is not None:
            credentials, self.certificates = server_credentials(settings.tls)
        if settings.role == "single":  # (worker mode: the supervisor checked and holds it)
            check_port_free(settings.host, settings.grpc_port, "--grpc-port")
        loop = asyncio.get_running_loop()
        loop.set_default_executor(
            ThreadPoolExecutor(
                thread_name_prefix="plexserve-io",
                initializer=name_thread,
                initargs=("plexserve-io",),
            )
        )  # loads, warm-ups, closes, repository scans
        self._spawn(self._watch_loop())
        if self.link is None:
            from plexserve.runner import configure_tensorflow

            gpus = configure_tensorflow(
                settings.intra_op_threads, settings.inter_op_threads, settings.device
            )
            log.info("TensorFlow devices: %s", ", ".join(gpus) or "CPU only")
        froze = freeze_startup_objects()
        log.info("froze %d start-up objects out of the garbage collector", froze)
        if self.hop is None:
            self._grpc = self._grpc_server()
            await self._health.set("", NOT_SERVING)  # (the servicer starts out saying SERVING)
        else:
            await self.hop.start()
        if settings.http_port is not None:
            try:
                await self.http.start(settings.host, settings.http_port)
            except OSError as error:
                raise SettingsError(
                    f"--http-port {settings.http_port}: cannot listen on "
                    f"{settings.host}:{settings.http_port}: {error.strerror or error}"
                ) from None
        if settings.single_model is not None:
            log.info("serving %s", settings.single_model.describe())
        if self.link is not None:  # a worker: the model process loads, and says when it is done
            await self.link.start()
            await self.repository.settled.wait()  # type: ignore[attr-defined]
        else:
            await self._load_models()
        if self._grpc is None:  # the model process: the workers open the gRPC port
            self._serving = True
            assert self.hop is not None
            self.hop.changed()
            return
        security = self._listen(self._grpc, credentials)
        self._serving = True
        await self._publish_health()
        await self._grpc.start()
        # (after gRPC started its own threads, which would take the name over)
        name_thread("plexserve-loop")
        log.info("gRPC listening on %s:%d (%s)", settings.host, self.grpc_port, security)

    def _grpc_server(self) -> grpc.aio.Server:
        """The gRPC server with every service on it; not listening yet."""
        limit = self.settings.max_message_bytes
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # grpcio shares ports by default: a second server on a busy port would bind
            # silently and take half of the new connections. Off, binding a busy port fails.
            # Worker mode: every worker listens on the port, on purpose; the kernel spreads
            # the connections over them.
            ("grpc.so_reuseport", int(self.settings.role == "frontend")),
            *connection_options(self.settings.max_connection_idle),
        ]
        if self.settings.max_connection_age:
            age_ms = int(self.settings.max_connection_age * 1000)
            options += [
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", int(self.settings.grace_period * 1000)),
            ]
        server = grpc.aio.server(options=options)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, server_version(), self.ready), server
        )
        tf_serving_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.dataplane), server
        )
        tf_serving_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.dataplane), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        files = [
            grpc_service_pb2.DESCRIPTOR,
            tf_serving_pb2.DESCRIPTOR,
            health_pb2.DESCRIPTOR,
            reflection_pb2.DESCRIPTOR,
        ]
        reflection.enable_server_reflection(
            [service.full_name for file in files for service in file.services_by_name.values()],
            server,
            pool=_reflection_pool(files),
        )
        return server

    def _listen(self, server: grpc.aio.Server, credentials: grpc.ServerCredentials | None) -> str:
        """Bind the gRPC port (clients can connect from here on); what it is secured with."""
        settings = self.settings
        address = f"{settings.host}:{settings.grpc_port}"
        try:
            if credentials is None:
                self.grpc_port = server.add_insecure_port(address)
                return "plaintext"
            self.grpc_port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpcio: "Failed to bind to address ..."
            raise port_in_use(settings.host, settings.grpc_port, "--grpc-port") from None
        mutual = settings.tls is not None and settings.tls.client_ca is not None
        return "TLS, client certificates required" if mutual else "TLS"

    async def _load_models(self) -> None:
        settings = self.settings
        if settings.model_control == "explicit":
            self.repository.requested = set()
            self.repository.pending.update(settings.load_models)
            for name in settings.load_models:
                try:
                    await self.repository.load_model(name)
                except ServingError as error:  # the server still starts; readiness says no
                    log.error("--load-model %s: %s", name, error.message)
                finally:
                    self.repository.pending.discard(name)
            return
        await self.repository.load_all()
        if settings.model_control == "poll":
            self._spawn(self.repository.poll_forever(settings.poll_interval))

    async def _watch_loop(self, interval: float = 1.0) -> None:
        """Publish the share of each second the event loop's thread spends on the CPU."""
        cpu, wall = time.thread_time(), time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now_cpu, now_wall = time.thread_time(), time.monotonic()
            self.metrics.event_loop_busy.set(min(1.0, (now_cpu - cpu) / (now_wall - wall)))
            cpu, wall = now_cpu, now_wall

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_state_change(self, model: ModelVersion, previous: ModelState, seconds: float) -> None:
        if not self._stopping:
            self._spawn(self._publish_health())

    def _on_mirror_change(self) -> None:
        """A worker: the model process pushed new states, or went away."""
        if not self._stopping and self._serving:
            self._spawn(self._publish_health())

    async def _publish_health(self) -> None:
        """grpc.health.v1: "" follows server readiness, a model's name that model's."""
        if self._stopping:
            return
        await self._health.set("", SERVING if self.ready() else NOT_SERVING)
        self._published.update(self.repository)
        for name in sorted(self._published):
            ready = self.repository.model_ready(name)
            await self._health.set(name, SERVING if ready else NOT_SERVING)

    async def stop(self, grace: float | None = None, lame_duck: float | None = None) -> None:
        """Shut down (the module docstring's three steps): NOT_SERVING at once while new
        requests are still answered for `lame_duck` seconds; then GOAWAY, and the requests
        already accepted get `grace` seconds to be answered; then unload. Both default to the
        server's settings; 0 skips a step's wait."""
        settings = self.settings
        grace = settings.grace_period if grace is None else grace
        lame_duck = settings.lame_duck if lame_duck is None else lame_duck
        if self._stopping:
            return
        self._stopping = True
        began = time.monotonic()
        if self.hop is not None:
            self.hop.changed()  # the workers' readiness follows
        await self._health.enter_graceful_shutdown()
        for task in self._background:
            task.cancel()
        serving = self._serving
        if serving and lame_duck > 0:
            log.info(
                "shutdown: NOT_SERVING; new requests are still answered for %g s (lame duck)",
                lame_duck,
            )
            await asyncio.sleep(lame_duck)
        started = time.monotonic()
        self.http.refuse_new_requests()
        if self.dataplane.inflight:
            log.info(
                "shutdown: %d requests queued or running, waiting up to %.1f s for them",
                self.dataplane.inflight,
                grace,
            )
        if self._grpc is not None and serving:
            log.info("shutdown: GOAWAY: gRPC clients send their new calls elsewhere")
            left = await self._drain_grpc(self._grpc, grace, started)
        else:
            left = await self.dataplane.drain(grace)
        if self.hop is not None:  # the workers drain through this process: wait for them
            if not await self.hop.wait_for_workers(max(0.0, grace - (time.monotonic() - started))):
                log.warning("shutdown: workers still connected after the grace period")
            left += await self.hop.inflight.wait_idle(0)
            self.hop.close()
        if left:
            log.warning(
                "shutdown: the grace period (%.1f s) is over: %d requests end UNAVAILABLE",
                grace,
                left,
            )
        self.dataplane.refuse_new_requests()  # (nothing may reach a model that unloads)
        await self.http.stop()
        await self.repository.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        log.info("shutdown: done in %.1f s", time.monotonic() - began)

    async def _drain_grpc(self, server: grpc.aio.Server, grace: float, started: float) -> int:
        """GOAWAY now; wait until the accepted requests are answered or `grace` is over; end the
        calls that never end by themselves. Returns how many requests the grace period cut."""

        def remaining() -> float:
            return max(0.0, grace - (time.monotonic() - started))

        # grpc.aio's stop: the listener closes, every connection gets GOAWAY, the calls already
        # accepted go on; those still running when `grace` is over are cancelled (their
        # clients see UNAVAILABLE "Cancelling all calls").
        stopped = asyncio.ensure_future(server.stop(grace))
        left = await self.dataplane.drain(remaining())
        while not left and not stopped.done():
            # Every accepted request is answered. What is left are calls that never end by
            # themselves (health Watch, an idle ModelStreamInfer): a short flush for the last
            # responses to go out and for a request the loop has not reached yet to begin.
            await asyncio.wait({stopped}, timeout=min(FLUSH_SECONDS, remaining()))
            if stopped.done() or not self.dataplane.inflight:
                break
            left = await self.dataplane.drain(remaining())
        if not stopped.done() and not left:
            # Cut what is left now. grpc.aio's shutdown must not run twice at once (a second
            # call racing the first can reach the core server after the first destroyed it: a
            # segfault), so the first is stopped before the second begins.
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped
            await server.stop(0)
        else:
            await stopped
        return left


def port_in_use(host: str, port: int, flag: str) -> SettingsError:
    return SettingsError(
        f"{flag} {port}: {host}:{port} is already in use (another server listens on it, or "
        "one still shutting down): choose another port, or stop that server first"
    )


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raise `port_in_use` when `host:port` cannot be bound now (port 0: any port; always free).
    SO_REUSEADDR, as gRPC binds, so a port whose last connections are in TIME_WAIT is free."""
    if port == 0:
        return
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise SettingsError(f"--host {host}: cannot resolve it: {error.strerror}") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise port_in_use(host, port, flag) from None
            raise SettingsError(
                f"{flag} {port}: cannot listen on {host}:{port}: {error.strerror}"
            ) from None


def raise_open_file_limit() -> None:
    """Every connection costs a file descriptor: take the hard limit the process is allowed,
    not the (often 1024) soft one, as servers written in Go do by default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open-file limit raised from %d to %s", soft, hard)
        except (ValueError, OSError) as error:
            log.warning("open-file limit stays %d: %s", soft, error)


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (`Server.stop`); a signal during
    start-up stops the model loads. A second signal exits at once, status 128 + its number."""
    raise_open_file_limit()
    server = Server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("second %s: exiting now, without waiting for running requests", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            # Not SystemExit: asyncio.run would then wait for the tasks and the TensorFlow
            # threads it cancels, which is what the second signal is meant to skip.
            os._exit(128 + signum)
        log.info(
            "%s: shutting down (lame duck %g s, then grace period %g s)",
            name,
            settings.lame_duck,
            settings.grace_period,
        )
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    starting = asyncio.create_task(server.start())
    signalled = asyncio.create_task(stopping.wait())
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        try:
            starting.result()  # a bad TLS file, a port in use: the error ends `serve`
        except BaseException:
            signalled.cancel()
            await server.stop(grace=0, lame_duck=0)
            raise
        await signalled
    else:
        starting.cancel()  # loads already running on threads finish; no new one starts
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    await server.stop()
