"""Raw step records -> the figures of a step.

Which requests count (the window is [measure_start, end) of the step's plan):
- samples: the requests whose *intended* send time falls in the window; their latency is
  answer time - intended send time. Percentiles are over the samples answered OK; the others
  are counted by status code name. Every sample was awaited, even past the window's end.
- requests/s: OK answers that arrived inside the window, divided by its length (what the
  server delivered); rows/s = rows per request x requests/s.
- achieved rate: sends that happened inside the window, divided by its length (open loop: set
  it against the asked rate; a client or a max-in-flight cap that cannot keep up shows here).
- send lag: actual - intended send time (zero in the closed loop).
Percentiles are nearest-rank (the smallest sample with at least q% of the samples at or below
it), computed over the raw samples of all processes merged, never averaged from per-process
percentiles.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from plexserve.bench.load import OK, STATUS_NAMES, StepRecord

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50),
    ("p90", 90),
    ("p99", 99),
    ("p99.9", 99.9),
)


def percentile(samples: np.ndarray, q: float) -> float:
    """Nearest-rank percentile of a non-empty sample: the ceil(q/100 * n)-th smallest."""
    n = len(samples)
    # the tolerance keeps 99.9% of 1000 at rank 999, which 0.999 * 1000 in floats would miss
    rank = min(n, max(1, math.ceil(q / 100.0 * n - 1e-9)))
    return float(np.partition(samples, rank - 1)[rank - 1])


def latency_figures(seconds: np.ndarray) -> dict[str, float | None]:
    """p50, p90, p99, p99.9, max and mean in milliseconds (None when there is no sample)."""
    if len(seconds) == 0:
        return {name: None for name in [*(n for n, _ in PERCENTILES), "max", "mean"]}
    ms = seconds * 1000.0
    figures: dict[str, float | None] = {name: percentile(ms, q) for name, q in PERCENTILES}
    figures["max"] = float(ms.max())
    figures["mean"] = float(ms.mean())
    return figures


def step_figures(record: StepRecord, measure_start: float, end: float, rows: int) -> dict[str, Any]:
    """The figures of one step (see the module docstring); JSON-ready."""
    window = end - measure_start
    in_window = (record.intended >= measure_start) & (record.intended < end)
    ok = in_window & (record.status == OK)
    answered_ok = np.count_nonzero(
        (record.status == OK) & (record.done >= measure_start) & (record.done < end)
    )
    sent = np.count_nonzero((record.sent >= measure_start) & (record.sent < end))
    errors = Counter(STATUS_NAMES[i] for i in record.status[in_window & ~ok].tolist())
    requests_per_s = answered_ok / window
    lag = (record.sent - record.intended)[in_window] * 1000.0
    return {
        "duration_s": window,
        "requests": int(np.count_nonzero(in_window)),
        "ok": int(np.count_nonzero(ok)),
        "errors": dict(sorted(errors.items())),
        "requests_per_s": requests_per_s,
        "rows_per_s": rows * requests_per_s,
        "achieved_rate": sent / window,
        "latency_ms": latency_figures(record.done[ok] - record.intended[ok]),
        "send_lag_ms": {
            "p50": percentile(lag, 50) if len(lag) else None,
            "p99": percentile(lag, 99) if len(lag) else None,
            "max": float(lag.max()) if len(lag) else None,
        },
    }
