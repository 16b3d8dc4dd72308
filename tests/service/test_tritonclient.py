"""Compatibility: tritonclient.grpc (a client we did not write) against a real plexserve server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import DemoModel
from tests.harness import RunningServer

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "tritonclient_session.py"
MODELS = ["mlp", "multi_input", "text_classifier", "multi_task"]


def test_tritonclient_reads_metadata_and_gets_the_keras_numbers(
    server: RunningServer, demo_models: dict[str, DemoModel], tmp_path: Path
) -> None:
    samples = {name: demo_models[name].sample(rows=3, seed=5) for name in MODELS}
    np.savez(
        tmp_path / "in.npz",
        **{f"{m}/{n}": a for m, arrays in samples.items() for n, a in arrays.items()},
    )
    finished = subprocess.run(
        [
            sys.executable,
            str(CLIENT),
            server.address,
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)

    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["server"]["name"] == "plexserve"
    assert {
        (t["name"], t["datatype"], tuple(map(int, t["shape"])))
        for t in report["metadata"]["inputs"]
    } == {("numeric", "FP32", (-1, 4)), ("category", "INT32", (-1, 1))}
    assert report["config"]["config"]["max_batch_size"] == 32
    assert report["versions"] == {name: "1" for name in MODELS}
    assert report["error"]["status"] == "StatusCode.NOT_FOUND"
    assert "unknown model 'no_such_model'" in report["error"]["message"]

    with np.load(tmp_path / "out.npz") as got:
        for name in MODELS:
            expected = demo_models[name].predict(samples[name])
            assert sorted(k.split("/")[1] for k in got.files if k.startswith(f"{name}/")) == sorted(
                expected
            )
            for output, values in expected.items():
                np.testing.assert_allclose(
                    got[f"{name}/{output}"], values, atol=1e-5, err_msg=f"{name}/{output}"
                )
