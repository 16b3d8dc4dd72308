"""DynamicBatcher: merges concurrent requests for one model version into batches.

It offers the runner's own call, `await run(inputs, deadline) -> outputs`, so nothing else knows
it is there (ModelVersion holds either a SignatureRunner or a DynamicBatcher around one).

Dispatch policy, eager: whenever an execution slot is free, the queued requests go at once, up
to `max_batch_size` rows of requests whose non-batch dimensions agree; while a batch runs, new
requests gather for the next one. Under load the running batch is the timer — requests arriving
during an execution are batched together at no cost — and when the server is idle a lone request
runs at once instead of waiting for company that is not coming. `max_queue_delay_us` > 0 adds an
optional wait, counted from the oldest queued request, for fuller batches (worth it where a
bigger batch costs almost nothing more, as on a GPU).

Requests larger than `max_batch_size` are split into chunks and reassembled. A batch is padded
with zero rows up to the next `allowed_batch_sizes` entry so TensorFlow only sees warmed-up
shapes, and outputs are trimmed back. A request whose deadline passes while queued is answered
DEADLINE_EXCEEDED without being computed; a cancelled request leaves the queue. A batch that the
model rejects because of one request's values is re-run request by request, so only the bad one
fails. Output dimension 0 must equal the rows sent, else every request of the batch fails INTERNAL.

Loop-bound: all state lives on the event loop thread; TensorFlow runs on the runner's threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import ExecutionFailed, InvalidInput, QueueDeadlineExceeded, QueueFull
from service.settings import BatchingSettings
from service.signature import Signature, Tensors
from service.stats import ExecutionObserver, ExecutionStats

log = logging.getLogger(__name__)


class Runner(Protocol):
    signature: Signature

    async def run(self, inputs: Tensors, deadline: float | None = None) -> Tensors: ...


@dataclass(eq=False)
class _Queued:
    inputs: Tensors
    rows: int
    key: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[Tensors]
    enqueued: float
    deadline: float | None


@dataclass(eq=False)
class DynamicBatcher:
    runner: Runner
    settings: BatchingSettings
    name: str = "model"
    observer: ExecutionObserver = field(default_factory=ExecutionStats)
    clock: Callable[[], float] = time.monotonic
    _queue: deque[_Queued] = field(default_factory=deque)
    _queued_rows: int = 0
    _free_slots: int = 0
    _timer: asyncio.TimerHandle | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._free_slots = self.settings.instances

    @property
    def signature(self) -> Signature:
        return self.runner.signature

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def run(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        rows = next(iter(inputs.values())).shape[0]
        limit = self.settings.max_batch_size
        if rows <= limit:
            return await self._submit([inputs], rows, deadline)
        # Too big for one execution: split into chunks queued together, then reassemble.
        chunks = [{n: a[i : i + limit] for n, a in inputs.items()} for i in range(0, rows, limit)]
        parts = await self._submit(chunks, rows, deadline, split=True)
        return parts

    async def _submit(
        self, chunks: list[Tensors], rows: int, deadline: float | None, split: bool = False
    ) -> Tensors:
        limit = self.settings.queue_limit
        # A request larger than the whole bound is still taken by an empty queue.
        if self._queued_rows and self._queued_rows + rows > limit:
            raise QueueFull(
                f"model '{self.name}' queue full: {self._queued_rows} rows queued, the request "
                f"has {rows}, the limit is {limit} rows (batching.max_queue_size)"
            )
        loop = asyncio.get_running_loop()
        now = self.clock()
        items = []
        for chunk in chunks:
            chunk_rows = next(iter(chunk.values())).shape[0]
            key = tuple((n, a.shape[1:], a.dtype.str) for n, a in chunk.items())
            items.append(_Queued(chunk, chunk_rows, key, loop.create_future(), now, deadline))
        self._queue.extend(items)
        self._queued_rows += rows
        self._dispatch()
        try:
            results = [await item.future for item in items]
        finally:
            for item in items:  # cancelled, or a sibling chunk failed: leave the queue
                if not item.future.done():
                    item.future.cancel()
                if item.future.cancelled():  # (a cancelled caller cancels its future first)
                    self._remove(item)
        if not split:
            return results[0]
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}

    def _remove(self, item: _Queued) -> None:
        try:
            self._queue.remove(item)
        except ValueError:
            return  # already taken into a batch
        self._queued_rows -= item.rows

    def _dispatch(self) -> None:
        while self._free_slots and self._queue:
            batch = self._take_batch()
            if not batch:
                return
            self._free_slots -= 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take_batch(self) -> list[_Queued]:
        """Queued requests for the next execution, or [] when the optional delay is waiting."""
        now = self.clock()
        for item in list(self._queue):  # answer what has expired or gone away
            if item.future.done():
                self._remove(item)
            elif item.deadline is not None and item.deadline <= now:
                self._remove(item)
                item.future.set_exception(
                    QueueDeadlineExceeded(
                        f"model '{self.name}': the request's deadline passed after "
                        f"{(now - item.enqueued) * 1000:.1f} ms in the queue; it was not computed"
                    )
                )
        if not self._queue:
            return []
        head = self._queue[0]
        limit = self.settings.max_batch_size
        batch, rows = [], 0
        for item in self._queue:
            if item.key == head.key and rows + item.rows <= limit:
                batch.append(item)
                rows += item.rows
        delay = self.settings.max_queue_delay_us / 1e6
        if delay and rows < limit and now < head.enqueued + delay:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    head.enqueued + delay - now, self._on_timer
                )
            return []
        for item in batch:
            self._remove(item)
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    async def _execute(self, batch: list[_Queued]) -> None:
        try:
            started = self.clock()
            for item in batch:
                self.observer.observe_queue(started - item.enqueued)
            await self._run_group(batch)
        finally:
            self._free_slots += 1
            self._dispatch()

    async def _run_group(self, batch: list[_Queued]) -> None:
        live = [item for item in batch if not item.future.done()]
        if not live:
            return
        rows = sum(item.rows for item in live)
        padded = self.settings.padded_size(rows)
        started = self.clock()
        try:
            outputs = await self.runner.run(_concatenate(live, padded))
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != padded:
                    raise ExecutionFailed(
                        f"model '{self.name}' returned output '{name}' with shape "
                        f"{list(array.shape)} for a batch of {padded} rows"
                    )
        except InvalidInput as error:
            if len(live) > 1:  # one request's values spoil the batch: find which, alone
                for item in live:
                    await self._run_group([item])
                return
            live[0].future.set_exception(error)
            return
        except Exception as error:  # noqa: BLE001 - every request of the batch gets the failure
            if not isinstance(error, ExecutionFailed):
                log.error("model %s: a batch of %d rows failed", self.name, rows, exc_info=error)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self.observer.observe_execution(rows, padded - rows, self.clock() - started, len(live))
        offset = 0
        for item in live:
            if not item.future.done():
                item.future.set_result(
                    {n: a[offset : offset + item.rows] for n, a in outputs.items()}
                )
            offset += item.rows


def _concatenate(batch: list[_Queued], padded_rows: int) -> Tensors:
    """One input dict for the batch, padded with zero rows (empty strings for BYTES)."""
    rows = sum(item.rows for item in batch)
    if len(batch) == 1 and padded_rows == rows:
        return batch[0].inputs
    merged: Tensors = {}
    for name, first in batch[0].inputs.items():
        parts = [item.inputs[name] for item in batch]
        if padded_rows > rows:
            shape = (padded_rows - rows, *first.shape[1:])
            fill = (
                np.full(shape, b"", dtype=object)
                if first.dtype == object
                else np.zeros(shape, first.dtype)
            )
            parts.append(fill)
        merged[name] = np.concatenate(parts)
    return merged
