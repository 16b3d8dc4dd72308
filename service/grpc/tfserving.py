"""TF Serving's gRPC API: `tensorflow.serving.PredictionService` and `ModelService`.

Thin: protobuf -> codec -> DataPlane / ModelRepository -> codec -> protobuf, over the same core,
validation, batcher and deadline handling as the OIP servicer. The calls plexserve does not offer
answer UNIMPLEMENTED saying what to use instead. Runs on the grpc.aio event loop.
"""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from service.codecs import tfserving as codec
from service.dataplane import DataPlane
from service.errors import InvalidInput, ModelNotFound, Unimplemented, name_list
from service.grpc.boundary import grpc_errors
from service.runner import SERVING_SIGNATURE

_USE_PREDICT = (
    f"plexserve serves each model's '{SERVING_SIGNATURE}' signature through Predict: call "
    "Predict with the model's named inputs (GetModelMetadata lists them)"
)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    @grpc_errors
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        name, version, label = codec.decode_model_spec(request.model_spec)
        result = await self._dataplane.infer(
            name,
            version,
            lambda: (codec.decode_tensors(request.inputs), list(request.output_filter)),
            context.time_remaining(),
            protocol="tfserving",
            label=label,
            signature_name=request.model_spec.signature_name,
        )
        return codec.encode_predict_response(
            result.model.name, result.model.version, SERVING_SIGNATURE, result.outputs
        )

    @grpc_errors
    async def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
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


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._repository = dataplane.repository

    @grpc_errors
    async def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
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
        return get_model_status_pb2.GetModelStatusResponse(
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
