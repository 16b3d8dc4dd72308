"""The event loop plexserve serves on: asyncio's, plus one hook, `call_when_idle`.

A callback given to `call_when_idle` runs once, the next time the loop has nothing ready to run
and is about to wait for I/O: when every request the loop has received so far has been handled.
The DynamicBatcher dispatches there, so that the requests a busy loop is still taking in join
the batch instead of following it one execution each (on a cheap model, TensorFlow's fixed
cost per call would otherwise be paid per request). Any asyncio loop works without the hook:
the batcher then dispatches at the next iteration.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import selectors
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class _IdleSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.idle: list[Callable[[], None]] = []

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if self.idle and (timeout is None or timeout > 0):  # about to wait: nothing else to do
            callbacks, self.idle = self.idle, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # one callback's failure must not stop the loop
                    log.exception("idle callback %r failed", callback)
            timeout = 0  # they may have made work: look again before waiting
        return super().select(timeout)  # type: ignore[no-any-return]


class ServingEventLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._idle_selector = _IdleSelector()
        super().__init__(self._idle_selector)

    def call_when_idle(self, callback: Callable[[], None]) -> None:
        """Run `callback` (once) when the loop next runs out of ready work."""
        self._idle_selector.idle.append(callback)


def freeze_startup_objects() -> int:
    """Move every object alive now (TensorFlow's modules: ~320k objects) out of the garbage
    collector's sight: a full collection then takes ~10 ms instead of ~120 ms with the GIL
    held, a stall every request would otherwise feel. Call once, before any model loads, so
    that models stay collectable. Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
