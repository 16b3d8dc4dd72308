"""The in-process ceiling: a SavedModel's serving_default called directly, no network at all.

usage: python bench/inprocess.py MODEL_DIR [--batches 1,32] [--duration 5] [--warmup 1]
Prints one JSON object: for each batch size, calls/s, rows/s and call latency percentiles (ms).

The call is the server's own (`SignatureRunner.call`: numpy -> the signature's Session callable
-> numpy), on this thread, back to back: what the model costs when nothing else does. Every batch
size runs in this same process, one after the other. Inputs are random, ids in 0..9, as
`plexserve bench` makes them. This is a timing loop over local calls, not a load generator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plexserve.bench.inputs import InputData  # noqa: E402
from plexserve.bench.protocols import InputSpec  # noqa: E402
from plexserve.bench.stats import latency_figures  # noqa: E402
from plexserve.runner import SignatureRunner  # noqa: E402 - imports TensorFlow


def measure(runner: SignatureRunner, rows: int, duration: float, warmup: float) -> dict:
    specs = [
        InputSpec(name, spec.datatype, tuple(-1 if d is None else d for d in spec.shape))
        for name, spec in runner.signature.inputs.items()
    ]
    inputs = InputData(specs, "random", seed=rows).arrays(rows)
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        runner.call(inputs)
    latencies = []
    start = time.perf_counter()
    end = start + duration
    while (t0 := time.perf_counter()) < end:
        runner.call(inputs)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    calls = len(latencies)
    return {
        "batch": rows,
        "calls": calls,
        "calls_per_s": calls / elapsed,
        "rows_per_s": rows * calls / elapsed,
        "latency_ms": latency_figures(np.array(latencies)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    runner = SignatureRunner.load(args.model_dir)
    results = [
        measure(runner, int(batch), args.duration, args.warmup) for batch in args.batches.split(",")
    ]
    runner.close()
    print(json.dumps({"model_dir": str(args.model_dir), "results": results}))


if __name__ == "__main__":
    main()
