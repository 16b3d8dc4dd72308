"""Model lifecycle costs: memory over load/unload cycles, and another model's latency while a
version loads.

usage: .venv/bin/python bench/lifecycle.py [--cycles 20] [--duration 10s] [--concurrency 8]
           [--out bench/results] [-- extra `plexserve serve` flags]

1. builds `multi_task` (defaults) twice with `plexserve build`: `steady` and `cycled`;
2. serves both with `--model-control explicit --load-model steady --load-model cycled`;
3. memory: `cycles` times RepositoryModelUnload + RepositoryModelLoad of `cycled`, reading the
   server's resident memory (`process_resident_memory_bytes` from its /metrics) after each;
4. latency: `plexserve bench` on `steady` (closed loop), once alone and once while another
   thread unloads and reloads `cycled` back to back; both steps' figures side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from harness import ROOT, bench, build_repository, machine, serving
from prometheus_client.parser import text_string_to_metric_families

from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc


def resident_mib(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "process_resident_memory_bytes":
            return float(family.samples[0].value) / 2**20
    raise SystemExit("the server's /metrics has no process_resident_memory_bytes")


def cycle(stub: pb_grpc.GRPCInferenceServiceStub) -> float:
    """Unload and load `cycled` once; seconds the load took."""
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="cycled"), timeout=120)
    started = time.monotonic()
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cycled"), timeout=120)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--concurrency", default="8")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("server_args", nargs="*", help="extra `plexserve serve` flags, after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="plexserve-lifecycle-") as scratch:
        repo = Path(scratch) / "repo"
        print("building steady and cycled (multi_task) with plexserve build ...", flush=True)
        for name in ("steady", "cycled"):
            build_repository(repo, ["multi_task", "--name", name])
        flags = ["--model-control", "explicit", "--load-model", "steady", "--load-model", "cycled"]
        with serving(repo, Path(scratch) / "serve.log", *flags, *args.server_args) as (
            target,
            metrics_url,
        ):
            channel = grpc.insecure_channel(target)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            rss = [resident_mib(metrics_url)]
            loads = []
            for _ in range(args.cycles):
                loads.append(cycle(stub))
                rss.append(resident_mib(metrics_url))
            print("resident MiB after each cycle:", " ".join(f"{m:.0f}" for m in rss), flush=True)

            load = ["--model", "steady", "--concurrency", args.concurrency]
            load += ["--target", target, "--metrics-url", metrics_url, "--duration", args.duration]
            alone = bench(args.out / "lifecycle-alone.json", *load, "--warmup", "2s")
            stop = threading.Event()
            during: list[float] = []

            def keep_cycling() -> None:
                while not stop.is_set():
                    during.append(cycle(stub))

            cycler = threading.Thread(target=keep_cycling)
            cycler.start()
            try:
                loading = bench(args.out / "lifecycle-loading.json", *load, "--warmup", "0s")
            finally:
                stop.set()
                cycler.join()
            channel.close()

    def figures(run: dict[str, Any]) -> str:
        step = run["steps"][0]
        lat = step["latency_ms"]
        return (
            f"{step['requests_per_s']:,.0f} req/s, p50 {lat['p50']:.2f} ms, "
            f"p99 {lat['p99']:.2f} ms, max {lat['max']:.1f} ms, "
            f"errors {sum(step['errors'].values())}"
        )

    date = datetime.now(UTC).strftime("%Y-%m-%d")
    print()
    print(f"Machine: {machine()}. {date}.")
    extra = (" -- " + " ".join(args.server_args)) if args.server_args else ""
    print(f"Command: .venv/bin/python bench/lifecycle.py --cycles {args.cycles} "
          f"--duration {args.duration} --concurrency {args.concurrency}{extra}")  # fmt: skip
    print()
    growth = rss[-1] - rss[0]
    later = (rss[-1] - rss[1]) / max(1, len(rss) - 2)
    print(f"memory: {rss[0]:.0f} MiB before, {rss[-1]:.0f} MiB after {args.cycles} unload+load "
          f"cycles of a ~52k-parameter model: +{growth:.0f} MiB ({growth / args.cycles:.1f} MiB "
          f"per cycle; {later:.1f} MiB per cycle after the first)")  # fmt: skip
    print(f"load (LOADING + WARMING) of `cycled`: median {sorted(loads)[len(loads) // 2]:.2f} s")
    print(f"`steady` alone:                  {figures(alone)}")
    print(
        f"`steady` while `cycled` reloads: {figures(loading)} ({len(during)} reloads in the step)"
    )


if __name__ == "__main__":
    main()
