"""The README's performance table: the gRPC floor, the in-process ceiling, and plexserve.

usage: .venv/bin/python bench/perf_table.py [--duration 10s] [--warmup 2s]
           [--concurrency 1,8,32,64] [--processes 1] [--out bench/results]

1. builds `echo` and `multi_task` (default parameters) into a temporary repository with
   `plexserve build`, and serves it with `plexserve serve` on free ports;
2. the gRPC floor: `plexserve bench` on `echo` (16 floats in, the same 16 out, no weights);
3. plexserve on `multi_task` (three inputs, three outputs, ~52k parameters), 1 row per request;
4. stops the server, then the in-process ceiling: bench/inprocess.py calls the same SavedModel's
   serving_default directly at batch 1 and 32, in one process, with the machine to itself;
5. prints the markdown table, the machine and the commands; writes the runs' JSON and
   `plexserve bench --compare echo.json multi_task.json --plot performance.png` into --out.
Every figure over the network comes from `plexserve bench`; nothing here is a load loop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import PLEXSERVE, ROOT, bench, build_repository, machine, serving


def cell(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if value < 10 else f"{value:.1f}"


def server_rows(title: str, run: dict[str, Any]) -> list[str]:
    rows = []
    for step in run["steps"]:
        latency = step["latency_ms"]
        errors = sum(step["errors"].values())
        rows.append(
            f"| {title} | c={step['concurrency']} | {cell(step['requests_per_s'])} | "
            f"{cell(step['rows_per_s'])} | {cell(latency['p50'])} | {cell(latency['p99'])} | "
            f"{cell(latency['p99.9'])} | {errors} |"
        )
        title = ""
    return rows


def ceiling_rows(title: str, ceiling: dict[str, Any]) -> list[str]:
    rows = []
    for result in ceiling["results"]:
        latency = result["latency_ms"]
        rows.append(
            f"| {title} | batch {result['batch']} | {cell(result['calls_per_s'])} calls/s | "
            f"{cell(result['rows_per_s'])} | {cell(latency['p50'])} | {cell(latency['p99'])} | "
            f"{cell(latency['p99.9'])} | - |"
        )
        title = ""
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--processes", default="1", help="client processes of plexserve bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = ["--concurrency", args.concurrency, "--duration", args.duration]
    load += ["--warmup", args.warmup, "--processes", args.processes]

    with tempfile.TemporaryDirectory(prefix="plexserve-bench-") as scratch:
        repo = Path(scratch) / "repo"
        print("building echo and multi_task with plexserve build ...", flush=True)
        build_repository(repo, ["echo", "multi_task"])
        with serving(repo, Path(scratch) / "serve.log") as (target, metrics_url):
            common = ["--target", target, "--metrics-url", metrics_url, *load]
            floor = bench(args.out / "echo.json", "--model", "echo", *common)
            served = bench(args.out / "multi_task.json", "--model", "multi_task", *common)
        print("$ python bench/inprocess.py REPO/multi_task/1 --batches 1,32", flush=True)
        ceiling = json.loads(
            subprocess.run(
                [sys.executable, str(Path(__file__).with_name("inprocess.py")),
                 str(repo / "multi_task" / "1"), "--batches", "1,32"],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
    (args.out / "inprocess.json").write_text(json.dumps(ceiling, indent=2) + "\n")
    subprocess.run(
        [*PLEXSERVE, "bench", "--compare", str(args.out / "echo.json"),
         str(args.out / "multi_task.json"), "--plot", str(args.out / "performance.png")],
        check=True,
    )  # fmt: skip

    at = {s["concurrency"]: s["requests_per_s"] for s in floor["steps"]}
    ratios = [
        f"c={s['concurrency']}: {s['requests_per_s'] / at[s['concurrency']]:.2f}"
        for s in served["steps"]
        if at.get(s["concurrency"])
    ]
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    print()
    print(f"Machine: {machine()}. Client and server on the same machine. {date}.")
    print(
        f"Command: .venv/bin/python bench/perf_table.py --duration {args.duration} "
        f"--warmup {args.warmup} --concurrency {args.concurrency} --processes {args.processes}"
    )
    print()
    print("| what | load | req/s | rows/s | p50 ms | p99 ms | p99.9 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for line in (
        server_rows("gRPC floor: `echo` (16 floats, identity)", floor)
        + ceiling_rows("in-process ceiling: `multi_task` serving_default", ceiling)
        + server_rows("plexserve: `multi_task`, 1 row per request", served)
    ):
        print(line)
    print()
    print("plexserve `multi_task` req/s / gRPC floor req/s: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
