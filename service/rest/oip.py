"""The Open Inference Protocol v2 over HTTP: KServe's and Triton's REST API, with Triton's binary
tensor extension, so that `tritonclient.http` and `perf_analyzer -i http` work unchanged.

  GET  /v2                                          server metadata
  GET  /v2/health/live | /v2/health/ready           200 {"live"|"ready": true}, else 503
  GET  /v2/models/{m}[/versions/{v}]                model metadata
  GET  /v2/models/{m}[/versions/{v}]/ready          200 when that version serves, else the error
  GET  /v2/models/{m}[/versions/{v}]/config         Triton's model configuration
  GET  /v2/models[/{m}[/versions/{v}]]/stats        statistics
  POST /v2/models/{m}[/versions/{v}]/infer          inference (JSON, or JSON + binary tensors)
  POST /v2/repository/index                         every model of the repository
  POST /v2/repository/models/{m}/load | /unload     explicit model control only

Thin, like the gRPC servicer it mirrors: JSON -> codec -> DataPlane / ModelRepository -> codec ->
JSON, over the same core, batcher, metrics (protocol "v2-rest") and statistics. When the server
traces requests or writes an access log, infer is routed through `observed` (request id, trace;
service/rest/boundary.py). Loop-bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from plexserve.codecs import oip as messages
from plexserve.codecs import oip_json as codec
from plexserve.dataplane import DataPlane
from plexserve.errors import InvalidInput, ModelControlDisabled, ServingError
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.repository import ModelState, check_version
from plexserve.rest.boundary import JSON, OIP_REQUEST_ID, json_response, observed, read_body
from plexserve.signature import Tensors

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace

PROTOCOL = "v2-rest"
SERVER_NAME = "plexserve"
# Only extensions that work end to end are listed: clients such as perf_analyzer call them.
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]
BINARY = "application/octet-stream"


class OipRest:
    def __init__(
        self,
        dataplane: DataPlane,
        server_version: str,
        ready: Callable[[], bool],
        live: Callable[[], bool],
        max_body_bytes: int,
        read_timeout: float,
    ) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._server_version = server_version
        self._ready = ready
        self._live = live
        self._max_body_bytes = max_body_bytes
        self._read_timeout = read_timeout
        self._tracing = dataplane.tracing
        self._observed = dataplane.tracing is not None or dataplane.access_log_sample > 0

    def routes(self) -> list[web.RouteDef]:
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        routes = [
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.server_live),
            web.get("/v2/health/ready", self.server_ready),
            web.get("/v2/models/stats", self.statistics),  # before {name}, as in Triton
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{name}/load", self.load),
            web.post("/v2/repository/models/{name}/unload", self.unload),
        ]
        for prefix in (model, version):
            routes += [
                web.get(prefix, self.model_metadata),
                web.get(f"{prefix}/ready", self.model_ready),
                web.get(f"{prefix}/config", self.model_config),
                web.get(f"{prefix}/stats", self.statistics),
                web.post(f"{prefix}/infer", self.observed_infer if self._observed else self.infer),
            ]
        return routes

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(
            {"name": SERVER_NAME, "version": self._server_version, "extensions": EXTENSIONS}
        )

    async def server_live(self, request: web.Request) -> web.Response:
        live = self._live()
        return json_response({"live": live}, 200 if live else 503)

    async def server_ready(self, request: web.Request) -> web.Response:
        ready = self._ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        model = self._repository.resolve(*_model_version(request))  # the error says why not
        return json_response({"name": model.name, "ready": True})

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._repository.resolve(*_model_version(request))
        versions = [
            str(mv.version)
            for mv in self._repository.versions(model.name)
            if mv.state is ModelState.AVAILABLE
        ]
        metadata = messages.model_metadata(model.name, versions, model.signature)
        return json_response(codec.message_json(metadata))

    async def model_config(self, request: web.Request) -> web.Response:
        model = self._repository.resolve(*_model_version(request))
        config = messages.model_config(model.name, model.signature, model.settings.batching)
        return json_response(codec.message_json(config.config))

    async def statistics(self, request: web.Request) -> web.Response:
        """Every loaded version (no name: every model; no version: every version)."""
        name, version = _model_version(request)
        if name:
            self._repository.resolve(name, version)  # NOT_FOUND when unknown
        statistics = await self._repository.statistics(name, version)
        response = pb.ModelStatisticsResponse(
            model_stats=[
                messages.model_statistics(mv.name, mv.version, counters)
                for mv, counters in statistics
            ]
        )
        return json_response(codec.message_json(response))

    async def _json_body(self, request: web.Request) -> dict[str, object]:
        """An optional JSON object body (the repository calls)."""
        body = await read_body(request, self._max_body_bytes, self._read_timeout)
        if not body.strip():
            return {}
        document = codec.loads(body)
        if not isinstance(document, dict):
            raise InvalidInput("the request body must be a JSON object")
        return document

    async def repository_index(self, request: web.Request) -> web.Response:
        ready = (await self._json_body(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"ready must be true or false, got {ready!r}")
        return json_response(
            codec.repository_index_json(
                await self._repository.current_index(), ready, ModelState.AVAILABLE.value
            )
        )

    def _explicit_only(self) -> None:
        if self._repository.requested is None:
            raise ModelControlDisabled(
                "model loading and unloading over the API need --model-control explicit "
                "(this server loads what is in its repository)"
            )

    async def load(self, request: web.Request) -> web.Response:
        parameters = (await self._json_body(request)).get("parameters")
        if parameters:
            raise InvalidInput(
                f"load parameters {parameters!r} are not supported: plexserve loads the "
                "model's files and config.yaml from its repository"
            )
        self._explicit_only()
        # A client that hangs up must not cut a load short (the server cancels its handler).
        await asyncio.shield(self._repository.load_model(request.match_info["name"]))
        return web.Response(content_type=JSON)

    async def unload(self, request: web.Request) -> web.Response:
        await self._json_body(request)
        self._explicit_only()
        await asyncio.shield(self._repository.unload_model(request.match_info["name"]))
        return web.Response(content_type=JSON)

    async def observed_infer(self, request: web.Request) -> web.Response:
        route = request.match_info.route.resource
        return await observed(
            request,
            self._tracing,
            route.canonical if route is not None else request.path,
            PROTOCOL,
            *_model_version(request),
            lambda ids, trace: self.infer(request, ids, trace),
        )

    async def infer(
        self,
        request: web.Request,
        request_id: Callable[[], str] | None = None,
        trace: RequestTrace | None = None,
    ) -> web.Response:
        name, version = _model_version(request)
        parsed: codec.InferRequest | None = None
        failure: ServingError | None = None
        try:
            body = await read_body(request, self._max_body_bytes, self._read_timeout)
            parsed = codec.parse_infer_request(body, request.headers.get(codec.HEADER_LENGTH))
            if parsed.id:  # for error messages, the access log, the trace
                request[OIP_REQUEST_ID] = parsed.id
        except ServingError as error:
            failure = error  # answered once the model is known, so that it counts under it

        def decode() -> tuple[Tensors, list[str]]:
            if failure is not None:
                raise failure
            assert parsed is not None
            return codec.decode_infer_request(parsed)

        result = await self._dataplane.infer(
            name,
            version,
            decode,
            parsed.timeout if parsed is not None else None,
            protocol=PROTOCOL,
            request_id=request_id,
            trace=trace,
        )
        assert parsed is not None
        started = time.monotonic() if trace is not None else 0.0
        body, header_length = codec.encode_infer_response(
            result.model.name,
            str(result.model.version),
            parsed,
            result.outputs,
            result.model.signature,
        )
        if trace is not None:
            trace.encoded(started)
        if header_length is None:
            return web.Response(body=body, content_type=JSON)
        response = web.Response(body=body, content_type=BINARY)
        response.headers[codec.HEADER_LENGTH] = str(header_length)
        return response


def _model_version(request: web.Request) -> tuple[str, str]:
    version = request.match_info.get("version", "")
    check_version(version, "the version in the path")
    return request.match_info.get("name", ""), version
