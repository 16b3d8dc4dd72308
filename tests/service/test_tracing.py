"""Tracing over the wire: a plexserve server with tracing on exports to a real OTLP/gRPC receiver
(opentelemetry-proto's TraceService, on port 0, in this process), and the spans that arrive are
checked: parents, links, attributes and times. Also: request ids in error messages and access-log
lines, and a server without tracing importing no OpenTelemetry at all."""

from __future__ import annotations

import json
import logging
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from plexserve.cli import parser, server_settings
from plexserve.export import export_model
from plexserve.settings import SettingsError
from plexserve.tracing import TracingSettings, tracing_settings
from tests.harness import RunningServer, infer_request, output_arrays, rest

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
UNSET = trace_pb2.Status.STATUS_CODE_UNSET
OIP_INFER = "inference.GRPCInferenceService/ModelInfer"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str) -> list[tuple[dict[str, Any], trace_pb2.Span]]:
        """(resource attributes, span) of every span received in trace `trace_id`."""
        with self._lock:
            requests = list(self.requests)
        return [
            (attributes(resource_spans.resource.attributes), span)
            for request in requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
            if span.trace_id.hex() == trace_id
        ]


def value(any_value: common_pb2.AnyValue) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


@dataclass
class Traced:
    server: RunningServer
    receiver: Receiver

    def spans(self, trace_id: str) -> dict[str, list[trace_pb2.Span]]:
        """The spans of one trace by name, once the server exported what it has."""
        assert self.server.server.tracing is not None
        self.server.server.tracing.force_flush()
        by_name: dict[str, list[trace_pb2.Span]] = {}
        for _, span in self.receiver.spans(trace_id):
            by_name.setdefault(span.name, []).append(span)
        return by_name


def linear_model() -> keras.Model:
    x = keras.Input((2,), name="x")
    return keras.Model({"x": x}, {"y": keras.layers.Dense(1)(x)})


def ones(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, 2), np.float32)}


def new_trace() -> tuple[str, str, str]:
    """(trace id, the client's span id, its traceparent), sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("traced")
    export_model(linear_model(), root, "m")
    # Two requests of one row fill a batch; a lone one would wait a minute for company.
    export_model(linear_model(), root, "pair")
    (root / "pair" / "config.yaml").write_text(
        "batching: {max_batch_size: 2, max_queue_delay_us: 60000000}\n"
    )
    export_model(linear_model(), root, "plain")
    (root / "plain" / "config.yaml").write_text("batching: {enabled: false}\n")
    return root


@pytest.fixture(scope="module")
def traced(repository: Path) -> Iterator[Traced]:
    receiver = Receiver()
    otlp = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, otlp)
    port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    server = RunningServer(
        repository,
        tracing=TracingSettings(endpoint=f"http://127.0.0.1:{port}"),
        access_log_sample=1.0,
    )
    yield Traced(server, receiver)
    server.close()
    otlp.stop(0)


def only(spans: dict[str, list[trace_pb2.Span]], name: str) -> trace_pb2.Span:
    assert len(spans.get(name, [])) == 1, f"{name}: {sorted(spans)}"
    return spans[name][0]


def check_children(spans: dict[str, list[trace_pb2.Span]], server_span: trace_pb2.Span) -> None:
    """decode, queue, execute, encode: children of the server span, one after the other."""
    children = [only(spans, name) for name in ("decode", "queue", "execute", "encode")]
    for child in children:
        assert child.parent_span_id == server_span.span_id, child.name
        assert child.kind == INTERNAL
        assert child.start_time_unix_nano <= child.end_time_unix_nano
    decode, queue, execute, encode = children
    assert server_span.start_time_unix_nano <= decode.start_time_unix_nano
    assert decode.end_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano == execute.start_time_unix_nano  # the queue ends as it runs
    assert execute.end_time_unix_nano <= encode.start_time_unix_nano
    assert encode.end_time_unix_nano <= server_span.end_time_unix_nano
    # the execution links the request; the request's queue span links the execution
    assert [(link.trace_id, link.span_id) for link in execute.links] == [
        (server_span.trace_id, server_span.span_id)
    ]
    assert [(link.trace_id, link.span_id) for link in queue.links] == [
        (execute.trace_id, execute.span_id)
    ]


def test_a_traced_model_infer_continues_the_clients_trace_with_its_children(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    trace_id, client_span, traceparent = new_trace()
    with caplog.at_level(logging.INFO, logger="plexserve.access"):
        response = traced.server.stub.ModelInfer(
            infer_request("m", ones(3), request_id="order-17"),
            metadata=[("traceparent", traceparent), ("tracestate", "vendor=x")],
        )
    assert output_arrays(response)["y"].shape == (3, 1)
    spans = traced.spans(trace_id)
    server_span = only(spans, OIP_INFER)
    assert server_span.parent_span_id.hex() == client_span
    assert server_span.kind == SERVER
    assert server_span.trace_state == "vendor=x"
    assert server_span.status.code == UNSET
    assert attributes(server_span.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0,
        "plexserve.protocol": "v2",
        "plexserve.model": "m",
        "plexserve.model_version": "1",
        "plexserve.rows": 3,
        "plexserve.request_id": "order-17",
    }
    check_children(spans, server_span)
    assert attributes(only(spans, "execute").attributes) == {
        "plexserve.model": "m",
        "plexserve.model_version": "1",
        "plexserve.batch.rows": 3,
        "plexserve.batch.padding_rows": 0,
        "plexserve.batch.requests": 1,
    }
    resource = traced.receiver.spans(trace_id)[0][0]
    assert resource["plexserve.name"] == "plexserve"
    # the access log names the request and its trace
    (line,) = [r.getMessage() for r in caplog.records if r.name == "plexserve.access"]
    assert line.startswith("v2 model=m version=1 code=OK rows=3 ms=")
    assert line.endswith(f" request_id=order-17 trace_id={trace_id}")


def test_two_requests_in_one_batch_share_one_execute_span_linked_to_both(traced: Traced) -> None:
    first, second = new_trace(), new_trace()

    def call(traceparent: str) -> Any:
        return traced.server.stub.ModelInfer(
            infer_request("pair", ones(1)), metadata=[("traceparent", traceparent)], timeout=120
        )

    with futures.ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(call, t[2]) for t in (first, second)]
        for answer in answers:
            assert output_arrays(answer.result())["y"].shape == (1, 1)
    traces = [traced.spans(t[0]) for t in (first, second)]
    requests = [only(spans, OIP_INFER) for spans in traces]
    executes = [span for spans in traces for span in spans.get("execute", [])]
    assert len(executes) == 1  # one execution served both
    (execute,) = executes
    assert {(link.trace_id, link.span_id) for link in execute.links} == {
        (r.trace_id, r.span_id) for r in requests
    }
    assert [attributes(link.attributes) for link in execute.links] == [{"plexserve.rows": 1}] * 2
    assert execute.parent_span_id in {r.span_id for r in requests}  # under the first of them
    assert attributes(execute.attributes)["plexserve.batch.rows"] == 2
    assert attributes(execute.attributes)["plexserve.batch.requests"] == 2
    for spans, request in zip(traces, requests, strict=True):
        queue = only(spans, "queue")
        assert queue.parent_span_id == request.span_id
        assert [(link.trace_id, link.span_id) for link in queue.links] == [
            (execute.trace_id, execute.span_id)
        ]
        assert {"decode", "encode"} <= set(spans)


def test_with_batching_off_a_request_still_gets_queue_and_execute_spans(traced: Traced) -> None:
    trace_id, _, traceparent = new_trace()
    traced.server.stub.ModelInfer(
        infer_request("plain", ones(2)), metadata=[("traceparent", traceparent)]
    )
    spans = traced.spans(trace_id)
    check_children(spans, only(spans, OIP_INFER))


def test_a_request_without_traceparent_starts_a_trace_of_its_own(traced: Traced) -> None:
    before = len(traced.receiver.requests)
    traced.server.stub.ModelInfer(infer_request("m", ones(1), request_id="rootless"))
    assert traced.server.server.tracing is not None
    traced.server.server.tracing.force_flush()
    roots = [
        span
        for request in traced.receiver.requests[before:]
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
        if span.name == OIP_INFER
        and attributes(span.attributes).get("plexserve.request_id") == "rootless"
    ]
    assert len(roots) == 1 and roots[0].parent_span_id == b""


def test_a_client_trace_that_is_not_sampled_is_not_recorded(traced: Traced) -> None:
    trace_id, span_id, _ = new_trace()
    response = traced.server.stub.ModelInfer(
        infer_request("m", ones(1)), metadata=[("traceparent", f"00-{trace_id}-{span_id}-00")]
    )
    assert output_arrays(response)["y"].shape == (1, 1)
    assert traced.spans(trace_id) == {}


def test_a_refused_request_ends_its_span_with_the_status_and_a_failed_decode(
    traced: Traced,
) -> None:
    trace_id, _, traceparent = new_trace()
    with pytest.raises(grpc.RpcError) as refused:
        traced.server.stub.ModelInfer(
            infer_request("m", {"x": np.ones((2, 3), np.float32)}, request_id="bad-1"),
            metadata=[("traceparent", traceparent)],
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().endswith(" (request id bad-1)")
    spans = traced.spans(trace_id)
    server_span = only(spans, OIP_INFER)
    server_attributes = attributes(server_span.attributes)
    assert server_attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server_attributes["plexserve.request_id"] == "bad-1"
    assert server_span.status.code == UNSET  # the client's mistake: the server worked
    decode = only(spans, "decode")
    assert decode.status.code == ERROR and "'x'" in decode.status.message
    assert sorted(spans) == ["decode", OIP_INFER]  # it never ran


def test_a_request_for_an_unavailable_model_fails_its_span(traced: Traced) -> None:
    trace_id, _, traceparent = new_trace()
    with pytest.raises(grpc.RpcError):
        traced.server.stub.ModelInfer(
            infer_request("nope", ones(1)), metadata=[("traceparent", traceparent)]
        )
    server_span = only(traced.spans(trace_id), OIP_INFER)
    assert attributes(server_span.attributes)["plexserve.model"] == "nope"
    assert attributes(server_span.attributes)["rpc.grpc.status_code"] == 5  # NOT_FOUND


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        ),
        float_val=array.ravel().tolist(),
    )


def test_a_traced_tf_serving_predict(traced: Traced) -> None:
    trace_id, client_span, traceparent = new_trace()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(traced.server.channel)
    request = predict_pb2.PredictRequest(inputs={"x": tensor_proto(np.ones((2, 2), np.float32))})
    request.model_spec.name = "m"
    stub.Predict(request, metadata=[("traceparent", traceparent), ("x-request-id", "tfs-9")])
    spans = traced.spans(trace_id)
    server_span = only(spans, "tensorflow.serving.PredictionService/Predict")
    assert server_span.parent_span_id.hex() == client_span
    server_attributes = attributes(server_span.attributes)
    assert server_attributes["rpc.service"] == "tensorflow.serving.PredictionService"
    assert server_attributes["rpc.method"] == "Predict"
    assert server_attributes["plexserve.protocol"] == "tfserving"
    assert server_attributes["plexserve.request_id"] == "tfs-9"
    assert server_attributes["plexserve.rows"] == 2
    check_children(spans, server_span)


@pytest.mark.parametrize(
    ("path", "body", "route", "protocol"),
    [
        (
            "/v2/models/m/infer",
            {
                "id": "rest-5",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1] * 4}],
            },
            "/v2/models/{name}/infer",
            "v2-rest",
        ),
        (
            "/v2/models/m/versions/1/infer",
            {
                "id": "rest-5",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1] * 4}],
            },
            "/v2/models/{name}/versions/{version}/infer",
            "v2-rest",
        ),
        (
            "/v1/models/m:predict",
            {"instances": [[1, 1], [1, 1]]},
            "/v1/models/{name}:predict",
            "tfserving-rest",
        ),
    ],
)
def test_a_traced_rest_request_reads_traceparent_from_its_headers(
    traced: Traced, path: str, body: dict[str, Any], route: str, protocol: str
) -> None:
    trace_id, client_span, traceparent = new_trace()
    headers = {"traceparent": traceparent, "Content-Type": "application/json"}
    if "id" not in body:
        headers["X-Request-Id"] = "rest-5"
    reply = rest(traced.server, path, json.dumps(body), headers=headers)
    assert reply.status == 200, reply.body
    spans = traced.spans(trace_id)
    server_span = only(spans, f"POST {route}")
    assert server_span.parent_span_id.hex() == client_span
    assert server_span.kind == SERVER
    server_attributes = attributes(server_span.attributes)
    assert {k: v for k, v in server_attributes.items() if not k.startswith("plexserve.")} == {
        "http.request.method": "POST",
        "http.route": route,
        "url.path": path,
        "http.response.status_code": 200,
    }
    assert server_attributes["plexserve.protocol"] == protocol
    assert server_attributes["plexserve.request_id"] == "rest-5"
    assert server_attributes["plexserve.rows"] == 2
    check_children(spans, server_span)


def test_a_failed_rest_request_names_its_status_and_request_id(traced: Traced) -> None:
    trace_id, _, traceparent = new_trace()
    reply = rest(
        traced.server,
        "/v2/models/nope/infer",
        {"id": "lost-1", "inputs": []},
        headers={"traceparent": traceparent, "Content-Type": "application/json"},
    )
    assert reply.status == 404
    assert reply.json()["error"].endswith(" (request id lost-1)")
    server_span = only(traced.spans(trace_id), "POST /v2/models/{name}/infer")
    assert attributes(server_span.attributes)["http.response.status_code"] == 404
    assert attributes(server_span.attributes)["plexserve.request_id"] == "lost-1"
    assert server_span.status.code == UNSET  # 4xx: the client's mistake


# --- request ids without tracing: the session's plain server (no tracing, no access log) ---


def test_error_messages_name_the_request_id_the_client_sent(server: RunningServer) -> None:
    def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
        with pytest.raises(grpc.RpcError) as refused:
            call(*args, **kwargs)
        details: str = refused.value.details()
        return details

    unknown = infer_request("nope", ones(1), request_id="abc-1")
    assert refusal(server.stub.ModelInfer, unknown).endswith("(request id abc-1)")
    unknown = infer_request("nope", ones(1))
    message = refusal(server.stub.ModelInfer, unknown, metadata=[("x-request-id", "hdr-2")])
    assert message.endswith("(request id hdr-2)")
    assert "request id" not in refusal(server.stub.ModelInfer, unknown)
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "nope"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    message = refusal(stub.Predict, predict, metadata=[("x-request-id", "tfs-3")])
    assert message.endswith("(request id tfs-3)")
    reply = rest(server, "/v2/models/nope/infer", {"id": "rest-4", "inputs": []})
    assert reply.json()["error"].endswith("(request id rest-4)")
    reply = rest(
        server, "/v1/models/nope:predict", {"instances": [1]}, headers={"X-Request-Id": "r5"}
    )
    assert reply.json()["error"].endswith("(request id r5)")
    assert (
        "request id"
        not in rest(server, "/v1/models/nope:predict", {"instances": [1]}).body.decode()
    )


def test_the_access_log_names_the_request_id_without_tracing(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = RunningServer(repository, access_log_sample=1.0)
    try:
        assert running.server.tracing is None
        with caplog.at_level(logging.INFO, logger="plexserve.access"):
            running.stub.ModelInfer(infer_request("m", ones(1), request_id="log-1"))
            running.stub.ModelInfer(
                infer_request("m", ones(1)), metadata=[("x-request-id", "log-2")]
            )
            rest(
                running,
                "/v1/models/m:predict",
                {"instances": [[1, 1]]},
                headers={"X-Request-Id": "log-3"},
            )
            running.stub.ModelInfer(infer_request("m", ones(1)))
        lines = [r.getMessage() for r in caplog.records if r.name == "plexserve.access"]
        assert [line.rpartition("ms=")[2].partition(" ")[2] for line in lines] == [
            "request_id=log-1",
            "request_id=log-2",
            "request_id=log-3",
            "",
        ]
    finally:
        running.close()


def test_without_tracing_opentelemetry_is_never_imported(repository: Path) -> None:
    """In a process of its own: this one imported OpenTelemetry for the tests above."""
    script = f"""
