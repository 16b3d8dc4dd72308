"""Logging: repeated warnings and errors are rate-limited, with a count of what was held back."""

from __future__ import annotations

import logging

from plexserve.logs import RepeatFilter, configure_logging


def record(
    message: str, level: int = logging.ERROR, error: Exception | None = None
) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("asyncio", level, __file__, 1, message, (), exc_info)


def test_a_repeated_error_is_logged_once_per_window_then_with_a_count() -> None:
    now = [0.0]
    repeats = RepeatFilter(window=60.0, clock=lambda: now[0])
    accept = "socket.accept() out of system resource"
    emfile = OSError(24, "Too many open files")
    passed = []
    for second in range(61):  # an accept retried every second, for a minute
        now[0] = float(second)
        passed.append(repeats.filter(record(accept, error=emfile)))
    assert passed == [True] + [False] * 59 + [True]
    late = record(accept, error=emfile)
    now[0] = 200.0
    assert repeats.filter(late)
    assert late.getMessage() == accept  # nothing was held back since the last one
    now[0] = 201.0
    assert not repeats.filter(record(accept, error=emfile))
    now[0] = 262.0
    counted = record(accept, error=emfile)
    assert repeats.filter(counted)
    assert counted.getMessage() == f"{accept} [1 more like this in the last 62 s were not logged]"


def test_different_errors_and_lower_levels_are_not_held_back() -> None:
    repeats = RepeatFilter(window=60.0, clock=lambda: 0.0)
    assert repeats.filter(record("model a failed"))
    assert repeats.filter(record("model b failed"))
    assert repeats.filter(record("x", error=OSError(24, "Too many open files")))
    assert repeats.filter(record("x", error=OSError(23, "Too many open files in system")))
    assert all(repeats.filter(record("access", logging.INFO)) for _ in range(3))


def test_the_command_line_logging_rate_limits_repeats() -> None:
    configure_logging("INFO", "text")
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "plexserve"]
    assert any(isinstance(f, RepeatFilter) for f in handler.filters)


def raised(text: str) -> ValueError:
    """A ValueError raised from one line of code, whatever its text."""
    try:
        raise ValueError(text)
    except ValueError as error:
        return error


def test_one_fault_with_a_different_text_each_time_is_one_kind() -> None:
    """A bug a client can trigger (its input in the exception's text) logs one traceback per
    window, not one per request."""
    repeats = RepeatFilter(window=60.0, clock=lambda: 0.0)

    def failed(error: Exception) -> logging.LogRecord:
        return logging.LogRecord(
            "plexserve.grpc.boundary",
            logging.ERROR,
            __file__,
            1,
            "%s failed",
            ("ModelInfer",),
            (type(error), error, error.__traceback__),
        )

    passed = [repeats.filter(failed(raised(f"bad input {i}"))) for i in range(100)]
    assert passed == [True] + [False] * 99
    assert repeats.filter(failed(KeyError("another fault")))  # raised elsewhere: let through
