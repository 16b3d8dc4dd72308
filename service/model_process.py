"""The model process's side of the hop (`plexserve serve --workers N`): the front-end worker
processes connect here, over one Unix socket each (service/hop.py).

The model process holds the repository, the batchers and TensorFlow; it serves the HTTP port
itself and no gRPC port. To each worker it pushes a `Snapshot` of every version (state,
settings, signature) and of readiness, at connection and again on every change, so that workers
resolve and validate requests without asking; it runs the requests they send (already
validated, for a resolved version) through the version's batcher, so one batch merges requests
of every worker; it answers their control calls (index, load, unload, statistics).

Per-request counters: a worker counts what it answers and ships the sums here every
`SHIP_SECONDS`, and at once when asked: before /metrics is rendered and before statistics are
answered, every worker is asked (`flush`), so what a scrape shows counts every request answered
before it began.

Messages (tuples) from a worker: ("infer", id, name, version, inputs, timeout),
("cancel", id), ("call", id, method, args), ("stats", counters, unresolved), ("flushed", id).
To a worker: ("state", Snapshot), ("ok", id, value), ("error", id, ServingError),
("flush", id).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from plexserve.errors import ExecutionFailed, ServingError, ShuttingDown
from plexserve.hop import Connection, HopClosed, Message
from plexserve.metrics import Metrics
from plexserve.repository import ModelRepository, ModelState, ModelVersion
from plexserve.settings import ModelSettings
from plexserve.signature import Signature
from plexserve.stats import ExecutionStats, InflightCounter, add_requests

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 1.0  # how long a scrape waits for the workers' counters
SHIP_SECONDS = 0.5  # how often a worker ships its counters unasked

# (name, version) -> the per-request counters a worker gathered since it last shipped
Counters = dict[tuple[str, int], ExecutionStats]
# requests a worker answered before resolving a version: (model, protocol, code, seconds)
Unresolved = list[tuple[str, str, grpc.StatusCode, float]]


@dataclass(frozen=True)
class VersionView:
    name: str
    version: int
    state: ModelState
    reason: str
    settings: ModelSettings
    signature: Signature | None  # None until loaded


@dataclass(frozen=True)
class Snapshot:
    """What a worker needs to resolve and validate requests, and to say whether it is ready."""

    versions: tuple[VersionView, ...]
    requested: frozenset[str] | None  # explicit model control: the models asked for
    pending: frozenset[str]  # start-up models not reached yet
    ready: bool  # the server's readiness (--ready-when), false from the lame duck on
    settled: bool  # the start-up models are loaded (or failed): workers may open the port


def snapshot(repository: ModelRepository, ready: bool, settled: bool) -> Snapshot:
    return Snapshot(
        versions=tuple(
            VersionView(
                mv.name,
                mv.version,
                mv.state,
                mv.reason,
                mv.settings,
                mv.runner.signature if mv.runner is not None else None,
            )
            for mv in repository.all_versions()
        ),
        requested=None if repository.requested is None else frozenset(repository.requested),
        pending=frozenset(repository.pending),
        ready=ready,
        settled=settled,
    )


class WorkerLink:
    """One worker's connection."""

    def __init__(self, hop: HopServer, sock: socket.socket) -> None:
        self.hop = hop
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.flushes: dict[int, asyncio.Future[None]] = {}
        self.connection = Connection(sock, self.on_message, self.on_close)

    def send(self, message: Message) -> None:
        with contextlib.suppress(HopClosed):
            self.connection.send(message)

    def on_message(self, message: Message) -> None:
        kind = message[0]
        if kind == "infer":
            _, call, name, version, inputs, timeout = message
            self._start(call, self.hop.infer(self, call, name, version, inputs, timeout))
        elif kind == "cancel":
            task = self.tasks.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "call":
            _, call, method, args = message
            self._start(call, self.hop.call(self, call, method, args))
        elif kind == "stats":
            self.hop.add_counters(message[1], message[2])
        elif kind == "flushed":
            future = self.flushes.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(None)
        else:
            log.error("hop: unknown message %r from a worker", kind)

    def _start(self, call: int, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks[call] = task
        task.add_done_callback(lambda _: self.tasks.pop(call, None))

    def on_close(self, error: BaseException | None) -> None:
        for task in list(self.tasks.values()):
            task.cancel()  # nobody is left to answer
        for future in self.flushes.values():
            if not future.done():
                future.set_result(None)
        self.hop.links.discard(self)
        self.hop.changed()

    async def flush(self, call: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self.flushes[call] = future
        self.send(("flush", call))
        try:
            await asyncio.wait_for(future, FLUSH_TIMEOUT)
        except TimeoutError:
            log.warning("a worker did not send its request counters within %g s", FLUSH_TIMEOUT)
        finally:
            self.flushes.pop(call, None)


class HopServer:
    """Listens for workers on the Unix socket `path`."""

    def __init__(
        self,
        path: str,
        repository: ModelRepository,
        metrics: Metrics,
        ready: Callable[[], bool],
        settled: Callable[[], bool],
    ) -> None:
        self.path = path
        self.repository = repository
        self.metrics = metrics
        self._ready = ready
        self._settled = settled
        self.links: set[WorkerLink] = set()
        self.inflight = InflightCounter()
        self.accepting = True
        self._ids = itertools.count()
        self._push_scheduled = False
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.disconnected = asyncio.Event()  # set whenever no worker is connected
        self.disconnected.set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.repository.listeners.append(lambda *_: self.changed())
        self._accepting = asyncio.get_running_loop().create_task(self._accept())
        log.info("waiting for front-end workers on %s", self.path)

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            link = WorkerLink(self, sock)
            self.links.add(link)
            self.disconnected.clear()
            link.send(("state", self._snapshot()))

    def changed(self) -> None:
        """Push a new snapshot to every worker (once per loop turn, however many changes)."""
        if not self.links:
            self.disconnected.set()
        if not self._push_scheduled:
            self._push_scheduled = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._push_scheduled = False
        state = ("state", self._snapshot())
        for link in list(self.links):
            link.send(state)

    def _snapshot(self) -> Snapshot:
        return snapshot(self.repository, self._ready(), self._settled())

    async def infer(
        self,
        link: WorkerLink,
        call: int,
        name: str,
        version: int,
        inputs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.inflight.enter()
        try:
            if not self.accepting:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            model = self.repository.resolve(name, str(version))
            deadline = None if timeout is None else time.monotonic() + timeout
            outputs = await model.run(inputs, deadline)
            link.send(("ok", call, outputs))
        except ServingError as error:
            link.send(("error", call, error))
        except asyncio.CancelledError:
            pass  # the worker cancelled it, or went away
        except Exception as error:  # noqa: BLE001 - the worker's client sees INTERNAL
            log.exception("model %s version %s failed", name, version)
            link.send(("error", call, ExecutionFailed(f"{type(error).__name__}: {error}")))
        finally:
            self.inflight.exit()

    async def call(self, link: WorkerLink, call: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            value = await self._control(method, args)
            link.send(("ok", call, value))
        except ServingError as error:
            link.send(("error", call, error))
        except Exception as error:  # noqa: BLE001
            log.exception("%s%r for a worker failed", method, args)
            link.send(("error", call, ExecutionFailed(f"{method} failed: {error}")))

    async def _control(self, method: str, args: tuple[Any, ...]) -> Any:
        repository = self.repository
        if method == "index":
            return repository.index()
        if method == "load":
            await asyncio.shield(repository.load_model(*args))
            return None
        if method == "unload":
            await asyncio.shield(repository.unload_model(*args))
            return None
        if method == "statistics":
            await self.flush()
            return [self._stats(name, version) for name, version in args[0]]
        raise ExecutionFailed(f"unknown control call {method!r}")

    def _stats(self, name: str, version: int) -> ExecutionStats:
        mv = self._version(name, version)
        return mv.stats if mv is not None else ExecutionStats()

    def _version(self, name: str, version: int) -> ModelVersion | None:
        return next((mv for mv in self.repository.versions(name) if mv.version == version), None)

    async def flush(self) -> None:
        """Have every worker ship its per-request counters now."""
        links = list(self.links)
        if links:
            await asyncio.gather(*(link.flush(next(self._ids)) for link in links))

    def add_counters(self, counters: Counters, unresolved: Unresolved) -> None:
        for (name, version), part in counters.items():
            mv = self._version(name, version)
            if mv is not None:
                add_requests(mv.stats, part)
            else:  # the version was unloaded meanwhile: its series lives on in the metrics
                self.metrics.add_requests(name, str(version), part)
        for model, protocol, code, seconds in unresolved:
            self.metrics.observe_unresolved(model, "", protocol, code, seconds)

    async def wait_for_workers(self, timeout: float) -> bool:
        """Wait until every worker has disconnected (they drain first); False on timeout."""
        try:
            await asyncio.wait_for(self.disconnected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.accepting = False
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for link in list(self.links):
            link.connection.close()
