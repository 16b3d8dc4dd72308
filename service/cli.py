"""The `plexserve` command line (also `python -m service`): parses flags and calls the rest.

Subcommands: builders, build, inspect, serve. `main(argv)` returns the exit status, so tests call
it in-process (one TensorFlow import for the whole suite).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.logs import configure_logging

if TYPE_CHECKING:  # the serving modules import TensorFlow: `bench` must not load them
    from service.repository import SingleModel
    from service.server import ServerSettings

DEFAULT_REPOSITORY = "model_repository"
log = logging.getLogger("plexserve")


def _repository_default() -> Path:
    return Path(os.environ.get("PLEXSERVE_MODEL_REPOSITORY", DEFAULT_REPOSITORY))


def _registry(modules: Sequence[str]):  # type: ignore[no-untyped-def]
    """The builder registry with built-ins, entry-point builders and --builders-module modules."""
    from models import default_registry

    default_registry.load_entry_points()
    for module in modules:
        default_registry.load_module(module)
    return default_registry


def _device(text: str) -> str:
    if text in ("auto", "cpu") or (text.startswith("gpu:") and text[4:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu or gpu:N")


def cmd_builders(args: argparse.Namespace) -> int:
    for builder in _registry(args.builders_module):
        print(f"{builder.name}: {builder.summary}")
        for parameter in builder.parameters:
            print(f"    --set {parameter.describe()}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from service.export import export_model
    from service.signature import format_signature

    if len(args.builder) > 1 and (args.name or args.version is not None or args.set):
        raise SystemExit("--name, --version and --set apply to one builder: give one BUILDER")
    registry = _registry(args.builders_module)
    for builder_name in args.builder:
        builder = registry.get(builder_name)
        model = builder.build(**builder.parse_overrides(args.set))
        exported = export_model(model, args.repo, args.name or builder.name, args.version)
        print(f"built {builder.name} -> {exported.path} (version {exported.version})")
        print("signature serving_default:")
        print(format_signature(exported.signature))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from service.export import load_signature
    from service.signature import format_signature

    print(f"{args.path} signature serving_default:")
    print(format_signature(load_signature(args.path)))
    return 0


def single_model(args: argparse.Namespace) -> SingleModel | None:
    """`--model-name NAME --model-dir DIR`: the one model to serve (KServe), or None."""
    from service.repository import SingleModel, check_model_name
    from service.settings import SettingsError

    if args.model_name is None and args.model_dir is None:
        return None
    if args.model_name is None or args.model_dir is None:
        raise SettingsError(
            "--model-name and --model-dir go together: serve the model in DIR as NAME"
        )
    directory = args.model_dir
    if not directory.is_dir():
        raise SettingsError(f"--model-dir {directory}: no such directory")
    model = SingleModel(check_model_name(args.model_name), directory)
    if not model.versions() and args.model_control != "poll":
        raise SettingsError(
            f"--model-dir {directory} holds no SavedModel: expected {directory}/saved_model.pb "
            f"(served as version 1) or version folders {directory}/N/saved_model.pb "
            "(--model-control poll waits for them)"
        )
    return model


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """The ServerSettings `plexserve serve` runs with, from its parsed flags."""
    from service.server import ServerSettings
    from service.settings import ServerConfig
    from service.tls import tls_files

    tls = tls_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    single = single_model(args)
    _registry(args.builders_module)
    batching = {
        key: value
        for key, value in [
            ("enabled", None if args.batching is None else args.batching == "on"),
            ("max_batch_size", args.max_batch_size),
            ("max_queue_delay_us", args.max_queue_delay_us),
            ("max_queue_size", args.max_queue_size),
            ("instances", args.instances),
        ]
        if value is not None
    }
    return ServerSettings(
        repository=single.directory if single else args.repo,
        single_model=single,
        config=ServerConfig.load(args.config),
        model_flags={"batching": batching} if batching else {},
        host=args.host,
        grpc_port=args.grpc_port,
        grace_period=args.grace_period,
        device=args.device,
        intra_op_threads=args.tf_intra_op_threads,
        inter_op_threads=args.tf_inter_op_threads,
        http_port=args.http_port,
        http_read_timeout=args.http_read_timeout,
        http_max_connections=args.http_max_connections,
        max_connection_age=args.max_connection_age,
        max_connection_idle=args.max_connection_idle,
        ready_when=args.ready_when,
        access_log_sample=args.access_log_sample,
        model_control=args.model_control,
        poll_interval=args.poll_interval,
        load_models=tuple(args.load_model),
        tls=tls,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from service.loop import ServingEventLoop
    from service.server import serve

    with asyncio.Runner(loop_factory=ServingEventLoop) as runner:
        runner.run(serve(server_settings(args)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from service.bench.command import run_command

    return run_command(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="plexserve", description="Serve Keras models over gRPC.")
    top.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    top.add_argument("--log-format", choices=["text", "json"], default="text")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        return sub

    def builders_module(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--builders-module",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE so its @register_builder functions are available",
        )

    def repo(sub: argparse._ActionsContainer) -> None:
        sub.add_argument(
            "--repo",
            type=Path,
            default=_repository_default(),
            help="model repository (env PLEXSERVE_MODEL_REPOSITORY; default "
            f"./{DEFAULT_REPOSITORY})",
        )

    sub = command("builders", "list builders, their parameters and defaults")
    builders_module(sub)
    sub.set_defaults(run=cmd_builders)

    sub = command("build", "build models and export them as SavedModel versions")
    sub.add_argument("builder", nargs="+", metavar="BUILDER")
    sub.add_argument("--name", help="model name (default: the builder's name)")
    sub.add_argument("--version", type=int, help="version number (default: the next free one)")
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder parameter, parsed by its type annotation",
    )
    repo(sub)
    builders_module(sub)
    sub.set_defaults(run=cmd_build)

    sub = command("inspect", "print the serving signature of REPO/NAME/VERSION")
    sub.add_argument("path", type=Path)
    sub.set_defaults(run=cmd_inspect)

    sub = command("serve", "serve every model of the repository, or one model's folder")
    where = sub.add_mutually_exclusive_group()
    repo(where)
    where.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="serve this one folder, as --model-name, instead of a repository: DIR holds a "
        "SavedModel (version 1) or version folders N/ (KServe: --model-dir=/mnt/models); read "
        "in place, so it may be read-only",
    )
    sub.add_argument(
        "--model-name",
        metavar="NAME",
        help="with --model-dir: the model's name (KServe: {{.Name}})",
    )
    builders_module(sub)
    sub.add_argument("--host", default="0.0.0.0")
    sub.add_argument("--grpc-port", type=int, default=8500)
    sub.add_argument(
        "--grace-period",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="after SIGTERM or SIGINT: seconds the requests already queued or running get to "
        "finish (new ones are refused UNAVAILABLE), then exit 0; keep it under the pod's "
        "terminationGracePeriodSeconds minus its preStop. A second signal exits at once "
        "(status 128 + the signal's number: 143 for SIGTERM)",
    )
    sub.add_argument(
        "--model-control",
        choices=["none", "poll", "explicit"],
        default="none",
        help="none: load every model at start; poll: also rescan every --poll-interval seconds "
        "and reconcile; explicit: load and unload through RepositoryModelLoad/Unload",
    )
    sub.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS")
    sub.add_argument(
        "--http-port",
        type=int,
        default=8501,
        help="REST (the Open Inference Protocol's /v2 and TF Serving's /v1), /metrics, health",
    )
    sub.add_argument(
        "--http-read-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an HTTP request's head must arrive within this, and its body may not pause "
        "longer (also how long an idle keep-alive connection stays open)",
    )
    sub.add_argument(
        "--http-max-connections",
        type=int,
        default=None,
        metavar="N",
        help="open HTTP connections at most; beyond, new ones are answered 503 and closed "
        "(default 1024, or half the open-file limit when that is lower)",
    )
    sub.add_argument(
        "--max-connection-age",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close client connections after this long (gracefully), so round-robin clients "
        "find new replicas; 0: never",
    )
    sub.add_argument(
        "--max-connection-idle",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="close a gRPC connection that has had no call open for this long (gracefully: the "
        "client reconnects on its next call), so idle clients do not hold file descriptors; "
        "0: never",
    )
    sub.add_argument(
        "--ready-when",
        choices=["all", "any"],
        default="all",
        help="ready when every model that should serve is AVAILABLE, or at least one",
    )
    sub.add_argument(
        "--access-log-sample",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="log this fraction of requests (0.01 = 1%%) on logger plexserve.access",
    )
    sub.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: load NAME at start (repeatable)",
    )
    sub.add_argument("--config", type=Path, help="server config (YAML): model_defaults, models")
    group = sub.add_argument_group("batching (every model; overrides config.yaml and --config)")
    group.add_argument("--batching", choices=["on", "off"])
    group.add_argument("--max-batch-size", type=int, metavar="ROWS")
    group.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="US",
        help="optional wait for fuller batches (default 0: dispatch at once)",
    )
    group.add_argument(
        "--max-queue-size", type=int, metavar="ROWS", help="rows queued before 'queue full'"
    )
    group.add_argument("--instances", type=int, help="concurrent executions per model version")
    group = sub.add_argument_group(
        "TLS (the gRPC port only: the HTTP port stays plain, for probes and scrapes)"
    )
    group.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="PEM certificate (chain) of the server"
    )
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA certificates: clients must present a certificate one of them signed "
        "(mutual TLS)",
    )
    group = sub.add_argument_group("TensorFlow")
    group.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto (TensorFlow's choice: the first GPU if any), cpu, or gpu:N",
    )
    group.add_argument(
        "--tf-intra-op-threads",
        type=int,
        default=None,
        help="threads inside one TensorFlow op (default: the CPUs this process may use -- its "
        "cgroup CPU quota, e.g. a pod's CPU limit, and affinity mask, not the node's cores -- "
        "rounded up, minus one left to the gRPC front end; 0: TensorFlow's default, every core "
        "of the node)",
    )
    group.add_argument(
        "--tf-inter-op-threads",
        type=int,
        default=1,
        help="ops run concurrently (default 1; 0: TensorFlow's default)",
    )
    sub.set_defaults(run=cmd_serve)

    from service.bench.options import add_arguments as add_bench_arguments

    sub = command("bench", "load-test a running server (Open Inference Protocol v2)")
    add_bench_arguments(sub)
    sub.set_defaults(run=cmd_bench)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "bench":  # before the imports below: they load TensorFlow, bench must not
        return int(args.run(args))
    from models.registry import BuilderError
    from service.errors import ServingError
    from service.export import ExportError
    from service.settings import SettingsError

    try:
        return int(args.run(args))
    except (BuilderError, ExportError, ServingError, SettingsError) as error:
        print(f"plexserve {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
