"""The floor: the smallest honest Open Inference Protocol gRPC server on plexserve's own libraries.

usage: python bench/floor_server.py [--port 8600] [--width 16]

grpc.aio, plexserve's generated stubs, one model named `echo` (input `x` FP32 [-1, WIDTH], output
`y` the same array) computed in numpy: the request's raw_input_contents is checked for its length,
viewed as an array and sent back in raw_output_contents. It answers ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelConfig and ModelInfer, which is what
perf_analyzer needs. No batching, no validation beyond the byte count, no metrics: whatever
plexserve spends per request above this server's cost is plexserve's own. bench/overhead.py
measures both, alternately, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plexserve.proto import grpc_service_pb2 as pb  # noqa: E402
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from plexserve.proto import model_config_pb2 as config_pb  # noqa: E402

MODEL = "echo"


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, width: int) -> None:
        self.width = width

    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerMetadataResponse(name="floor", version="1", extensions=[])

    async def _known(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name != MODEL:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.name, context)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        shape = [-1, self.width]
        return pb.ModelMetadataResponse(
            name=MODEL,
            versions=["1"],
            platform="numpy",
            inputs=[tensor(name="x", datatype="FP32", shape=shape)],
            outputs=[tensor(name="y", datatype="FP32", shape=shape)],
        )

    async def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.name, context)
        fp32 = config_pb.DataType.Value("TYPE_FP32")
        return pb.ModelConfigResponse(
            config=config_pb.ModelConfig(
                name=MODEL,
                platform="numpy",
                max_batch_size=32,
                input=[config_pb.ModelInput(name="x", data_type=fp32, dims=[self.width])],
                output=[config_pb.ModelOutput(name="y", data_type=fp32, dims=[self.width])],
            )
        )

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.model_name, context)
        if len(request.inputs) != 1 or len(request.raw_input_contents) != 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send x in raw_input_contents")
        tensor = request.inputs[0]
        shape = list(tensor.shape)
        raw = request.raw_input_contents[0]
        if len(shape) != 2 or shape[1] != self.width or len(raw) != shape[0] * self.width * 4:
            message = f"x must be FP32 [N, {self.width}]"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        y = np.frombuffer(raw, dtype="<f4").reshape(shape)  # the identity "model"
        output = pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=shape)
        return pb.ModelInferResponse(
            model_name=MODEL,
            model_version="1",
            id=request.id,
            outputs=[output],
            raw_output_contents=[y.tobytes()],
        )


async def serve(port: int, width: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(width), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"floor server: echo on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.width))


if __name__ == "__main__":
    main()
