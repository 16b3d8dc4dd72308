"""The hop alone: round trips from a front-end worker to the model process, nothing else.

usage: .venv/bin/python bench/hop.py [--in-flight 32] [--seconds 5] [--rounds 3]
           [--out bench/results/hop.md]

A worker's `ModelLink` (service/frontend.py) sends inference messages over the real hop
(service/hop.py: a Unix socket, pickle protocol 5, writes coalesced per loop turn) to a second
process that answers each at once with the inputs it received, as the model process would
answer with outputs of the same size. `--in-flight` coroutines each send the next request as
soon as the last is answered. The inputs are one row of vision_tabular's shapes (an 32x32x3
image and 32 features, FP32: 12.4 KB), so the bytes are what the serving path carries.

Reported per round: round trips per second, and CPU microseconds per round trip on each side
(the worker side's process CPU time; the model side's from /proc), which is what the hop costs
each process in worker mode. Prints a markdown table; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine  # noqa: E402

from plexserve.frontend import MirrorRepository, ModelLink  # noqa: E402
from plexserve.hop import Connection  # noqa: E402


def model_side(path: str, ready: multiprocessing.synchronize.Event) -> None:
    """Answers every "infer" with its own inputs, at once."""

    async def main() -> None:
        import socket

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        ready.set()
        loop = asyncio.get_running_loop()
        sock, _ = await loop.sock_accept(listener)
        done = loop.create_future()

        def on_message(message: tuple) -> None:  # type: ignore[type-arg]
            if message[0] == "infer":
                connection.send(("ok", message[1], message[4]))

        connection = Connection(sock, on_message, lambda error: done.set_result(None))
        await done

    asyncio.run(main())


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def worker_side(path: str, in_flight: int, seconds: float, model_pid: int) -> list[float]:
    mirror = MirrorRepository()
    link = ModelLink(path, mirror)
    await link.start()
    while link._connection is None:  # noqa: SLF001 - (the bench waits for the connection)
        await asyncio.sleep(0.01)
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.standard_normal((1, 32, 32, 3)).astype(np.float32),
        "features": rng.standard_normal((1, 32)).astype(np.float32),
    }
    count = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal count
        while time.monotonic() < stop:
            outputs = await link.infer("vision_tabular", 1, inputs, None)
            assert outputs["image"].shape == (1, 32, 32, 3)
            count += 1

    for _ in range(200):  # warm up
        await link.infer("vision_tabular", 1, inputs, None)
    began, cpu, model_cpu = time.monotonic(), time.process_time(), process_cpu(model_pid)
    await asyncio.gather(*(client() for _ in range(in_flight)))
    wall = time.monotonic() - began
    worker_us = (time.process_time() - cpu) / count * 1e6
    model_us = (process_cpu(model_pid) - model_cpu) / count * 1e6
    await link.close()
    return [count / wall, worker_us, model_us]


def one_round(in_flight: int, seconds: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="plexserve-hop-") as directory:
        path = os.path.join(directory, "hop.sock")
        ready = multiprocessing.get_context("spawn").Event()
        model = multiprocessing.get_context("spawn").Process(target=model_side, args=(path, ready))
        model.start()
        ready.wait(30)
        try:
            assert model.pid is not None
            return asyncio.run(worker_side(path, in_flight, seconds, model.pid))
        finally:
            model.join(10)
            if model.is_alive():
                model.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [one_round(args.in_flight, args.seconds) for _ in range(args.rounds)]
    lines = [
        f"# The hop: worker to model process round trips ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}",
        f"Command: `.venv/bin/python bench/hop.py --in-flight {args.in_flight} "
        f"--seconds {args.seconds:g} --rounds {args.rounds}`",
        "",
        "| round | round trips/s | worker CPU µs each | model side CPU µs each |",
        "|---|---|---|---|",
        *(
            f"| {i} | {rate:,.0f} | {worker:.0f} | {model:.0f} |"
            for i, (rate, worker, model) in enumerate(rows, 1)
        ),
        f"| median | {statistics.median(r[0] for r in rows):,.0f} | "
        f"{statistics.median(r[1] for r in rows):.0f} | "
        f"{statistics.median(r[2] for r in rows):.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
