"""The client side of a wire protocol, as the load generator needs it.

A `BenchProtocol` reads the model's inputs (`metadata`), turns one request's arrays into a
ready-to-send request (`build_request`: everything protocol-specific, serialization included, is
done here, before any step, so no measured latency contains it), and sends one request (`call`),
answering with the gRPC status code name ("OK", "NOT_FOUND", ...) instead of raising.

`V2Protocol` speaks the Open Inference Protocol v2 over grpc.aio; `TFServingProtocol`
(service/bench/tfserving.py) speaks TF Serving's PredictionService, and is imported only when
`--protocol tfserving` is asked for. A protocol plugs in
by implementing the four methods and adding a factory to `PROTOCOLS`. Instances are bound to
the event loop that first uses them.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from plexserve.bench import BenchError
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from plexserve.signature import datatype_of

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InputSpec:
    """One model input as the server publishes it: shape dims of -1 are free (dim 0 = batch)."""

    name: str
    datatype: str  # an OIP datatype name: FP32, INT32, BYTES, ...
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} {self.datatype} [{', '.join(map(str, self.shape))}]"


class BenchProtocol(abc.ABC):
    """What the load generator needs from a protocol client."""

    name: str

    @abc.abstractmethod
    async def metadata(self) -> list[InputSpec]:
        """The model's inputs; raises BenchError when the model cannot be reached or found."""

    @abc.abstractmethod
    def build_request(self, inputs: Mapping[str, np.ndarray]) -> Any:
        """One request carrying `inputs` (keyed by input name), ready for `call`."""

    @abc.abstractmethod
    async def call(self, request: Any, timeout: float) -> str:
        """Send one request and wait for the answer: its gRPC status code name."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object or array.dtype.kind in "SU":
        parts = []
        for element in array.flat:
            data = element.encode() if isinstance(element, str) else bytes(element)
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


class V2Protocol(BenchProtocol):
    """Open Inference Protocol v2 (`inference.GRPCInferenceService`) over one grpc.aio channel.

    Requests are serialized ModelInferRequest bytes and responses are not parsed: the call
    sends prepared bytes and waits for the answer's status, so client-side work stays minimal.
    """

    name = "v2"

    def __init__(self, target: str, model: str, version: str = "") -> None:
        self.target, self.model, self.version = target, model, version
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # No serializers: requests go out as the bytes build_request made, answers stay bytes.
        self._infer = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    async def metadata(self) -> list[InputSpec]:
        try:
            response = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.model, version=self.version), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise BenchError(
                f"model metadata of '{self.model}' from {self.target}: "
                f"{error.code().name}: {error.details()}"
            ) from None
        return [
            InputSpec(tensor.name, tensor.datatype, tuple(int(d) for d in tensor.shape))
            for tensor in response.inputs
        ]

    def build_request(self, inputs: Mapping[str, np.ndarray]) -> bytes:
        request = pb.ModelInferRequest(
            model_name=self.model,
            model_version=self.version,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=name, datatype=datatype_of(array.dtype), shape=array.shape
                )
                for name, array in inputs.items()
            ],
            raw_input_contents=[_raw(array) for array in inputs.values()],
        )
        return request.SerializeToString()

    async def call(self, request: Any, timeout: float) -> str:
        try:
            await self._infer(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return "OK"

    async def close(self) -> None:
        await self._channel.close()


def _tfserving(target: str, model: str, version: str) -> BenchProtocol:
    from plexserve.bench.tfserving import TFServingProtocol

    return TFServingProtocol(target, model, version)


# protocol name -> (target, model, version) -> client
PROTOCOLS: dict[str, Callable[[str, str, str], BenchProtocol]] = {
    "v2": V2Protocol,
    "tfserving": _tfserving,
}


def check_protocol(protocol: str) -> None:
    """Raise BenchError for a protocol the bench cannot speak."""
    if protocol not in PROTOCOLS:
        raise BenchError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")


def open_protocol(protocol: str, target: str, model: str, version: str = "") -> BenchProtocol:
    """A client of `protocol` for `model` at `target` (raises BenchError, see check_protocol)."""
    check_protocol(protocol)
    return PROTOCOLS[protocol](target, model, version)
