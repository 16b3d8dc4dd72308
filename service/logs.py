"""Logging set-up for the `plexserve` command: `--log-format text|json`, `--log-level`.

JSON lines carry time, level, logger and message, plus any `extra=` fields a call adds (the
access log adds protocol, model and code), so log pipelines can filter without parsing text.

Repeated warnings and errors are rate-limited (RepeatFilter): a process out of file descriptors
retries accept() every second and would otherwise log the same traceback every time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


@dataclass
class _Seen:
    logged: float  # when it was last let through
    held: int = 0  # identical records dropped since


class RepeatFilter(logging.Filter):
    """Lets a WARNING (or worse) record through at most once per `window` seconds when the same
    record repeats: same logger, level and message, and the same exception (type, and the line
    that raised it, or without a traceback its text). The first one let through after
    the window says how many were held back. Lower levels always pass (access log lines differ
    anyway). Thread-safe enough for logging: a race costs one extra line at worst."""

    MAX_KINDS = 1000

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[object, ...], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[1] if record.exc_info else None
        # The same fault raised from the same line is one kind, whatever its text says (a bug a
        # client can trigger would otherwise log a traceback per request, each with its input).
        where = _raised_at(record.exc_info[2]) if record.exc_info else None
        key = (
            record.name,
            record.levelno,
            record.getMessage(),
            type(error),
            where or str(error),
        )
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.logged < self.window:
            seen.held += 1
            return False
        if len(self._seen) >= self.MAX_KINDS:
            self._seen = {k: s for k, s in self._seen.items() if now - s.logged < self.window}
        self._seen[key] = _Seen(now)
        if seen is not None and seen.held:
            record.msg = (
                f"{record.getMessage()} [{seen.held} more like this in the last "
                f"{now - seen.logged:.0f} s were not logged]"
            )
            record.args = ()
        return True


def _raised_at(trace: TracebackType | None) -> tuple[str, int] | None:
    """(file, line) of the innermost frame of a traceback."""
    if trace is None:
        return None
    while trace.tb_next is not None:
        trace = trace.tb_next
    return trace.tb_frame.f_code.co_filename, trace.tb_lineno


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("plexserve")
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    # replace only our own handler: others (a test runner's capture) stay
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "plexserve"] + [handler]
    root.setLevel(level.upper())
