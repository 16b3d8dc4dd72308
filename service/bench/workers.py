"""Where the load runs: in this process (`LocalLoad`) or in N spawned processes (`ProcessLoad`).

Both offer the same calls, used by `command` on its event loop:
  `await start()` -> the model's inputs (each load process connects, reads the metadata and
  prepares its own pool of requests, seeded by its index, before any step);
  `await run(plans)` -> one raw StepRecord per process (plans[i] is process i's share);
  `answered()` -> (answers, errors) so far, for the progress line;  `await close()`.
Load processes are started with the "spawn" method (no inherited event loop or gRPC state),
import no TensorFlow, ignore SIGINT (the parent stops them), and send back raw samples, which
the caller merges: percentiles are computed once, over everything.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from plexserve.bench import BenchError
from plexserve.bench.inputs import build_pool
from plexserve.bench.load import Recorder, StepPlan, StepRecord, run_plan
from plexserve.bench.protocols import BenchProtocol, InputSpec, open_protocol

START_TIMEOUT = 60.0


@dataclass(frozen=True)
class LoadSetup:
    protocol: str
    target: str
    model: str
    version: str
    rows: int
    input_data: str
    seed: int = 0


async def _prepare(
    setup: LoadSetup, index: int
) -> tuple[BenchProtocol, list[InputSpec], list[Any]]:
    client = open_protocol(setup.protocol, setup.target, setup.model, setup.version)
    try:
        specs = await client.metadata()
        pool = build_pool(client, specs, setup.rows, setup.input_data, seed=setup.seed + index)
    except BaseException:
        await client.close()
        raise
    return client, specs, pool


class LocalLoad:
    """The load runs on the caller's event loop."""

    def __init__(self, setup: LoadSetup) -> None:
        self.setup = setup
        self._client: BenchProtocol | None = None
        self._pool: list[Any] = []
        self._counts = [0, 0]

    async def start(self) -> list[InputSpec]:
        self._client, specs, self._pool = await _prepare(self.setup, 0)
        return specs

    async def run(self, plans: Sequence[StepPlan]) -> list[StepRecord]:
        assert self._client is not None, "start() first"
        (plan,) = plans
        return [await run_plan(self._client.call, self._pool, plan, Recorder(self._counts))]

    def answered(self) -> tuple[int, int]:
        return self._counts[0], self._counts[1]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def worker_main(setup: LoadSetup, index: int, conn: Connection, counts: Any) -> None:
    """Entry point of a load process: prepare, then run each StepPlan received until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_worker(setup, index, conn, counts))


async def _worker(setup: LoadSetup, index: int, conn: Connection, counts: Any) -> None:
    try:
        client, specs, pool = await _prepare(setup, index)
    except BenchError as error:
        conn.send(("error", str(error)))
        return
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    try:
        conn.send(("ready", specs))
        # Blocking between steps is fine: nothing else runs on this loop then.
        while (plan := conn.recv()) is not None:
            try:
                record = await run_plan(client.call, pool, plan, Recorder(counts))
            except Exception:  # noqa: BLE001
                conn.send(("error", traceback.format_exc()))
                return
            conn.send(("record", record))
    finally:
        await client.close()


class ProcessLoad:
    """The load runs in `processes` spawned processes; this process only coordinates."""

    def __init__(self, setup: LoadSetup, processes: int) -> None:
        self.setup = setup
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Connection, Any]] = []
        # One thread per process waits for its answers: the default executor is left free for
        # the metrics scrapes, which must happen while a step runs.
        self._receivers = ThreadPoolExecutor(processes, thread_name_prefix="bench-receive")
        self._running = False

    async def _receive(self, conn: Connection, index: int, expect: str) -> Any:
        loop = asyncio.get_running_loop()
        try:
            kind, payload = await loop.run_in_executor(self._receivers, conn.recv)
        except EOFError:
            raise BenchError(f"load process {index} exited unexpectedly") from None
        if kind == "error":
            raise BenchError(f"load process {index}: {payload}")
        assert kind == expect, (kind, expect)
        return payload

    async def start(self) -> list[InputSpec]:
        for index in range(self.processes):
            parent_end, child_end = self._context.Pipe()
            counts = self._context.RawArray("q", 2)
            process = self._context.Process(
                target=worker_main,
                args=(self.setup, index, child_end, counts),
                name=f"plexserve-bench-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()  # so recv() sees EOF when the child dies
            self._workers.append((process, parent_end, counts))
        specs = await asyncio.wait_for(
            asyncio.gather(
                *(self._receive(conn, i, "ready") for i, (_, conn, _) in enumerate(self._workers))
            ),
            START_TIMEOUT,
        )
        return list(specs[0])

    async def run(self, plans: Sequence[StepPlan]) -> list[StepRecord]:
        self._running = True
        for (_, conn, _), plan in zip(self._workers, plans, strict=True):
            conn.send(plan)
        records = await asyncio.gather(
            *(self._receive(conn, i, "record") for i, (_, conn, _) in enumerate(self._workers))
        )
        self._running = False
        return list(records)

    def answered(self) -> tuple[int, int]:
        return (
            sum(counts[0] for _, _, counts in self._workers),
            sum(counts[1] for _, _, counts in self._workers),
        )

    async def close(self) -> None:
        """Stop the load processes: at once when a step was interrupted, else after they
        closed their channels."""
        for process, conn, _ in self._workers:
            if self._running:
                process.terminate()
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process, conn, _ in self._workers:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 5)
            conn.close()
        self._workers = []
        self._receivers.shutdown(wait=False, cancel_futures=True)
