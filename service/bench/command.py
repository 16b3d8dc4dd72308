"""One `plexserve bench` run: steps one after another, each scraped, summarised and printed.

`run_command(args)` is what service/cli.py calls (exit status: 0, 1 when any request failed, 2 for
a usage or connection problem). `run_bench(settings, out, err)` runs the steps on the caller's
event loop and returns the run document (see report). Per step: the load starts at an absolute
time (a short lead lets load processes receive their plan first); the server's metrics are
scraped when the measured window opens and again once every measured request is answered; raw
samples of all processes are merged, then summarised.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from plexserve.bench import BenchError
from plexserve.bench.load import StepPlan, StepRecord
from plexserve.bench.options import BenchSettings, settings_from_args
from plexserve.bench.protocols import InputSpec, check_protocol
from plexserve.bench.report import (
    FORMAT,
    compare_runs,
    environment,
    load_run,
    run_header,
    step_label,
    step_notes,
    table_header,
    table_row,
    write_csv,
    write_json,
)
from plexserve.bench.server_metrics import Scrape, scrape, server_figures
from plexserve.bench.stats import step_figures
from plexserve.bench.workers import LoadSetup, LocalLoad, ProcessLoad

PROCESS_LEAD = 0.5  # seconds between sending plans to load processes and the step's start
PROGRESS_MIN_STEP = 3.0  # steps at least this long get a live progress line on a terminal
PROGRESS_INTERVAL = 0.5


def split_plans(settings: BenchSettings, level: float, start: float, step: int) -> list[StepPlan]:
    """Each process's share of one step: concurrency split as evenly as it goes; rate split
    evenly, with constant schedules interleaved (process i offset by i/rate) so that together
    they send every 1/rate s; each share its own seed."""
    n = settings.processes
    plans = []
    for i in range(n):
        if settings.mode == "closed":
            share: float = int(level) // n + (1 if i < int(level) % n else 0)
            phase = 0.0
        else:
            share = level / n
            phase = i / level if settings.distribution == "constant" else 0.0
        seed = int(np.random.SeedSequence([settings.seed, step, i]).generate_state(1)[0])
        plans.append(
            StepPlan(
                mode=settings.mode,
                level=share,
                start=start,
                warmup=settings.warmup,
                duration=settings.duration,
                timeout=settings.timeout,
                distribution=settings.distribution,
                phase=phase,
                seed=seed,
                max_in_flight=max(1, settings.max_in_flight // n),
            )
        )
    return plans


def _load_fields(settings: BenchSettings, level: float) -> dict[str, Any]:
    if settings.mode == "closed":
        return {"mode": "closed", "concurrency": int(level)}
    return {"mode": "open", "rate": level, "distribution": settings.distribution}


class Progress:
    """The live progress line on stderr: carriage-return updates on a terminal, plain lines
    otherwise (when forced with --progress)."""

    def __init__(self, stream: TextIO, load: LocalLoad | ProcessLoad) -> None:
        self.stream = stream
        self.load = load
        self.tty = stream.isatty()

    async def show(self, label: str, measure_start: float, end: float, warmup: float) -> None:
        loop = asyncio.get_running_loop()
        at_window: int | None = None
        while True:
            now = loop.time()
            answered, errors = self.load.answered()
            if now < measure_start:
                text = f"{label}: warm-up {warmup - (measure_start - now):.1f}/{warmup:.1f} s"
            else:
                if at_window is None:
                    at_window = answered
                elapsed = min(now, end) - measure_start
                rate = (answered - at_window) / elapsed if elapsed > 0 else 0.0
                text = (
                    f"{label}: {elapsed:.1f}/{end - measure_start:.1f} s, {rate:,.0f} req/s, "
                    f"{errors} errors" + (" (finishing)" if now >= end else "")
                )
            self.stream.write(f"\r\x1b[K{text}" if self.tty else f"{text}\n")
            self.stream.flush()
            await asyncio.sleep(PROGRESS_INTERVAL)

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


async def _scrape(settings: BenchSettings) -> Scrape:
    return await asyncio.to_thread(scrape, settings.metrics_url, settings.model)


async def _run_step(
    settings: BenchSettings,
    load: LocalLoad | ProcessLoad,
    index: int,
    level: float,
    progress: Progress | None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lead = PROCESS_LEAD if settings.processes > 1 else 0.0
    plans = split_plans(settings, level, loop.time() + lead, index)
    measure_start, end = plans[0].measure_start, plans[0].end
    load_task = asyncio.create_task(load.run(plans))
    label = f"[{index + 1}/{len(settings.levels)}] {step_label(_load_fields(settings, level))}"
    progress_task = (
        asyncio.create_task(progress.show(label, measure_start, end, settings.warmup))
        if progress is not None
        else None
    )
    try:
        await asyncio.wait({load_task}, timeout=max(0.0, measure_start - loop.time()))
        before = await _scrape(settings) if not load_task.done() else None
        records: list[StepRecord] = await load_task
        after = await _scrape(settings)
    finally:
        if progress_task is not None:
            progress_task.cancel()
            await asyncio.gather(progress_task, return_exceptions=True)
            assert progress is not None
            progress.clear()
        if not load_task.done():
            load_task.cancel()
    merged = StepRecord.merge(records)
    step = {
        **_load_fields(settings, level),
        **step_figures(merged, measure_start, end, settings.rows),
        "processes": settings.processes,
        "requests_by_process": [
            int(np.count_nonzero((r.intended >= measure_start) & (r.intended < end)))
            for r in records
        ],
        "server": server_figures(before or after, after),
    }
    return step


def _document(
    settings: BenchSettings, specs: Sequence[InputSpec], steps: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "tool": "plexserve bench",
        "format": FORMAT,
        "settings": settings.to_dict(),
        "environment": environment(),
        "model": {
            "name": settings.model,
            "version": settings.version,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs
            ],
        },
        "steps": steps,
    }


async def run_bench(
    settings: BenchSettings, out: TextIO | None = None, err: TextIO | None = None
) -> dict[str, Any]:
    """Run every step of `settings`, printing the table to `out` (stdout) as steps finish and
    the progress line to `err` (stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    check_protocol(settings.protocol)  # fail before starting anything
    setup = LoadSetup(
        settings.protocol,
        settings.target,
        settings.model,
        settings.version,
        settings.rows,
        settings.input_data,
        settings.seed,
    )
    load: LocalLoad | ProcessLoad = (
        LocalLoad(setup) if settings.processes == 1 else ProcessLoad(setup, settings.processes)
    )
    show_progress = settings.progress or (
        err.isatty() and settings.warmup + settings.duration >= PROGRESS_MIN_STEP
    )
    progress = Progress(err, load) if show_progress else None
    steps: list[dict[str, Any]] = []
    try:
        specs = await load.start()
        print(run_header(settings, specs), file=out)
        print(table_header(settings.mode), file=out, flush=True)
        for index, level in enumerate(settings.levels):
            step = await _run_step(settings, load, index, level, progress)
            print(table_row(step), file=out)
            for line in step_notes(step, steps[-1] if steps else None):
                print(line, file=out)
            out.flush()
            steps.append(step)
    finally:
        await load.close()
    return _document(settings, specs, steps)


def run_command(args: argparse.Namespace) -> int:
    """`plexserve bench`: exit 0, 1 when any request failed, 2 for a problem to fix first."""
    try:
        if args.compare:
            a, b = args.compare
            runs = (load_run(a), load_run(b))
            print(compare_runs(runs[0], runs[1], (str(a), str(b))))
            if args.plot:
                from plexserve.bench.plot import plot_runs

                plot_runs([(a.stem, runs[0]), (b.stem, runs[1])], args.plot)
                print(f"plot: {args.plot}")
            return 0
        settings = settings_from_args(args)
        check_protocol(settings.protocol)
        if args.plot:
            from plexserve.bench.plot import require_matplotlib

            require_matplotlib()  # before a long run, not after it
        document = asyncio.run(run_bench(settings))
        if args.output:
            write_json(document, args.output)
            print(f"run: {args.output}")
        if args.csv:
            write_csv(document, args.csv)
            print(f"csv: {args.csv}")
        if args.plot:
            from plexserve.bench.plot import plot_runs

            plot_runs([(settings.model, document)], args.plot)
            print(f"plot: {args.plot}")
    except BenchError as error:
        print(f"plexserve bench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plexserve bench: interrupted", file=sys.stderr)
        return 130
    failed = sum(sum(step["errors"].values()) for step in document["steps"])
    return 1 if failed else 0
