"""Prometheus metrics, all in one place, on a CollectorRegistry the composition root injects
(never the global one: tests and embedders get their own).

Names carry the prefix `plexserve_`; labels `model` and `version`, plus `protocol` and `code`
on request metrics. A request for a model the repository does not know is counted under
model="(unknown)", so clients cannot create series at will.

The per-request series (requests, request / queue / compute durations, batch sizes, padding)
are read at scrape time from each version's ExecutionStats (service/stats.py), the counters
Triton's statistics come from too: a request updates them once, with plain additions, instead
of taking prometheus-client's locks for every series. A version's series outlive it (a reload
of the same version continues its counts). The rest are ordinary gauges set on state changes.
Scrapes run on the event loop, where the counters are updated.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from plexserve.repository import ModelState, ModelVersion
from plexserve.stats import ExecutionStats, Histogram, add_requests, merged

UNKNOWN_MODEL = "(unknown)"
Labels = tuple[str, str]  # model, version


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        version = ["model", "version"]
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
        self.event_loop_busy = Gauge(
            "plexserve_event_loop_busy_ratio",
            "Share of the last second the event loop thread spent on the CPU: every request's "
            "protocol work runs there, so near 1 it caps throughput.",
            registry=registry,
        )  # fmt: skip
        # The counters behind the per-request series: versions serving now, the sums of the
        # ones gone, and requests answered before any version was resolved.
        self._live: dict[Labels, ExecutionStats] = {}
        self._gone: dict[Labels, ExecutionStats] = {}
        self._unresolved: dict[Labels, ExecutionStats] = {}
        registry.register(_RequestCollector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    def observe_unresolved(
        self, model: str, version: str, protocol: str, code: grpc.StatusCode, seconds: float
    ) -> None:
        """A request answered before a model version was resolved (unknown model or version,
        not ready, shutting down)."""
        stats = self._unresolved.get((model, version))
        if stats is None:
            stats = self._unresolved[(model, version)] = ExecutionStats()
        stats.observe_request(protocol, code, 0, seconds)

    def add_requests(self, model: str, version: str, part: ExecutionStats) -> None:
        """Per-request counters of a version no longer loaded (a worker process answered them
        before it went): they join the series of that version's past lifetimes."""
        gone = self._gone.setdefault((model, version), ExecutionStats())
        add_requests(gone, part)

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
            self._retire(labels)
            self._live[labels] = model.stats
            self.queue_depth.labels(*labels).set_function(
                lambda: model.batcher.queued_rows if model.batcher else 0
            )
            self.inflight.labels(*labels).set_function(lambda: model.inflight)
        elif model.state in (ModelState.END, ModelState.FAILED):
            if self._live.get(labels) is model.stats:
                self._retire(labels)
            for gauge in (self.queue_depth, self.inflight):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass

    def _retire(self, labels: Labels) -> None:
        stats = self._live.pop(labels, None)
        if stats is not None:
            gone = self._gone.get(labels)
            self._gone[labels] = merged([stats] if gone is None else [stats, gone])

    def series(self) -> Iterator[tuple[Labels, ExecutionStats, bool]]:
        """The per-request counters of every label set, summed over a version's lifetimes, and
        whether a version ever served under these labels (else: only refusals)."""
        for key in sorted({*self._live, *self._gone, *self._unresolved}):
            parts = [self._live.get(key), self._gone.get(key), self._unresolved.get(key)]
            versioned = parts[0] is not None or parts[1] is not None
            yield key, merged(stats for stats in parts if stats is not None), versioned


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    cumulative: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        total += count
        cumulative.append((floatToGoString(bound), total))
    return cumulative


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        version = ["model", "version"]
        requests = CounterMetricFamily(
            "plexserve_requests", "Requests answered, by status code.",
            labels=[*version, "protocol", "code"],
        )  # fmt: skip
        durations = HistogramMetricFamily(
            "plexserve_request_duration_seconds",
            "Time from a request's arrival (before decoding) to its answer (before encoding).",
            labels=[*version, "protocol"],
        )  # fmt: skip
        queue = HistogramMetricFamily(
            "plexserve_queue_duration_seconds",
            "Time a request waited before its execution started (batcher queue or runner thread).",
            labels=version,
        )  # fmt: skip
        compute = HistogramMetricFamily(
            "plexserve_compute_duration_seconds",
            "Time one execution (one batch) took in TensorFlow.", labels=version,
        )  # fmt: skip
        batch = HistogramMetricFamily(
            "plexserve_batch_size_rows", "Request rows per execution (padding excluded).",
            labels=version,
        )  # fmt: skip
        padding = CounterMetricFamily(
            "plexserve_padding_rows", "Zero rows added to reach an allowed batch size.",
            labels=version,
        )  # fmt: skip
        for labels, stats, versioned in self._metrics.series():
            for (protocol, code), count in sorted(stats.request_counts().items(), key=_by_name):
                requests.add_metric([*labels, protocol, code.name], count)
            for protocol, histogram in sorted(stats.request_seconds.items()):
                durations.add_metric([*labels, protocol], _buckets(histogram), histogram.sum)
            if not versioned:
                continue
            queue.add_metric(list(labels), _buckets(stats.queue_seconds), stats.queue_seconds.sum)
            compute.add_metric(
                list(labels), _buckets(stats.compute_histogram), stats.compute_histogram.sum
            )
            batch.add_metric(
                list(labels), _buckets(stats.batch_histogram), stats.batch_histogram.sum
            )
            padding.add_metric(list(labels), stats.padding_rows)
        yield from (requests, durations, queue, compute, batch, padding)


def _by_name(item: tuple[tuple[str, grpc.StatusCode], int]) -> tuple[str, str]:
    (protocol, code), _ = item
    return protocol, code.name
