"""Per-model-version counters, kept once for both of their readers: Triton's ModelStatistics
(service/codecs/oip.py) and the Prometheus metrics (service/metrics.py, which reads them at
scrape time). What executed is fed by the DynamicBatcher, or by the runner itself when batching
is off; what was answered by the data plane.

Every request passes here, so an observation is a few additions and one bisect into a list of
bucket counts: no lock, no `labels()` lookup, no metric object per series. Loop-bound: every
observation is made on the event loop thread (runners report back to it) and scrapes read
there too.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

OK = grpc.StatusCode.OK
# 100 us .. 10 s: sub-millisecond front-end work up to a request stuck behind a long queue.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ExecutionObserver(Protocol):
    def observe_queue(self, seconds: float) -> None:
        """One request (or chunk of one) waited `seconds` before its execution started."""

    def observe_execution(
        self, rows: int, padding_rows: int, seconds: float, requests: int = 1
    ) -> None:
        """One execution ran `requests` requests (`rows` rows, plus `padding_rows` padding) in
        `seconds`."""


class Histogram:
    """Counts of observations per bucket (upper bounds `bounds`, then +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, other: Histogram) -> None:
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.sum += other.sum


@dataclass
class Duration:
    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds


@dataclass
class ExecutionStats:
    # --- Triton's statistics ---
    executions: int = 0
    rows: int = 0
    padding_rows: int = 0
    compute_seconds: float = 0.0
    queue: Duration = field(default_factory=Duration)
    by_batch_rows: dict[int, Duration] = field(default_factory=dict)  # compute by request rows
    compute_per_request: Duration = field(default_factory=Duration)  # a batch's time, per request
    success: Duration = field(default_factory=Duration)  # answered requests, request duration
    failure: Duration = field(default_factory=Duration)
    inferences: int = 0  # rows of successful requests
    last_inference_ms: int = 0  # wall clock, ms since the epoch
    # --- and what the Prometheus histograms need besides ---
    requests: dict[tuple[str, grpc.StatusCode], int] = field(default_factory=dict)  # not OK
    ok_requests: dict[str, int] = field(default_factory=dict)  # by protocol
    request_seconds: dict[str, Histogram] = field(default_factory=dict)  # by protocol
    queue_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    compute_histogram: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch_histogram: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def observe_queue(self, seconds: float) -> None:
        queue = self.queue
        queue.count += 1
        queue.seconds += seconds
        histogram = self.queue_seconds
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds

    def observe_execution(
        self, rows: int, padding_rows: int, seconds: float, requests: int = 1
    ) -> None:
        self.compute_per_request.count += requests
        self.compute_per_request.seconds += seconds * requests
        self.executions += 1
        self.rows += rows
        self.padding_rows += padding_rows
        self.compute_seconds += seconds
        duration = self.by_batch_rows.get(rows)
        if duration is None:
            duration = self.by_batch_rows[rows] = Duration()
        duration.add(seconds)
        self.compute_histogram.observe(seconds)
        self.batch_histogram.observe(rows)

    def observe_request(
        self, protocol: str, code: grpc.StatusCode, rows: int, seconds: float
    ) -> None:
        """One request of `rows` rows, for `protocol`, answered with `code` after `seconds`.
        (Inlined: every request of the server passes here.)"""
        if code is OK:
            success = self.success
            success.count += 1
            success.seconds += seconds
            self.inferences += rows
            self.last_inference_ms = int(time.time() * 1000)
            ok = self.ok_requests
            ok[protocol] = ok.get(protocol, 0) + 1  # (a StatusCode hashes in Python: slow)
        else:
            self.failure.add(seconds)
            key = (protocol, code)
            self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.request_seconds.get(protocol)
        if histogram is None:
            histogram = self.request_seconds[protocol] = Histogram(LATENCY_BUCKETS)
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds

    def request_counts(self) -> dict[tuple[str, grpc.StatusCode], int]:
        """Answered requests by (protocol, status code)."""
        counts = dict(self.requests)
        for protocol, count in self.ok_requests.items():
            counts[(protocol, OK)] = counts.get((protocol, OK), 0) + count
        return counts


def merged(parts: Iterable[ExecutionStats]) -> ExecutionStats:
    """The Prometheus-visible sums of several ExecutionStats (the same series over reloads)."""
    total = ExecutionStats()
    for part in parts:
        total.padding_rows += part.padding_rows
        _add_request_series(total, part)
        total.queue_seconds.add(part.queue_seconds)
        total.compute_histogram.add(part.compute_histogram)
        total.batch_histogram.add(part.batch_histogram)
    return total


class InflightCounter:
    """Requests started and not yet answered, and a wait for the moment there are none: what a
    version's unload and the server's shutdown drain both need. Loop-bound (asyncio)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float | None = None) -> int:
        """Wait until nothing is in flight, or `timeout` seconds; return what is still in flight."""
        if self.count:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(
                    self._idle.wait(), None if timeout is None else max(timeout, 0)
                )
            except TimeoutError:
                pass
        return self.count


def add_requests(into: ExecutionStats, part: ExecutionStats) -> None:
    """Add the per-request counters of `part` (what a front-end worker process answered) to
    `into`; the execution counters are the model process's own and stay."""
    into.success.count += part.success.count
    into.success.seconds += part.success.seconds
    into.failure.count += part.failure.count
    into.failure.seconds += part.failure.seconds
    into.inferences += part.inferences
    into.last_inference_ms = max(into.last_inference_ms, part.last_inference_ms)
    _add_request_series(into, part)


def _add_request_series(into: ExecutionStats, part: ExecutionStats) -> None:
    """Requests by (protocol, code) and their latency histograms: the Prometheus series."""
    for key, count in part.requests.items():
        into.requests[key] = into.requests.get(key, 0) + count
    for protocol, count in part.ok_requests.items():
        into.ok_requests[protocol] = into.ok_requests.get(protocol, 0) + count
    for protocol, histogram in part.request_seconds.items():
        into.request_seconds.setdefault(protocol, Histogram(LATENCY_BUCKETS)).add(histogram)
