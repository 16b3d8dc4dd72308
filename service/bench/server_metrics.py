"""Server-side figures of a step, from the server's Prometheus text before and after it.

The server exposes histograms labelled `model` and `version`; for the benchmarked model (all
versions summed) a step's mean is Δ_sum / Δ_count between the two scrapes:
  plexserve_queue_duration_seconds    -> queue_ms   (mean time a request waited for a batch)
  plexserve_compute_duration_seconds  -> compute_ms (mean model execution time)
  plexserve_batch_size_rows           -> batch_rows (mean executed batch size, in rows)
A scrape that fails, or text without any of these metrics for the model, makes the step's
server figures "not available (<reason>)": numbers are never invented. `scrape` blocks (urllib);
call it off the event loop.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HISTOGRAMS = {
    "queue_ms": ("plexserve_queue_duration_seconds", 1000.0),
    "compute_ms": ("plexserve_compute_duration_seconds", 1000.0),
    "batch_rows": ("plexserve_batch_size_rows", 1.0),
}


@dataclass(frozen=True)
class Scrape:
    """Per figure: (sum, count) totals for the model; or why there are none."""

    totals: dict[str, tuple[float, float]]
    reason: str = ""

    @property
    def available(self) -> bool:
        return not self.reason


def parse_totals(text: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each known histogram for `model`, summed over its versions; a histogram
    absent from the text is absent from the result."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    wanted = {metric: figure for figure, (metric, _) in HISTOGRAMS.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            for suffix, into in (("_sum", sums), ("_count", counts)):
                if sample.name.endswith(suffix) and sample.name[: -len(suffix)] in wanted:
                    figure = wanted[sample.name[: -len(suffix)]]
                    into[figure] = into.get(figure, 0.0) + float(sample.value)
    return {figure: (sums[figure], counts[figure]) for figure in sums if figure in counts}


def scrape(url: str, model: str, timeout: float = 2.0) -> Scrape:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        return Scrape({}, f"{url} answered HTTP {error.code}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Scrape({}, f"{url}: {reason}")
    try:
        totals = parse_totals(text, model)
    except ValueError as error:
        return Scrape({}, f"{url} is not Prometheus text: {error}")
    if not totals:
        names = ", ".join(metric for metric, _ in HISTOGRAMS.values())
        return Scrape({}, f"{url} has none of {names} for model '{model}'")
    return Scrape(totals)


def server_figures(before: Scrape, after: Scrape) -> dict[str, Any]:
    """{"available": True, "queue_ms": .., "compute_ms": .., "batch_rows": ..} (a figure is
    None when the server counted nothing for it in the step), or {"available": False, "reason"}."""
    for scraped in (before, after):
        if not scraped.available:
            return {"available": False, "reason": scraped.reason}
    figures: dict[str, Any] = {"available": True}
    for figure, (_, scale) in HISTOGRAMS.items():
        if figure not in before.totals or figure not in after.totals:
            figures[figure] = None
            continue
        delta_sum = after.totals[figure][0] - before.totals[figure][0]
        delta_count = after.totals[figure][1] - before.totals[figure][1]
        figures[figure] = scale * delta_sum / delta_count if delta_count > 0 else None
    return figures


def describe(figures: dict[str, Any]) -> str:
    if not figures.get("available"):
        return f"server metrics: not available ({figures.get('reason', 'unknown')})"
    parts = []
    for figure, label, unit in (
        ("queue_ms", "mean queue", " ms"),
        ("compute_ms", "mean compute", " ms"),
        ("batch_rows", "mean batch", " rows"),
    ):
        value = figures.get(figure)
        parts.append(f"{label} {'-' if value is None else f'{value:.3g}{unit}'}")
    return "server metrics: " + ", ".join(parts)
