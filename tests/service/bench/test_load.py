"""The load loops and their schedule, on virtual time (tests/service/bench/virtual_time.py):
fake servers whose answers take exact virtual durations, so every figure is known in advance."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from plexserve.bench.load import StepPlan, arrival_times, run_plan
from plexserve.bench.stats import step_figures
from tests.service.bench.virtual_time import run_virtual

POOL = ["request"]


def fake_server(service_time: Callable[[float], float]) -> Callable[..., object]:
    """A call that answers OK after service_time(send time) seconds of (virtual) time."""

    async def call(request: object, timeout: float) -> str:
        await asyncio.sleep(service_time(asyncio.get_running_loop().time()))
        return "OK"

    return call


def plan(mode: str, level: float, **overrides: object) -> StepPlan:
    fields: dict[str, object] = dict(
        mode=mode, level=level, start=0.0, warmup=0.0, duration=1.0, timeout=30.0
    )
    fields.update(overrides)
    return StepPlan(**fields)  # type: ignore[arg-type]


def test_constant_arrivals_are_evenly_spaced_and_processes_interleave() -> None:
    rng = np.random.default_rng(0)
    times = list(arrival_times(200, "constant", 10.0, 11.0, rng))
    assert len(times) == 200
    np.testing.assert_allclose(np.diff(times), 1 / 200)
    assert times[0] == 10.0 and times[-1] < 11.0
    # two processes at 100/s each, the second offset by 1/200 s: together one 200/s schedule
    shares = [list(arrival_times(100, "constant", 10.0, 11.0, rng, phase=i / 200)) for i in (0, 1)]
    np.testing.assert_allclose(sorted(shares[0] + shares[1]), times)


def test_poisson_arrivals_have_the_asked_rate_and_exponential_gaps() -> None:
    times = np.array(list(arrival_times(500, "poisson", 0.0, 40.0, np.random.default_rng(1))))
    gaps = np.diff(times)
    assert len(times) / 40.0 == pytest.approx(500, rel=0.02)
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV = 1
    assert (times >= 0).all() and (times < 40).all()
    same_seed = list(arrival_times(500, "poisson", 0.0, 40.0, np.random.default_rng(1)))
    np.testing.assert_array_equal(times, same_seed)


def test_open_loop_keeps_its_rate_whatever_the_latency() -> None:
    p = plan("open", 100, distribution="constant", warmup=0.5)
    record = run_virtual(run_plan(fake_server(lambda _: 0.25), POOL, p))
    figures = step_figures(record, p.measure_start, p.end, rows=3)
    assert figures["requests"] == 100
    assert figures["achieved_rate"] == pytest.approx(100)
    assert figures["requests_per_s"] == pytest.approx(100)
    assert figures["rows_per_s"] == pytest.approx(300)
    assert figures["latency_ms"]["p50"] == pytest.approx(250)
    assert figures["latency_ms"]["max"] == pytest.approx(250)
    assert figures["send_lag_ms"]["max"] == pytest.approx(0)


def test_open_loop_charges_late_sends_to_latency() -> None:
    """At most one request in flight, 50 ms per answer, 100 requests/s asked: the client can
    only send every 50 ms, so request k goes out 40 k ms late and its latency counts that."""
    p = plan("open", 100, distribution="constant", max_in_flight=1)
    record = run_virtual(run_plan(fake_server(lambda _: 0.05), POOL, p))
    order = np.argsort(record.intended)
    intended, sent, done = record.intended[order], record.sent[order], record.done[order]
    k = np.arange(len(intended))
    np.testing.assert_allclose(intended, k / 100)
    np.testing.assert_allclose(sent, k * 0.05)
    np.testing.assert_allclose(done - intended, 0.05 + 0.04 * k)  # not a constant 50 ms
    figures = step_figures(record, p.measure_start, p.end, rows=1)
    assert figures["requests"] == 100  # every intended send in the window is measured
    assert figures["achieved_rate"] == pytest.approx(20)  # reported against the asked 100
    assert figures["latency_ms"]["p50"] == pytest.approx(50 + 40 * 49)
    assert figures["send_lag_ms"]["p99"] > 3000


def test_a_server_stall_shows_in_open_loop_percentiles_not_in_closed_loop_ones() -> None:
    """The server answers in 1 ms, except that it stalls between t=2 s and t=3 s. One closed-
    loop client waits out the stall in a single request (one slow sample: coordinated omission);
    the open loop keeps sending and measures every request the stall delayed."""

    def stalled(sent: float) -> float:
        return 3.0 - sent if 2.0 <= sent < 3.0 else 0.001

    closed = plan("closed", 1, duration=5.0)
    opened = plan("open", 100, duration=5.0, distribution="constant")
    closed_record = run_virtual(run_plan(fake_server(stalled), POOL, closed))
    open_record = run_virtual(run_plan(fake_server(stalled), POOL, opened))
    closed_figures = step_figures(closed_record, 0, 5, 1)
    open_figures = step_figures(open_record, 0, 5, 1)
    assert np.count_nonzero(closed_record.done - closed_record.intended > 0.5) == 1
    assert closed_figures["latency_ms"]["p99"] == pytest.approx(1.0)
    assert closed_figures["latency_ms"]["max"] == pytest.approx(999, abs=1)
    assert open_figures["requests"] == 500
    assert open_figures["latency_ms"]["p90"] > 100  # 100 of 500 requests met the stall
    assert open_figures["latency_ms"]["p99"] > 900


def test_closed_loop_keeps_n_requests_in_flight_and_measures_after_warmup() -> None:
    p = plan("closed", 4, warmup=0.5, duration=1.0)
    record = run_virtual(run_plan(fake_server(lambda _: 0.01), POOL, p))
    assert len(record) == 4 * 150  # 1.5 s of 10 ms answers, 4 at a time
    figures = step_figures(record, p.measure_start, p.end, rows=2)
    assert figures["requests"] == 400
    assert figures["requests_per_s"] == pytest.approx(400)
    assert figures["rows_per_s"] == pytest.approx(800)
    assert figures["latency_ms"]["p50"] == pytest.approx(10)
    np.testing.assert_array_equal(record.sent, record.intended)


def test_a_failing_call_is_not_swallowed() -> None:
    async def broken(request: object, timeout: float) -> str:
        raise RuntimeError("bug in a protocol client")

    for mode in ("closed", "open"):
        with pytest.raises(RuntimeError, match="bug in a protocol client"):
            run_virtual(run_plan(broken, POOL, plan(mode, 5)))
