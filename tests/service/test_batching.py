"""DynamicBatcher semantics, with a runner the test releases by hand and an injected clock:
what forms a batch is decided by events, not by timing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from plexserve.batching import Done, DynamicBatcher
from plexserve.errors import InvalidInput, QueueDeadlineExceeded, QueueFull
from plexserve.settings import BatchingSettings
from plexserve.signature import Signature, Tensors
from plexserve.stats import ExecutionStats


class GatedRunner:
    """Doubles `x`; each of the first `gated` executions (all, by default) waits until the test
    releases it. Records what it was given."""

    signature = Signature({}, {})

    def __init__(
        self, transform: Callable[[Tensors], Tensors] | None = None, gated: int | None = None
    ) -> None:
        self.calls: list[Tensors] = []
        self.gates: list[asyncio.Event] = []
        self.transform = transform or (lambda inputs: {"y": inputs["x"] * 2})
        self.gated = gated
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, inputs: Tensors, done: Done, deadline: float | None = None) -> None:
        self.calls.append(inputs)
        gate = asyncio.Event()
        if self.gated is None or len(self.calls) <= self.gated:
            self.gates.append(gate)
        else:
            gate.set()

        async def execute() -> None:
            await gate.wait()
            try:
                outputs = self.transform(inputs)
            except Exception as error:  # noqa: BLE001 - handed back, as a runner does
                done(None, error, 0.0, 0.0)
            else:
                done(outputs, None, 0.0, 0.0)

        task = asyncio.get_running_loop().create_task(execute())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def rows(self) -> list[int]:
        return [len(call["x"]) for call in self.calls]

    async def release(self, index: int) -> None:
        while len(self.gates) <= index:
            await asyncio.sleep(0)
        self.gates[index].set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def x(*values: float, width: int = 1) -> Tensors:
    return {"x": np.array([[v] * width for v in values], np.float32)}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def scenario(body: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:  # a hang is a failure, not a stuck suite
        return await asyncio.wait_for(body(), timeout=10)

    return asyncio.run(bounded())


def make(runner: GatedRunner, **settings: Any) -> DynamicBatcher:
    return DynamicBatcher(runner, BatchingSettings(**settings), name="m", clock=FakeClock())


def test_a_lone_request_runs_at_once_and_later_arrivals_gather_for_the_next_batch() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=8)
        first = asyncio.create_task(batcher.run(x(1)))
        await settle()
        assert runner.rows() == [1]  # no timer: it did not wait for company
        later = [asyncio.create_task(batcher.run(x(v))) for v in (2, 3, 4, 5, 6)]
        await settle()
        assert runner.rows() == [1]  # the slot is busy: they queue
        await runner.release(0)
        await settle()
        assert runner.rows() == [1, 5]  # all five in one batch
        await runner.release(1)
        assert (await first)["y"].tolist() == [[2.0]]
        assert [(await t)["y"].tolist() for t in later] == [
            [[4.0]],
            [[6.0]],
            [[8.0]],
            [[10.0]],
            [[12.0]],
        ]

    scenario(body)


def test_batches_never_exceed_max_batch_size_and_multi_row_requests_count_as_rows() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=4)
        blocker = asyncio.create_task(batcher.run(x(0)))
        await settle()
        tasks = [asyncio.create_task(batcher.run(x(*range(rows)))) for rows in (2, 1, 3, 1, 2)]
        await settle()
        for index in range(4):
            await runner.release(index)
            await settle()
        await asyncio.gather(blocker, *tasks)
        # queue order 2,1,3,1,2: first batch 2+1 (3 does not fit), +1 fits -> 4; then 3; then 2
        assert runner.rows() == [1, 4, 3, 2]

    scenario(body)


def test_a_request_larger_than_max_batch_size_is_split_and_reassembled() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=4)
        values = np.arange(10, dtype=np.float32).reshape(10, 1)
        task = asyncio.create_task(batcher.run({"x": values}))
        for index in range(3):
            await runner.release(index)
            await settle()
        result = await task
        assert runner.rows() == [4, 4, 2]
        np.testing.assert_array_equal(result["y"], values * 2)

    scenario(body)


def test_requests_whose_non_batch_dimensions_differ_are_never_merged() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=8)
        blocker = asyncio.create_task(batcher.run(x(0)))
        await settle()
        narrow = [asyncio.create_task(batcher.run(x(1, width=3))) for _ in range(2)]
        wide = [asyncio.create_task(batcher.run(x(1, width=5))) for _ in range(2)]
        await settle()
        for index in range(3):
            await runner.release(index)
            await settle()
        await asyncio.gather(blocker, *narrow, *wide)
        assert [call["x"].shape for call in runner.calls] == [(1, 1), (2, 3), (2, 5)]

    scenario(body)


def test_padding_to_allowed_sizes_is_trimmed_and_counted() -> None:
    async def body() -> None:
        runner = GatedRunner()
        stats = ExecutionStats()
        batcher = DynamicBatcher(
            runner,
            BatchingSettings(max_batch_size=4, allowed_batch_sizes=(1, 2, 4)),
            observer=stats,
            clock=FakeClock(),
        )
        task = asyncio.create_task(batcher.run(x(1, 2, 3)))
        await runner.release(0)
        result = await task
        assert runner.rows() == [4]  # padded up to the next allowed size
        assert runner.calls[0]["x"][3].tolist() == [0.0]  # with zero rows
        assert result["y"].tolist() == [[2.0], [4.0], [6.0]]  # trimmed back
        assert (stats.executions, stats.rows, stats.padding_rows) == (1, 3, 1)

    scenario(body)


def test_a_full_queue_answers_queue_full() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=2, max_queue_size=3)
        blocker = asyncio.create_task(batcher.run(x(0)))  # running: no longer queued
        await settle()
        queued = asyncio.create_task(batcher.run(x(1, 2, 3)))
        await settle()
        with pytest.raises(QueueFull, match=r"'m' queue full: 3 rows queued.*limit is 3 rows"):
            await batcher.run(x(4))
        assert batcher.queued_rows == 3
        await runner.release(0)
        await runner.release(1)
        await runner.release(2)
        await asyncio.gather(blocker, queued)

    scenario(body)


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=8)
        clock = batcher.clock
        assert isinstance(clock, FakeClock)
        blocker = asyncio.create_task(batcher.run(x(0)))
        await settle()
        late = asyncio.create_task(batcher.run(x(7), deadline=clock.now + 0.5))
        on_time = asyncio.create_task(batcher.run(x(8), deadline=clock.now + 5))
        await settle()
        clock.now += 1.0  # the first deadline passes while the slot is busy
        await runner.release(0)
        with pytest.raises(QueueDeadlineExceeded, match="deadline passed after 1000.0 ms"):
            await late
        await runner.release(1)
        assert (await on_time)["y"].tolist() == [[16.0]]
        assert [call["x"].tolist() for call in runner.calls] == [[[0.0]], [[8.0]]]  # 7 never ran
        await blocker

    scenario(body)


def test_a_cancelled_request_leaves_the_queue() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=8)
        blocker = asyncio.create_task(batcher.run(x(0)))
        await settle()
        gone = asyncio.create_task(batcher.run(x(5, 5)))
        kept = asyncio.create_task(batcher.run(x(6)))
        await settle()
        assert batcher.queued_rows == 3
        gone.cancel()
        await settle()
        assert batcher.queued_rows == 1
        await runner.release(0)
        await runner.release(1)
        await asyncio.gather(blocker, kept)
        assert runner.rows() == [1, 1]

    scenario(body)


def test_one_requests_bad_values_do_not_fail_the_others_in_its_batch() -> None:
    def reject_negative(inputs: Tensors) -> Tensors:
        if (inputs["x"] < 0).any():
            raise InvalidInput("indices[0] = -1 is not in [0, 10)")
        return {"y": inputs["x"] * 2}

    async def body() -> None:
        runner = GatedRunner(reject_negative, gated=2)
        batcher = make(runner, max_batch_size=8)
        blocker = asyncio.create_task(batcher.run(x(0)))
        await settle()
        good, bad, other = (asyncio.create_task(batcher.run(x(v))) for v in (1, -1, 3))
        await settle()
        await runner.release(0)
        await runner.release(1)
        assert (await good)["y"].tolist() == [[2.0]]
        assert (await other)["y"].tolist() == [[6.0]]
        with pytest.raises(InvalidInput, match="-1 is not in"):
            await bad
        assert runner.rows() == [1, 3, 1, 1, 1]  # the batch of 3, then each alone
        await blocker

    scenario(body)


def test_the_optional_delay_waits_for_fuller_batches_but_a_full_batch_goes_at_once() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=3, max_queue_delay_us=1000)
        clock = batcher.clock
        assert isinstance(clock, FakeClock)
        lone = asyncio.create_task(batcher.run(x(1)))
        await asyncio.sleep(0.005)  # several timer firings: the fake clock has not moved
        assert runner.rows() == []
        clock.now += 0.001
        while not runner.calls:
            await asyncio.sleep(0.001)
        assert runner.rows() == [1]
        await runner.release(0)
        await lone
        full = [asyncio.create_task(batcher.run(x(v))) for v in (1, 2, 3)]
        await settle()
        assert runner.rows() == [1, 3]  # full: no waiting
        await runner.release(1)
        await asyncio.gather(*full)

    scenario(body)


def test_instances_run_batches_concurrently() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=8, instances=2)
        tasks = []
        for v in (1, 2, 3):  # arriving one by one: each takes a free slot, if there is one
            tasks.append(asyncio.create_task(batcher.run(x(v))))
            await settle()
        assert runner.rows() == [1, 1]  # two slots: two executions at once
        await runner.release(0)
        await settle()
        assert runner.rows() == [1, 1, 1]
        await runner.release(1)
        await runner.release(2)
        await asyncio.gather(*tasks)

    scenario(body)


def test_an_empty_queue_takes_a_request_larger_than_its_bound() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=2, max_queue_size=3)
        task = asyncio.create_task(batcher.run(x(*range(5))))
        for index in range(3):
            await runner.release(index)
            await settle()
        assert (await task)["y"].shape == (5, 1)

    scenario(body)


def test_a_large_requests_chunks_take_turns_with_the_requests_behind_it() -> None:
    async def body() -> None:
        runner = GatedRunner(gated=0)
        batcher = make(runner, max_batch_size=4)
        values = np.arange(12, dtype=np.float32).reshape(12, 1)
        large = asyncio.create_task(batcher.run({"x": values}))
        small = [asyncio.create_task(batcher.run(x(100 + v))) for v in range(3)]
        result = await large
        await asyncio.gather(*small)
        # 12 rows in chunks of 4; the three small requests (queued after it) share the second
        # batch instead of waiting for all three chunks
        assert runner.rows() == [4, 4, 4, 3]
        assert runner.calls[1]["x"].ravel().tolist() == [100.0, 101.0, 102.0, 4.0]
        np.testing.assert_array_equal(result["y"], values * 2)  # reassembled in order

    scenario(body)


def test_a_cancelled_large_request_stops_being_computed() -> None:
    async def body() -> None:
        runner = GatedRunner()
        batcher = make(runner, max_batch_size=2)
        large = asyncio.create_task(batcher.run({"x": np.zeros((1000, 1), np.float32)}))
        await settle()
        assert runner.rows() == [2] and batcher.queued_rows == 998
        large.cancel()
        await settle()
        assert batcher.queued_rows == 0
        await runner.release(0)
        after = asyncio.create_task(batcher.run(x(7)))
        await settle()
        await runner.release(1)
        assert (await after)["y"].tolist() == [[14.0]]
        assert runner.rows() == [2, 1]  # nothing more of the cancelled request ran

    scenario(body)
