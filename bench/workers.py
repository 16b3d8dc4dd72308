"""One process against front-end worker processes (`plexserve serve --workers N`), measured by
Triton's perf_analyzer.

usage: .venv/bin/python bench/workers.py [--workers 0,1,2] [--concurrency 32,64] [--rounds 2]
           [--interval 4000] [--model vision_tabular] [--rate R] [--out bench/results/workers.md]
       (perf_analyzer comes from `make perf-tools`'s own venv)

1. builds the model (default vision_tabular: two inputs, inception and residual blocks, ~49k
   parameters) with `plexserve build`;
2. starts one `plexserve serve` per --workers value, all at once, each on its own ports;
3. runs perf_analyzer (`-i grpc --input-data zero`, 1 row per request) on each server at each
   concurrency, the servers alternating case by case for --rounds rounds, so each ratio
   compares runs minutes apart on a machine whose speed drifts;
4. during each run reads the CPU time of every process of the server from /proc (the
   supervisor, the model process, each worker; one process: its event loop thread and the
   rest) and divides by the requests answered;
5. with --rate R, also runs each server at a fixed R requests/s, where the CPU each process
   spends per request shows without the machine being full (what a bigger node's sizing needs);
6. prints one markdown table (medians over the rounds), the ratios to one process, and
   PASS/FAIL for the target: --workers 1 at least 1.2x one process's req/s at every
   concurrency, with a p99 no higher.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from harness import PLEXSERVE, build_repository, machine, thread_cpu
from overhead import Result, Server, fmt, measure, perf_analyzer, started


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_cpu(server: Server) -> dict[str, float]:
    """CPU seconds so far of every process of `server`, by role."""
    kids = children(server.pid)
    if not kids:  # one process: its event loop and everything else
        threads = thread_cpu(server.pid)
        loop = threads.get("plexserve-loop", 0.0)
        return {"loop": loop, "other threads": sum(threads.values()) - loop}
    cpu = {"supervisor": sum(thread_cpu(server.pid).values())}
    workers = 0
    for kid in sorted(kids):
        try:
            model = "libtensorflow" in Path(f"/proc/{kid}/maps").read_text()
        except OSError:
            continue
        if model:
            cpu["model process"] = sum(thread_cpu(kid).values())
        else:
            workers += 1
            cpu[f"worker {workers}"] = sum(thread_cpu(kid).values())
    return cpu


def label(workers: int) -> str:
    return "one process" if workers == 0 else f"--workers {workers}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2", help="comma-separated --workers values")
    parser.add_argument("--concurrency", default="32,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interval", type=int, default=4000, help="perf_analyzer -p (ms)")
    parser.add_argument("--model", default="vision_tabular")
    parser.add_argument(
        "--rate",
        type=int,
        help="also measure every server at this fixed request rate (req/s): CPU per request "
        "at equal load, without the machine being full",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    perf_analyzer()  # (fails early when it is missing)

    results: dict[tuple[int, int], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="plexserve-workers-") as scratch, ExitStack() as stack:
        repo = Path(scratch) / "repo"
        print(f"building {args.model} with plexserve build ...")
        build_repository(repo, [args.model])
        servers = {}
        for workers in counts:
            command = [*PLEXSERVE, "serve", "--repo", str(repo), "--host", "127.0.0.1"]
            command += ["--grpc-port", "{port}", "--http-port", "0", f"--workers={workers}"]
            log = Path(scratch) / f"serve-{workers}.log"
            server = started(label(workers), command, log, dict(os.environ))
            servers[workers] = stack.enter_context(server)
        for round_ in range(1, args.rounds + 1):
            for level in levels:
                for workers in counts:
                    cpu = functools.partial(process_cpu, servers[workers])
                    result = measure(servers[workers], args.model, level, args.interval, cpu=cpu)
                    results.setdefault((workers, level), []).append(result)
                    print(
                        f"round {round_}: {label(workers)}, {level} clients: "
                        f"{result.requests_per_s:,.0f} req/s, p99 {result.p99_ms:.1f} ms"
                    )
            for workers in counts if args.rate else ():
                cpu = functools.partial(process_cpu, servers[workers])
                result = measure(
                    servers[workers], args.model, 64, args.interval, cpu=cpu, rate=args.rate
                )
                results.setdefault((workers, -args.rate), []).append(result)
    report = render(args, counts, levels, results)
    print(report)
    if args.out:
        args.out.write_text(report)


def median_result(runs: list[Result]) -> Result:
    merged = Result(
        statistics.median(r.requests_per_s for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.batch or 0 for r in runs) or None,
    )
    for name in {n for r in runs for n in r.cpu_us}:
        merged.cpu_us[name] = statistics.median(r.cpu_us.get(name, 0.0) for r in runs)
    return merged


def render(
    args: argparse.Namespace,
    counts: list[int],
    levels: list[int],
    results: dict[tuple[int, int], list[Result]],
) -> str:
    lines = [
        f"# Front-end worker processes ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}",
        f"Command: `.venv/bin/python bench/workers.py --workers {args.workers} "
        f"--concurrency {args.concurrency} --rounds {args.rounds} --interval {args.interval} "
        f"--model {args.model}" + (f" --rate {args.rate}" if args.rate else "") + "`; "
        "perf_analyzer on the same machine, medians of the rounds.",
        "",
        "| server | clients | req/s | vs one process | p50 ms | p99 ms | batch | "
        "CPU µs per request, by process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for level in levels:
        base = median_result(results[(0, level)]) if (0, level) in results else None
        for workers in counts:
            result = median_result(results[(workers, level)])
            ratio = result.requests_per_s / base.requests_per_s if base else None
            cpu = ", ".join(f"{name} {us:.0f}" for name, us in sorted(result.cpu_us.items()))
            lines.append(
                f"| {label(workers)} | {level} | {result.requests_per_s:,.0f} | "
                f"{fmt(ratio)}x | {result.p50_ms:.1f} | {result.p99_ms:.1f} | "
                f"{fmt(result.batch, 1)} | {cpu} |"
            )
            if workers == 1 and base is not None and ratio is not None:
                ok = ratio >= 1.2 and result.p99_ms <= base.p99_ms
                verdicts.append(
                    f"- {level} clients: --workers 1 / one process {ratio:.2f}x (target 1.2x), "
                    f"p99 {result.p99_ms:.1f} vs {base.p99_ms:.1f} ms: "
                    f"{'PASS' if ok else 'FAIL'}"
                )
    if args.rate:
        lines += [
            "",
            f"At a fixed {args.rate:,} requests/s (perf_analyzer --request-rate-range), "
            "CPU per request when the machine is not full:",
            "",
            "| server | req/s | p50 ms | p99 ms | batch | CPU µs per request, by process |",
            "|---|---|---|---|---|---|",
        ]
        for workers in counts:
            result = median_result(results[(workers, -args.rate)])
            cpu = ", ".join(f"{name} {us:.0f}" for name, us in sorted(result.cpu_us.items()))
            lines.append(
                f"| {label(workers)} | {result.requests_per_s:,.0f} | {result.p50_ms:.1f} | "
                f"{result.p99_ms:.1f} | {fmt(result.batch, 1)} | {cpu} |"
            )
    return "\n".join([*lines, "", *verdicts]) + "\n"


if __name__ == "__main__":
    main()
