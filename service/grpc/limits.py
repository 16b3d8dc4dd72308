"""What the gRPC port holds per client: its connections (each costs a file descriptor) and how
long an idle one stays open. Options for grpc.aio.server, built here so the composition root
adds them in one line.

Out of file descriptors, grpc's listener retries accept() every second, logging a line each
time, and the HTTP port (health, metrics) can no longer accept either. So the gRPC port takes at
most half of the open-file limit left after RESERVED_FILES, the share the HTTP port leaves it
(service/rest/app.py): beyond, grpc closes a new connection as soon as it is accepted, and the
other port and the process's own files keep theirs.
"""

from __future__ import annotations

import resource

from plexserve.rest.app import RESERVED_FILES

# Without a low open-file limit the cap is this (a connection is a client channel, not a call).
DEFAULT_MAX_CONNECTIONS = 16384


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, (soft - RESERVED_FILES) // 2))


def connection_options(max_connection_idle: float) -> list[tuple[str, int]]:
    """grpc.aio.server options: the connection cap, and `max_connection_idle` seconds after
    which a connection with no call open is closed gracefully (GOAWAY; 0: never)."""
    options = [("grpc.max_allowed_incoming_connections", default_max_connections())]
    if max_connection_idle:
        options.append(("grpc.max_connection_idle_ms", int(max_connection_idle * 1000)))
    return options
