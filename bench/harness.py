"""Shared by the bench/ scripts: the machine's description, a temporary model repository built
with `plexserve build`, a `plexserve serve` process on free ports, and `plexserve bench` runs.

Everything is driven through the `plexserve` command of the active environment (the one next to
this Python), exactly as a user would; the load itself is always `plexserve bench`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The `plexserve` command next to this Python (the project's .venv when run as .venv/bin/python).
_SCRIPT = Path(sys.executable).parent / "plexserve"
PLEXSERVE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "plexserve"]


def checkout_command(source: Path, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """How to run the `plexserve` of another checkout, from its own code, without installing
    it: the command's start and the environment it needs (run it with cwd=`source`).

    A checkout from before the `plexserve` namespace is `python -m service` with the checkout on
    PYTHONPATH. A later one is installed as `plexserve` (service/ -> plexserve, models/ ->
    plexserve.models): a tree of links under `scratch` names its folders so, ahead of this
    environment's own installed plexserve on sys.path."""
    if '"plexserve" = "service"' not in (source / "pyproject.toml").read_text():
        return [sys.executable, "-m", "service"], {"PYTHONPATH": str(source)}
    tree = scratch / "plexserve"
    tree.mkdir(parents=True, exist_ok=True)
    for item in (source / "service").iterdir():
        if not (tree / item.name).exists():
            (tree / item.name).symlink_to(item)
    if not (tree / "models").exists():
        (tree / "models").symlink_to(source / "models")
    return [sys.executable, "-m", "plexserve"], {"PYTHONPATH": str(scratch)}


def lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in text.splitlines())
    }


def machine() -> str:
    cpu = lscpu()
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return (
        f"{cpu.get('Model name', platform.processor() or '?')}, "
        f"{cpu.get('CPU(s)', os.cpu_count())} CPUs, {memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, host {platform.node()}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_repository(repo: Path, builders: list[str]) -> None:
    subprocess.run(
        [*PLEXSERVE, "build", *builders, "--repo", str(repo)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class Served:
    """A `plexserve serve` process that is ready."""

    target: str  # gRPC
    http_port: int
    pid: int
    log: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"


@contextmanager
def serve_process(
    repo: Path, log: Path, *server_args: str, source: Path | None = None
) -> Iterator[Served]:
    """`plexserve serve` on free ports, with `server_args`, once it is ready; this checkout's
    installed `plexserve`, or with `source` another checkout's code (`checkout_command`)."""
    import grpc

    from plexserve.proto import grpc_service_pb2 as pb
    from plexserve.proto import grpc_service_pb2_grpc as pb_grpc

    grpc_port, http_port = free_port(), free_port()
    start, env = PLEXSERVE, dict(os.environ)
    if source is not None:
        start, extra = checkout_command(source, log.parent / f"{log.stem}-tree")
        env.update(extra)
    command = [*start, "serve", "--repo", str(repo), "--host", "127.0.0.1"]
    command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port), *server_args]
    target = f"127.0.0.1:{grpc_port}"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=source
        )
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"plexserve serve exited; see {log}")
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"plexserve serve not ready after 300 s; see {log}")
                time.sleep(0.5)
        yield Served(target, http_port, server.pid, log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def serving(repo: Path, log: Path, *server_args: str) -> Iterator[tuple[str, str]]:
    """`serve_process` of this checkout; yields (gRPC target, metrics URL)."""
    with serve_process(repo, log, *server_args) as served:
        yield served.target, served.metrics_url


def bench(output: Path, *args: str) -> dict[str, Any]:
    """Run `plexserve bench ... --output OUTPUT` (its table goes to our stdout); its JSON back."""
    command = [*PLEXSERVE, "bench", *args, "--output", str(output)]
    print("$ plexserve bench " + " ".join(args), flush=True)
    finished = subprocess.run(command)
    if finished.returncode not in (0, 1):  # 1: some requests failed, still a measurement
        raise SystemExit(f"plexserve bench failed with status {finished.returncode}")
    return dict(json.loads(output.read_text()))


def fresh_directory(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of every thread of a process, summed by thread name (from
    /proc/PID/task/*/stat; the main thread of an unnamed process is "[main]")."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir() if Path(f"/proc/{pid}").exists() else ():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended between listing and reading
            continue
        if task.name == str(pid) and name.startswith("python"):
            name = "[main]"
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals
