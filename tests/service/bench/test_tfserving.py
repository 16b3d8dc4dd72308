"""`--protocol tfserving` against the suite's real server (tests/conftest.py `server`): the same
inputs as v2's metadata for every built-in model, requests the server answers, errors by code."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from plexserve.bench import BenchError
from plexserve.bench.inputs import build_pool
from plexserve.bench.load import StepPlan, run_plan
from plexserve.bench.protocols import BenchProtocol, InputSpec, open_protocol
from plexserve.bench.stats import step_figures
from plexserve.bench.tfserving import TFServingProtocol
from plexserve.cli import main
from tests.conftest import BUILTINS
from tests.harness import RunningServer


def metadata(
    server: RunningServer, model: str, version: str = "", protocol: str = "tfserving"
) -> list[InputSpec]:
    async def read() -> list[InputSpec]:
        client = open_protocol(protocol, server.address, model, version)  # bound to this loop
        try:
            return await client.metadata()
        finally:
            await client.close()

    return asyncio.run(read())


def as_v2_publishes(spec: InputSpec) -> InputSpec:
    """v2 publishes a one-scalar-per-row input as [-1, 1]; TF Serving as the signature has it."""
    return InputSpec(spec.name, spec.datatype, (-1, 1)) if spec.shape == (-1,) else spec


@pytest.mark.parametrize("name", BUILTINS)
def test_metadata_gives_the_inputs_v2_gives(server: RunningServer, name: str) -> None:
    tfserving = metadata(server, name)
    v2 = metadata(server, name, protocol="v2")
    assert [as_v2_publishes(spec) for spec in tfserving] == sorted(v2, key=lambda s: s.name)
    assert all(spec.shape[0] == -1 for spec in tfserving)  # the batch dimension


def test_a_scalar_per_row_input_keeps_tf_servings_shape(server: RunningServer) -> None:
    assert metadata(server, "text_classifier") == [InputSpec("text", "BYTES", (-1,))]


def short_step(
    server: RunningServer, model: str, specs: list[InputSpec], rows: int, source: str
) -> dict[str, Any]:
    """A 0.2 s closed-loop step at concurrency 2, requests built from `specs` sent to `model`."""

    async def step() -> dict[str, Any]:
        client = TFServingProtocol(server.address, model)
        pool = build_pool(client, specs, rows=rows, source=source, size=4)
        now = asyncio.get_running_loop().time()
        plan = StepPlan("closed", 2, start=now, warmup=0.0, duration=0.2, timeout=10)
        try:
            record = await run_plan(client.call, pool, plan)
        finally:
            await client.close()
        return step_figures(record, plan.measure_start, plan.end, rows=rows)

    return asyncio.run(step())


@pytest.mark.parametrize("name", BUILTINS)
def test_a_closed_loop_step_has_no_errors(server: RunningServer, name: str) -> None:
    """Every dtype the builtins take (FP32, INT32, strings in string_val), 3 rows a request."""
    figures = short_step(server, name, metadata(server, name), rows=3, source="random")
    assert figures["requests"] > 0
    assert figures["ok"] == figures["requests"] and figures["errors"] == {}


def test_errors_are_counted_by_status_code(server: RunningServer) -> None:
    """Requests built for `mlp` but addressed to a model that does not exist."""
    figures = short_step(server, "no_such", metadata(server, "mlp"), rows=1, source="zeros")
    assert figures["requests"] > 0
    assert figures["errors"] == {"NOT_FOUND": figures["requests"]} and figures["ok"] == 0


def test_version_number_or_label_goes_into_the_model_spec(server: RunningServer) -> None:
    assert metadata(server, "mlp", "1") == metadata(server, "mlp")
    with pytest.raises(BenchError, match="NOT_FOUND: model 'mlp' has no version '7'"):
        metadata(server, "mlp", "7")
    with pytest.raises(BenchError, match="label 'canary'"):
        metadata(server, "mlp", "canary")


def test_open_protocol_gives_the_tfserving_client(server: RunningServer) -> None:
    async def open_and_close() -> BenchProtocol:
        client = open_protocol("tfserving", server.address, "echo")
        await client.close()
        return client

    assert isinstance(asyncio.run(open_and_close()), TFServingProtocol)
    assert metadata(server, "echo") == [InputSpec("x", "FP32", (-1, 16))]


def test_bench_command_over_tfserving(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run.json"
    status = main(
        [
            "bench",
            "--target",
            server.address,
            "--metrics-url",
            server.metrics_url,
            "--protocol",
            "tfserving",
            "--model",
            "multi_task",
            "--concurrency",
            "2",
            "--warmup",
            "100ms",
            "--duration",
            "0.5s",
            "--output",
            str(output),
        ]
    )
    assert status == 0, capsys.readouterr().err
    run = json.loads(output.read_text())
    assert run["settings"]["protocol"] == "tfserving"
    (step,) = run["steps"]
    assert step["requests"] > 0 and step["ok"] == step["requests"] and step["errors"] == {}
    # the server counted them: its metrics are read for the same model, whatever the protocol
    assert step["server"]["available"] is True
    assert "protocol tfserving" in capsys.readouterr().out