import sys
from pathlib import Path
import numpy as np
from tests.harness import RunningServer, infer_request
running = RunningServer(Path({str(repository)!r}))
running.stub.ModelInfer(infer_request("m", {{"x": np.ones((1, 2), np.float32)}}))
running.close()
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry" or m == "plexserve.otel"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- settings: flags, then the standard OTEL_* variables, then the defaults ---


def test_tracing_is_off_without_an_endpoint_and_when_the_sdk_is_disabled() -> None:
    assert not tracing_settings({}).enabled
    assert not tracing_settings({"OTEL_SERVICE_NAME": "x"}).enabled
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert tracing_settings(endpoint).enabled
    assert not tracing_settings({**endpoint, "OTEL_SDK_DISABLED": "TRUE"}).enabled
    assert not tracing_settings({"OTEL_SDK_DISABLED": "true"}, endpoint="http://c:4317").enabled


def test_flags_win_over_variables_and_the_traces_endpoint_over_the_generic_one() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    assert tracing_settings(env) == TracingSettings(
        "http://traces:4317", "from-env", "parentbased_traceidratio", 0.25
    )
    assert tracing_settings(env, "http://flag:4317", "from-flag", "traceidratio", "0.5") == (
        TracingSettings("http://flag:4317", "from-flag", "traceidratio", 0.5)
    )
    assert tracing_settings({}, "http://c:4317") == TracingSettings(
        "http://c:4317", "plexserve", "parentbased_always_on", None
    )


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, {}, "'jaeger_remote'"),
        ({}, {"sampler": "traceidratio", "sampler_arg": "1.5"}, "'1.5'"),
        ({}, {"sampler": "traceidratio", "sampler_arg": "half"}, "'half'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, {}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, {}, "http/json"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_value(
    env: dict[str, str], flags: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        tracing_settings(env, "http://c:4317", **flags)


def test_the_serve_flags_map_to_the_tracing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    args = parser().parse_args(
        ["serve", "--otel-endpoint", "http://c:4317", "--otel-sampler-arg", "0.1"]
        + ["--otel-sampler", "parentbased_traceidratio"]
    )
    assert server_settings(args).tracing == TracingSettings(
        "http://c:4317", "from-env", "parentbased_traceidratio", 0.1
    )
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not server_settings(parser().parse_args(["serve"])).tracing.enabled
