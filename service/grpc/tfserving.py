"""TF Serving's gRPC API: `tensorflow.serving.PredictionService` and `ModelService`.

Thin: protobuf -> codec -> DataPlane / ModelRepository -> codec -> protobuf, over the same core,
validation, batcher and deadline handling as the OIP servicer. The calls plexserve does not offer
answer UNIMPLEMENTED saying what to use instead. Runs on the grpc.aio event loop.

Predict, like ModelInfer, has a plain path and, when the server traces requests or writes an
access log, an observed one (request id from x-request-id metadata; spans when sampled).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from plexserve.codecs import tfserving as codec
from plexserve.dataplane import DataPlane
from plexserve.errors import InvalidInput, ModelNotFound, Unimplemented, name_list
from plexserve.grpc.boundary import grpc_errors, status_of
from plexserve.proto.tfserving import tf_serving_pb2, tf_serving_pb2_grpc
from plexserve.signature import SERVING_SIGNATURE
from plexserve.tracing import REQUEST_ID, given, metadata_value

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace

SERVICE = "tensorflow.serving.PredictionService"


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The x-request-id metadata entry ("" when absent): TF Serving's requests carry no id."""
    return metadata_value(context.invocation_metadata(), REQUEST_ID)


_USE_PREDICT = (
    f"plexserve serves each model's '{SERVING_SIGNATURE}' signature through Predict: call "
    "Predict with the model's named inputs (GetModelMetadata lists them)"
)


class PredictionServicer(tf_serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane
        self._tracing = dataplane.tracing
        self._observed = dataplane.tracing is not None or dataplane.access_log_sample > 0

    async def _predict(
        self,
        request: tf_serving_pb2.PredictRequest,
        timeout: float | None,
        request_id: Callable[[], str] | None = None,
        trace: RequestTrace | None = None,
    ) -> tf_serving_pb2.PredictResponse:
        name, version, label = codec.decode_model_spec(request.model_spec)
        result = await self._dataplane.infer(
            name,
            version,
            lambda: (codec.decode_tensors(request.inputs), list(request.output_filter)),
            timeout,
            protocol="tfserving",
            label=label,
            signature_name=request.model_spec.signature_name,
            request_id=request_id,
            trace=trace,
        )
        if trace is None:
            return codec.encode_predict_response(
                result.model.name, result.model.version, SERVING_SIGNATURE, result.outputs
            )
        started = time.monotonic()
        response = codec.encode_predict_response(
            result.model.name, result.model.version, SERVING_SIGNATURE, result.outputs
        )
        trace.encoded(started)
        return response

    async def Predict(
        self, request: tf_serving_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> tf_serving_pb2.PredictResponse:
        if self._observed:
            return await self._observed_predict(request, context)
        # The boundary of `grpc_errors`, inlined: every request passes here.
        try:
            return await self._predict(request, context.time_remaining())
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, "Predict", request_id(context))
        await context.abort(code, message)
        raise AssertionError("abort raises")

    async def _observed_predict(
        self, request: tf_serving_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> tf_serving_pb2.PredictResponse:
        """Predict with its request id at hand and, when it is sampled, traced."""
        trace = None
        if self._tracing is None:  # access log only: the id is read if a line is written
            ids: Callable[[], str] = functools.partial(request_id, context)
        else:
            metadata = context.invocation_metadata()
            ids = given(metadata_value(metadata, REQUEST_ID))
            spec = request.model_spec
            version = str(spec.version.value) if spec.HasField("version") else ""
            trace = self._tracing.start_grpc(
                SERVICE, "Predict", "tfserving", metadata, spec.name, version
            )
        code, message = grpc.StatusCode.CANCELLED, "cancelled"
        try:
            response = await self._predict(request, context.time_remaining(), ids, trace)
            code = grpc.StatusCode.OK
            return response
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, "Predict", ids())
        finally:
            if trace is not None:
                trace.end_grpc(code, message, ids())
        await context.abort(code, message)
        raise AssertionError("abort raises")

    @grpc_errors
    async def GetModelMetadata(
        self,
        request: tf_serving_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> tf_serving_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise InvalidInput("Missing ModelSpec")
        codec.check_metadata_fields(request.metadata_field)
        model = self._dataplane.resolve(*codec.decode_model_spec(request.model_spec))
        return codec.encode_model_metadata(
            model.name, model.version, SERVING_SIGNATURE, model.signature
        )

    @grpc_errors
    async def Classify(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise Unimplemented(f"plexserve does not implement Classify; {_USE_PREDICT}")

    @grpc_errors
    async def Regress(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise Unimplemented(f"plexserve does not implement Regress; {_USE_PREDICT}")

    @grpc_errors
    async def MultiInference(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise Unimplemented(
            f"plexserve does not implement MultiInference; {_USE_PREDICT}, once per model"
        )


class ModelServicer(tf_serving_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._repository = dataplane.repository

    @grpc_errors
    async def GetModelStatus(
        self,
        request: tf_serving_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> tf_serving_pb2.GetModelStatusResponse:
        """Every version the repository holds for the model, in its current state (read at each
        call, so it follows loads, swaps and failures); `model_spec.version` picks one. As in
        TF Serving, a version_label does not filter."""
        if not request.HasField("model_spec"):
            raise InvalidInput("Missing ModelSpec")
        name, version, _ = codec.decode_model_spec(request.model_spec)
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
        return tf_serving_pb2.GetModelStatusResponse(
            model_version_status=[
                codec.model_version_status(mv.version, mv.state, mv.reason) for mv in versions
            ]
        )

    @grpc_errors
    async def HandleReloadConfigRequest(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> None:
        raise Unimplemented(
            "plexserve does not take TF Serving's ModelServerConfig: it serves the models in its "
            "repository folder (config.yaml per model for version policy and labels); load and "
            "unload them with RepositoryModelLoad / RepositoryModelUnload on "
            "inference.GRPCInferenceService, or with the server's --model-control mode"
        )
