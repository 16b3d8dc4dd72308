"""The picture of dynamic batching on and off: latency percentiles against achieved throughput.

usage: .venv/bin/python bench/batching_plot.py [--results bench/results] [--out FILE.png]

Reads the runs bench/batching.py wrote (`batching-on-c<N>.json`, `batching-off-c<N>.json`: one
`plexserve bench` step each), joins each mode's steps into one run ordered by concurrency, and
draws both with `plexserve bench --plot`'s own drawing (service/bench/plot.py), so the picture
reads like bench/results/performance.png. Needs matplotlib (the `plot` extra). Draws only what
the files hold: no figure is computed here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_RUN = re.compile(r"batching-(on|off)-c(\d+)\.json")


def batching_runs(
    results: Path, levels: Collection[int] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """[("batching on", run), ("batching off", run)], each run's steps ordered by concurrency;
    only the concurrencies in `levels` when given (files of an older run may sit beside)."""
    found: dict[str, list[tuple[int, dict[str, Any]]]] = {"on": [], "off": []}
    for path in sorted(results.glob("batching-*-c*.json")):
        match = _RUN.fullmatch(path.name)
        if match and (levels is None or int(match.group(2)) in levels):
            found[match.group(1)].append((int(match.group(2)), json.loads(path.read_text())))
    runs = []
    for mode in ("on", "off"):
        if not found[mode]:
            raise SystemExit(f"no batching-{mode}-c*.json in {results}: run bench/batching.py")
        ordered = [run for _, run in sorted(found[mode], key=lambda item: item[0])]
        joined = dict(ordered[0])
        joined["steps"] = [step for run in ordered for step in run["steps"]]
        runs.append((f"batching {mode}", joined))
    return runs


def draw(results: Path, out: Path, levels: Collection[int] | None = None) -> None:
    sys.path.insert(0, str(ROOT))  # run as a script: the plexserve sources sit beside bench/
    from plexserve.bench.plot import plot_runs

    plot_runs(batching_runs(results, levels), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, help="default: RESULTS/batching.png")
    args = parser.parse_args()
    out = args.out or args.results / "batching.png"
    draw(args.results, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
