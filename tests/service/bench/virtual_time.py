"""An asyncio event loop on virtual time, for timing logic without sleeps that race.

`loop.time()` starts at 0 and only moves when the loop would otherwise wait: then it jumps to
the next timer at once. `asyncio.sleep(0.05)` therefore takes no real time, and the order and
instants of events are exact and repeatable. Code that reads the loop's clock (service.bench.load
does) runs unchanged on it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)  # never block: poll
        if not events:
            if timeout is None:
                raise RuntimeError("virtual-time loop: nothing scheduled and nothing to wait for")
            self.now += timeout  # the loop wanted to wait this long: let that time pass at once
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def run_virtual(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()
