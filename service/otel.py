"""OpenTelemetry tracing of inference requests. Imported only when tracing is on
(service/tracing.py's `start_tracing`): nothing here loads in a server without tracing.

One `Tracing` per server owns the SDK's TracerProvider, with the specification's samplers, a
BatchSpanProcessor (spans are queued on the event loop and exported from the processor's own
thread) and the OTLP/gRPC exporter. `Server.stop` shuts it down, which exports what is queued.

A sampled request gets a `RequestTrace` from its front end (`start_grpc` / `start_http`), which
reads the W3C `traceparent`/`tracestate` the client sent. Its spans:

  server span   `inference.GRPCInferenceService/ModelInfer`, `POST /v2/models/{name}/infer`,
                ... (OpenTelemetry's RPC and HTTP conventions) with the model, version, protocol,
                rows, request id and status
    decode      the request's tensors decoded and checked against the signature (REST: from the
                start of the request, so reading and parsing the body are in it)
    queue       from joining the model's queue to the start of the execution that took it
    execute     one span per execution, linked to the server span of every traced request it
                served (its parent is the first of them); each queue span links back to it
    encode      the response built

Child spans are made after the fact with explicit start and end times from the monotonic clock
the batcher and the runner already read: nothing runs on the TensorFlow threads, no span is
current in any context, and a request that is not sampled costs one sampling decision.
Loop-bound, except the export (the processor's thread) and `shutdown`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from plexserve.errors import ServingError
from plexserve.signature import Tensors
from plexserve.tracing import TracingSettings

if TYPE_CHECKING:
    from plexserve.repository import ModelVersion

log = logging.getLogger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")
# OpenTelemetry's gRPC conventions: the codes a server marks its span as failed for (the
# others say the client was wrong: the server worked).
GRPC_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
MAX_DESCRIPTION = 512  # characters of an error message kept as a span's status description
SHUTDOWN_SECONDS = 5.0  # a collector that does not answer cannot hold the server's exit longer

# (request's trace, when it joined the queue or was submitted, its rows in this execution)
Served = tuple["RequestTrace", float, int]


def sampler(settings: TracingSettings) -> sampling.Sampler:
    ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
    samplers: dict[str, Callable[[], sampling.Sampler]] = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    return samplers[settings.sampler]()


def _description(error: BaseException) -> str:
    if isinstance(error, ServingError):
        text = error.message
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:MAX_DESCRIPTION]


class Tracing:
    def __init__(self, settings: TracingSettings, service_version: str) -> None:
        self.settings = settings
        self.provider = TracerProvider(
            sampler=sampler(settings),
            resource=Resource.create(
                {"plexserve.name": settings.service_name, "plexserve.version": service_version}
            ),
            shutdown_on_exit=False,  # Server.stop does it, within SHUTDOWN_SECONDS
        )
        # The exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers, certificates,
        # timeout, compression) and the processor the OTEL_BSP_* ones.
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint))
        )
        self.tracer = self.provider.get_tracer("plexserve", service_version)
        self._propagator = TraceContextTextMapPropagator()

    def _start(
        self,
        name: str,
        carrier: Mapping[str, str],
        attributes: dict[str, AttributeValue],
    ) -> RequestTrace | None:
        clock, epoch_ns = time.monotonic(), time.time_ns()
        parent = self._propagator.extract(carrier, Context())
        span = self.tracer.start_span(
            name, parent, SpanKind.SERVER, attributes, start_time=epoch_ns
        )
        if not span.is_recording():  # not sampled: nothing more is recorded for it
            return None
        return RequestTrace(self, span, epoch_ns, clock, str(attributes["plexserve.model"]))

    def start_grpc(
        self,
        service: str,
        method: str,
        protocol: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        model: str,
        version: str = "",
    ) -> RequestTrace | None:
        """The trace of one gRPC request, or None when it is not sampled."""
        carrier = {
            key: value
            for key, value in metadata or ()
            if key in TRACE_HEADERS and isinstance(value, str)
        }
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "plexserve.protocol": protocol,
            "plexserve.model": model,
        }
        if version:
            attributes["plexserve.model_version"] = version
        return self._start(f"{service}/{method}", carrier, attributes)

    def start_http(
        self,
        method: str,
        route: str,
        path: str,
        headers: Mapping[str, str],
        protocol: str,
        model: str,
        version: str = "",
    ) -> RequestTrace | None:
        """The trace of one HTTP request (`route`: its path template), or None when it is not
        sampled."""
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "http.route": route,
            "url.path": path,
            "plexserve.protocol": protocol,
            "plexserve.model": model,
        }
        if version:
            attributes["plexserve.model_version"] = version
        return self._start(f"{method} {route}", headers, attributes)

    def executed(
        self,
        served: Sequence[Served],
        rows: int,
        padding_rows: int,
        requests: int,
        started: float,
        ended: float,
        error: BaseException | None,
    ) -> None:
        """One execution (monotonic `started`..`ended`) of `rows` rows plus `padding_rows`,
        for `requests` requests of which `served` are traced: its span, linked to theirs, and
        the queue span of each request it was the first execution of."""
        first = served[0][0]
        execute = self.tracer.start_span(
            "execute",
            first.context,
            attributes={
                "plexserve.model": first.model,
                "plexserve.model_version": first.version,
                "plexserve.batch.rows": rows,
                "plexserve.batch.padding_rows": padding_rows,
                "plexserve.batch.requests": requests,
            },
            links=[
                Link(request.span.get_span_context(), {"plexserve.rows": count})
                for request, _, count in served
            ],
            start_time=first.ns(started),
        )
        if error is not None:
            execute.set_status(Status(StatusCode.ERROR, _description(error)))
        execute.end(first.ns(ended))
        batch = [Link(execute.get_span_context())]
        for request, queued, _ in served:
            if not request.queued:  # a request split over executions waited until the first
                request.queued = True
                request.child("queue", queued, started, links=batch)

    def force_flush(self) -> bool:
        """Export every ended span now (blocking: off the event loop)."""
        return self.provider.force_flush()

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Export what is queued and stop the processor's thread (blocking: off the event loop).
        Gives up after `timeout` seconds: spans a silent collector did not take are lost."""
        worker = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            log.warning("tracing: spans not exported within %g s of shutdown were dropped", timeout)


