"""The plexserve command line, called in-process (one TensorFlow import for the suite)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from plexserve.cli import main


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
        from plexserve.models import register_builder

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


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"plexserve {importlib.metadata.version('plexserve')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "--log-format", "json", "builders"],
        ["builders", "--log-level", "debug", "--log-format", "json"],
        ["--log-level", "WARNING", "builders", "--log-level", "DEBUG", "--log-format", "json"],
    ],
)
def test_global_options_are_accepted_before_and_after_the_subcommand(argv: list[str]) -> None:
    """After the subcommand wins when both are given; neither is reset by the subcommand."""
    from plexserve.cli import parser

    args = parser().parse_args(argv)
    assert (args.command, args.log_level, args.log_format) == ("builders", "DEBUG", "json")


def test_defaults_of_the_global_options_survive_the_subcommand() -> None:
    from plexserve.cli import parser

    args = parser().parse_args(["serve"])
    assert (args.log_level, args.log_format) == ("INFO", "text")


@pytest.mark.parametrize(
    "argv", [["--log-level", "foo", "builders"], ["builders", "--log-level", "foo"]]
)
def test_an_unknown_log_level_is_a_usage_error_naming_the_choices(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: plexserve")
    assert "argument --log-level: 'foo' is not one of DEBUG, INFO, WARNING, ERROR" in err
    assert "Traceback" not in err


def test_every_option_of_every_subcommand_has_help_stating_its_default() -> None:
    """What `plexserve COMMAND --help` shows for each option: a description, then its default."""
    from plexserve.cli import HelpFormatter, parser

    top = parser()
    subcommands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subcommands) == {"builders", "build", "inspect", "serve", "infer", "bench"}
    checked = 0
    for name, sub in [("plexserve", top), *subcommands.items()]:
        formatter = HelpFormatter(name)
        for action in sub._actions:
            skipped = argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
            if isinstance(action, skipped):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help text"
            if not action.option_strings:
                continue  # a positional argument has no default
            shown = formatter._expand_help(action)
            assert "default" in shown, f"{where}: {shown!r} does not state its default"
            value = action.default
            named = isinstance(value, str | int | float | Path) and not isinstance(value, bool)
            if named and value not in ("", argparse.SUPPRESS):
                # written by hand or added by the formatter: either way it names the value
                assert str(value) in shown, f"{where}: {shown!r} does not say {value}"
            checked += 1
    assert checked > 50
