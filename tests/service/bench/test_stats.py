"""Percentile maths on known samples, the merge of several processes' raw samples, and which
requests a step's window counts."""

from __future__ import annotations

import numpy as np
import pytest

from plexserve.bench.load import STATUS_NAMES, StepRecord
from plexserve.bench.stats import latency_figures, percentile, step_figures

OK = STATUS_NAMES.index("OK")
NOT_FOUND = STATUS_NAMES.index("NOT_FOUND")


def record(intended: list[float], done: list[float], status: list[int] | None = None) -> StepRecord:
    return StepRecord(
        np.array(intended),
        np.array(intended),
        np.array(done),
        np.array(status if status is not None else [OK] * len(intended), dtype=np.int16),
    )


def test_nearest_rank_percentiles_of_known_samples() -> None:
    seconds = np.arange(1, 1001) / 1000.0  # 1 ms .. 1000 ms, shuffled
    np.random.default_rng(0).shuffle(seconds)
    figures = latency_figures(seconds)
    assert figures == {
        "p50": pytest.approx(500),
        "p90": pytest.approx(900),
        "p99": pytest.approx(990),
        "p99.9": pytest.approx(999),
        "max": pytest.approx(1000),
        "mean": pytest.approx(500.5),
    }
    assert percentile(np.array([7.0]), 99.9) == 7.0
    assert percentile(np.array([1.0, 2.0, 3.0, 4.0]), 50) == 2.0  # a sample, never interpolated
    assert all(v is None for v in latency_figures(np.array([])).values())


def test_processes_are_merged_by_raw_samples_not_by_averaging_percentiles() -> None:
    fast = record([0.0] * 90, [0.001] * 90)  # a process whose 90 answers took 1 ms
    slow = record([0.0] * 10, [0.100] * 10)  # another whose 10 answers took 100 ms
    merged = StepRecord.merge([fast, slow])
    assert len(merged) == len(fast) + len(slow)
    figures = step_figures(merged, 0.0, 1.0, rows=1)
    assert figures["requests"] == 100
    assert figures["latency_ms"]["p90"] == pytest.approx(1)
    assert figures["latency_ms"]["p99"] == pytest.approx(100)
    per_process_p99 = [step_figures(r, 0.0, 1.0, 1)["latency_ms"]["p99"] for r in (fast, slow)]
    assert np.mean(per_process_p99) == pytest.approx(50.5)  # what averaging would have claimed
    assert len(StepRecord.merge([])) == 0


def test_the_window_counts_requests_by_intended_send_time_and_errors_by_code() -> None:
    r = record(
        intended=[0.5, 1.0, 1.2, 1.5, 1.9, 2.0],
        done=[1.1, 1.01, 1.3, 1.6, 2.4, 2.01],
        status=[OK, OK, NOT_FOUND, OK, OK, OK],
    )
    figures = step_figures(r, measure_start=1.0, end=2.0, rows=4)
    # samples: intended in [1, 2) -> 1.0, 1.2, 1.5, 1.9 (1.9 answered after the window: measured)
    assert (figures["requests"], figures["ok"], figures["errors"]) == (4, 3, {"NOT_FOUND": 1})
    assert figures["latency_ms"]["max"] == pytest.approx(500)
    assert figures["latency_ms"]["p50"] == pytest.approx(100)
    # throughput: OK answers that arrived in [1, 2): 1.1 (a warm-up request), 1.01, 1.6
    assert figures["requests_per_s"] == pytest.approx(3)
    assert figures["rows_per_s"] == pytest.approx(12)
    assert figures["achieved_rate"] == pytest.approx(4)
