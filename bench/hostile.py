"""Hostile and careless requests: the status each one gets, and how many bytes of log each bad
request costs under mixed traffic.

usage: .venv/bin/python bench/hostile.py [--compare-src DIR] [--requests 5000]
           [--malformed-share 0.1] [--out bench/results/hostile.md]

1. builds `mlp`, `text_classifier` and `echo` with `plexserve build`;
2. for this checkout, and with --compare-src another checkout of plexserve (run as
   its own code from its own folder: bench/harness.py `checkout_command`), starts
   the server with its defaults, its log (stderr, text format) going to a file;
3. sends each hostile request below once, over gRPC (OIP and TF Serving's API) and REST (both
   APIs), and records the status and the message's length;
4. sends --requests requests, --malformed-share of them hostile (cycling through the cases, each
   round with different values: other digits, other huge dimensions, so that their error texts
   differ as real traffic's would) and the rest good 1-row requests to mlp; the log's growth
   over steps 3 and 4, divided by the hostile requests, with its ERROR lines and tracebacks;
5. prints one markdown table (case | status per server | message bytes) and the log figures.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
from harness import ROOT, Served, build_repository, machine, serve_process

sys.path.insert(0, str(ROOT))
from plexserve.proto import grpc_service_pb2 as pb  # noqa: E402
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

Tensor = pb.ModelInferRequest.InferInputTensor


def infer(model: str, inputs: list[Tensor], raw: list[bytes] | None = None, **kw: Any) -> Any:
    return pb.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=raw, **kw)


def features(rows: int = 1) -> tuple[list[Tensor], list[bytes]]:
    return (
        [Tensor(name="features", datatype="FP32", shape=[rows, 32])],
        [np.zeros((rows, 32), np.float32).tobytes()],
    )


def grpc_cases(i: int = 0) -> dict[str, tuple[str, Any]]:
    """case -> (RPC, request) on inference.GRPCInferenceService; `i` varies what the request
    holds (so that its error text differs, as real traffic's would)."""
    huge = [0, 2**62 + i]
    good_inputs, good_raw = features()
    cases: dict[str, tuple[str, Any]] = {
        "ModelInfer: shape [0, 2**62], raw": (
            "ModelInfer",
            infer("mlp", [Tensor(name="features", datatype="FP32", shape=huge)], [b""]),
        ),
        "ModelInfer: shape [0, 2**62], typed": (
            "ModelInfer",
            infer(
                "mlp",
                [
                    Tensor(
                        name="features",
                        datatype="FP32",
                        shape=huge,
                        contents=pb.InferTensorContents(),
                    )
                ],
            ),
        ),
        "ModelInfer: BYTES [0, 2**63-1]": (
            "ModelInfer",
            infer(
                "text_classifier",
                [Tensor(name="text", datatype="BYTES", shape=[0, 2**63 - 1 - i])],
            ),
        ),
        "ModelInfer: 65 dimensions": (
            "ModelInfer",
            infer("mlp", [Tensor(name="features", datatype="FP32", shape=[1] * 65)], [b"\0" * 4]),
        ),
        "ModelInfer: 10,000 unexpected inputs": (
            "ModelInfer",
            infer(
                "mlp",
                [Tensor(name="features", datatype="FP32", shape=[0, 32])]
                + [Tensor(name=f"x{i}", datatype="FP32", shape=[0]) for i in range(10_000)],
            ),
        ),
        "ModelInfer: 10,000 unknown outputs": (
            "ModelInfer",
            infer(
                "mlp",
                good_inputs,
                good_raw,
                outputs=[
                    pb.ModelInferRequest.InferRequestedOutputTensor(name=f"o{i}")
                    for i in range(10_000)
                ],
            ),
        ),
        "ModelInfer: 513 rows (over the default max_request_rows)": (
            "ModelInfer",
            infer(
                "echo",
                [Tensor(name="x", datatype="FP32", shape=[513, 16])],
                [b"\0" * 513 * 64],
            ),
        ),
    }
    for label, version in [
        ("²", f"{i}²"),
        ("١ (Arabic-Indic 1)", "١"),
        ("5,000 digits", str(i % 9 + 1) * 5000),
    ]:
        cases[f"ModelInfer: model_version {label}"] = (
            "ModelInfer",
            infer("mlp", good_inputs, good_raw, model_version=version),
        )
        cases[f"ModelMetadata: version {label}"] = (
            "ModelMetadata",
            pb.ModelMetadataRequest(name="mlp", version=version),
        )
        cases[f"ModelReady: version {label}"] = (
            "ModelReady",
            pb.ModelReadyRequest(name="mlp", version=version),
        )
    return cases


def rest_cases(i: int = 0) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """case -> (path, JSON body or None for GET); `i` as in grpc_cases."""

    def body(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
        return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}

    mlp = body("features", "FP32", [1, 32], [0.0] * 32)
    cases: dict[str, tuple[str, dict[str, Any] | None]] = {
        "REST v2 infer: shape [0, 2**62]": (
            "/v2/models/mlp/infer",
            body("features", "FP32", [0, 2**62 + i], []),
        ),
        "REST v2 infer: 10,000 unknown outputs": (
            "/v2/models/mlp/infer",
            {**mlp, "outputs": [{"name": f"o{i}"} for i in range(10_000)]},
        ),
        "REST v1 predict: 10,000 unexpected names": (
            "/v1/models/mlp:predict",
            {"instances": [{"features": [0.0] * 32, **{f"x{i}": 0 for i in range(10_000)}}]},
        ),
    }
    for label, version in [("²", f"{i}²"), ("١", "١"), ("5,000 digits", str(i % 9 + 1) * 5000)]:
        quoted = quote(version, safe="")
        cases[f"REST v2 metadata: version {label}"] = (f"/v2/models/mlp/versions/{quoted}", None)
        cases[f"REST v2 infer: version {label}"] = (f"/v2/models/mlp/versions/{quoted}/infer", mlp)
        cases[f"REST v1 predict: version {label}"] = (
            f"/v1/models/mlp/versions/{quoted}:predict",
            {"instances": [[0.0] * 32]},
        )
    return cases


def call_grpc(channel: grpc.Channel, rpc: str, request: Any) -> tuple[str, int]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        getattr(stub, rpc)(request, timeout=60)
        return "OK", 0
    except grpc.RpcError as error:
        return error.code().name, len((error.details() or "").encode())


def call_rest(port: int, path: str, body: dict[str, Any] | None) -> tuple[str, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request("GET" if body is None else "POST", path, data, headers)
        response = connection.getresponse()
        text = response.read()
        return str(response.status), len(text)
    finally:
        connection.close()


def measure(server: Served, total: int, share: float) -> tuple[dict[str, tuple[str, int]], str]:
    """Each case once (its status), then `total` requests with `share` of them hostile (their
    contents varying); the log's growth over both, per hostile request."""
    results: dict[str, tuple[str, int]] = {}
    time.sleep(1)
    before = server.log.stat().st_size
    with grpc.insecure_channel(server.target) as channel:

        def sends(variant: int) -> list[Callable[[], tuple[str, int]]]:
            calls: list[Callable[[], tuple[str, int]]] = []
            for rpc, request in grpc_cases(variant).values():
                calls.append(functools.partial(call_grpc, channel, rpc, request))
            for path, body in rest_cases(variant).values():
                calls.append(functools.partial(call_rest, server.http_port, path, body))
            return calls

        for case, (rpc, request) in grpc_cases().items():
            results[case] = call_grpc(channel, rpc, request)
        for case, (path, body) in rest_cases().items():
            results[case] = call_rest(server.http_port, path, body)
        bad = len(results)
        inputs, raw = features()
        good = infer("mlp", inputs, raw)
        every = max(1, round(1 / share))
        hostile: list[Callable[[], tuple[str, int]]] = []
        variant = 0
        started = time.monotonic()
        for n in range(total):
            if n % every:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(good, timeout=60)
                continue
            if not hostile:
                variant += 1
                hostile = sends(variant)
            hostile.pop(0)()
            bad += 1
        seconds = time.monotonic() - started
    time.sleep(1)
    log = server.log.read_bytes()[before:].decode(errors="replace")
    grown = len(log.encode())
    codes = {c for c, _ in results.values()}
    summary = (
        f"each case once, then {total} requests in {seconds:.1f} s, {share:.0%} hostile: {bad} "
        f"hostile requests in all; the log grew {grown} bytes ({grown / bad:.1f} bytes per "
        f"hostile request), {log.count(' ERROR ')} ERROR lines, "
        f"{log.count('Traceback')} tracebacks"
        + ("; INTERNAL (500) answers: yes" if "INTERNAL" in codes or "500" in codes else "")
    )
    return results, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-src", type=Path, help="another plexserve checkout to compare")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--malformed-share", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hostile.md")
    args = parser.parse_args()
    sources = {"this checkout": ROOT}
    if args.compare_src:
        sources[f"compare ({args.compare_src})"] = args.compare_src.resolve()
    results: dict[str, dict[str, tuple[str, int]]] = {}
    summaries: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="plexserve-hostile-") as tmp:
        workdir = Path(tmp)
        repo = workdir / "repo"
        build_repository(repo, ["mlp", "text_classifier", "echo"])
        for label, source in sources.items():
            print(f"== {label}", flush=True)
            with serve_process(repo, workdir / f"{label.split()[0]}.log", source=source) as server:
                results[label], summaries[label] = measure(
                    server, args.requests, args.malformed_share
                )
            print(f"   {summaries[label]}", flush=True)
    labels = list(sources)
    lines = [
        f"# Hostile requests ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python bench/hostile.py "
        + " ".join(sys.argv[1:])
        + "`",
        "",
        "| case | " + " | ".join(f"{label}: status (message bytes)" for label in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for case in results[labels[0]]:
        cells = [f"{results[label][case][0]} ({results[label][case][1]})" for label in labels]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", "Log under mixed traffic:", ""]
    lines += [f"- {label}: {summaries[label]}" for label in labels]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
