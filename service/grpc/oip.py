"""The Open Inference Protocol v2 servicer (`inference.GRPCInferenceService`).

Thin: protobuf -> codec -> DataPlane / ModelRepository -> codec -> protobuf. No model logic here.
Runs on the grpc.aio event loop.

ModelInfer takes one of two paths, chosen by one attribute check: the plain one, or, when the
server traces requests or writes an access log, the observed one, which also reads the request id
and, for a sampled request, makes its trace (service/otel.py). ModelStreamInfer is not traced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TYPE_CHECKING

import grpc

from plexserve.codecs import oip as codec
from plexserve.dataplane import DataPlane
from plexserve.errors import ModelControlDisabled, ModelNotFound, ModelNotReady
from plexserve.grpc.boundary import grpc_errors, status_of
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from plexserve.repository import ModelState, check_version
from plexserve.tracing import REQUEST_ID, given, metadata_value

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace

log = logging.getLogger(__name__)

SERVER_NAME = "plexserve"
# Only extensions that work end to end are listed: clients such as perf_analyzer call them.
EXTENSIONS = ["model_configuration", "model_repository", "statistics"]
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def request_id(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> str:
    """The request's `id`, else its x-request-id metadata entry ("" when neither)."""
    return request.id or metadata_value(context.invocation_metadata(), REQUEST_ID)


