"""Prometheus metrics, all in one place, on a CollectorRegistry the composition root injects
(never the global one: tests and embedders get their own).

Names carry the prefix `plexserve_`; labels `model` and `version`, plus `protocol` and `code`
on request metrics. A request for a model the repository does not know is counted under
model="(unknown)", so clients cannot create series at will. Thread-safe (prometheus-client).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from service.repository import ModelState, ModelVersion
from service.stats import ExecutionObserver

# 100 us .. 10 s: sub-millisecond front-end work up to a request stuck behind a long queue.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UNKNOWN_MODEL = "(unknown)"


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        version = ["model", "version"]
        self.requests = Counter(
            "plexserve_requests", "Requests answered, by status code.",
            [*version, "protocol", "code"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "plexserve_request_duration_seconds",
            "Time from a request's arrival (before decoding) to its answer (before encoding).",
            [*version, "protocol"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "plexserve_queue_duration_seconds",
            "Time a request waited before its execution started (batcher queue or runner thread).",
            version, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "plexserve_compute_duration_seconds",
            "Time one execution (one batch) took in TensorFlow.",
            version, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "plexserve_batch_size_rows", "Request rows per execution (padding excluded).",
            version, buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.padding_rows = Counter(
            "plexserve_padding_rows", "Zero rows added to reach an allowed batch size.",
            version, registry=registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "plexserve_queue_depth_rows", "Rows waiting in the batcher's queue.",
            version, registry=registry,
        )  # fmt: skip
        self.inflight = Gauge(
            "plexserve_inflight_requests", "Requests running or queued on a model version.",
            version, registry=registry,
        )  # fmt: skip
        self.model_state = Gauge(
            "plexserve_model_state", "1 for the state a model version is in, 0 for the others.",
            [*version, "state"], registry=registry,
        )  # fmt: skip
        self.load_duration = Gauge(
            "plexserve_model_load_duration_seconds", "How long the last load (LOADING) took.",
            version, registry=registry,
        )  # fmt: skip
        self.warmup_duration = Gauge(
            "plexserve_model_warmup_duration_seconds", "How long the last warm-up (WARMING) took.",
            version, registry=registry,
        )  # fmt: skip
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    def observe_request(
        self, model: str, version: str, protocol: str, code: str, seconds: float
    ) -> None:
        self.requests.labels(model, version, protocol, code).inc()
        self.request_duration.labels(model, version, protocol).observe(seconds)

    def observer(self, model: ModelVersion) -> ExecutionObserver:
        return _VersionObserver(self, model.name, str(model.version))

    def on_state_change(self, model: ModelVersion, previous: ModelState, seconds: float) -> None:
        """Publish a version's new state; record how long LOADING / WARMING took."""
        labels = (model.name, str(model.version))
        if previous is ModelState.LOADING:
            self.load_duration.labels(*labels).set(seconds)
        elif previous is ModelState.WARMING:
            self.warmup_duration.labels(*labels).set(seconds)
        for state in ModelState:
            self.model_state.labels(*labels, state.value).set(int(state is model.state))
        if model.state is ModelState.AVAILABLE:
            self.queue_depth.labels(*labels).set_function(
                lambda: model.batcher.queued_rows if model.batcher else 0
            )
            self.inflight.labels(*labels).set_function(lambda: model.inflight)
        elif model.state in (ModelState.END, ModelState.FAILED):
            for gauge in (self.queue_depth, self.inflight):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass


@dataclass
class _VersionObserver:
    metrics: Metrics
    model: str
    version: str

    def observe_queue(self, seconds: float) -> None:
        self.metrics.queue_duration.labels(self.model, self.version).observe(seconds)

    def observe_execution(
        self, rows: int, padding_rows: int, seconds: float, requests: int = 1
    ) -> None:
        labels = (self.model, self.version)
        self.metrics.compute_duration.labels(*labels).observe(seconds)
        self.metrics.batch_size.labels(*labels).observe(rows)
        if padding_rows:
            self.metrics.padding_rows.labels(*labels).inc(padding_rows)
