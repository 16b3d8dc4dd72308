"""The HTTP port (default :8501): REST inference in both protocols, health and Prometheus metrics,
one aiohttp application on the server's event loop.

  GET  /metrics       Prometheus text format (the injected registry)
  /v2/...             the Open Inference Protocol's REST API (service/rest/oip.py)
  /v1/...             TF Serving's REST API (service/rest/tfserving.py)
HEAD works like GET. Errors are `{"error": "..."}` with the status service/rest/boundary.py maps.

A stalled client must not hold the process's file descriptors, so:
- a request's head must arrive within `read_timeout` seconds of the connection opening or of the
  previous answer on it (an idle keep-alive connection is closed after as long), and its body may
  not pause for longer than that (408, connection closed);
- at most `max_connections` are open at once: a connection beyond is answered 503 and closed
  at once, and the refusals are logged once a minute at most.
A body larger than the gRPC message limit is refused (413) before it is read. A client that
closes its connection cancels the request it was waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from plexserve.dataplane import DataPlane
from plexserve.rest.boundary import error_middleware
from plexserve.rest.oip import OipRest
from plexserve.rest.tfserving import TfServingRest

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1024
REFUSAL_LOG_SECONDS = 60.0
_REFUSAL_BODY = (
    b'{"error": "too many open HTTP connections: this server takes no more now; retry, '
    b'or reuse a kept-alive connection"}'
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: "
    + str(len(_REFUSAL_BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + _REFUSAL_BODY
)


# Open files kept out of the HTTP cap: the process's own (~20), and a burst of accepted
# connections (asyncio accepts up to 100 at once, before any of them can be refused).
RESERVED_FILES = 128


def default_max_connections() -> int:
    """1024, or half of the open-file limit left after RESERVED_FILES when that is lower (the
    other half is for gRPC connections, model files and the runtime)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, (soft - RESERVED_FILES) // 2))


@dataclass(frozen=True)
class HttpSettings:
    max_body_bytes: int = 64 * 1024 * 1024
    read_timeout: float = 30.0
    max_connections: int | None = None  # None: default_max_connections()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted from accept to close."""

    __slots__ = ("_handler", "_closed")

    def __init__(self, handler: RequestHandler, closed: Callable[[], None]) -> None:
        self._handler = handler
        self._closed = closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> None:
        self._handler.eof_received()  # (None: the transport closes itself)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, but a request that is not well-formed HTTP (a request line or a
    header over aiohttp's limits, bad syntax: answered 400 by aiohttp) is the client's doing:
    logged at DEBUG without a traceback. ERROR with a traceback stays for the server's faults."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, HttpProcessingError):
            self.debug(f"{msg}: %s", *args, error)
        else:
            self.error(msg, *args, exc_info=exc_info, **kwargs)


class _Refused(asyncio.Protocol):
    """A connection over the limit: one 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


class RestServer:
    def __init__(
        self,
        dataplane: DataPlane,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        live: Callable[[], bool],
        server_version: str,
        settings: HttpSettings | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._before_scrape = before_scrape  # worker mode: the workers ship their counters
        self._registry = registry
        self._ready = ready
        self._live = live
        self._server_version = server_version
        self.settings = settings or HttpSettings()
        self.max_connections = self.settings.max_connections or default_max_connections()
        self.accepting = True  # False from the end of the lame duck on (shutdown)
        self.open_connections = 0
        self.refused_connections = 0
        self._refused_since_log = 0
        self._refusal_logged = -REFUSAL_LOG_SECONDS
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port = 0

    def application(self) -> web.Application:
        settings = self.settings
        app = web.Application(
            middlewares=[error_middleware(lambda: self.accepting)],
            client_max_size=settings.max_body_bytes,
        )
        app.router.add_get("/metrics", self.metrics)
        app.add_routes(
            OipRest(
                self._dataplane,
                self._server_version,
                self._ready,
                self._live,
                settings.max_body_bytes,
                settings.read_timeout,
            ).routes()
        )
        app.add_routes(
            TfServingRest(self._dataplane, settings.max_body_bytes, settings.read_timeout).routes()
        )
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            await self._before_scrape()
        response = web.Response(body=generate_latest(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,  # the data plane's sampled access log covers inference
            keepalive_timeout=self.settings.read_timeout,
            # Before closing a connection whose request body was not read to its end (413, 408),
            # read and drop the rest for at most this long, so that the client gets the answer
            # rather than a reset; a stalled client is dropped after it.
            lingering_time=min(10.0, self.settings.read_timeout),
            shutdown_timeout=1.0,
            # A client that hangs up cancels its request: an inference request still queued
            # leaves the batcher (what is left of a large one is never computed). Model loads
            # and unloads are shielded from it (service/rest/oip.py).
            handler_cancellation=True,
            logger=_ServerLog(logging.getLogger("aiohttp.server"), {}),
        )
        await self._runner.setup()
        self._listener = await asyncio.get_running_loop().create_server(
            self._connection, host, port, reuse_address=True
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info(
            "HTTP listening on %s:%d (REST /v2 and /v1, /metrics; at most %d connections, "
            "read timeout %g s, body limit %d bytes)",
            host,
            self.port,
            self.max_connections,
            self.settings.read_timeout,
            self.settings.max_body_bytes,
        )

    def _connection(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        if self.open_connections >= self.max_connections:
            self._refuse()
            return _Refused()
        self.open_connections += 1
        return _Counted(self._runner.server(), self._closed)

    def _closed(self) -> None:
        self.open_connections -= 1

    def _refuse(self) -> None:
        self.refused_connections += 1
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
            log.warning(
                "HTTP: %d connections open, the limit (--http-max-connections): refused %d new "
                "connections since the last such line",
                self.open_connections,
                self._refused_since_log,
            )
            self._refusal_logged, self._refused_since_log = now, 0

    def refuse_new_requests(self) -> None:
        """Shutdown, after the lame duck: new POSTs (inference, model control) are answered 503,
        and every connection is closed after its current answer; health and /metrics still
        answer until `stop`."""
        self.accepting = False

    async def stop(self) -> None:
        """Stop listening, then close the connections (a request still running gets a second
        to finish)."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            await self._listener.wait_closed()
