"""SignatureRunner: the Session it executes in gives the Keras model's numbers, every output must
have a row per input row, and its threads carry names an operator can read."""

from __future__ import annotations

from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf

from plexserve.export import export_model
from plexserve.runner import SignatureRunner
from tests.harness import RunningServer, infer_request


def batch_sum_model() -> keras.Model:
    """Its output has one row whatever the batch: a model the batcher cannot split back."""
    x = keras.Input((2,), name="x")
    total = keras.layers.Lambda(lambda t: keras.ops.sum(t, axis=0, keepdims=True))(x)
    return keras.Model({"x": x}, {"total": total})


def test_the_session_gives_the_keras_numbers(tmp_path: Path) -> None:
    x = keras.Input((3,), name="x")
    model = keras.Model({"x": x}, {"y": keras.layers.Dense(2, name="dense")(x)})
    exported = export_model(model, tmp_path, "m")
    runner = SignatureRunner.load(exported.path)
    try:
        inputs = {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}
        expected = np.asarray(model(inputs)["y"])
        np.testing.assert_allclose(runner.call(inputs)["y"], expected, rtol=1e-5)
        assert list(runner.signature.outputs) == ["y"]
    finally:
        runner.close()


def test_an_execution_is_one_cpp_call_not_session_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Session.make_callable` with feeds runs the whole Python `Session.run` per call (230 µs
    of CPU and the GIL, against 28 µs for Session::MakeCallable): executions must not reach it.
    Strings go through the C++ callable too."""
    x = keras.Input((2,), name="x")
    words = keras.Input((), dtype="string", name="words")
    model = keras.Model(
        {"x": x, "words": words},
        {"y": keras.layers.Dense(1, name="dense")(x), "same": keras.layers.Identity()(words)},
    )
    runner = SignatureRunner.load(export_model(model, tmp_path, "m").path)

    def no_python_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("an execution went through the Python Session.run")

    monkeypatch.setattr(tf.compat.v1.Session, "run", no_python_run)
    try:
        inputs = {
            "x": np.ones((3, 2), np.float32),
            "words": np.array([b"a", b"\xff", b""], dtype=object),
        }
        outputs = runner.call(inputs)
        np.testing.assert_allclose(outputs["y"], np.asarray(model(inputs)["y"]), rtol=1e-5)
        assert outputs["same"].tolist() == [b"a", b"\xff", b""]
    finally:
        runner.close()


def test_outputs_without_a_row_per_input_row_fail_internal(tmp_path: Path) -> None:
    export_model(batch_sum_model(), tmp_path, "summed")
    export_model(batch_sum_model(), tmp_path, "refused")
    # unbatched, it warms up at 1 row (where 1 row comes out) and fails on a real batch
    (tmp_path / "summed" / "config.yaml").write_text("batching: {enabled: false}\n")
    server = RunningServer(tmp_path)
    try:
        (refused,) = server.server.repository.versions("refused")
        assert refused.state.value == "FAILED"  # batched, its warm-up at 2 rows fails
        assert "returned output 'total' with shape [1, 2] for a batch of 2 rows" in refused.reason
        with pytest.raises(grpc.RpcError) as error:
            server.stub.ModelInfer(
                infer_request("summed", {"x": np.ones((3, 2), np.float32)}), timeout=30
            )
        assert error.value.code() is grpc.StatusCode.INTERNAL
        assert (
            error.value.details()
            == "model 'summed' returned output 'total' with shape [1, 2] for a batch of 3 rows"
        )
    finally:
        server.close()


def test_runner_and_loop_threads_are_named(tmp_path: Path) -> None:
    x = keras.Input((2,), name="x")
    export_model(keras.Model({"x": x}, {"y": keras.layers.Dense(1)(x)}), tmp_path, "named")
    server = RunningServer(tmp_path)
    try:
        names = {task.read_text().strip() for task in Path("/proc/self/task").glob("*/comm")}
        assert {"tf-run:named", "plexserve-loop"} <= names
    finally:
        server.close()
