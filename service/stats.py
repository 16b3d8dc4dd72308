"""Per-model-version execution counters, fed by whoever executes (the DynamicBatcher, or the
runner itself when batching is off). They back ModelStatistics and the batching report; the
Prometheus metrics (service/metrics.py) observe the same events.

Updated from the event loop and from runner threads: integer and float additions under a lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class ExecutionObserver(Protocol):
    def observe_queue(self, seconds: float) -> None:
        """One request (or chunk of one) waited `seconds` before its execution started."""

    def observe_execution(self, rows: int, padding_rows: int, seconds: float) -> None:
        """One execution ran `rows` request rows plus `padding_rows` padding in `seconds`."""


@dataclass
class ExecutionStats:
    executions: int = 0
    rows: int = 0
    padding_rows: int = 0
    compute_seconds: float = 0.0
    queued: int = 0
    queue_seconds: float = 0.0
    batch_sizes: Counter[int] = field(default_factory=Counter)  # executions by request rows
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe_queue(self, seconds: float) -> None:
        with self._lock:
            self.queued += 1
            self.queue_seconds += seconds

    def observe_execution(self, rows: int, padding_rows: int, seconds: float) -> None:
        with self._lock:
            self.executions += 1
            self.rows += rows
            self.padding_rows += padding_rows
            self.compute_seconds += seconds
            self.batch_sizes[rows] += 1

    @property
    def mean_batch_rows(self) -> float:
        return self.rows / self.executions if self.executions else 0.0


class Observers:
    """Fans one event out to several observers (counters, metrics)."""

    def __init__(self, *observers: ExecutionObserver) -> None:
        self._observers = observers

    def observe_queue(self, seconds: float) -> None:
        for observer in self._observers:
            observer.observe_queue(seconds)

    def observe_execution(self, rows: int, padding_rows: int, seconds: float) -> None:
        for observer in self._observers:
            observer.observe_execution(rows, padding_rows, seconds)
