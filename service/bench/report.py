"""What a run prints and writes: the step table, the run's JSON and CSV, and `--compare`.

The run document (JSON) holds everything: "settings" (every raw setting), "environment" (host,
CPU, Python, plexserve version, date), "model" (name, version, inputs) and "steps" (one dict of
figures per step, see stats.step_figures, plus the load, per-process counts and "server").
Pure formatting and file writing.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from plexserve.bench import BenchError
from plexserve.bench.options import BenchSettings
from plexserve.bench.protocols import InputSpec
from plexserve.bench.server_metrics import describe

FORMAT = 1
LATENCY_COLUMNS = ("p50", "p90", "p99", "p99.9", "max")


def plexserve_version() -> str:
    try:
        return metadata.version("plexserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "plexserve": plexserve_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def step_label(step: dict[str, Any]) -> str:
    if step["mode"] == "closed":
        return f"concurrency {step['concurrency']}"
    return f"rate {_number(step['rate'])}/s"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{code} {n}" for code, n in errors.items()) + ")"


def run_header(settings: BenchSettings, specs: list[InputSpec]) -> str:
    version = settings.version or "newest"
    if settings.mode == "closed":
        load = "closed loop (N requests in flight)"
    else:
        load = f"open loop ({settings.distribution} arrivals, latency from intended send time)"
    data = settings.input_data + (" (INT inputs 0..9)" if settings.input_data == "random" else "")
    return "\n".join(
        [
            f"plexserve bench: model {settings.model} (version {version}) at {settings.target}, "
            f"protocol {settings.protocol}",
            f"inputs: {', '.join(spec.describe() for spec in specs)}; {settings.rows} row(s) per "
            f"request, {data} data",
            f"{load}; {settings.duration:g} s measured per step after {settings.warmup:g} s "
            f"warm-up; {settings.processes} client process(es)",
        ]
    )


def table_header(mode: str) -> str:
    load = f"{'concurrency':>11}" if mode == "closed" else f"{'rate':>8} {'achieved':>8}"
    latencies = " ".join(f"{name + ' ms':>9}" for name in LATENCY_COLUMNS)
    return f"{load} {'req/s':>9} {'rows/s':>9} {latencies}  errors"


def table_row(step: dict[str, Any]) -> str:
    if step["mode"] == "closed":
        load = f"{step['concurrency']:>11}"
    else:
        load = f"{_number(step['rate']):>8} {_number(step['achieved_rate']):>8}"
    latencies = " ".join(f"{_number(step['latency_ms'][name]):>9}" for name in LATENCY_COLUMNS)
    return (
        f"{load} {_number(step['requests_per_s']):>9} {_number(step['rows_per_s']):>9} "
        f"{latencies}  {_errors(step['errors'])}"
    )


def step_notes(step: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """Lines printed under a step's row: server metrics (when they changed in kind)."""
    server = step["server"]
    if previous is not None and not server["available"] and previous["server"] == server:
        return []
    return [f"{'':>11} {describe(server)}"]


def write_json(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def load_run(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchError(f"{path}: {error}") from None
    if not isinstance(document, dict) or "steps" not in document:
        raise BenchError(f"{path} is not a plexserve bench run (no 'steps')")
    return document


CSV_COLUMNS = [
    "step",
    "mode",
    "concurrency",
    "rate",
    "distribution",
    "achieved_rate",
    "duration_s",
    "requests",
    "ok",
    "errors",
    "errors_by_code",
    "requests_per_s",
    "rows_per_s",
    *(f"{name}_ms" for name in (*LATENCY_COLUMNS, "mean")),
    "send_lag_p99_ms",
    "server_queue_ms",
    "server_compute_ms",
    "server_batch_rows",
    "server_metrics",
]


def csv_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for step in document["steps"]:
        server = step["server"]
        rows.append(
            {
                "step": step_label(step),
                "mode": step["mode"],
                "concurrency": step.get("concurrency", ""),
                "rate": step.get("rate", ""),
                "distribution": step.get("distribution", ""),
                "achieved_rate": step["achieved_rate"],
                "duration_s": step["duration_s"],
                "requests": step["requests"],
                "ok": step["ok"],
                "errors": sum(step["errors"].values()),
                "errors_by_code": " ".join(f"{c}={n}" for c, n in step["errors"].items()),
                "requests_per_s": step["requests_per_s"],
                "rows_per_s": step["rows_per_s"],
                **{f"{name}_ms": step["latency_ms"][name] for name in (*LATENCY_COLUMNS, "mean")},
                "send_lag_p99_ms": step["send_lag_ms"]["p99"],
                "server_queue_ms": server.get("queue_ms"),
                "server_compute_ms": server.get("compute_ms"),
                "server_batch_rows": server.get("batch_rows"),
                "server_metrics": "available"
                if server["available"]
                else f"not available ({server['reason']})",
            }
        )
    return rows


def write_csv(document: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in csv_rows(document):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.2f}"


def compare_runs(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> str:
    """Both runs' steps side by side (matched by load: concurrency N or rate R), ratios B/A."""
    lines = []
    for tag, name, run in (("A", names[0], a), ("B", names[1], b)):
        settings, env = run.get("settings", {}), run.get("environment", {})
        lines.append(
            f"{tag}: {name}: model {settings.get('model', '?')} at {settings.get('target', '?')}, "
            f"{settings.get('rows', '?')} row(s)/request, {env.get('host', '?')} "
            f"({env.get('cpu_count', '?')} CPUs), {env.get('date', '?')}"
        )
    steps_a = {step_label(s): s for s in a["steps"]}
    steps_b = {step_label(s): s for s in b["steps"]}
    labels = list(steps_a) + [label for label in steps_b if label not in steps_a]
    figures = [
        ("req/s", lambda s: s["requests_per_s"]),
        ("p50 ms", lambda s: s["latency_ms"]["p50"]),
        ("p99 ms", lambda s: s["latency_ms"]["p99"]),
    ]
    header = f"{'step':<18}"
    for title, _ in figures:
        header += f" {title + ' A':>10} {title + ' B':>10} {'B/A':>5}"
    header += f" {'errors A':>9} {'errors B':>9}"
    lines += ["", header]
    for label in labels:
        sa, sb = steps_a.get(label), steps_b.get(label)
        line = f"{label:<18}"
        for _, get in figures:
            va = get(sa) if sa else None
            vb = get(sb) if sb else None
            line += f" {_number(va):>10} {_number(vb):>10} {_ratio(va, vb):>5}"
        for s in (sa, sb):
            line += f" {sum(s['errors'].values()) if s else '-':>9}"
        lines.append(line)
    return "\n".join(lines)
