"""Test harness: a real plexserve Server in this process, on port 0, on its own event loop thread;
a minimal OIP client encoding written independently of the server's codec; a tiny model whose
output says which version answered; waiting for a condition the test caused; and one HTTP
request to the server's HTTP port, nothing added; and `plexserve serve` as a process of its own
(ServeProcess), for what only a whole process shows: signals, exit status, resource limits."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import keras
import numpy as np
from grpc_health.v1 import health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from plexserve.loop import ServingEventLoop
from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from plexserve.server import Server, ServerSettings

T = TypeVar("T")
LOCAL_PORT_0: dict[str, Any] = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0}

DATATYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
NUMPY_OF = {v: k for k, v in DATATYPES.items()}


class RunningServer:
    """Server.start() on a private loop thread; `stub` talks to it over a real channel."""

    def __init__(self, repository: Path, **settings: Any) -> None:
        self.loop = ServingEventLoop()  # the loop `plexserve serve` runs on
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server = self.run(
            self._create(ServerSettings(repository, **{**LOCAL_PORT_0, **settings}))
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}")
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    @staticmethod
    async def _create(settings: ServerSettings) -> Server:
        server = Server(settings)
        await server.start()
        return server

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http.port}/metrics"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        self.run(self.server.stop(grace=0, lame_duck=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype.kind in "OSU" else DATATYPES[array.dtype]


def raw_bytes(array: np.ndarray) -> bytes:
    if datatype(array) == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in array.ravel().tolist())
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    version: str = "",
    outputs: tuple[str, ...] = (),
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents."""
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name=n, datatype=datatype(a), shape=a.shape)
            for n, a in inputs.items()
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
        raw_input_contents=[raw_bytes(a) for a in inputs.values()],
    )


def output_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    arrays = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            elements, offset = [], 0
            while offset < len(raw):
                (length,) = struct.unpack_from("<I", raw, offset)
                elements.append(raw[offset + 4 : offset + 4 + length])
                offset += 4 + length
            arrays[tensor.name] = np.array(elements, dtype=object).reshape(tuple(tensor.shape))
        else:
            arrays[tensor.name] = np.frombuffer(raw, NUMPY_OF[tensor.datatype]).reshape(
                tuple(tensor.shape)
            )
    return arrays


def constant_model(value: float) -> keras.Model:
    """y = value for any x: tells which version answered."""
    x = keras.Input((2,), name="x")
    y = keras.layers.Dense(
        1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(value)
    )(x)
    return keras.Model({"x": x}, {"y": y})


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Wait for a state the test caused (not a race: it fails only if it never comes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def rest(
    server: RunningServer,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    method: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One HTTP request to the server's HTTP port, on its own connection (http.client: no header
    is added that the test did not ask for, but Content-Length). A dict body is sent as JSON."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http.port, timeout=30)
    try:
        connection.request(
            method or ("GET" if body is None else "POST"), path, body, dict(headers or {})
        )
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def plexserve_command() -> list[str]:
    script = shutil.which("plexserve", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "plexserve"]


class ServeProcess:
    """`plexserve serve` in a process of its own, on free ports; its log lines are collected as
    they come. `open_files`: the process's limit on open files (RLIMIT_NOFILE), else inherited."""

    def __init__(self, repository: Path, *flags: str, open_files: int | None = None) -> None:
        def limit_files() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.process = subprocess.Popen(
            [
                *plexserve_command(),
                "serve",
                f"--repo={repository}",
                "--host=127.0.0.1",
                "--grpc-port=0",
                "--http-port=0",
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit_files,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.grpc_port = int(self.wait_for_line(r"gRPC listening on [\d.]+:(\d+)").group(1))
        self.http_port = int(self.wait_for_line(r"HTTP listening on [\d.]+:(\d+)").group(1))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first log line matching `pattern` (fails if the process ends without one)."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            return next(filter(None, map(regex.search, self.lines)), None)

        with self._changed:
            ended = self._changed.wait_for(lambda: found() or "<EOF>" in self.lines, timeout)
            match = found()
            assert match, f"no log line matches {pattern!r}; log:\n" + "\n".join(self.lines)
            assert ended
            return match

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port}/metrics", timeout=10
        ).read()
        return sum(
            s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    def inflight(self) -> float:
        return self.metric("plexserve_inflight_requests")

    def pids(self) -> dict[str, int]:
        """Worker mode: the newest pid of each child process, by name ("model", "worker 1"),
        from their first log lines."""
        with self._changed:
            lines = list(self.lines)
        return {
            m.group(1): int(m.group(2))
            for m in map(re.compile(r"\] __main__: (model|worker \d+): pid (\d+)").search, lines)
            if m
        }

    def connections(self) -> dict[str, int]:
        """Worker mode: how many client connections each worker process holds on the gRPC
        port (from /proc: the worker's socket inodes in the ESTABLISHED rows of net/tcp)."""
        established: set[str] = set()
        rows = [
            line
            for table in ("/proc/net/tcp", "/proc/net/tcp6")  # (clients may map v4 into v6)
            for line in Path(table).read_text().splitlines()[1:]
        ]
        for line in rows:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == self.grpc_port and fields[3] == "01":
                established.add(fields[9])
        counts = {}
        for name, pid in self.pids().items():
            inodes = set()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
            counts[name] = len(inodes & established)
        return counts

    def close(self) -> None:
        self.channel.close()
        children = list(self.pids().values())  # worker mode: they would drain for seconds
        if self.process.poll() is None:
            self.process.kill()
        for pid in children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.process.wait(30)
        self._reader.join(10)
