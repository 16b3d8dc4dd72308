"""The load loops: closed (N requests in flight) and open (requests sent on a schedule).

Time is the running event loop's clock (`loop.time()`, which is `time.monotonic()` in a standard
loop, so the processes of one machine share it: a parent can hand children an absolute start).
Waiting is `asyncio.sleep`. Tests drive both through a virtual-time event loop.

One step runs from `plan.start`: `plan.warmup` seconds of unmeasured load, then `plan.duration`
measured seconds. The loops record every request, warm-up included, as raw times (intended send,
actual send, answer) and a status; which requests count is decided later, in `stats`, from the
window. In the open loop a request's intended send time is its scheduled one: when the client
sends late (the event loop was busy, or `max_in_flight` requests were already out), the lateness
is part of its latency, so a stalled server cannot hide queueing behind a stalled client
(no coordinated omission). In the closed loop intended = actual send time, by definition.

Loop-bound: everything here runs on one event loop; a Recorder is not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

Call = Callable[[Any, float], Awaitable[str]]

STATUS_NAMES: tuple[str, ...] = tuple(code.name for code in grpc.StatusCode)
_STATUS_INDEX = {name: index for index, name in enumerate(STATUS_NAMES)}
OK = _STATUS_INDEX["OK"]


@dataclass(frozen=True)
class StepPlan:
    """What one process runs for one step. `level` is this process's share: a concurrency
    (closed) or a rate in requests/s (open)."""

    mode: str  # "closed" | "open"
    level: float
    start: float  # loop time at which the warm-up begins
    warmup: float
    duration: float
    timeout: float
    distribution: str = "constant"
    phase: float = 0.0  # open loop: offset of this process's schedule, in seconds
    seed: int = 0
    max_in_flight: int = 1000

    @property
    def measure_start(self) -> float:
        return self.start + self.warmup

    @property
    def end(self) -> float:
        return self.start + self.warmup + self.duration


@dataclass
class StepRecord:
    """Raw times (loop clock, seconds) and status index of every request of a step."""

    intended: np.ndarray
    sent: np.ndarray
    done: np.ndarray
    status: np.ndarray  # indexes into STATUS_NAMES

    @classmethod
    def merge(cls, records: Sequence[StepRecord]) -> StepRecord:
        """Concatenate the raw samples of several processes (never their percentiles)."""
        return cls(
            np.concatenate([r.intended for r in records]) if records else np.empty(0),
            np.concatenate([r.sent for r in records]) if records else np.empty(0),
            np.concatenate([r.done for r in records]) if records else np.empty(0),
            np.concatenate([r.status for r in records]) if records else np.empty(0, np.int16),
        )

    def __len__(self) -> int:
        return len(self.done)


@dataclass
class Recorder:
    """Collects one step's raw samples. `counts` ([answered, errors]) may be shared memory that
    a parent process reads for its progress line."""

    counts: MutableSequence[int] = field(default_factory=lambda: [0, 0])
    _intended: list[float] = field(default_factory=list)
    _sent: list[float] = field(default_factory=list)
    _done: list[float] = field(default_factory=list)
    _status: list[int] = field(default_factory=list)

    def add(self, intended: float, sent: float, done: float, status: str) -> None:
        index = _STATUS_INDEX.get(status, _STATUS_INDEX["UNKNOWN"])
        self._intended.append(intended)
        self._sent.append(sent)
        self._done.append(done)
        self._status.append(index)
        self.counts[0] += 1
        if index != OK:
            self.counts[1] += 1

    def record(self) -> StepRecord:
        return StepRecord(
            np.array(self._intended, dtype=np.float64),
            np.array(self._sent, dtype=np.float64),
            np.array(self._done, dtype=np.float64),
            np.array(self._status, dtype=np.int16),
        )


def arrival_times(
    rate: float,
    distribution: str,
    start: float,
    end: float,
    rng: np.random.Generator,
    phase: float = 0.0,
) -> Iterator[float]:
    """Intended send times in [start, end): every 1/rate s (constant, first at start + phase),
    or a Poisson process of that rate (exponential gaps with mean 1/rate)."""
    if rate <= 0:
        return
    if distribution == "constant":
        k = 0
        while (t := start + phase + k / rate) < end:  # k / rate: no accumulated rounding
            yield t
            k += 1
    elif distribution == "poisson":
        t = start + phase
        while (t := t + rng.exponential(1.0 / rate)) < end:
            yield t
    else:
        raise ValueError(f"unknown distribution {distribution!r}")


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def closed_loop(call: Call, pool: Sequence[Any], plan: StepPlan, recorder: Recorder) -> None:
    """`plan.level` workers, each sending its next request as soon as the last one is answered,
    until `plan.end`; requests in flight at the end are awaited (and recorded)."""
    loop = asyncio.get_running_loop()
    concurrency = int(plan.level)
    await _sleep_until(loop, plan.start)

    async def worker(index: int) -> None:
        k = index
        while (sent := loop.time()) < plan.end:
            status = await call(pool[k % len(pool)], plan.timeout)
            recorder.add(sent, sent, loop.time(), status)
            k += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def open_loop(call: Call, pool: Sequence[Any], plan: StepPlan, recorder: Recorder) -> None:
    """Send at the intended times of `arrival_times` until `plan.end`, whatever the answers;
    at most `plan.max_in_flight` requests are out at once (a send waiting for a slot is late,
    and its lateness counts). Every request sent is awaited before returning."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(plan.max_in_flight)
    in_flight: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    rng = np.random.default_rng(plan.seed)

    async def one(request: Any, intended: float, sent: float) -> None:
        try:
            status = await call(request, plan.timeout)
        finally:
            slots.release()
        recorder.add(intended, sent, loop.time(), status)

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    schedule = arrival_times(
        plan.level, plan.distribution, plan.start, plan.end, rng, phase=plan.phase
    )
    try:
        for k, intended in enumerate(schedule):
            await _sleep_until(loop, intended)
            await slots.acquire()
            task = asyncio.create_task(one(pool[k % len(pool)], intended, loop.time()))
            in_flight.add(task)
            task.add_done_callback(finished)
            if failures:
                break
        while in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        for task in in_flight:
            task.cancel()
    if failures:
        raise failures[0]


async def run_plan(
    call: Call, pool: Sequence[Any], plan: StepPlan, recorder: Recorder | None = None
) -> StepRecord:
    if recorder is None:
        recorder = Recorder()
    if plan.mode == "closed":
        await closed_loop(call, pool, plan, recorder)
    elif plan.mode == "open":
        await open_loop(call, pool, plan, recorder)
    else:
        raise ValueError(f"unknown load mode {plan.mode!r}")
    return recorder.record()
