"""Large requests: how long `echo` takes at 100k to 1M rows, what they cost in server memory, and
what a small request to the same model sees while a 64 MiB one is in flight.

usage: .venv/bin/python bench/large_requests.py [--compare-src DIR] [--rows 100000,...]
           [--bystanders 4] [--scenarios raised,defaults] [--out bench/results/large_requests.md]

1. builds `echo` (16 float32 per row: 64 bytes each way) with `plexserve build`;
2. for this checkout, and with --compare-src another checkout of plexserve (run as
   its own code from its own folder: bench/harness.py `checkout_command`), starts
   the server (with --max-connection-age 0, so that no request is cut by its connection's age)
   in each scenario:
   - raised: the queue raised to 2,200,000 rows (--max-queue-size), and here max_request_rows to
     1,100,000 (a server config file), so that every size below is admitted;
   - defaults: the server's defaults (here max_request_rows 512: the large request is refused);
3. raised: sends one request of each --rows size (gRPC ModelInfer, raw contents), alone, and
   records its time, its status, and the server's resident memory before it, at its peak during
   it (VmHWM, reset before each request) and after it;
4. both: sends a 1,040,000-row request (63.5 MiB, just under the 64 MiB message limit; its
   deadline --in-flight-deadline) while --bystanders threads of another process each send
   1-row requests to the same model in a loop; reports the bystanders' p50 / p99 / max latency
   and status codes over the large request's lifetime, and over the 5 s before it;
5. prints a markdown table of each, and writes it to --out.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from harness import ROOT, build_repository, machine, serve_process

sys.path.insert(0, str(ROOT))
from plexserve.proto import grpc_service_pb2 as pb  # noqa: E402
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

WIDTH = 16  # echo's default: 64 bytes per row
IN_FLIGHT_ROWS = 1_040_000  # 63.5 MiB of input: the largest round size under 64 MiB
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 80 * 2**20),
    ("grpc.max_receive_message_length", 80 * 2**20),
]
RAISED_CONFIG = "model_defaults:\n  max_request_rows: 1100000\n"


@dataclass
class Server:
    name: str
    target: str
    pid: int

    def rss_mib(self, field_name: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass


def echo_request(rows: int) -> pb.ModelInferRequest:
    data = np.zeros((rows, WIDTH), np.float32)
    data[:, 0] = np.arange(rows)  # row numbers: the answer must keep them in order
    return pb.ModelInferRequest(
        model_name="echo",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=data.shape)],
        raw_input_contents=[data.tobytes()],
    )


def check_echo(response: pb.ModelInferResponse, rows: int) -> None:
    y = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(rows, WIDTH)
    if not np.array_equal(y[:, 0], np.arange(rows, dtype=np.float32)):
        raise SystemExit("echo answered rows out of order or wrong")


@dataclass
class Large:
    rows: int
    seconds: float
    code: str
    rss_before: float
    rss_peak: float
    rss_after: float


def one_large(server: Server, rows: int, timeout: float = 1800) -> Large:
    request = echo_request(rows)
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = server.rss_mib()
        server.reset_peak()
        started = time.perf_counter()
        try:
            check_echo(stub.ModelInfer(request, timeout=timeout), rows)
            code = "OK"
        except grpc.RpcError as error:
            code = f"{error.code().name}: {error.details()[:90]}"
        seconds = time.perf_counter() - started
    return Large(rows, seconds, code, before, server.rss_mib("VmHWM"), server.rss_mib())


@dataclass
class Bystanders:
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    def add(self, seconds: float, code: str) -> None:
        self.latencies.append(seconds)
        self.codes[code] += 1

    def summary(self) -> str:
        if not self.latencies:
            return "no requests"
        ms = sorted(x * 1000 for x in self.latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        codes = ", ".join(f"{code} {count}" for code, count in self.codes.most_common())
        return (
            f"{len(ms)} requests: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
            f"max {ms[-1]:.1f} ms; {codes}"
        )


def bystander_worker(target: str, threads: int, log: Path) -> None:
    """`--bystander-of TARGET`: 1-row requests in `threads` loops until stdin closes, one line
    per request in `log`: its start (time.monotonic, the same clock in every process), its
    seconds, its status. A process of its own, so that building and reading the large
    request in the parent cannot hold the bystanders' GIL."""
    request = echo_request(1)
    stop = threading.Event()
    lock = threading.Lock()

    def loop() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    stub.ModelInfer(request, timeout=30)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    out.write(f"{started} {time.monotonic() - started} {code}\n")

    with log.open("w") as out:
        workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for worker in workers:
            worker.start()
        sys.stdin.read()
        stop.set()
        for worker in workers:
            worker.join()


