"""Rolling restarts under load, as a Kubernetes Deployment does them behind a headless Service:
replicas of `plexserve serve` (subprocesses on fixed loopback ports), gRPC clients that balance
over all of them with `round_robin` on one channel (what a headless Service's DNS name gives a
gRPC client), and replicas restarted one after the other (SIGTERM; once it has exited, a new
process on the same port). Every request the clients send is counted: answered or failed, with
its status code and message.

Used by tests/service/test_rollout.py, and runnable on its own to measure any checkout of
plexserve (for example the commit before a change):

    .venv/bin/python -m tests.rolling [--server-src DIR] [--clients 16] [--warmup 6]
        [--model multi_task] [--also BUILDERS] [--setups plain,retry,health] [--timeout 600]
        [-- extra `plexserve serve` flags]

--server-src runs `plexserve serve` from DIR (another checkout, its own code) instead of this one's
`plexserve`; the model repository is built with this checkout's builders either way.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from plexserve.proto import grpc_service_pb2 as pb
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc

STARTUP_SECONDS = 180.0
# A client reconnects to a replica's address at most this long after it went away (gRPC's
# default backoff grows to 120 s): it reaches a restarted replica as soon as its port opens,
# the harshest case for a server that opens its port before its models are loaded.
RECONNECT_BACKOFF_MS = 500
# The client set-ups compared, as gRPC service configs (docs/rollouts.md shows them to users).
ROUND_ROBIN: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
RETRY_UNAVAILABLE: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": "inference.GRPCInferenceService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
HEALTH_CHECK: dict[str, Any] = {"healthCheckConfig": {"serviceName": ""}}
SETUPS: dict[str, dict[str, Any]] = {
    "plain": ROUND_ROBIN,  # round_robin alone
    "retry": {**ROUND_ROBIN, **RETRY_UNAVAILABLE},  # + a retry policy for UNAVAILABLE
    "health": {**ROUND_ROBIN, **HEALTH_CHECK, **RETRY_UNAVAILABLE},  # + client-side health checks
}


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free at the time of the call."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def this_checkout_command() -> list[str]:
    script = shutil.which("plexserve", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "plexserve"]


class Replica:
    """One `plexserve serve` on a fixed gRPC port; restartable on that port."""

    def __init__(
        self,
        command: Sequence[str],
        repository: Path,
        grpc_port: int,
        flags: Sequence[str],
        logs: Path,
        cwd: Path | None = None,
    ) -> None:
        self.command = [
            *command,
            "serve",
            f"--repo={repository}",
            "--host=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--http-port=0",
            *flags,
        ]
        self.grpc_port = grpc_port
        self.logs = logs
        self.cwd = cwd
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []

    @property
    def log(self) -> Path:
        return self.logs / f"replica-{self.grpc_port}-{self.generation}.log"

    def start(self) -> None:
        self.generation += 1
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )

    def wait_ready(self, timeout: float = STARTUP_SECONDS) -> None:
        """Until OIP ServerReady says ready on the replica's gRPC port."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        options = [
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ]
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"replica exited at start:\n{self.log.read_text()}")
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    log = self.log.read_text()
                    raise RuntimeError(f"replica not ready in {timeout:g} s:\n{log}")
                time.sleep(0.05)

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM, and wait for the process to exit; its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.exit_codes.append(code)
        return code

    def restart(self) -> None:
        self.terminate()
        self.start()
        self.wait_ready()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@dataclass
class Outcome:
    """What one client set-up saw: requests answered, and every failure as 'CODE: message'."""

    answered: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return dict(collections.Counter(self.failures))


class Client(threading.Thread):
    """Closed loop: one ModelInfer after another on `stub` until stopped."""

    def __init__(
        self, stub: Any, request: pb.ModelInferRequest, outcome: Outcome, timeout: float
    ) -> None:
        super().__init__(daemon=True)
        self.stub, self.request, self.outcome, self.timeout = stub, request, outcome, timeout
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.stub.ModelInfer(self.request, timeout=self.timeout)
                with self.lock:
                    self.outcome.answered += 1
            except grpc.RpcError as error:
                with self.lock:
                    self.outcome.failures.append(f"{error.code().name}: {error.details()}")


def channel_for(ports: Sequence[int], service_config: dict[str, Any]) -> grpc.Channel:
    """One channel over every replica, as a headless Service gives it: the `ipv4:` resolver
    with each address, and the client set-up's service config."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    options = [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]
    return grpc.insecure_channel(target, options=options)


def zeros_request(port: int, model: str) -> pb.ModelInferRequest:
    """A one-row request of zeros for every input of `model`, shaped by its ModelMetadata."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
    request = pb.ModelInferRequest(model_name=model)
    for tensor in metadata.inputs:
        shape = [1 if d < 0 else d for d in tensor.shape]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        if tensor.datatype == "BYTES":
            raw = b"\x01\x00\x00\x00a" * int(np.prod(shape))  # each element: b"a"
        else:
            raw = np.zeros(shape, dtypes[tensor.datatype]).tobytes()
        request.raw_input_contents.append(raw)
    return request


