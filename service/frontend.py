"""A front-end worker process's view of the model process (`plexserve serve --workers N`).

A worker imports no TensorFlow. It serves the gRPC port with the same servicers and DataPlane as
a single process, over a `MirrorRepository`: the versions, states, settings and signatures the
model process pushes (service/model_process.py), so that a worker resolves, validates and
refuses requests by itself, and only valid requests for an AVAILABLE version cross the hop.
A `RemoteVersion` runs by sending its inputs to the model process and awaiting the outputs;
a cancelled or timed-out call is cancelled there too.

When the model process is gone (restarting), every request in flight fails UNAVAILABLE "model
process restarting", new ones are refused the same way, readiness goes false, and the link
reconnects until it is back and has pushed its models again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from plexserve.errors import ModelNotReady, ServingError
from plexserve.hop import Connection, HopClosed, Message, connect, is_refused
from plexserve.model_process import SHIP_SECONDS, Counters, Snapshot, Unresolved
from plexserve.repository import IndexEntry, ModelRepository, ModelState, ModelVersion
from plexserve.signature import Signature, Tensors
from plexserve.stats import ExecutionStats

log = logging.getLogger(__name__)

RESTARTING = "model process restarting: retry shortly"
RECONNECT_SECONDS = (0.02, 0.05, 0.1, 0.2, 0.5)  # then every 0.5 s


@dataclass(eq=False)
class RemoteVersion(ModelVersion):
    """A version that runs in the model process."""

    link: ModelLink | None = None
    remote_signature: Signature | None = None

    @property
    def signature(self) -> Signature:
        if self.remote_signature is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is {self.state.value}")
        return self.remote_signature

    async def run(
        self, inputs: Tensors, deadline: float | None = None, trace: Any = None
    ) -> Tensors:
        assert self.link is not None
        return await self.link.infer(self.name, self.version, inputs, deadline)  # type: ignore[no-any-return]


class MirrorRepository(ModelRepository):
    """The model process's repository as last pushed; loads and unloads are asked of it."""

    def __init__(self) -> None:
        super().__init__(Path("."))
        self.link: ModelLink | None = None
        self.down: str | None = "the model process has not connected yet"
        self.remote_ready = False
        self.settled = asyncio.Event()  # the start-up models are loaded: open the port
        self.counters: Counters = {}
        self.unresolved: Unresolved = []
        self.on_change: Callable[[], None] | None = None  # readiness or a state may differ

    # --- what the model process pushed ---

    def update(self, state: Snapshot) -> None:
        models: dict[str, dict[int, ModelVersion]] = {}
        for view in state.versions:
            stats = self.counters.setdefault((view.name, view.version), ExecutionStats())
            models.setdefault(view.name, {})[view.version] = RemoteVersion(
                view.name,
                view.version,
                Path(),
                view.state,
                view.reason,
                view.settings,
                stats=stats,
                link=self.link,
                remote_signature=view.signature,
            )
        self._models = models
        self._newest = {}
        for name, versions in models.items():
            available = [
                mv for _, mv in sorted(versions.items()) if mv.state is ModelState.AVAILABLE
            ]
            if available:
                self._newest[name] = available[-1]
        self.requested = None if state.requested is None else set(state.requested)
        self.pending = set(state.pending)
        self.remote_ready = state.ready
        self.down = None
        if state.settled:
            self.settled.set()
        if self.on_change is not None:
            self.on_change()

    def lost(self) -> None:
        self.down = RESTARTING
        self.remote_ready = False
        if self.on_change is not None:
            self.on_change()

    # --- answers ---

    def resolve(self, name: str, version: str = "", field: str = "model_version") -> ModelVersion:
        if self.down is not None:
            raise ModelNotReady(self.down)
        return super().resolve(name, version, field)

    def resolve_label(self, name: str, label: str) -> ModelVersion:
        if self.down is not None:
            raise ModelNotReady(self.down)
        return super().resolve_label(name, label)

    def ready(self, any_model: bool = False) -> bool:
        return self.down is None and self.remote_ready

    def model_ready(self, name: str) -> bool:
        return self.down is None and super().model_ready(name)

    # --- asked of the model process ---

    async def current_index(self) -> list[IndexEntry]:
        return await self._call("index")  # type: ignore[no-any-return]

    async def load_model(self, name: str) -> None:
        await self._call("load", name)

    async def unload_model(self, name: str) -> None:
        await self._call("unload", name)

    async def _counters(self, versions: list[ModelVersion]) -> list[ExecutionStats]:
        keys = [(mv.name, mv.version) for mv in versions]
        return await self._call("statistics", keys)  # type: ignore[no-any-return]

    async def _call(self, method: str, *args: Any) -> Any:
        if self.link is None or self.down is not None:
            raise ModelNotReady(self.down or RESTARTING)
        return await self.link.call(method, args)

    def observe_unresolved(
        self, model: str, version: str, protocol: str, code: grpc.StatusCode, seconds: float
    ) -> None:
        """(DataPlane's metrics hook) A request refused before a version was resolved."""
        self.unresolved.append((model, protocol, code, seconds))

    def take_counters(self) -> tuple[Counters, Unresolved]:
        """The per-request counters gathered since the last call, for the model process; the
        versions count into fresh ones from here on."""
        counters = {
            key: stats
            for key, stats in self.counters.items()
            if stats.success.count or stats.failure.count
        }
        unresolved, self.unresolved = self.unresolved, []
        for key in counters:
            self.counters[key] = ExecutionStats()
        for mv in self.all_versions():
            mv.stats = self.counters.setdefault((mv.name, mv.version), ExecutionStats())
        return counters, unresolved

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()


