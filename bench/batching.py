"""Dynamic batching on and off, in one run on one server, against three targets.

usage: .venv/bin/python bench/batching.py [--duration 10s] [--warmup 2s]
           [--concurrency 1,8,32,64] [--out bench/results] [-- extra `plexserve serve` flags]

1. builds `multi_task` (defaults: ~52k parameters) twice into a temporary repository with
   `plexserve build`: `multi_task` (batching on, the defaults) and `multi_task_unbatched`
   (`batching: {enabled: false}` in its config.yaml) — same architecture, same cost per call;
2. serves both from one `plexserve serve` on free ports;
3. for each concurrency, runs `plexserve bench` (1 row per request) on the batched model, then on
   the unbatched one, back to back, so both see the same machine state;
4. prints the table (req/s, p50, p99, server-side mean batch rows, queue and compute times), the
   ratios and the three targets with PASS/FAIL, writes both runs' JSON into --out and, when
   matplotlib is installed, draws them into --out/batching.png (bench/batching_plot.py).
The targets: at 32 concurrent clients throughput on >= 2.5x off and p99 lower; a lone client's
p50 on within 10% (or 0.3 ms) of off; at concurrency 64 a mean executed batch above 16 rows.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import PLEXSERVE, ROOT, bench, build_repository, machine, serving


def step(run: dict[str, Any], concurrency: int) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["concurrency"] == concurrency)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("server_args", nargs="*", help="extra `plexserve serve` flags, after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    runs: dict[str, dict[int, dict[str, Any]]] = {"on": {}, "off": {}}

    with tempfile.TemporaryDirectory(prefix="plexserve-batching-") as scratch:
        repo = Path(scratch) / "repo"
        print("building multi_task twice with plexserve build ...", flush=True)
        build_repository(repo, ["multi_task"])
        unbatched = ["build", "multi_task", "--name", "multi_task_unbatched", "--repo", str(repo)]
        subprocess.run([*PLEXSERVE, *unbatched], check=True, capture_output=True)
        (repo / "multi_task_unbatched" / "config.yaml").write_text("batching: {enabled: false}\n")
        with serving(repo, Path(scratch) / "serve.log", *args.server_args) as (target, metrics):
            common = ["--target", target, "--metrics-url", metrics]
            common += ["--duration", args.duration, "--warmup", args.warmup]
            for level in levels:
                for mode, model in (("on", "multi_task"), ("off", "multi_task_unbatched")):
                    out = args.out / f"batching-{mode}-c{level}.json"
                    run = bench(out, "--model", model, "--concurrency", str(level), *common)
                    runs[mode][level] = step(run, level)

    date = datetime.now(UTC).strftime("%Y-%m-%d")
    print()
    print(f"Machine: {machine()}. Client and server on the same machine. {date}.")
    extra = (" -- " + " ".join(args.server_args)) if args.server_args else ""
    print(
        f"Command: .venv/bin/python bench/batching.py --duration {args.duration} "
        f"--warmup {args.warmup} --concurrency {args.concurrency}{extra}"
    )
    print()
    print(
        "| concurrency | batching | req/s | p50 ms | p99 ms | mean batch rows | "
        "mean queue ms | mean compute ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        for mode in ("on", "off"):
            s = runs[mode][level]
            server = s.get("server", {})
            print(
                f"| {level} | {mode} | {fmt(s['requests_per_s'])} | {fmt(s['latency_ms']['p50'])}"
                f" | {fmt(s['latency_ms']['p99'])} | {fmt(server.get('batch_rows'), 1)} | "
                f"{fmt(server.get('queue_ms'))} | {fmt(server.get('compute_ms'))} | "
                f"{sum(s['errors'].values())} |"
            )
    print()
    for level in levels:
        on, off = runs["on"][level], runs["off"][level]
        print(
            f"c={level}: throughput on/off {on['requests_per_s'] / off['requests_per_s']:.2f}x, "
            f"p99 on/off {on['latency_ms']['p99'] / off['latency_ms']['p99']:.2f}"
        )
    print()
    checks = []
    if 32 in levels:
        on, off = runs["on"][32], runs["off"][32]
        ratio = on["requests_per_s"] / off["requests_per_s"]
        lower = on["latency_ms"]["p99"] < off["latency_ms"]["p99"]
        checks.append(
            (f"c=32 throughput on/off {ratio:.2f}x >= 2.5x and p99 lower", ratio >= 2.5 and lower)
        )
    if 1 in levels:
        on_p50, off_p50 = runs["on"][1]["latency_ms"]["p50"], runs["off"][1]["latency_ms"]["p50"]
        close = on_p50 <= off_p50 * 1.1 or on_p50 - off_p50 <= 0.3
        checks.append(
            (f"c=1 p50 on {on_p50:.2f} ms vs off {off_p50:.2f} ms (within 10% or 0.3 ms)", close)
        )
    if 64 in levels:
        rows = runs["on"][64].get("server", {}).get("batch_rows")
        checks.append(
            (f"c=64 mean executed batch {fmt(rows, 1)} rows > 16", bool(rows and rows > 16))
        )
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no picture (pip install 'plexserve[plot]')")
    else:
        from batching_plot import draw

        draw(args.out, args.out / "batching.png", levels)
        print(f"wrote {args.out / 'batching.png'}")


if __name__ == "__main__":
    main()
