"""DynamicBatcher: merges concurrent requests for one model version into batches.

It offers the runner's own call, `await run(inputs, deadline) -> outputs`, so nothing else knows
it is there (ModelVersion holds either a SignatureRunner or a DynamicBatcher around one).

Dispatch policy, eager: whenever an execution slot is free, the queued requests go at once, up
to `max_batch_size` rows of requests whose non-batch dimensions agree; while a batch runs, new
requests gather for the next one. Under load the running batch is the timer — requests arriving
during an execution are batched together at no cost — and when the server is idle a lone request
runs at once instead of waiting for company that is not coming. "At once" means when the event
loop runs out of ready work (service/loop.py's `call_when_idle`), or as soon as a full batch is
queued: requests the loop is still taking in join the batch instead of each paying TensorFlow's
fixed cost per call, which on a loop-bound server would keep batches at one or two rows (on a
2-core machine this alone moved the 49k-parameter model from 2 to 13 rows per batch and
throughput by 1.8x at 32 clients: bench/overhead.py).
`max_queue_delay_us` > 0 adds an optional wait, counted from the oldest queued request, for
fuller batches (worth it where a bigger batch costs almost nothing more, as on a GPU).

Taking a batch costs O(rows taken), whatever the queue holds. A request larger than
`max_batch_size` is taken a batch-full at a time and goes to the back of the queue between
takes, so the requests behind it are interleaved with its chunks instead of waiting for all of
it; its outputs are reassembled in order. A request that fits in one batch is never split: when
it does not fit in what is left of a batch, a few requests behind it may fill the space. A batch
is padded with zero rows up to the next `allowed_batch_sizes` entry so TensorFlow only sees
warmed-up shapes, and outputs are trimmed back.

A request whose deadline passes while queued is answered DEADLINE_EXCEEDED without being
computed; a cancelled request (or what is left of it) leaves the queue. A batch that the model
rejects because of one request's values is re-run piece by piece, so only the bad one fails.

Tracing: a request may carry its RequestTrace (service/otel.py); when an execution ends and
the batcher was given the server's Tracing, the execution's span is made there, linked to every
traced request it served, with the execution's own start and end times. Without tracing, that
is one attribute check per execution.

Loop-bound: all state lives on the event loop thread; TensorFlow runs on the runner's threads,
which hand each finished batch back to the loop with one call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from plexserve.errors import ExecutionFailed, InvalidInput, QueueDeadlineExceeded, QueueFull
from plexserve.settings import BatchingSettings
from plexserve.signature import Signature, Tensors
from plexserve.stats import ExecutionObserver, ExecutionStats

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace, Tracing

log = logging.getLogger(__name__)

# Requests that fit a batch but not what is left of it, looked past to fill the space: a bounded
# look-ahead keeps taking a batch O(rows taken).
LOOK_AHEAD = 8

Key = tuple[tuple[str, tuple[int, ...], str], ...]  # (name, row shape, dtype) of every input
Done = Callable[[Tensors | None, BaseException | None, float, float], None]


class Runner(Protocol):
    signature: Signature

    def submit(self, inputs: Tensors, done: Done, deadline: float | None = None) -> None:
        """Execute `inputs` on another thread; call `done(outputs, error, started, ended)` there
        (or anywhere) when it ends."""


@dataclass(eq=False, slots=True)
class _Request:
    inputs: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    enqueued: float
    deadline: float | None
    trace: RequestTrace | None = None  # set: the request is traced
    taken: int = 0  # rows handed to executions so far
    answered: int = 0  # rows whose outputs came back (a split request's)
    parts: list[tuple[int, Tensors]] | None = None  # (first row, outputs) of a split request


Piece = tuple[_Request, int, int]  # a request, its first row in this batch, how many rows


class DynamicBatcher:
    def __init__(
        self,
        runner: Runner,
        settings: BatchingSettings,
        name: str = "model",
        observer: ExecutionObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.runner = runner
        self.tracing = tracing  # None: no request is traced
        self.settings = settings
        self.name = name
        self.observer: ExecutionObserver = observer or ExecutionStats()
        self.clock = clock
        self._queues: dict[Key, deque[_Request]] = {}
        self._queued_rows = 0
        self._free_slots = settings.instances
        self._dispatch_pending = False
        self._timer: asyncio.TimerHandle | None = None
        # Validated requests of a signature whose row shapes are all fixed always agree: one
        # queue, and no key to compute per request.
        inputs = runner.signature.inputs
        self._one_shape = bool(inputs) and all(
            None not in spec.shape[1:] for spec in inputs.values()
        )

    @property
    def signature(self) -> Signature:
        return self.runner.signature

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def run(
        self, inputs: Tensors, deadline: float | None = None, trace: RequestTrace | None = None
    ) -> Tensors:
        rows = next(iter(inputs.values())).shape[0]
        limit = self.settings.queue_limit
        # A request larger than the whole bound is still taken by an empty queue.
        if self._queued_rows and self._queued_rows + rows > limit:
            raise QueueFull(
                f"model '{self.name}' queue full: {self._queued_rows} rows queued, the request "
                f"has {rows}, the limit is {limit} rows (batching.max_queue_size)"
            )
        loop = asyncio.get_running_loop()
        request = _Request(inputs, rows, loop.create_future(), self.clock(), deadline, trace)
        key = (
            ()
            if self._one_shape
            else tuple((n, a.shape[1:], a.dtype.str) for n, a in inputs.items())
        )
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(request)
        self._queued_rows += rows
        if self._free_slots:
            if not self._dispatch_pending:
                self._schedule_dispatch(loop)
            elif self._queued_rows >= self.settings.max_batch_size >= self._queued_rows - rows:
                loop.call_soon(self._dispatch)  # a batch is full: no reason to wait for idle
        try:
            return await request.future
        finally:
            if request.future.cancelled():  # the caller went away: drop what is left of it
                self._queued_rows -= request.rows - request.taken
                request.taken = request.rows

    def _fail(self, request: _Request, error: BaseException) -> None:
        if not request.future.done():
            request.future.set_exception(error)
            self._queued_rows -= request.rows - request.taken
            request.taken = request.rows

    def _schedule_dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Dispatch once the loop has taken in what it is handling now (service/loop.py), or at
        the next iteration on a loop without that hook; at once when a batch is full."""
        self._dispatch_pending = True
        when_idle = getattr(loop, "call_when_idle", None)
        if when_idle is not None and self._queued_rows < self.settings.max_batch_size:
            when_idle(self._dispatch)
        else:
            loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        while self._free_slots:
            pieces = self._take()
            if not pieces:
                return
            self._free_slots -= 1
            self._execute(pieces)

    def _oldest_queue(self) -> deque[_Request] | None:
        """The queue whose head request waited longest (there is one queue per input shape:
        one, for most models)."""
        oldest = None
        for key, queue in list(self._queues.items()):
            while queue and queue[0].taken == queue[0].rows:  # answered, failed or cancelled
                queue.popleft()
            if not queue:
                del self._queues[key]
            elif oldest is None or queue[0].enqueued < oldest[0].enqueued:
                oldest = queue
        return oldest

    def _take(self) -> list[Piece]:
        """The pieces of the next execution, or [] when the optional delay is waiting."""
        now = self.clock()
        while (queue := self._oldest_queue()) is not None:
            head = queue[0]
            if head.deadline is None or head.deadline > now:
                break
            queue.popleft()
            self._fail(
                head,
                QueueDeadlineExceeded(
                    f"model '{self.name}': the request's deadline passed after "
                    f"{(now - head.enqueued) * 1000:.1f} ms in the queue; it was not computed"
                ),
            )
        else:
            return []
        limit = self.settings.max_batch_size
        delay = self.settings.max_queue_delay_us / 1e6
        if delay and now < head.enqueued + delay and _rows_up_to(queue, limit) < limit:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    head.enqueued + delay - now, self._on_timer
                )
            return []
        pieces: list[Piece] = []
        passed: list[_Request] = []  # looked past: they keep their place at the front
        rotated: list[_Request] = []  # split requests with rows left: to the back
        space = limit
        while queue and space and len(passed) < LOOK_AHEAD:
            request = queue.popleft()
            left = request.rows - request.taken
            if left == 0:
                continue
            if request.deadline is not None and request.deadline <= now:
                self._fail(
                    request,
                    QueueDeadlineExceeded(
                        f"model '{self.name}': the request's deadline passed after "
                        f"{(now - request.enqueued) * 1000:.1f} ms in the queue; it was not "
                        "computed"
                    ),
                )
                continue
            if request.rows <= limit and left > space:
                passed.append(request)
                continue
            count = min(left, space)
            pieces.append((request, request.taken, count))
            self.observer.observe_queue(now - request.enqueued)
            request.taken += count
            space -= count
            if request.taken < request.rows:
                rotated.append(request)
        queue.extendleft(reversed(passed))
        queue.extend(rotated)
        self._queued_rows -= limit - space
        return pieces

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _execute(self, pieces: list[Piece], alone: bool = False) -> None:
        """Submit one execution; `alone`: a piece re-run by itself, outside the slots."""
        rows = sum(count for _, _, count in pieces)
        padded = self.settings.padded_size(rows)
        loop = asyncio.get_running_loop()

        def done(
            outputs: Tensors | None, error: BaseException | None, started: float, ended: float
        ) -> None:
            loop.call_soon_threadsafe(
                self._finished, pieces, rows, padded, alone, outputs, error, started, ended
            )

        self.runner.submit(_concatenate(pieces, rows, padded), done)

    def _finished(
        self,
        pieces: list[Piece],
        rows: int,
        padded: int,
        alone: bool,
        outputs: Tensors | None,
        error: BaseException | None,
        started: float,
        ended: float,
    ) -> None:
        if not alone:
            self._free_slots += 1
            if self._queued_rows and not self._dispatch_pending:
                self._schedule_dispatch(asyncio.get_running_loop())
        if self.tracing is not None:
            self._trace(pieces, rows, padded, error, started, ended)
        if outputs is not None:
            self.observer.observe_execution(rows, padded - rows, ended - started, len(pieces))
            self._answer(pieces, outputs)
        elif isinstance(error, InvalidInput) and len(pieces) > 1:
            for piece in pieces:  # one request's values spoil the batch: find which, alone
                if not piece[0].future.done():
                    self._execute([piece], alone=True)
        else:
            assert error is not None
            if not isinstance(error, InvalidInput | ExecutionFailed):
                log.error("model %s: a batch of %d rows failed", self.name, rows, exc_info=error)
            for request, _, _ in pieces:
                self._fail(request, error)

    def _trace(
        self,
        pieces: list[Piece],
        rows: int,
        padded: int,
        error: BaseException | None,
        started: float,
        ended: float,
    ) -> None:
        """The execution's span, when it served a traced request (before they are answered)."""
        served = [(r.trace, r.enqueued, count) for r, _, count in pieces if r.trace is not None]
        if served and self.tracing is not None:
            self.tracing.executed(served, rows, padded - rows, len(pieces), started, ended, error)

    @staticmethod
    def _answer(pieces: list[Piece], outputs: Tensors) -> None:
        offset = 0
        for request, first, count in pieces:
            if not request.future.done():
                part = {n: a[offset : offset + count] for n, a in outputs.items()}
                if count == request.rows:
                    request.future.set_result(part)
                else:  # a piece of a split request: answered once every piece is back
                    parts = request.parts = request.parts or []
                    parts.append((first, part))
                    request.answered += count
                    if request.answered == request.rows:
                        parts.sort(key=lambda p: p[0])
                        request.future.set_result(
                            {n: np.concatenate([p[n] for _, p in parts]) for n in part}
                        )
            offset += count


def _rows_up_to(queue: deque[_Request], limit: int) -> int:
    """Rows waiting in `queue`, counted up to `limit` (O(limit), not O(queue))."""
    rows = 0
    for request in queue:
        rows += request.rows - request.taken
        if rows >= limit:
            break
    return rows


def _concatenate(pieces: list[Piece], rows: int, padded_rows: int) -> Tensors:
    """One input dict for the batch, padded with zero rows (empty strings for BYTES)."""
    request, first, count = pieces[0]
    if len(pieces) == 1 and padded_rows == rows:
        if count == request.rows:
            return request.inputs
        return {n: a[first : first + count] for n, a in request.inputs.items()}
    merged: Tensors = {}
    for name, sample in request.inputs.items():
        parts = [r.inputs[name][f : f + c] for r, f, c in pieces]
        if padded_rows > rows:
            shape = (padded_rows - rows, *sample.shape[1:])
            fill = (
                np.full(shape, b"", dtype=object)
                if sample.dtype == object
                else np.zeros(shape, sample.dtype)
            )
            parts.append(fill)
        merged[name] = np.concatenate(parts)
    return merged
