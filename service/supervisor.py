"""`plexserve serve --workers N`: one model process and N front-end worker processes.

    clients ──gRPC──▶ worker 1 ┐                      ┌─ HTTP port (REST, /metrics, health)
              (SO_REUSEPORT)  ├─ Unix socket (hop) ─▶ model process: repository, batchers,
    clients ──gRPC──▶ worker N ┘                          TensorFlow on its device

The supervisor (this module, the process `plexserve serve` started) checks and holds the gRPC
port, starts the model process and the workers (each `python -m plexserve.supervisor`, its
settings pickled on stdin), restarts any of them that dies, and on SIGTERM or SIGINT passes
SIGTERM on to every one and waits for them: each drains with the single process's contract
(lame duck, GOAWAY, grace period), the model process last, once every worker has finished.
A second signal kills them all at once. The children live in a session of their own (a
terminal's Ctrl-C reaches the supervisor only) and get SIGTERM if the supervisor dies.

A child that exits with status 2 (a setting it cannot use: a busy HTTP port, a bad TLS file)
is not restarted: the supervisor stops the others and exits 2 as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace

from plexserve.server import ServerSettings, check_port_free, raise_open_file_limit, serve
from plexserve.settings import SettingsError

log = logging.getLogger(__name__)

USAGE_ERROR = 2
RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)  # after 1, 2, ... deaths in a row
STABLE_SECONDS = 30.0  # a child that ran this long starts its restart delays over
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    name: str  # "model", "worker 1", ...
    settings: ServerSettings
    log_level: str
    log_format: str
    builders_modules: tuple[str, ...] = ()  # the model process imports them (custom layers)


def _die_with_parent() -> None:  # (runs in the child, before exec)
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening: it keeps the port for the
    workers (port 0: picks one) and takes no connection itself."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class Supervisor:
    def __init__(
        self,
        settings: ServerSettings,
        workers: int,
        log_level: str,
        log_format: str,
        builders_modules: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.builders_modules = builders_modules
        self.workers = workers
        self.log_level = log_level
        self.log_format = log_format
        self.stopping = False
        self.status = 0
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._directory = ""

    def specs(self, grpc_port: int, hop: str) -> list[ChildSpec]:
        settings = self.settings
        model = replace(settings, role="model", hop=hop)
        front = replace(settings, role="frontend", hop=hop, grpc_port=grpc_port, http_port=None)
        return [
            ChildSpec("model", model, self.log_level, self.log_format, self.builders_modules),
            *(
                ChildSpec(f"worker {i}", front, self.log_level, self.log_format)
                for i in range(1, self.workers + 1)
            ),
        ]

    async def run(self) -> int:
        settings = self.settings
        raise_open_file_limit()
        check_port_free(settings.host, settings.grpc_port, "--grpc-port")
        reserved = reserve_port(settings.host, settings.grpc_port)
        self._directory = tempfile.mkdtemp(prefix="plexserve-")  # mode 0700: this user only
        try:
            port = reserved.getsockname()[1]
            log.info(
                "supervisor: 1 model process and %d front-end workers on gRPC port %d",
                self.workers,
                port,
            )
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
            specs = self.specs(port, os.path.join(self._directory, "model.sock"))
            await asyncio.gather(*(self._keep_running(spec) for spec in specs))
            return self.status
        finally:
            reserved.close()
            shutil.rmtree(self._directory, ignore_errors=True)

    async def _keep_running(self, spec: ChildSpec) -> None:
        deaths, status = 0, 0
        while not self.stopping:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "plexserve.supervisor",
                stdin=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            self.processes[spec.name] = process
            assert process.stdin is not None
            process.stdin.write(pickle.dumps(spec))
            process.stdin.close()
            status = await process.wait()
            if self.stopping:
                break
            if status == USAGE_ERROR:
                log.error("%s exited with status %d: stopping", spec.name, status)
                self.status = USAGE_ERROR
                self._stop()
                break
            if time.monotonic() - started >= STABLE_SECONDS:
                deaths = 0
            delay = RESTART_DELAYS[min(deaths, len(RESTART_DELAYS) - 1)]
            deaths += 1
            log.error(
                "%s (pid %d) exited with status %d: restarting it in %g s",
                spec.name,
                process.pid,
                status,
                delay,
            )
            await asyncio.sleep(delay)
        self.processes.pop(spec.name, None)
        if status not in (0, -signal.SIGTERM) and not self.status:
            self.status = 1

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            log.warning("second %s: killing every process now", name)
            for process in self.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            os._exit(128 + signum)
        log.info("%s: shutting down every process", name)
        self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)


class ProcessTag(logging.Filter):
    """Prefixes the logger name of every record with the process's name: "[worker 1] ..."."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = f"[{tag}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.tag):
            record.name = self.tag + record.name
        return True


def child_main() -> int:
    """A model process or worker: its ChildSpec comes pickled on stdin."""
    from plexserve.logs import configure_logging
    from plexserve.loop import ServingEventLoop

    spec: ChildSpec = pickle.loads(sys.stdin.buffer.read())
    configure_logging(spec.log_level, spec.log_format)
    for handler in logging.getLogger().handlers:  # every line says which process wrote it
        handler.addFilter(ProcessTag(spec.name))
    log.info("%s: pid %d", spec.name, os.getpid())
    try:
        if spec.settings.role == "model":
            from plexserve.cli import _registry

            _registry(spec.builders_modules)
        with asyncio.Runner(loop_factory=ServingEventLoop) as runner:
            runner.run(serve(spec.settings))
    except SettingsError as error:
        log.error("%s: %s", spec.name, error)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
