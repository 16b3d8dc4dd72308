"""Logging set-up for the `plexserve` command: `--log-format text|json`, `--log-level`.

JSON lines carry time, level, logger and message, plus any `extra=` fields a call adds (the
access log adds protocol, model and code), so log pipelines can filter without parsing text.
"""

from __future__ import annotations

import json
import logging
import time

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


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("plexserve")
    root = logging.getLogger()
    # replace only our own handler: others (a test runner's capture) stay
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "plexserve"] + [handler]
    root.setLevel(level.upper())
