"""The flags of `plexserve bench` and the validated settings of one run.

`add_arguments` fills the subcommand's parser (service/cli.py calls it); `settings_from_args`
turns the parsed flags into a frozen `BenchSettings` or raises BenchError naming the bad flag.
Pure parsing: no I/O beyond checking that an --input-data file exists.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plexserve.bench import BenchError

PROTOCOLS = ("v2", "tfserving")
DISTRIBUTIONS = ("constant", "poisson")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'500ms', '2s', '1.5s', '1m' or plain seconds ('15') -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 500ms, 2s, 1m or plain seconds")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive rates, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="localhost:8500", help="HOST:PORT of the gRPC server")
    parser.add_argument("--model", help="model to load (required unless --compare)")
    parser.add_argument("--version", default="", help="model version (default: the newest)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="v2",
        help="wire protocol: v2 = Open Inference Protocol, tfserving = TF Serving's "
        "PredictionService (loads TensorFlow's protos in each client process)",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=_int_list,
        metavar="N[,N...]",
        help="closed loop: N requests in flight, one step per value (default: 1)",
    )
    load.add_argument(
        "--rate",
        type=_float_list,
        metavar="R[,R...]",
        help="open loop: R requests/s sent on schedule whatever the answers; latency is "
        "measured from each request's intended send time",
    )
    parser.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="poisson",
        help="open loop arrivals: poisson (random gaps, as independent users) or constant",
    )
    parser.add_argument(
        "--duration", type=_duration, default=15.0, help="measured time per step (15s, 500ms, 1m)"
    )
    parser.add_argument(
        "--warmup", type=_duration, default=3.0, help="unmeasured load before each step (3s)"
    )
    parser.add_argument("--rows", type=int, default=1, help="rows (batch size) per request")
    parser.add_argument(
        "--input-data",
        default="random",
        metavar="random|zeros|FILE.json",
        help="random: floats in [0, 1), INT inputs in 0..9 (ids often feed an Embedding, whose "
        "table random 32-bit ints would overflow), BOOL at random, BYTES as short strings of "
        "words; zeros: zeros and empty strings; FILE.json: {input_name: nested list} holding "
        "one row or several rows, used in turn",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="spread the load over N client processes (their raw latencies are merged)",
    )
    parser.add_argument(
        "--timeout", type=_duration, default=30.0, help="deadline of each request (30s)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="open loop: at most this many requests in flight; a send that waits for a slot "
        "is late, and its lateness counts in its latency",
    )
    parser.add_argument(
        "--metrics-url",
        help="the server's Prometheus endpoint, scraped before and after each step "
        "(default: http://HOST:8501/metrics with HOST from --target)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random data and arrivals")
    parser.add_argument("--output", type=Path, metavar="RUN.json", help="write the run as JSON")
    parser.add_argument("--csv", type=Path, metavar="RUN.csv", help="write one row per step")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="RUN.png",
        help="draw latency percentiles against throughput (needs matplotlib: pip install "
        "'plexserve[plot]')",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show the live progress line even when stderr is not a terminal",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A.json", "B.json"),
        help="print two runs' steps side by side with ratios B/A, and run nothing",
    )


@dataclass(frozen=True)
class BenchSettings:
    target: str
    model: str
    version: str = ""
    protocol: str = "v2"
    mode: str = "closed"  # "closed" (--concurrency) or "open" (--rate)
    levels: tuple[float, ...] = (1,)  # concurrencies or rates, one step each
    distribution: str = "poisson"
    duration: float = 15.0
    warmup: float = 3.0
    rows: int = 1
    input_data: str = "random"
    processes: int = 1
    timeout: float = 30.0
    max_in_flight: int = 1000
    metrics_url: str = ""
    seed: int = 0
    progress: bool = False  # forced on; otherwise shown when stderr is a terminal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_metrics_url(target: str) -> str:
    host = target.rsplit(":", 1)[0] if ":" in target else target
    return f"http://{host or 'localhost'}:8501/metrics"


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    if not args.model:
        raise BenchError("--model is required (or --compare A.json B.json)")
    if args.rows < 1:
        raise BenchError(f"--rows must be at least 1, got {args.rows}")
    if args.processes < 1:
        raise BenchError(f"--processes must be at least 1, got {args.processes}")
    if args.duration <= 0:
        raise BenchError("--duration must be longer than 0")
    if args.timeout <= 0:
        raise BenchError("--timeout must be longer than 0")
    if args.max_in_flight < 1:
        raise BenchError(f"--max-in-flight must be at least 1, got {args.max_in_flight}")
    if args.input_data not in ("random", "zeros") and not Path(args.input_data).is_file():
        raise BenchError(
            f"--input-data {args.input_data!r}: no such file (use random, zeros or FILE.json)"
        )
    if args.rate is not None:
        mode, levels = "open", tuple(float(r) for r in args.rate)
    else:
        mode, levels = "closed", tuple(float(c) for c in (args.concurrency or [1]))
    return BenchSettings(
        target=args.target,
        model=args.model,
        version=args.version,
        protocol=args.protocol,
        mode=mode,
        levels=levels,
        distribution=args.distribution,
        duration=args.duration,
        warmup=args.warmup,
        rows=args.rows,
        input_data=args.input_data,
        processes=args.processes,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        metrics_url=args.metrics_url or default_metrics_url(args.target),
        seed=args.seed,
        progress=args.progress,
    )
