"""TF Serving's REST API, so that the examples of its documentation run against plexserve:

  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]                  model status
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata         signature_def metadata
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict          row or columnar form
  POST ...:classify | :regress                                    501, pointing at :predict

Paths are matched as TF Serving matches them (case-insensitive; the name and label
percent-decoded). Thin, like the gRPC servicers it mirrors: JSON -> codec -> DataPlane /
ModelRepository -> codec -> JSON, over the same core, batcher, metrics (protocol
"tfserving-rest") and statistics. When the server traces requests or writes an access log,
:predict runs through `observed` (request id from X-Request-Id, trace; service/rest/boundary.py).
Loop-bound.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web

from plexserve.codecs import tfserving as messages
from plexserve.codecs import tfserving_json as codec
from plexserve.dataplane import DataPlane
from plexserve.errors import ModelNotFound, ServingError, Unimplemented, name_list
from plexserve.proto.tfserving import tf_serving_pb2
from plexserve.repository import check_version
from plexserve.rest.boundary import JSON, observed, read_body
from plexserve.signature import SERVING_SIGNATURE, Tensors

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace

PROTOCOL = "tfserving-rest"
_MODEL = r"/v1/models/([^/:]+)(?:/versions/([^/:]+)|/labels/([^/:]+))?"
_PREDICT = re.compile(_MODEL + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(_MODEL + r"(/metadata)?", re.IGNORECASE)
_USAGE = (
    "TF Serving's REST API here: GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata], "
    "POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict"
)


class TfServingRest:
    def __init__(self, dataplane: DataPlane, max_body_bytes: int, read_timeout: float) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._max_body_bytes = max_body_bytes
        self._read_timeout = read_timeout
        self._tracing = dataplane.tracing
        self._observed = dataplane.tracing is not None or dataplane.access_log_sample > 0

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/v1/{path:.*}", self.dispatch)]

    async def dispatch(self, request: web.Request) -> web.Response:
        path = request.rel_url.raw_path
        if (match := _PREDICT.fullmatch(path)) is not None:
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            name, version, label, method = match.groups()
            if method.lower() != "predict":
                raise Unimplemented(
                    f"plexserve does not implement :{method.lower()}; call :predict with the "
                    f"model's named inputs (GET /v1/models/{unquote(name)}/metadata lists them)"
                )
            name, version, label = unquote(name), _number(version), unquote(label or "")
            if self._observed:
                route = "/v1/models/{name}" + (
                    "/versions/{version}" if version else "/labels/{label}" if label else ""
                )
                return await observed(
                    request,
                    self._tracing,
                    route + ":predict",
                    PROTOCOL,
                    name,
                    version,
                    lambda ids, trace: self.predict(request, name, version, label, ids, trace),
                )
            return await self.predict(request, name, version, label)
        if (match := _STATUS.fullmatch(path)) is not None:
            if request.method not in ("GET", "HEAD"):
                raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
            name, version, label, metadata = match.groups()
            if metadata:
                return self.metadata(unquote(name), _number(version), unquote(label or ""))
            return self.status(unquote(name), _number(version))
        raise ModelNotFound(f"no endpoint {request.method} {request.path}; {_USAGE}")

    async def predict(
        self,
        request: web.Request,
        name: str,
        version: str,
        label: str,
        request_id: Callable[[], str] | None = None,
        trace: RequestTrace | None = None,
    ) -> web.Response:
        parsed: codec.PredictRequest | None = None
        failure: ServingError | None = None
        try:
            body = await read_body(request, self._max_body_bytes, self._read_timeout)
            parsed = codec.parse_predict_request(body)
        except ServingError as error:
            failure = error  # answered once the model is known, so that it counts under it

        def decode() -> tuple[Tensors, list[str]]:
            if failure is not None:
                raise failure
            assert parsed is not None
            # The data plane resolved this same version just before calling decode: the JSON
            # values are parsed as its signature's dtypes.
            model = self._dataplane.resolve(name, version, label)
            return codec.decode_predict_request(parsed, model.signature), []

        result = await self._dataplane.infer(
            name,
            version,
            decode,
            protocol=PROTOCOL,
            label=label,
            signature_name=parsed.signature_name if parsed is not None else "",
            request_id=request_id,
            trace=trace,
        )
        assert parsed is not None
        if trace is None:
            return web.Response(
                body=codec.encode_predict_response(result.outputs, parsed.row), content_type=JSON
            )
        started = time.monotonic()
        body = codec.encode_predict_response(result.outputs, parsed.row)
        trace.encoded(started)
        return web.Response(body=body, content_type=JSON)

    def metadata(self, name: str, version: str, label: str) -> web.Response:
        model = self._dataplane.resolve(name, version, label)
        body = codec.metadata_json(model.name, model.version, SERVING_SIGNATURE, model.signature)
        return web.Response(body=body, content_type=JSON)

    def status(self, name: str, version: str) -> web.Response:
        """Every version the repository holds for the model, in its current state; a version in
        the path picks one. As in TF Serving, a label does not filter."""
        versions = self._repository.versions(name)
        if not versions:
            raise ModelNotFound(
                f"Could not find any versions of model {name}; "
                f"models: {name_list(self._repository)}"
            )
        if version:
            versions = [mv for mv in versions if str(mv.version) == version]
            if not versions:
                raise ModelNotFound(
                    f"Could not find version {version} of model {name}; "
                    f"versions: {name_list(v.version for v in self._repository.versions(name))}"
                )
        response = tf_serving_pb2.GetModelStatusResponse(
            model_version_status=[
                messages.model_version_status(mv.version, mv.state, mv.reason) for mv in versions
            ]
        )
        return web.Response(body=codec.status_json(response), content_type=JSON)


def _number(version: str | None) -> str:
    """A version from the path as the repository names it ("007" is version 7); one that is not
    ASCII digits is refused (400) naming it."""
    if not version:
        return ""
    return str(int(check_version(unquote(version), "the version in the path")))
