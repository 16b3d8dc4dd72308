"""The HTTP listener (default :8501): Prometheus `/metrics` and the health endpoints Kubernetes
and load balancers probe.

  GET /metrics                               Prometheus text format (the injected registry)
  GET /v2/health/live                        200 while the process serves
  GET /v2/health/ready                       200 when ready (see Readiness), else 503
  GET /v2/models/{name}/ready                200 when the model has an AVAILABLE version
  GET /v2/models/{name}/versions/{v}/ready   200 when that version is AVAILABLE
HEAD works like GET without a body. Unknown paths are 404, other methods 405.

A deliberately small HTTP/1.1 server on the event loop (asyncio streams, one request per
connection): probes and scrapes need nothing more, and it reads the repository on the loop
that owns it, without threads or another dependency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.errors import ServingError
from service.repository import ModelRepository

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_HTTP_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}  # anything else: not ready, 503
_MAX_HEADER_BYTES = 16 * 1024


class HttpListener:
    def __init__(
        self,
        repository: ModelRepository,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        live: Callable[[], bool],
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._ready = ready
        self._live = live
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_HEADER_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def route(self, method: str, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        path = unquote(urlsplit(target).path)
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/v2/health/live":
            return self._status(self._live(), "live")
        if path == "/v2/health/ready":
            return self._status(self._ready(), "ready")
        parts = path.strip("/").split("/")
        if len(parts) in (4, 6) and parts[:2] == ["v2", "models"] and parts[-1] == "ready":
            if len(parts) == 6 and parts[3] != "versions":
                return 404, "text/plain", b"not found\n"
            version = parts[4] if len(parts) == 6 else ""
            try:
                self._repository.resolve(parts[2], version)
            except ServingError as error:
                return (
                    _HTTP_STATUS.get(error.code.name, 503),
                    "text/plain",
                    f"{error.message}\n".encode(),
                )
            return 200, "text/plain", b"ready\n"
        return 404, "text/plain", b"not found\n"

    @staticmethod
    def _status(ok: bool, what: str) -> tuple[int, str, bytes]:
        return (
            (200, "text/plain", f"{what}\n".encode())
            if ok
            else (503, "text/plain", f"not {what}\n".encode())
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = request_line.split(" ", 2)
            status, content_type, body = self.route(method, target)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            status, content_type, body, method = 400, "text/plain", b"bad request\n", "GET"
        headers = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(headers.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