class ModelLink:
    """The worker's connection to the model process: requests and control calls out, answers
    and pushed snapshots in; reconnects when the model process goes away."""

    def __init__(self, path: str, mirror: MirrorRepository) -> None:
        self.path = path
        self.mirror = mirror
        mirror.link = self
        self._connection: Connection | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        self._spawn(self._keep_connected())
        self._spawn(self._ship_forever())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_connected(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                sock = await connect(self.path)
            except OSError as error:
                if not is_refused(error):
                    log.warning("cannot reach the model process at %s: %s", self.path, error)
                await asyncio.sleep(RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)])
                attempt += 1
                continue
            attempt = 0
            closed = asyncio.get_running_loop().create_future()

            def ended(error: BaseException | None, closed: asyncio.Future[Any] = closed) -> None:
                if not closed.done():
                    closed.set_result(error)

            self._connection = Connection(sock, self._on_message, ended)
            await closed
            self._lost()

    def _lost(self) -> None:
        self._connection = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ModelNotReady(RESTARTING))
        self._pending.clear()
        if not self._closing:
            log.warning("lost the model process: %s", RESTARTING)
            self.mirror.lost()

    def _on_message(self, message: Message) -> None:
        kind = message[0]
        if kind == "ok" or kind == "error":
            future = self._pending.pop(message[1], None)
            if future is not None and not future.done():
                if kind == "ok":
                    future.set_result(message[2])
                else:
                    future.set_exception(message[2])
        elif kind == "state":
            self.mirror.update(message[1])
        elif kind == "flush":
            self._ship()
            self._send(("flushed", message[1]))
        else:
            log.error("hop: unknown message %r from the model process", kind)

    def _send(self, message: Message) -> None:
        if self._connection is None:
            raise ModelNotReady(RESTARTING)
        try:
            self._connection.send(message)
        except HopClosed:
            raise ModelNotReady(RESTARTING) from None

    async def _request(self, message: Message) -> Any:
        call = message[1]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(message)
        self._pending[call] = future
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(call, None) is not None:
                with contextlib.suppress(ServingError):
                    self._send(("cancel", call))
            raise

    async def infer(
        self, name: str, version: int, inputs: Tensors, deadline: float | None
    ) -> Tensors:
        timeout = None if deadline is None else deadline - time.monotonic()
        return await self._request(  # type: ignore[no-any-return]
            ("infer", next(self._ids), name, version, inputs, timeout)
        )

    async def call(self, method: str, args: tuple[Any, ...]) -> Any:
        return await self._request(("call", next(self._ids), method, args))

    def _ship(self) -> None:
        counters, unresolved = self.mirror.take_counters()
        if counters or unresolved:
            with contextlib.suppress(ServingError):
                self._send(("stats", counters, unresolved))

    async def _ship_forever(self) -> None:
        while True:
            await asyncio.sleep(SHIP_SECONDS)
            if self._connection is not None:
                self._ship()

    async def close(self) -> None:
        """Ship the last counters and disconnect (the model process then knows this worker is
        done)."""
        self._closing = True
        connection = self._connection
        if connection is not None:
            self._ship()
            for _ in range(100):  # let the queued frames go out before the socket closes
                await asyncio.sleep(0.01)
                if not connection.sending:
                    break
            connection.close()
        for task in self._tasks:
            task.cancel()
