"""REST against gRPC on one plexserve, measured by Triton's perf_analyzer.

usage: .venv/bin/python bench/rest.py [--rounds 2] [--concurrency 32] [--interval 5000]
           [--stability 50] [--model multi_task] [--out FILE]
       (perf_analyzer comes from `make perf`'s own venv)

Builds the model with `plexserve build`, starts one `plexserve serve` with its defaults, and
runs perf_analyzer on it (`--input-data zero`, batch-1 requests) three ways, alternating case by
case for --rounds rounds so each ratio compares runs a minute apart on this shared machine:
  grpc         -i grpc
  http-binary  -i http, Triton's binary tensor extension both ways (perf_analyzer's default)
  http-json    -i http --input-tensor-format json --output-tensor-format json
During each run it reads the server threads' CPU time from /proc: the event loop's microseconds
per request is what caps a front end's throughput, and moves far less with the machine's load
than req/s does. Prints one markdown table and the http/grpc ratios of each round.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import PLEXSERVE, build_repository, free_port, machine, thread_cpu
from overhead import Result, fmt, group_threads, perf_analyzer, started

CASES = {
    "grpc": ["-i", "grpc"],
    "http-binary": ["-i", "http"],
    "http-json": ["-i", "http", "--input-tensor-format", "json", "--output-tensor-format", "json"],
}


def loop_us(result: Result) -> float:
    """The event loop thread's CPU per request ("plexserve": the main thread of the command)."""
    return result.cpu_us.get("plexserve", 0.0) + group_threads(result.cpu_us)["loop"]


def measure(target: dict[str, str], pid: int, case: str, args: argparse.Namespace) -> Result | None:
    command, env = perf_analyzer()
    protocol = "grpc" if case == "grpc" else "http"
    command += ["-m", args.model, "-u", target[protocol], *CASES[case], "--input-data", "zero"]
    command += ["--concurrency-range", str(args.concurrency), "-p", str(args.interval)]
    command += ["-s", str(args.stability), "--max-trials", "5", "--percentile", "99"]
    samples = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as pa:
        time.sleep(args.interval / 1000)  # the first window: warm-up, not sampled
        while pa.poll() is None:
            samples.append((time.monotonic(), thread_cpu(pid)))
            time.sleep(0.25)
        text = pa.stdout.read().decode() if pa.stdout else ""
    if pa.returncode != 0:
        print(f"  perf_analyzer failed on {case}: {text.strip().splitlines()[-1]}", flush=True)
        return None
    number = r"([\d.]+)"
    rate = float(re.findall(rf"throughput: {number} infer/sec", text)[-1])
    p50 = float(re.findall(rf"p50 latency: {number} usec", text)[-1]) / 1000
    p99 = float(re.findall(rf"p99 latency: {number} usec", text)[-1]) / 1000
    inferences = re.findall(r"Inference count: (\d+)", text)
    executions = re.findall(r"Execution count: (\d+)", text)
    batch = int(inferences[-1]) / int(executions[-1]) if executions else None
    result = Result(rate, p50, p99, batch)
    if len(samples) >= 2:
        (t0, first), (t1, last) = samples[0], samples[-1]
        requests = rate * (t1 - t0)
        for thread, seconds in last.items():
            used = seconds - first.get(thread, 0.0)
            if used > 0:
                result.cpu_us[thread] = used / requests * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=int, default=5000, help="perf_analyzer -p (ms)")
    parser.add_argument("--stability", type=int, default=50, help="perf_analyzer -s (%%)")
    parser.add_argument("--model", default="multi_task")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    results: dict[str, list[Result | None]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="plexserve-rest-") as scratch:
        repo = Path(scratch) / "repo"
        print(f"building {args.model} with plexserve build ...", flush=True)
        build_repository(repo, [args.model])
        http_port = free_port()
        serve = [*PLEXSERVE, "serve", "--repo", str(repo), "--host", "127.0.0.1"]
        serve += ["--grpc-port", "{port}", "--http-port", str(http_port)]
        env = dict(os.environ)
        with started("plexserve", serve, Path(scratch) / "serve.log", env) as server:
            target = {"grpc": server.target, "http": f"127.0.0.1:{http_port}"}
            for round_ in range(1, args.rounds + 1):
                for case in CASES:
                    result = measure(target, server.pid, case, args)
                    results[case].append(result)
                    if result is not None:
                        loop = loop_us(result)
                        print(
                            f"round {round_}: {case:12s} {result.requests_per_s:8.1f} req/s "
                            f"p50 {result.p50_ms:6.2f} p99 {result.p99_ms:6.2f} ms "
                            f"batch {fmt(result.batch, 1)} loop {loop:.0f} us/req",
                            flush=True,
                        )
    report = render(results, args)
    print()
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def render(results: dict[str, list[Result | None]], args: argparse.Namespace) -> str:
    lines = [
        f"`bench/rest.py --rounds {args.rounds} --concurrency {args.concurrency} "
        f"--interval {args.interval} --stability {args.stability} --model {args.model}`",
        f"({machine()}; {time.strftime('%Y-%m-%d %H:%M')}; perf_analyzer -p {args.interval} "
        f"-s {args.stability}, c={args.concurrency}, batch-1 requests, --input-data zero)",
        "",
        "| case | req/s (each round) | median req/s | p50 ms | p99 ms | mean batch "
        "| loop CPU us/req | total CPU us/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        done = [r for r in runs if r is not None]
        if not done:
            lines.append(f"| {case} | unstable | - | - | - | - | - | - |")
            continue
        groups = [group_threads(r.cpu_us) for r in done]
        lines.append(
            f"| {case} | {', '.join(fmt(r.requests_per_s) for r in done)} "
            f"| {fmt(statistics.median(r.requests_per_s for r in done))} "
            f"| {fmt(statistics.median(r.p50_ms for r in done))} "
            f"| {fmt(statistics.median(r.p99_ms for r in done))} "
            f"| {fmt(statistics.median(r.batch or 0 for r in done), 1)} "
            f"| {fmt(statistics.median(loop_us(r) for r in done), 0)} "
            f"| {fmt(statistics.median(g['total'] for g in groups), 0)} |"
        )
    lines.append("")
    for case in ("http-binary", "http-json"):
        ratios = [
            f"{r.requests_per_s / g.requests_per_s:.2f}x"
            for r, g in zip(results[case], results["grpc"], strict=True)
            if r is not None and g is not None
        ]
        verdict = "PASS" if ratios and min(float(x[:-1]) for x in ratios) >= 0.5 else "CHECK"
        lines.append(
            f"- {case} / grpc req/s, each round: {', '.join(ratios) or '-'} "
            f"(target >= 0.5x: {verdict})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
