"""The client half of `make image-test`: talks to a plexserve container from outside it.

Run by deploy/image/image-test.sh on the host, with the project's .venv (tritonclient, a client we
did not write, and grpc.health.v1 from grpcio-health-checking). Not a pytest module: the container
is started and stopped by the script, which needs root and several minutes.

usage: python tests/deploy/image_smoke.py --grpc HOST:PORT [--http HOST:PORT]
           --expect-models NAME... [--timeout SECONDS] [--watch-pid PID]
Waits until grpc.health.v1 says the server ("") is SERVING, checks that RepositoryIndex lists
exactly the expected models as READY, sends one ModelInfer of 2 rows to every model (inputs made
from ModelMetadata), checks multi_task's outputs when it is there, and the HTTP endpoints when
--http is given. Prints one line per check; exits non-zero on the first failure, and at once when
the process --watch-pid names (the one running the container) has ended.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import triton_to_np_dtype

ROWS = 2


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_serving(address: str, timeout: float, watch_pid: int | None) -> float:
    """Seconds until health "" answered SERVING (the server listens while models still load)."""
    start = time.monotonic()
    deadline = start + timeout
    last = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not alive(watch_pid):
                raise SystemExit(f"FAIL health: the server exited before SERVING (last: {last})")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            time.sleep(0.5)
    raise SystemExit(f"FAIL health: not SERVING after {timeout:.0f} s (last: {last})")


def sample(datatype: str, shape: list[int], rows: int) -> np.ndarray:
    """Valid inputs: small non-negative ids (any embedding table fits), short texts, floats."""
    shape = [rows if d == -1 else d for d in shape]
    if datatype == "BYTES":
        return np.full(shape, b"the movie was great", dtype=object)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) % 4
    return np.random.default_rng(0).random(shape).astype(dtype)


def infer(client: triton.InferenceServerClient, model: str) -> dict[str, np.ndarray]:
    metadata = client.get_model_metadata(model, as_json=True)
    inputs = []
    for spec in metadata["inputs"]:
        array = sample(spec["datatype"], [int(d) for d in spec["shape"]], ROWS)
        tensor = triton.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    outputs = {spec["name"]: result.as_numpy(spec["name"]) for spec in metadata["outputs"]}
    for name, array in outputs.items():
        if array is None or array.shape[0] != ROWS:
            raise SystemExit(f"FAIL infer {model}: output {name} is {array!r}, not {ROWS} rows")
    return outputs


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", required=True, metavar="HOST:PORT")
    parser.add_argument("--http", metavar="HOST:PORT")
    parser.add_argument("--expect-models", nargs="+", required=True, metavar="NAME")
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--watch-pid", type=int, help="give up when this process has ended")
    args = parser.parse_args(argv)

    waited = wait_until_serving(args.grpc, args.timeout, args.watch_pid)
    print(f"ok   health '' SERVING after {waited:.1f} s")

    client = triton.InferenceServerClient(args.grpc)
    index = client.get_model_repository_index(as_json=True).get("models", [])
    states = {m["name"]: m.get("state", "") for m in index}
    if sorted(states) != sorted(args.expect_models):
        raise SystemExit(f"FAIL RepositoryIndex: {states}, expected {args.expect_models}")
    not_ready = [model for model in states if not client.is_model_ready(model)]
    if not_ready:
        raise SystemExit(f"FAIL ModelReady: {not_ready} not ready ({states})")
    print(f"ok   RepositoryIndex and ModelReady: {len(states)} models ready")

    for model in sorted(states):
        outputs = infer(client, model)
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(outputs.items()))
        print(f"ok   ModelInfer {model}: {shapes}")
        if model == "multi_task":
            probabilities = outputs["class_probabilities"]
            if probabilities.shape != (ROWS, 10) or not np.allclose(probabilities.sum(1), 1, 1e-4):
                raise SystemExit(f"FAIL multi_task class_probabilities: {probabilities}")
            if outputs["score"].shape != (ROWS, 1) or outputs["embedding"].shape != (ROWS, 16):
                raise SystemExit(f"FAIL multi_task shapes: {shapes}")
            print("ok   multi_task: class_probabilities rows sum to 1")

    if args.http:
        for path in ("/v2/health/live", "/v2/health/ready"):
            status, _ = http_get(f"http://{args.http}{path}")
            if status != 200:
                raise SystemExit(f"FAIL GET {path}: HTTP {status}")
            print(f"ok   GET {path}: 200")
        status, body = http_get(f"http://{args.http}/metrics")
        if status != 200 or "plexserve_" not in body:
            raise SystemExit(f"FAIL GET /metrics: HTTP {status}, no plexserve_ series")
        print("ok   GET /metrics: plexserve_ series present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