# ModelStreamInfer's flow control: requests read and not yet answered by a written response, per
# stream; how long a response may wait to be written while that window is full before the stream
# is cancelled; and how often such cancellations are logged (at INFO: the client's doing).
STREAM_WINDOW = 64
STREAM_STALL_SECONDS = 30.0
STALL_LOG_SECONDS = 60.0


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        server_version: str,
        ready: Callable[[], bool],
        stream_window: int = STREAM_WINDOW,
        stream_stall_seconds: float = STREAM_STALL_SECONDS,
    ) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._server_version = server_version
        self._tracing = dataplane.tracing
        self._observed = dataplane.tracing is not None or dataplane.access_log_sample > 0
        self._ready = ready  # the server's one readiness rule (gRPC health and HTTP use it too)
        self.stream_window = stream_window
        self.stream_stall_seconds = stream_stall_seconds
        self._aborts: set[asyncio.Task[None]] = set()
        self._stalled_streams = 0
        self._stall_logged = -STALL_LOG_SECONDS

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self._repository.resolve(request.name, request.version, "version")
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._server_version, extensions=EXTENSIONS
        )

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._repository.resolve(request.name, request.version, "version")
        versions = [
            str(mv.version)
            for mv in self._repository.versions(request.name)
            if mv.state is ModelState.AVAILABLE
        ]
        return codec.model_metadata(model.name, versions, model.signature)

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = self._repository.resolve(request.name, request.version, "version")
        return codec.model_config(model.name, model.signature, model.settings.batching)

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        """Every loaded version ("" name: every model; "" version: every version)."""
        check_version(request.version, "version")
        if request.name:
            # NOT_FOUND when unknown
            self._repository.resolve(request.name, request.version, "version")
        statistics = await self._repository.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[
                codec.model_statistics(mv.name, mv.version, counters) for mv, counters in statistics
            ]
        )

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise ModelNotFound(
                f"unknown repository '{request.repository_name}'; "
                "plexserve serves one repository: leave repository_name empty"
            )
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in await self._repository.current_index()
                if not request.ready or e.state == ModelState.AVAILABLE.value
            ]
        )

    def _explicit_only(self, request_repository: str) -> None:
        if request_repository:
            raise ModelNotFound(
                f"unknown repository '{request_repository}'; plexserve serves one repository: "
                "leave repository_name empty"
            )
        if self._repository.requested is None:
            raise ModelControlDisabled(
                "model loading and unloading over the API need --model-control explicit "
                "(this server loads what is in its repository)"
            )

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._explicit_only(request.repository_name)
        await self._repository.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._explicit_only(request.repository_name)
        await self._repository.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def _infer(
        self,
        request: pb.ModelInferRequest,
        timeout: float | None = None,
        request_id: Callable[[], str] | None = None,
        trace: RequestTrace | None = None,
    ) -> pb.ModelInferResponse:
        result = await self._dataplane.infer(
            request.model_name,
            request.model_version,
            partial(codec.decode_infer_request, request),
            timeout,
            protocol="v2",
            request_id=request_id,
            trace=trace,
        )
        model = result.model
        if trace is None:
            return codec.encode_infer_response(
                model.name, model.version_text, request.id, result.outputs, model.signature
            )
        started = time.monotonic()
        response = codec.encode_infer_response(
            model.name, model.version_text, request.id, result.outputs, model.signature
        )
        trace.encoded(started)
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if self._observed:
            return await self._observed_infer(request, context)
        # `_infer` and the boundary of `grpc_errors`, inlined: every request passes here.
        try:
            result = await self._dataplane.infer(
                request.model_name,
                request.model_version,
                partial(codec.decode_infer_request, request),
                context.time_remaining(),
                protocol="v2",
            )
            model = result.model
            return codec.encode_infer_response(
                model.name, model.version_text, request.id, result.outputs, model.signature
            )
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, "ModelInfer", request_id(request, context))
        await context.abort(code, message)
        raise AssertionError("abort raises")

    async def _observed_infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """ModelInfer with its request id at hand and, when it is sampled, traced."""
        trace = None
        if self._tracing is None:  # access log only: the id is read if a line is written
            ids: Callable[[], str] = functools.partial(request_id, request, context)
        else:
            metadata = context.invocation_metadata()
            known = request.id or metadata_value(metadata, REQUEST_ID)
            ids = given(known)
            trace = self._tracing.start_grpc(
                SERVICE, "ModelInfer", "v2", metadata, request.model_name, request.model_version
            )
        code, message = grpc.StatusCode.CANCELLED, "cancelled"
        try:
            response = await self._infer(request, context.time_remaining(), ids, trace)
            code = grpc.StatusCode.OK
            return response
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, "ModelInfer", ids())
        finally:
            if trace is not None:
                trace.end_grpc(code, message, ids())
        await context.abort(code, message)
        raise AssertionError("abort raises")

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they can share a batch); each response is
        written when ready, so order may differ from the requests': clients match on `id`. A failed
        request answers with `error_message` and the stream goes on, as in Triton.

        Flow control: a request holds one of `stream_window` slots from when it is read until
        its response is written, and no request is read while none is free; gRPC's own flow
        control then stops the client from sending more. A client that does not read its
        responses thus holds at most that many in server memory, and once a response has waited
        `stream_stall_seconds` to be written while the window is full, the stream is cancelled
        (RESOURCE_EXHAUSTED) and what it held is dropped."""
        window = asyncio.Semaphore(self.stream_window)
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        writing_since: float | None = None  # set while a response waits to be written
        stalled = False

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                response = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except Exception as error:  # noqa: BLE001 - reported in-stream, the stream goes on
                _, message = status_of(error, "ModelStreamInfer")
                response = pb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name,
                        model_version=request.model_version,
                        id=request.id,
                    ),
                )
            await responses.put(response)

        async def take_slot() -> bool:
            """Wait for a free slot; False when the client stopped reading its responses."""
            loop = asyncio.get_running_loop()
            while True:
                try:
                    async with asyncio.timeout(self.stream_stall_seconds):
                        await window.acquire()
                    return True
                except TimeoutError:
                    since = writing_since
                    if since is not None and loop.time() - since >= self.stream_stall_seconds:
                        return False
                    # else: the requests are slow, not the client: keep waiting

        async def read() -> None:
            nonlocal stalled
            requests = aiter(request_iterator)
            try:
                while True:
                    if not await take_slot():
                        stalled = True
                        self._stream_cancelled(context, len(tasks) + responses.qsize())
                        return
                    request = await anext(requests, None)
                    if request is None:
                        break
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                if stalled:  # drop the answers the client will not read
                    while not responses.empty():
                        responses.get_nowait()
                await responses.put(None)

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        try:
            while (response := await responses.get()) is not None:
                writing_since = loop.time()
                yield response  # returns once gRPC has taken the response
                writing_since = None
                window.release()
            await reader  # re-raises a failure of the request stream itself
        finally:
            reader.cancel()

    def _stream_cancelled(self, context: grpc.aio.ServicerContext, held: int) -> None:
        """End a stream whose client does not read: the status is queued behind the responses
        gRPC already holds for it (the client sees it if it ever reads), and whatever this
        server still held for the stream is dropped by the caller."""
        message = (
            f"ModelStreamInfer: {self.stream_window} responses waited "
            f"{self.stream_stall_seconds:g} s for the client to read them; the stream was "
            f"cancelled and its {held} unsent responses and unanswered requests dropped"
        )

        async def abort() -> None:
            with contextlib.suppress(Exception):  # AbortError, or the call already ended
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        task = asyncio.create_task(abort())
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)
        now = time.monotonic()
        self._stalled_streams += 1
        if now - self._stall_logged >= STALL_LOG_SECONDS:
            log.info(
                "%s (%d such streams since the last such line)", message, self._stalled_streams
            )
            self._stall_logged, self._stalled_streams = now, 0