def with_bystanders(
    server: Server, threads: int, in_flight: int, deadline: float
) -> tuple[Bystanders, Bystanders, Large]:
    """Bystanders alone for 5 s, then while `in_flight` rows are (for at most `deadline` s)."""
    log = Path(tempfile.mkstemp(prefix="bystanders-", suffix=".txt")[1])
    command = [sys.executable, __file__, "--bystander-of", server.target]
    command += ["--bystanders", str(threads), "--bystander-log", str(log)]
    worker = subprocess.Popen(command, stdin=subprocess.PIPE, text=True, cwd=ROOT / "bench")
    time.sleep(6)
    began = time.monotonic()
    large = one_large(server, in_flight, timeout=deadline)
    ended = time.monotonic()
    worker.communicate("")
    output = log.read_text()
    log.unlink()
    alone, during = Bystanders(), Bystanders()
    for line in output.splitlines():
        started, seconds, code = line.split()
        at = float(started)
        if began - 5 <= at < began:
            alone.add(float(seconds), code)
        elif began <= at < ended:
            during.add(float(seconds), code)
    return alone, during, large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-src", type=Path, help="another plexserve checkout to compare")
    parser.add_argument("--rows", default="100000,200000,400000,1000000")
    parser.add_argument("--bystanders", type=int, default=4)
    parser.add_argument("--scenarios", default="raised,defaults")
    parser.add_argument("--in-flight-rows", type=int, default=IN_FLIGHT_ROWS)
    parser.add_argument(
        "--in-flight-deadline",
        type=float,
        default=180.0,
        help="seconds the large request in flight may take (its gRPC deadline)",
    )
    parser.add_argument("--bystander-of", help=argparse.SUPPRESS)
    parser.add_argument("--bystander-log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "large_requests.md"
    )
    args = parser.parse_args()
    if args.bystander_of:
        bystander_worker(args.bystander_of, args.bystanders, args.bystander_log)
        return
    sizes = [int(r) for r in args.rows.split(",")]
    scenarios = args.scenarios.split(",")
    sources = {"this checkout": ROOT}
    if args.compare_src:
        sources[f"compare ({args.compare_src})"] = args.compare_src.resolve()
    lines = [
        f"# Large requests to `echo` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python bench/large_requests.py "
        + " ".join(sys.argv[1:])
        + "`",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="plexserve-large-") as tmp:
        workdir = Path(tmp)
        repo = workdir / "repo"
        build_repository(repo, ["echo"])
        config = workdir / "raised.yaml"
        config.write_text(RAISED_CONFIG)
        for scenario in scenarios:
            lines += [f"## Scenario: {scenario}", ""]
            for label, source in sources.items():
                # A request that outlives a connection's maximum age (300 s by default) would be
                # cut short: the baseline's 1M-row request can take that long.
                flags: list[str] = ["--max-connection-age", "0"]
                if scenario == "raised":
                    flags += ["--max-queue-size", "2200000"]
                    if source == ROOT:
                        flags += ["--config", str(config)]
                print(f"== {scenario}: {label}", flush=True)
                with serve_process(
                    repo, workdir / f"{label.split()[0]}.log", *flags, source=source
                ) as served:
                    server = Server(label.split()[0], served.target, served.pid)
                    idle = server.rss_mib()
                    if scenario == "raised":
                        lines += [
                            f"### {label}: one request at a time (server RSS {idle:.0f} MiB idle)",
                            "",
                            "| rows | MiB | seconds | status | RSS before | peak | after |",
                            "|---:|---:|---:|---|---:|---:|---:|",
                        ]
                        for rows in sizes:
                            r = one_large(server, rows)
                            print(f"   {rows} rows: {r.seconds:.2f} s {r.code}", flush=True)
                            lines.append(
                                f"| {rows:,} | {rows * WIDTH * 4 / 2**20:.1f} | {r.seconds:.2f} "
                                f"| {r.code} | {r.rss_before:.0f} | {r.rss_peak:.0f} "
                                f"| {r.rss_after:.0f} |"
                            )
                        lines.append("")
                    alone, during, large = with_bystanders(
                        server, args.bystanders, args.in_flight_rows, args.in_flight_deadline
                    )
                    print(f"   in flight: {large.seconds:.2f} s {large.code}", flush=True)
                    print(f"   bystanders alone: {alone.summary()}", flush=True)
                    print(f"   bystanders during: {during.summary()}", flush=True)
                    lines += [
                        f"### {label}: {args.bystanders} bystanders, 1-row requests, while "
                        f"{args.in_flight_rows:,} rows "
                        f"({args.in_flight_rows * WIDTH * 4 / 2**20:.1f} MiB) "
                        "are in flight",
                        "",
                        f"- the large request: {large.seconds:.2f} s, {large.code}; server RSS "
                        f"{large.rss_before:.0f} MiB before, {large.rss_peak:.0f} MiB peak, "
                        f"{large.rss_after:.0f} MiB after",
                        f"- bystanders alone (the 5 s before it): {alone.summary()}",
                        f"- bystanders during it: {during.summary()}",
                        "",
                    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
