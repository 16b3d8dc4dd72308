"""The plexserve command line, called in-process (one TensorFlow import for the suite)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.cli import main


def test_builders_lists_every_builtin_with_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["builders"]) == 0
    out = capsys.readouterr().out
    for name in [
        "mlp",
        "multi_input",
        "inception",
        "residual",
        "shared_encoder",
        "multi_output",
        "text_classifier",
        "multi_task",
        "vision_tabular",
    ]:
        assert f"\n{name}: " in f"\n{out}"
    assert "--set image_shape: tuple[int, int, int] = (32, 32, 3)" in out


def test_build_prints_the_signature_and_inspect_reads_it_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "build",
                "mlp",
                "--repo",
                str(tmp_path),
                "--name",
                "small",
                "--set",
                "input_dim=4",
                "--set",
                "classes=3",
            ]
        )
        == 0
    )
    built = capsys.readouterr().out
    assert f"-> {tmp_path / 'small' / '1'} (version 1)" in built
    assert "features" in built and "FP32" in built and "[-1, 4]" in built
    assert "probabilities" in built and "[-1, 3]" in built
    assert main(["inspect", str(tmp_path / "small" / "1")]) == 0
    assert built.split("signature serving_default:\n")[1] in capsys.readouterr().out


def test_build_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "nope", "--repo", str(tmp_path)]) == 2
    assert "unknown builder 'nope'" in capsys.readouterr().err
    assert main(["build", "mlp", "--repo", str(tmp_path), "--set", "input_dim=four"]) == 2
    assert "input_dim" in capsys.readouterr().err
    assert main(["build", "mlp", "--repo", str(tmp_path), "--set", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


def test_builders_module_registers_a_third_party_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "acme_builders.py").write_text(
        textwrap.dedent('''
        import keras
        from models import register_builder

        @register_builder("acme_linear")
        def acme_linear(width: int = 3) -> keras.Model:
            """A third-party linear model."""
            x = keras.Input((width,), name="x")
            return keras.Model({"x": x}, {"y": keras.layers.Dense(1)(x)})
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    repo = tmp_path / "repo"
    assert (
        main(
            [
                "build",
                "acme_linear",
                "--builders-module",
                "acme_builders",
                "--repo",
                str(repo),
                "--set",
                "width=2",
            ]
        )
        == 0
    )
    assert "[-1, 2]" in capsys.readouterr().out
    assert (repo / "acme_linear" / "1" / "saved_model.pb").is_file()


def test_serve_refuses_a_bad_server_config_naming_field_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("model_defaults:\n  batching: {max_queue_delay_us: soon}\n")
    assert main(["serve", "--repo", str(tmp_path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "server.yaml model_defaults: batching.max_queue_delay_us: 'soon'" in err


def test_serve_refuses_a_gpu_this_machine_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No machine here has a GPU: asking for one is refused at start, naming the flag."""
    assert (
        main(
            [
                "serve",
                "--repo",
                str(tmp_path),
                "--device",
                "gpu:3",
                "--grpc-port",
                "0",
                "--http-port",
                "0",
            ]
        )
        == 2
    )
    assert "--device gpu:3: this machine has 0 GPU(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--device", "tpu"])
