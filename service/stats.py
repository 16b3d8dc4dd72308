"""Per-model-version counters: what executed (fed by the DynamicBatcher, or by the runner itself
when batching is off) and what was answered (fed by the data plane). They back Triton's
ModelStatistics; the Prometheus metrics (service/metrics.py) observe the same events through
the same narrow interface.

Updated from the event loop and from runner threads: additions under a lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol


class ExecutionObserver(Protocol):
    def observe_queue(self, seconds: float) -> None:
        """One request (or chunk of one) waited `seconds` before its execution started."""

    def observe_execution(
        self, rows: int, padding_rows: int, seconds: float, requests: int = 1
    ) -> None:
        """One execution ran `requests` requests (`rows` rows, plus `padding_rows` padding) in
        `seconds`."""


@dataclass
class Duration:
    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds


@dataclass
class ExecutionStats:
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe_queue(self, seconds: float) -> None:
        with self._lock:
            self.queue.add(seconds)

    def observe_execution(
        self, rows: int, padding_rows: int, seconds: float, requests: int = 1
    ) -> None:
        with self._lock:
            self.compute_per_request.count += requests
            self.compute_per_request.seconds += seconds * requests
            self.executions += 1
            self.rows += rows
            self.padding_rows += padding_rows
            self.compute_seconds += seconds
            self.by_batch_rows.setdefault(rows, Duration()).add(seconds)

    def observe_request(self, ok: bool, rows: int, seconds: float) -> None:
        with self._lock:
            if ok:
                self.success.add(seconds)
                self.inferences += rows
                self.last_inference_ms = int(time.time() * 1000)
            else:
                self.failure.add(seconds)


class Observers:
    """Fans one event out to several observers (counters, metrics)."""

    def __init__(self, *observers: ExecutionObserver) -> None:
        self._observers = observers

    def observe_queue(self, seconds: float) -> None:
        for observer in self._observers:
            observer.observe_queue(seconds)

    def observe_execution(
        self, rows: int, padding_rows: int, seconds: float, requests: int = 1
    ) -> None:
        for observer in self._observers:
            observer.observe_execution(rows, padding_rows, seconds, requests)


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
