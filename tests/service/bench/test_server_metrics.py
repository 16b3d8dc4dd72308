"""Server-side figures from a real prometheus_client registry's text, over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from plexserve.bench.server_metrics import describe, parse_totals, scrape, server_figures

LABELS = ["model", "version"]


class FakeServerMetrics:
    """The histograms the server will expose, on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue = Histogram(
            "plexserve_queue_duration_seconds", "queue", LABELS, registry=self.registry
        )
        self.compute = Histogram(
            "plexserve_compute_duration_seconds", "compute", LABELS, registry=self.registry
        )
        self.batch = Histogram(
            "plexserve_batch_size_rows",
            "rows",
            LABELS,
            buckets=[1, 2, 4, 8, 16, 32, 64],
            registry=self.registry,
        )
        other = Counter("plexserve_requests", "other", LABELS, registry=self.registry)
        other.labels("m", "1").inc()

    def text(self) -> str:
        return generate_latest(self.registry).decode()


@pytest.fixture
def metrics() -> FakeServerMetrics:
    return FakeServerMetrics()


@pytest.fixture
def served(metrics: FakeServerMetrics) -> Iterator[str]:
    server, thread = prometheus_client.start_http_server(
        0, addr="127.0.0.1", registry=metrics.registry
    )
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_totals_sum_the_model_versions_and_ignore_other_models(metrics: FakeServerMetrics) -> None:
    metrics.queue.labels("m", "1").observe(0.002)
    metrics.queue.labels("m", "2").observe(0.004)
    metrics.queue.labels("other", "1").observe(9.0)
    metrics.batch.labels("m", "2").observe(8)
    totals = parse_totals(metrics.text(), "m")
    assert totals["queue_ms"] == pytest.approx((0.006, 2))
    assert totals["batch_rows"] == (8, 1)
    assert "compute_ms" not in totals  # no sample for this model yet


def test_step_means_are_deltas_between_two_scrapes(metrics: FakeServerMetrics, served: str) -> None:
    metrics.queue.labels("m", "1").observe(5.0)  # before the step: must not count
    metrics.compute.labels("m", "1").observe(5.0)
    metrics.batch.labels("m", "1").observe(64)
    before = scrape(served, "m")
    assert before.available, before.reason
    for queue, compute, rows in [(0.001, 0.010, 4), (0.003, 0.020, 8)]:
        metrics.queue.labels("m", "1").observe(queue)
        metrics.compute.labels("m", "2").observe(compute)
        metrics.batch.labels("m", "1").observe(rows)
    figures = server_figures(before, scrape(served, "m"))
    assert figures == {
        "available": True,
        "queue_ms": pytest.approx(2.0),
        "compute_ms": pytest.approx(15.0),
        "batch_rows": pytest.approx(6.0),
    }
    assert describe(figures) == (
        "server metrics: mean queue 2 ms, mean compute 15 ms, mean batch 6 rows"
    )


def test_a_metric_the_server_did_not_count_in_the_step_is_none(
    metrics: FakeServerMetrics, served: str
) -> None:
    metrics.queue.labels("m", "1").observe(0.001)
    metrics.compute.labels("m", "1").observe(0.001)
    before = scrape(served, "m")
    metrics.queue.labels("m", "1").observe(0.003)
    figures = server_figures(before, scrape(served, "m"))
    assert figures["queue_ms"] == pytest.approx(3.0)
    assert figures["compute_ms"] is None and figures["batch_rows"] is None


def test_not_available_when_the_url_does_not_answer() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    scraped = scrape(url, "m", timeout=1.0)
    assert not scraped.available and url in scraped.reason
    figures = server_figures(scraped, scraped)
    assert figures == {"available": False, "reason": scraped.reason}
    assert describe(figures) == f"server metrics: not available ({scraped.reason})"


def test_not_available_when_the_server_has_no_such_metrics(
    metrics: FakeServerMetrics, served: str
) -> None:
    scraped = scrape(served, "m")  # only an unrelated counter so far
    assert not scraped.available
    assert "plexserve_queue_duration_seconds" in scraped.reason and "'m'" in scraped.reason
