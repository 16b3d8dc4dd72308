"""`--protocol tfserving`: the load generator's client of TF Serving's PredictionService.

Imported only when that protocol is asked for (`protocols.open_protocol`). TF Serving's messages
are plexserve's own stubs (protos/tfserving/), which import no TensorFlow: a load process stays
small and starts at once. Tensor encoding is the server codec's
(service/codecs/tfserving.py): TF Serving's own layout, numbers in tensor_content and strings in
string_val. Instances are bound to the event loop that first uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from plexserve.bench import BenchError
from plexserve.bench.protocols import MAX_MESSAGE_BYTES, BenchProtocol, InputSpec
from plexserve.codecs import tfserving as codec
from plexserve.proto.tfserving import tf_serving_pb2, tf_serving_pb2_grpc
from plexserve.signature import datatype_of

PREDICT = "/tensorflow.serving.PredictionService/Predict"
SERVING_SIGNATURE = "serving_default"


class TFServingProtocol(BenchProtocol):
    """TF Serving's `tensorflow.serving.PredictionService` over one grpc.aio channel.

    `--version` is a version number, or else a version label (TF Serving's `version_label`).
    Requests are serialized PredictRequest bytes and responses are not parsed, as in V2Protocol.
    """

    name = "tfserving"

    def __init__(self, target: str, model: str, version: str = "") -> None:
        self.target, self.model = target, model
        self.version, self.label = (version, "") if version.isdigit() else ("", version)
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = tf_serving_pb2_grpc.PredictionServiceStub(self._channel)
        # No serializers: requests go out as the bytes build_request made, answers stay bytes.
        self._predict = self._channel.unary_unary(PREDICT)
        self._spec = tf_serving_pb2.ModelSpec(name=model, version_label=self.label)
        if self.version:
            self._spec.version.value = int(self.version)

    async def metadata(self) -> list[InputSpec]:
        """The inputs of the "serving_default" SignatureDef, sorted by name. A one-scalar-per-row
        input stays as TF Serving publishes it, [-1] (v2 publishes [-1, 1])."""
        request = tf_serving_pb2.GetModelMetadataRequest(
            model_spec=self._spec, metadata_field=[codec.SIGNATURE_DEF]
        )
        where = f"model metadata of '{self.model}' from {self.target}"
        try:
            response = await self._stub.GetModelMetadata(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            raise BenchError(f"{where}: {error.code().name}: {error.details()}") from None
        signatures = tf_serving_pb2.SignatureDefMap()
        if not response.metadata[codec.SIGNATURE_DEF].Unpack(signatures):
            raise BenchError(f"{where}: metadata['{codec.SIGNATURE_DEF}'] is not a SignatureDefMap")
        if SERVING_SIGNATURE not in signatures.signature_def:
            raise BenchError(
                f"{where}: no '{SERVING_SIGNATURE}' signature "
                f"(signatures: {sorted(signatures.signature_def)})"
            )
        specs = []
        inputs = signatures.signature_def[SERVING_SIGNATURE].inputs
        for name in sorted(inputs):
            info = inputs[name]
            dtype = codec.numpy_dtype(info.dtype)
            if dtype is None:
                raise BenchError(
                    f"input '{name}' has dtype {codec.dtype_name(info.dtype)}, which the bench "
                    "cannot generate"
                )
            if info.tensor_shape.unknown_rank:
                raise BenchError(f"input '{name}' has an unknown rank; the bench needs a shape")
            shape = tuple(int(dim.size) for dim in info.tensor_shape.dim)
            specs.append(InputSpec(name, datatype_of(dtype), shape))
        return specs

    def build_request(self, inputs: Mapping[str, np.ndarray]) -> bytes:
        request = codec.encode_predict_request(self._spec, inputs)
        return bytes(request.SerializeToString())

    async def call(self, request: Any, timeout: float) -> str:
        try:
            await self._predict(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return "OK"

    async def close(self) -> None:
        await self._channel.close()