class RequestTrace:
    """One sampled request: its live server span, and what its children need."""

    __slots__ = (
        "tracing",
        "span",
        "context",
        "model",
        "version",
        "queued",
        "decode_from",
        "_epoch_ns",
        "_clock",
    )

    def __init__(
        self, tracing: Tracing, span: Span, epoch_ns: int, clock: float, model: str
    ) -> None:
        self.tracing = tracing
        self.span = span
        self.context = trace.set_span_in_context(span, Context())  # the children's parent
        self.model = model
        self.version = ""
        self.queued = False  # its queue span is made
        self.decode_from: float | None = None  # set: the decode span starts there, not at decode
        self._epoch_ns = epoch_ns  # the span's start, on the wall clock ...
        self._clock = clock  # ... and on the monotonic clock

    def ns(self, clock: float) -> int:
        """A time.monotonic() reading as the wall-clock nanoseconds spans carry."""
        return self._epoch_ns + round((clock - self._clock) * 1e9)

    @property
    def trace_id(self) -> str:
        return trace.format_trace_id(self.span.get_span_context().trace_id)

    def child(
        self,
        name: str,
        started: float,
        ended: float,
        error: BaseException | None = None,
        links: Sequence[Link] | None = None,
    ) -> None:
        span = self.tracing.tracer.start_span(
            name, self.context, links=links, start_time=self.ns(started)
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, _description(error)))
        span.end(self.ns(ended))

    def decode(
        self, model: ModelVersion, decode: Callable[[], tuple[Tensors, Sequence[str]]]
    ) -> tuple[Tensors, Sequence[str], int]:
        """The data plane's decode and validation of this request, timed."""
        started = self.decode_from or time.monotonic()
        self.version = str(model.version)
        self.span.set_attribute("plexserve.model_version", self.version)
        try:
            inputs, requested = decode()
            rows = model.signature.validate(inputs)
        except BaseException as error:
            self.child("decode", started, time.monotonic(), error)
            raise
        self.child("decode", started, time.monotonic())
        self.span.set_attribute("plexserve.rows", rows)
        return inputs, requested, rows

    def ran(self, submitted: float, started: float, ended: float, rows: int) -> None:
        """It ran alone (batching off): submitted, then executed from `started` to `ended`."""
        self.tracing.executed([(self, submitted, rows)], rows, 0, 1, started, ended, None)

    def encoded(self, started: float) -> None:
        self.child("encode", started, time.monotonic())

    def _end(self, request_id: str, error: bool, message: str) -> None:
        span = self.span
        if request_id:
            span.set_attribute("plexserve.request_id", request_id)
        if error:
            span.set_status(Status(StatusCode.ERROR, message[:MAX_DESCRIPTION]))
        span.end(self.ns(time.monotonic()))

    def end_grpc(self, code: grpc.StatusCode, message: str, request_id: str) -> None:
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        self._end(request_id, code in GRPC_SERVER_ERRORS, message)

    def end_http(self, status: int, message: str, request_id: str) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_attribute("error.type", str(status))
        self._end(request_id, status >= 500, message)
