"""ServingEventLoop's `call_when_idle`, and the batching it is for: requests that a busy loop
is still taking in join one batch."""

from __future__ import annotations

import asyncio

import numpy as np

from plexserve.batching import DynamicBatcher
from plexserve.loop import ServingEventLoop
from plexserve.settings import BatchingSettings
from tests.service.test_batching import GatedRunner, x


def run(coroutine):  # type: ignore[no-untyped-def]
    loop = ServingEventLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, timeout=10))
    finally:
        loop.close()


def test_an_idle_callback_runs_once_the_ready_callbacks_are_done() -> None:
    async def body() -> list[str]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ServingEventLoop)
        order: list[str] = []

        def chain(n: int) -> None:  # keeps the loop busy for n iterations
            order.append(f"busy {n}")
            if n > 1:
                loop.call_soon(chain, n - 1)

        loop.call_when_idle(lambda: order.append("idle"))
        loop.call_soon(chain, 3)
        while "idle" not in order:
            await asyncio.sleep(0.001)
        return order

    assert run(body()) == ["busy 3", "busy 2", "busy 1", "idle"]


def test_requests_arriving_while_the_loop_is_busy_share_one_batch() -> None:
    async def body() -> list[int]:
        runner = GatedRunner(gated=0)
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=8))
        loop = asyncio.get_running_loop()
        tasks = []

        def arrive(n: int) -> None:  # one request per loop iteration, as gRPC hands them over
            tasks.append(loop.create_task(batcher.run(x(n))))
            if n < 5:
                loop.call_soon(arrive, n + 1)

        arrive(1)
        while len(tasks) < 5:
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        assert [r["y"].tolist() for r in results] == [[[2.0 * n]] for n in range(1, 6)]
        return runner.rows()

    assert run(body()) == [5]  # a plain asyncio loop would have run [1, 4] or smaller batches


def test_a_full_batch_goes_without_waiting_for_the_loop_to_be_idle() -> None:
    async def body() -> list[int]:
        runner = GatedRunner(gated=0)
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=4))
        loop = asyncio.get_running_loop()
        tasks = []
        started = []

        def arrive(n: int) -> None:
            tasks.append(loop.create_task(batcher.run(x(n))))
            started.append(len(runner.calls))  # executions submitted before this arrival
            if n < 6:
                loop.call_soon(arrive, n + 1)

        arrive(1)
        while len(tasks) < 6:
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert started[-1] == 1  # the first 4 went before the loop ever idled
        return runner.rows()

    assert run(body()) == [4, 2]


def test_the_batcher_still_works_on_a_plain_asyncio_loop() -> None:
    async def body() -> np.ndarray:
        batcher = DynamicBatcher(GatedRunner(gated=0), BatchingSettings(max_batch_size=4))
        return (await batcher.run(x(1, 2)))["y"]

    assert asyncio.run(body()).tolist() == [[2.0], [4.0]]
