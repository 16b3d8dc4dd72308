"""What plexserve costs per request, against the floor, measured by Triton's perf_analyzer.

usage: .venv/bin/python bench/overhead.py [--rounds 2] [--concurrency 32] [--interval 4000]
           [--compare-src DIR] [--out bench/results/overhead.md]
       (or `make bench-overhead`; perf_analyzer comes from `make perf`'s own venv)

1. builds `echo`, `vision_tabular` (two inputs, inception + residual blocks, ~49k parameters),
   `multi_task` and `multi_task_unbatched` (batching off) with `plexserve build`;
2. starts bench/floor_server.py (grpc.aio + the generated stubs + numpy identity: the least a
   Python OIP server can spend) and `plexserve serve` with its defaults; with --compare-src, also
   `plexserve serve` from another checkout of plexserve (for example the commit before a
   change), same models, same flags;
3. runs perf_analyzer (`-i grpc --input-data zero -p INTERVAL -s 50`) on every case, the servers
   alternating case by case for --rounds rounds, so each ratio compares runs minutes apart;
4. during each run, reads every server thread's CPU time from /proc and divides by the requests
   answered: the event loop's microseconds per request is the figure that caps throughput;
5. prints one markdown table (req/s, p50, p99, mean executed batch, CPU us per request per
   thread), the ratios the targets are about, and PASS/FAIL for each.
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    PLEXSERVE,
    ROOT,
    build_repository,
    checkout_command,
    free_port,
    machine,
    thread_cpu,
)

PERF_VENV = ROOT / ".perf-venv"
FLOOR = Path(__file__).resolve().parent / "floor_server.py"


@dataclass
class Server:
    name: str  # "floor", "plexserve", "compare"
    target: str
    pid: int


@dataclass
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    batch: float | None  # mean executed batch (server statistics), None for the floor
    cpu_us: dict[str, float] = field(default_factory=dict)  # thread name -> us per request


def perf_analyzer() -> tuple[list[str], dict[str, str]]:
    binary = PERF_VENV / "bin" / "perf_analyzer"
    if not binary.exists():
        raise SystemExit(
            "perf_analyzer is not installed: run `make perf-tools` (as root: it needs libb64)"
        )
    cuda = list(PERF_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, cuda))}
    return [str(binary)], env


def wait_ready(target: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import grpc

    from plexserve.proto import grpc_service_pb2 as pb
    from plexserve.proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise SystemExit(f"server not ready after 180 s; see {log}")


@contextmanager
def started(
    name: str, command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> Iterator[Server]:
    port = free_port()
    command = [arg.replace("{port}", str(port)) for arg in command]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        target = f"127.0.0.1:{port}"
        wait_ready(target, process, log)
        yield Server(name, target, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    server: Server,
    model: str,
    concurrency: int,
    interval_ms: int,
    stability: int = 50,
    cpu: Callable[[], dict[str, float]] | None = None,
    rate: int | None = None,
) -> Result:
    """`stability`: perf_analyzer's -s, the spread (percent) between windows it accepts.
    `cpu`: CPU seconds so far by name (default: the server process's threads). `rate`: send
    this many requests per second instead of keeping `concurrency` in flight."""
    read_cpu = cpu or (lambda: thread_cpu(server.pid))
    command, env = perf_analyzer()
    command += ["-m", model, "-u", server.target, "-i", "grpc", "--input-data", "zero"]
    if rate is None:
        command += ["--concurrency-range", str(concurrency)]
    else:
        command += ["--request-rate-range", str(rate), "--max-threads", str(concurrency)]
    command += ["-p", str(interval_ms)]
    command += ["-s", str(stability)]
    command += ["--percentile", "99", "--max-trials", "20"]
    samples = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as pa:
        time.sleep(interval_ms / 1000)  # the first window: warm-up, not sampled
        while pa.poll() is None:
            samples.append((time.monotonic(), read_cpu()))
            time.sleep(0.25)
        text = pa.stdout.read().decode() if pa.stdout else ""
    if pa.returncode != 0:
        raise SystemExit(f"perf_analyzer failed on {server.name}/{model}:\n{text}")
    number = r"([\d.]+)"
    rate = float(re.findall(rf"throughput: {number} infer/sec", text)[-1])
    p50 = float(re.findall(rf"p50 latency: {number} usec", text)[-1]) / 1000
    p99 = float(re.findall(rf"p99 latency: {number} usec", text)[-1]) / 1000
    inferences = re.findall(r"Inference count: (\d+)", text)
    executions = re.findall(r"Execution count: (\d+)", text)
    batch = None
    if executions and int(executions[-1]):
        batch = int(inferences[-1]) / int(executions[-1])
    result = Result(rate, p50, p99, batch)
    if len(samples) >= 2:  # CPU over the sampled span / requests answered in it (at `rate`)
        (t0, first), (t1, last) = samples[0], samples[-1]
        requests = rate * (t1 - t0)
        for thread, seconds in last.items():
            used = seconds - first.get(thread, 0.0)
            if used > 0:
                result.cpu_us[thread] = used / requests * 1e6
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=int, default=4000, help="perf_analyzer -p (ms)")
    parser.add_argument("--compare-src", type=Path, help="another plexserve checkout to compare")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("server_args", nargs="*", help="extra `plexserve serve` flags, after --")
    args = parser.parse_args()
    c = args.concurrency

    with tempfile.TemporaryDirectory(prefix="plexserve-overhead-") as scratch:
        repo = Path(scratch) / "repo"
        print("building echo, vision_tabular, multi_task (twice) with plexserve build ...")
        build_repository(repo, ["echo", "vision_tabular", "multi_task"])
        unbatched = ["build", "multi_task", "--name", "multi_task_unbatched", "--repo", str(repo)]
        subprocess.run([*PLEXSERVE, *unbatched], check=True, capture_output=True)
        (repo / "multi_task_unbatched" / "config.yaml").write_text("batching: {enabled: false}\n")

        serve = ["serve", "--repo", str(repo), "--host", "127.0.0.1", "--grpc-port", "{port}"]
        serve += ["--http-port", "0", *args.server_args]
        commands = {
            "floor": ([sys.executable, str(FLOOR), "--port", "{port}"], dict(os.environ)),
            "plexserve": ([*PLEXSERVE, *serve], dict(os.environ)),
        }
        if args.compare_src:
            start, extra = checkout_command(args.compare_src.resolve(), Path(scratch) / "tree")
            commands["compare"] = ([*start, *serve], {**os.environ, **extra})
        cases = [("floor", "echo", c), ("plexserve", "echo", c)]
        models = [("vision_tabular", c), ("vision_tabular", 1)]
        for model, level in models:
            cases += [(kind, model, level) for kind in commands if kind != "floor"]
        cases += [("plexserve", "multi_task", c), ("plexserve", "multi_task_unbatched", c)]
        if args.compare_src:
            cases.insert(2, ("compare", "echo", c))
            cases += [("compare", "multi_task", c), ("compare", "multi_task_unbatched", c)]

        results: dict[tuple[str, str, int], list[Result]] = {case: [] for case in cases}
        with ExitStack() as stack:
            # the other checkout's server runs from its own folder, on its own code
            places = {"compare": args.compare_src.resolve() if args.compare_src else None}
            servers = {
                kind: stack.enter_context(
                    started(kind, command, Path(scratch) / kind, env, places.get(kind))
                )
                for kind, (command, env) in commands.items()
            }
            for round_ in range(1, args.rounds + 1):
                for kind, model, level in cases:
                    result = measure(servers[kind], model, level, args.interval)
                    results[(kind, model, level)].append(result)
                    print(
                        f"round {round_}: {kind:9s} {model:20s} c={level:<3d} "
                        f"{result.requests_per_s:8.1f} req/s p50 {result.p50_ms:6.2f} "
                        f"p99 {result.p99_ms:6.2f} ms batch {fmt(result.batch, 1)}",
                        flush=True,
                    )
    report = render(results, cases, args)
    print()
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def render(
    results: dict[tuple[str, str, int], list[Result]],
    cases: list[tuple[str, str, int]],
    args: argparse.Namespace,
) -> str:
    def med(case: tuple[str, str, int], attr: str) -> float:
        values = [getattr(r, attr) for r in results[case] if getattr(r, attr) is not None]
        return statistics.median(values) if values else float("nan")

    def ratio(a: tuple[str, str, int], b: tuple[str, str, int]) -> list[float]:
        return [
            x.requests_per_s / y.requests_per_s for x, y in zip(results[a], results[b], strict=True)
        ]

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {machine()}. perf_analyzer and the servers on the same machine. {date}.",
        f"Command: .venv/bin/python bench/overhead.py --rounds {args.rounds} --concurrency "
        f"{args.concurrency} --interval {args.interval}"
        + (f" --compare-src {args.compare_src}" if args.compare_src else ""),
        f"Medians of {args.rounds} alternated rounds; CPU in microseconds per request, by thread.",
        "",
        "| server | model | clients | req/s | p50 ms | p99 ms | mean batch | CPU us/request "
        "(loop / TF runner / gRPC pollers / TensorFlow pool / total) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        kind, model, level = case
        cpu: dict[str, list[float]] = {}
        for r in results[case]:
            for group, value in group_threads(r.cpu_us).items():
                cpu.setdefault(group, []).append(value)
        parts = [fmt(statistics.median(cpu[g]), 0) if g in cpu else "-" for g in THREAD_GROUPS]
        lines.append(
            f"| {kind} | {model} | {level} | {fmt(med(case, 'requests_per_s'))} | "
            f"{fmt(med(case, 'p50_ms'))} | {fmt(med(case, 'p99_ms'))} | "
            f"{fmt(med(case, 'batch'), 1)} | {' / '.join(parts)} |"
        )
    c = args.concurrency
    checks = []
    echo = ratio(("plexserve", "echo", c), ("floor", "echo", c))
    checks.append((f"echo vs floor at c={c}: {_list(echo)} (>= 0.9x)", min(echo) >= 0.9))
    on_off = ratio(("plexserve", "multi_task", c), ("plexserve", "multi_task_unbatched", c))
    checks.append((f"batching on/off at c={c}: {_list(on_off)} (>= 2.5x)", min(on_off) >= 2.5))
    if args.compare_src:
        model = ("plexserve", "vision_tabular", c)
        before = ("compare", "vision_tabular", c)
        gain = ratio(model, before)
        lower_p99 = med(model, "p99_ms") < med(before, "p99_ms")
        bigger = med(model, "batch") > med(before, "batch")
        checks.append(
            (
                f"vision_tabular now/before at c={c}: {_list(gain)} (>= 1.6x), p99 "
                f"{med(model, 'p99_ms'):.1f} vs {med(before, 'p99_ms'):.1f} ms (lower), mean batch "
                f"{med(model, 'batch'):.1f} vs {med(before, 'batch'):.1f} (larger)",
                min(gain) >= 1.6 and lower_p99 and bigger,
            )
        )
        now1, before1 = ("plexserve", "vision_tabular", 1), ("compare", "vision_tabular", 1)
        p50_now, p50_before = med(now1, "p50_ms"), med(before1, "p50_ms")
        checks.append(
            (
                f"vision_tabular lone client p50 {p50_now:.2f} vs {p50_before:.2f} ms (within 0.1)",
                p50_now <= p50_before + 0.1,
            )
        )
    lines.append("")
    lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for text, ok in checks]
    return "\n".join(lines)


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}x" for v in values)


# Threads by what they do: plexserve names its own (prctl), gRPC and TensorFlow name theirs.
THREAD_GROUPS = ("loop", "runner", "grpc", "tf-pool", "total")


def group_threads(cpu_us: dict[str, float]) -> dict[str, float]:
    groups = dict.fromkeys(THREAD_GROUPS, 0.0)
    for thread, value in cpu_us.items():
        if thread in ("plexserve-loop", "[main]"):
            groups["loop"] += value
        elif thread.startswith("tf-run"):
            groups["runner"] += value
        elif thread.startswith(("event_engine", "grpc")):
            groups["grpc"] += value
        elif thread.startswith("tf_"):
            groups["tf-pool"] += value
        groups["total"] += value
    return groups


if __name__ == "__main__":
    main()
