"""The Open Inference Protocol v2 servicer (`inference.GRPCInferenceService`).

Thin: protobuf -> codec -> DataPlane / ModelRepository -> codec -> protobuf. No model logic here.
Runs on the grpc.aio event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from service.codecs import oip as codec
from service.dataplane import DataPlane
from service.errors import ModelControlDisabled, ModelNotFound, ModelNotReady
from service.grpc.boundary import grpc_errors, status_of
from service.proto import grpc_service_pb2 as pb
from service.proto import grpc_service_pb2_grpc as pb_grpc
from service.repository import ModelState, check_version

log = logging.getLogger(__name__)

SERVER_NAME = "plexserve"
# Only extensions that work end to end are listed: clients such as perf_analyzer call them.
EXTENSIONS = ["model_configuration", "model_repository", "statistics"]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, server_version: str) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._server_version = server_version

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        # not ready once shutdown begins, like grpc.health.v1 and /v2/health/ready
        return pb.ServerReadyResponse(ready=self._dataplane.accepting and self._repository.ready())

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
            names = [request.name]
        else:
            names = list(self._repository)
        return pb.ModelStatisticsResponse(
            model_stats=[
                codec.model_statistics(mv.name, mv.version, mv.stats)
                for name in names
                for mv in self._repository.versions(name)
                if not request.version or str(mv.version) == request.version
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
                for e in self._repository.index()
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
        self, request: pb.ModelInferRequest, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        result = await self._dataplane.infer(
            request.model_name,
            request.model_version,
            lambda: codec.decode_infer_request(request),
            timeout,
            protocol="v2",
        )
        return codec.encode_infer_response(
            result.model.name,
            str(result.model.version),
            request.id,
            result.outputs,
            result.model.signature,
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        # The boundary of `grpc_errors`, inlined: every request passes here.
        try:
            return await self._infer(request, context.time_remaining())
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, "ModelInfer")
        await context.abort(code, message)
        raise AssertionError("abort raises")

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they can share a batch); each response is
        written when ready, so order may differ from the requests': clients match on `id`. A failed
        request answers with `error_message` and the stream goes on, as in Triton."""
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()

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

        async def read() -> None:
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await responses.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await reader  # re-raises a failure of the request stream itself
        finally:
            reader.cancel()