@dataclass
class RollingRestart:
    command: Sequence[str]
    repository: Path
    model: str
    flags: Sequence[str] = ()
    replicas: int = 3
    restarts: int = 2  # replicas restarted, one after the other
    clients: int = 4  # per client set-up
    setups: Sequence[str] = ("plain", "health")
    warmup: float = 1.0  # seconds of load before the first restart, and after each
    timeout: float = 30.0  # each request's deadline
    cwd: Path | None = None
    exit_codes: list[int] = field(default_factory=list, init=False)  # of every process stopped

    def run(self, logs: Path) -> dict[str, Outcome]:
        ports = free_ports(self.replicas)
        replicas = [
            Replica(self.command, self.repository, port, self.flags, logs, self.cwd)
            for port in ports
        ]
        with ExitStack() as stack:
            for replica in replicas:
                stack.callback(replica.kill)
                replica.start()
            for replica in replicas:
                replica.wait_ready()
            request = zeros_request(ports[0], self.model)
            outcomes = {name: Outcome() for name in self.setups}
            clients = []
            for name in self.setups:
                channel = stack.enter_context(channel_for(ports, SETUPS[name]))
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                clients += [
                    Client(stub, request, outcomes[name], self.timeout) for _ in range(self.clients)
                ]
            with running(clients):
                self._wait_for_answers(outcomes)
                for replica in replicas[: self.restarts]:
                    replica.restart()
                    self._wait_for_answers(outcomes)
            for replica in replicas:
                replica.terminate()
            self.exit_codes = [code for replica in replicas for code in replica.exit_codes]
        return outcomes

    def _wait_for_answers(self, outcomes: dict[str, Outcome]) -> None:
        """`warmup` seconds, and at least a few answers for every set-up since the call."""
        before = {name: outcome.answered for name, outcome in outcomes.items()}
        deadline = time.monotonic() + self.warmup
        while time.monotonic() < deadline or any(
            outcome.answered < before[name] + 10 for name, outcome in outcomes.items()
        ):
            time.sleep(0.05)


@contextmanager
def running(clients: list[Client]) -> Iterator[None]:
    for client in clients:
        client.start()
    try:
        yield
    finally:
        for client in clients:
            client.stopped.set()
        for client in clients:
            client.join(60)


def build(repository: Path, builders: Sequence[str]) -> None:
    subprocess.run(
        [*this_checkout_command(), "build", *builders, "--repo", str(repository)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-src", type=Path, help="another plexserve checkout to serve")
    parser.add_argument("--model", default="multi_task", help="the model the clients ask for")
    parser.add_argument(
        "--also",
        default="",
        metavar="BUILDERS",
        help="comma-separated builders served beside it (they load first when their names sort "
        "first: the repository fills for a while)",
    )
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients per set-up")
    parser.add_argument(
        "--warmup", type=float, default=6.0, help="seconds of load before, between, after"
    )
    parser.add_argument("--setups", default="plain,retry,health")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="each request's deadline (long: a machine that pauses the processes for a while "
        "would otherwise count its pauses as failures)",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the replicas' logs here")
    parser.add_argument("server_flags", nargs="*", help="extra `plexserve serve` flags, after --")
    args = parser.parse_args(argv)
    command = this_checkout_command()
    if args.server_src:
        from bench.harness import checkout_command

        command, extra = checkout_command(args.server_src.resolve(), Path(tempfile.mkdtemp()))
        os.environ.update(extra)
    with tempfile.TemporaryDirectory(prefix="plexserve-rolling-") as scratch:
        repository, logs = Path(scratch) / "repo", Path(scratch) / "logs"
        logs.mkdir()
        build(repository, [args.model, *filter(None, args.also.split(","))])
        rolling = RollingRestart(
            command,
            repository,
            args.model,
            flags=args.server_flags,
            clients=args.clients,
            setups=args.setups.split(","),
            warmup=args.warmup,
            timeout=args.timeout,
            cwd=args.server_src,
        )
        started = time.monotonic()
        outcomes = rolling.run(logs)
        seconds = time.monotonic() - started
        if args.keep_logs:
            shutil.copytree(logs, args.keep_logs, dirs_exist_ok=True)
    print(
        f"server: {args.server_src or 'this checkout'}; flags: {args.server_flags}; "
        f"models: {args.model} {args.also}"
    )
    print(
        f"{len(rolling.setups)} set-ups x {args.clients} clients, {seconds:.0f} s, "
        f"exit statuses {rolling.exit_codes}"
    )
    for name, outcome in outcomes.items():
        total = outcome.answered + len(outcome.failures)
        print(f"{name:>7}: {len(outcome.failures)} of {total} failed  {outcome.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
