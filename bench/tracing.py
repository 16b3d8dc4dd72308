"""What tracing costs, measured by Triton's perf_analyzer (vision_tabular, 32 clients by default).

usage: .venv/bin/python bench/tracing.py --compare-src DIR [--rounds 2] [--concurrency 32]
           [--interval 4000] [--stability 50] [--out FILE]

Three servers over the same repository, their perf_analyzer runs alternated case by case for
--rounds rounds (these machines drift: only ratios of neighbouring runs mean anything):
  before  `plexserve serve` from DIR, a checkout of the commit before tracing, on its own code
          (bench/harness.py `checkout_command`), e.g.
          `mkdir /tmp/before && git archive 9a04d60 | tar -x -C /tmp/before`
  off     this checkout, tracing off (the default)
  on      this checkout, `--otel-endpoint` to an OTLP/gRPC receiver in this process that counts
          what it is sent; every request is traced (the default sampler, parentbased_always_on,
          samples every request that comes without a traceparent, as perf_analyzer's do)
perf_analyzer: `-i grpc --input-data zero -p INTERVAL -s STABILITY` (bench/overhead.py's
`measure`),
and each server thread's CPU time per request from /proc, the event loop's being the one that
caps throughput. Prints one markdown table, and the spans the receiver got.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
from concurrent import futures
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import grpc
from harness import PLEXSERVE, build_repository, checkout_command, machine
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from overhead import Result, fmt, group_threads, measure, started

MODEL = "vision_tabular"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Receiver(grpc.GenericRpcHandler):
    """Takes OTLP/gRPC trace exports and counts their spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != EXPORT:  # type: ignore[attr-defined]
            return None
        return grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=None, response_serializer=lambda _: b""
        )

    def _export(self, body: bytes, context: grpc.ServicerContext) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
            self.bytes += len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-src", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=int, default=4000, help="perf_analyzer -p (ms)")
    parser.add_argument(
        "--stability",
        type=int,
        default=50,
        help="perf_analyzer -s (percent; raise it on a busy machine)",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    receiver = Receiver()
    otlp = grpc.server(futures.ThreadPoolExecutor(2), handlers=[receiver])
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    results: dict[str, list[Result]] = {"before": [], "off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="plexserve-tracing-") as scratch:
        repo = Path(scratch) / "repo"
        print(f"building {MODEL} with plexserve build ...", flush=True)
        build_repository(repo, [MODEL])
        serve = ["serve", "--repo", str(repo), "--host", "127.0.0.1", "--grpc-port", "{port}"]
        serve += ["--http-port", "0"]
        start, before_env = checkout_command(args.compare_src.resolve(), Path(scratch) / "tree")
        commands = {
            "before": ([*start, *serve], before_env),
            "off": ([*PLEXSERVE, *serve], {}),
            "on": ([*PLEXSERVE, *serve, "--otel-endpoint", f"http://127.0.0.1:{otlp_port}"], {}),
        }
        with ExitStack() as stack:
            servers = {
                kind: stack.enter_context(
                    started(
                        kind,
                        command,
                        Path(scratch) / kind,
                        {**os.environ, **env},
                        args.compare_src.resolve() if kind == "before" else None,
                    )
                )
                for kind, (command, env) in commands.items()
            }
            for round_ in range(1, args.rounds + 1):
                for kind in commands:
                    spans = receiver.spans
                    result = measure(
                        servers[kind], MODEL, args.concurrency, args.interval, args.stability
                    )
                    results[kind].append(result)
                    print(
                        f"round {round_}: {kind:6s} {result.requests_per_s:8.1f} req/s "
                        f"p50 {result.p50_ms:6.2f} p99 {result.p99_ms:6.2f} ms "
                        f"batch {fmt(result.batch, 1)}"
                        + (f" spans received {receiver.spans - spans:,}" if kind == "on" else ""),
                        flush=True,
                    )
    otlp.stop(0)
    report = render(results, args, receiver)
    print()
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def render(results: dict[str, list[Result]], args: argparse.Namespace, receiver: Receiver) -> str:
    def med(kind: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[kind])

    def cpu(kind: str, group: str) -> str:
        values = [group_threads(r.cpu_us)[group] for r in results[kind]]
        return fmt(statistics.median(values), 0)

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {machine()}. perf_analyzer and the servers on the same machine. {date}.",
        f"Command: .venv/bin/python bench/tracing.py --compare-src {args.compare_src} --rounds "
        f"{args.rounds} --concurrency {args.concurrency} --interval {args.interval} "
        f"--stability {args.stability}",
        f"{MODEL}, {args.concurrency} clients; medians of {args.rounds} alternated rounds; "
        "CPU in microseconds per request.",
        "",
        "| server | req/s | p50 ms | p99 ms | mean batch | CPU us/request: event loop | "
        "all threads (the span exporter's included) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in results:
        lines.append(
            f"| {kind} | {fmt(med(kind, 'requests_per_s'))} | {fmt(med(kind, 'p50_ms'))} | "
            f"{fmt(med(kind, 'p99_ms'))} | {fmt(med(kind, 'batch'), 1)} | {cpu(kind, 'loop')} | "
            f"{cpu(kind, 'total')} |"
        )
    ratios = {
        name: [
            a.requests_per_s / b.requests_per_s for a, b in zip(results[x], results[y], strict=True)
        ]
        for name, x, y in (("off/before", "off", "before"), ("on/off", "on", "off"))
    }
    lines.append("")
    for name, values in ratios.items():
        lines.append(f"req/s {name}, round by round: " + ", ".join(f"{v:.3f}" for v in values))
    lines.append(f"spans received: {receiver.spans:,} ({receiver.bytes / 1e6:.1f} MB)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
