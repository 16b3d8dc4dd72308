"""Server-wide behaviour: connection ageing for round-robin clients, the open-file limit."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pytest

from plexserve.export import export_model
from plexserve.rest.app import default_max_connections
from plexserve.server import raise_open_file_limit
from tests.harness import RunningServer, constant_model, infer_request, output_arrays


def test_requests_keep_succeeding_across_connection_ageing(tmp_path: Path) -> None:
    """Connections are closed after --max-connection-age so clients re-resolve and spread over
    new replicas; a client sending through several such closes sees no failure."""
    export_model(constant_model(1.0), tmp_path, "m")
    server = RunningServer(tmp_path, max_connection_age=0.2, grace_period=1.0)
    try:
        answered = 0
        until = time.monotonic() + 1.5  # several connection lifetimes
        while time.monotonic() < until:
            response = server.stub.ModelInfer(
                infer_request("m", {"x": np.ones((1, 2), np.float32)}), timeout=10
            )
            assert output_arrays(response)["y"].tolist() == [[1.0]]
            answered += 1
        assert answered > 10
    finally:
        server.close()


def test_serving_takes_the_hard_open_file_limit() -> None:
    """A soft limit of 1024 would cap the HTTP port at 448 connections; the process may have
    the hard limit, and `serve` takes it."""
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = original
    if hard <= 256:
        pytest.skip(f"the hard open-file limit is {hard}: nothing to raise")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert default_max_connections() == 64
        raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, original)
