"""`--plot`: latency percentiles against achieved throughput, one curve per percentile and run.

matplotlib is an optional extra (`pip install 'plexserve[plot]'`), imported only here and only
when a plot is asked for; `require_matplotlib` fails early, before a long run, when it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plexserve.bench import BenchError
from plexserve.bench.report import step_label

CURVES = (("p50", "-"), ("p90", "--"), ("p99", "-."), ("p99.9", ":"))


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib, an optional extra: pip install 'plexserve[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only, never a window
    return matplotlib


def plot_runs(runs: Sequence[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Draw every run's steps (x: achieved requests/s, y: latency ms, log) into a PNG."""
    require_matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, axes = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, run) in enumerate(runs):
        steps = [s for s in run["steps"] if s["latency_ms"]["p50"] is not None]
        x = [s["requests_per_s"] for s in steps]
        color = colors[index % len(colors)]
        for percentile, style in CURVES:
            axes.plot(
                x,
                [s["latency_ms"][percentile] for s in steps],
                linestyle=style,
                marker="o",
                markersize=3,
                color=color,
                label=f"{name} {percentile}",
            )
        for step, throughput in zip(steps, x, strict=True):
            label = step_label(step).replace("concurrency ", "c=").replace("rate ", "")
            axes.annotate(
                label,
                (throughput, step["latency_ms"]["p50"]),
                textcoords="offset points",
                xytext=(3, -10),
                fontsize=7,
                color=color,
            )
    environment = runs[0][1].get("environment", {}) if runs else {}
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # label the 2s, 3s and 5s between the decades, not every minor tick
    axes.yaxis.set_minor_formatter(
        FuncFormatter(
            lambda value, _: f"{value:g}" if f"{value:g}".lstrip("0.")[:1] in "235" else ""
        )
    )
    axes.tick_params(axis="y", which="minor", labelsize=7)
    axes.set_xlabel("achieved throughput (requests/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(
        f"plexserve bench, {environment.get('cpu_count', '?')} CPUs "
        f"({environment.get('cpu_model', '?')}), {environment.get('date', '')[:10]}",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=max(1, len(runs)))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
