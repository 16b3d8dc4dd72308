"""The `plexserve` command line (also `python -m plexserve`): parses flags and calls the rest.

Subcommands: builders, build, inspect, serve, infer, bench. `main(argv)` returns the exit status,
so tests call it in-process (one TensorFlow import for the whole suite). `infer` and `bench` never
import TensorFlow: they are clients.

Every option's help ends with its default (HelpFormatter adds it unless the text already says
it); the global options (--log-level, --log-format) are accepted before and after the subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from plexserve.logs import configure_logging

if TYPE_CHECKING:  # the serving modules import TensorFlow: `bench` must not load them
    from plexserve.repository import SingleModel
    from plexserve.server import ServerSettings

DEFAULT_REPOSITORY = "model_repository"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
CLIENT_COMMANDS = ("infer", "bench")  # clients: they never import TensorFlow
log = logging.getLogger("plexserve")


def package_version() -> str:
    try:
        return importlib.metadata.version("plexserve")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


class HelpFormatter(argparse.HelpFormatter):
    """Ends every option's help with its default, unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if "default" in text:
            return text
        default = action.default
        if default is None or default == []:
            shown = "none"
        elif default is False or default is True:
            shown = "on" if default else "off"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--log-level and --log-format, on the top parser (with their defaults) and on every
    subcommand (defaults suppressed, so that a flag given before the subcommand is kept)."""
    group: argparse._ActionsContainer = (
        parser if top else parser.add_argument_group("global options (also before the subcommand)")
    )
    group.add_argument(
        "--log-level",
        type=_log_level,
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        default="INFO" if top else argparse.SUPPRESS,
        help="log records of this level and above (any case) (default: INFO)",
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text" if top else argparse.SUPPRESS,
        help="text, or json: one JSON object per line (default: text)",
    )


def _repository_default() -> Path:
    return Path(os.environ.get("PLEXSERVE_MODEL_REPOSITORY", DEFAULT_REPOSITORY))


def _registry(modules: Sequence[str]):  # type: ignore[no-untyped-def]
    """The builder registry with built-ins, entry-point builders and --builders-module modules."""
    from plexserve.models import default_registry

    default_registry.load_entry_points()
    for module in modules:
        default_registry.load_module(module)
    return default_registry


def _non_negative_int(text: str) -> int:
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number 0 or more")


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
    from plexserve.export import export_model
    from plexserve.signature import format_signature

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
    from plexserve.export import load_signature
    from plexserve.signature import format_signature

    print(f"{args.path} signature serving_default:")
    print(format_signature(load_signature(args.path)))
    return 0


def single_model(args: argparse.Namespace) -> SingleModel | None:
    """`--model-name NAME --model-dir DIR`: the one model to serve (KServe), or None."""
    from plexserve.repository import SingleModel, check_model_name
    from plexserve.settings import SettingsError

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
    from plexserve.server import ServerSettings
    from plexserve.settings import ServerConfig
    from plexserve.tls import tls_files
    from plexserve.tracing import tracing_settings

    tls = tls_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    single = single_model(args)
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
        lame_duck=args.lame_duck,
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
        tracing=tracing_settings(
            os.environ,
            args.otel_endpoint,
            args.otel_service_name,
            args.otel_sampler,
            args.otel_sampler_arg,
        ),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from plexserve.loop import ServingEventLoop
    from plexserve.server import serve

    settings = server_settings(args)
    if args.workers:  # (this process imports no TensorFlow: the model process does)
        from plexserve.supervisor import Supervisor

        supervisor = Supervisor(
            settings, args.workers, args.log_level, args.log_format, tuple(args.builders_module)
        )
        return asyncio.run(supervisor.run())
    _registry(args.builders_module)
    with asyncio.Runner(loop_factory=ServingEventLoop) as runner:
        runner.run(serve(settings))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    """Exit 0 answered, 1 the server refused or was not reached, 2 a bad command line."""
    from plexserve.infer_client import ServerError, UsageError, run_infer

    try:
        run_infer(
            args.model,
            args.inputs,
            version=args.version,
            url=args.url,
            protocol=args.protocol,
            timeout=args.timeout,
        )
    except UsageError as error:
        print(f"plexserve infer: {error}", file=sys.stderr)
        return 2
    except ServerError as error:
        print(f"plexserve infer: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from plexserve.bench.command import run_command

    return run_command(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="plexserve",
        description="Serve Keras SavedModels over gRPC and REST: the Open Inference Protocol v2 "
        "and TF Serving's API, with dynamic batching.",
        formatter_class=HelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _global_options(top, top=True)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        _global_options(sub, top=False)
        return sub

    def builders_module(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--builders-module",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE so its @register_builder functions are available (repeatable)",
        )

    def repo(sub: argparse._ActionsContainer) -> None:
        sub.add_argument(
            "--repo",
            type=Path,
            default=_repository_default(),
            metavar="DIR",
            help="model repository (env PLEXSERVE_MODEL_REPOSITORY; default "
            f"./{DEFAULT_REPOSITORY})",
        )

    sub = command("builders", "list builders, their parameters and defaults")
    builders_module(sub)
    sub.set_defaults(run=cmd_builders)

    sub = command("build", "build models and export them as SavedModel versions")
    sub.add_argument(
        "builder",
        nargs="+",
        metavar="BUILDER",
        help="builder name (`plexserve builders` lists them); several build one model each",
    )
    sub.add_argument("--name", help="model name (default: the builder's name)")
    sub.add_argument("--version", type=int, help="version number (default: the next free one)")
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder parameter, parsed by its type annotation (repeatable; default: the "
        "builder's own defaults)",
    )
    repo(sub)
    builders_module(sub)
    sub.set_defaults(run=cmd_build)

    sub = command("inspect", "print the serving signature of REPO/NAME/VERSION")
    sub.add_argument("path", type=Path, help="a version folder, REPO/NAME/VERSION")
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
        "in place, so it may be read-only (default: none: serve --repo)",
    )
    sub.add_argument(
        "--model-name",
        metavar="NAME",
        help="with --model-dir: the model's name (KServe: {{.Name}}; default: none)",
    )
    builders_module(sub)
    sub.add_argument("--host", default="0.0.0.0", help="address both ports listen on")
    sub.add_argument(
        "--grpc-port",
        type=int,
        default=8500,
        metavar="PORT",
        help="gRPC: the Open Inference Protocol v2, TF Serving's API, health, reflection",
    )
    sub.add_argument(
        "--workers",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="N front-end processes serve the gRPC port (SO_REUSEPORT) in front of one model "
        "process that holds the models and the HTTP port; 0: one process does everything",
    )
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
        "--lame-duck",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after SIGTERM or SIGINT: seconds the server still answers new requests while its "
        "health and readiness say NOT_SERVING, so that Kubernetes and health-checking clients "
        "move away before it sends GOAWAY and starts the --grace-period (default 5.0; 0: GOAWAY "
        "at once); the pod's terminationGracePeriodSeconds must exceed preStop + lame duck + "
        "grace period",
    )
    sub.add_argument(
        "--model-control",
        choices=["none", "poll", "explicit"],
        default="none",
        help="none: load every model at start; poll: also rescan every --poll-interval seconds "
        "and reconcile; explicit: load and unload through RepositoryModelLoad/Unload",
    )
    sub.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --model-control poll: seconds between two scans of the repository",
    )
    sub.add_argument(
        "--http-port",
        type=int,
        default=8501,
        metavar="PORT",
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
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="server config (YAML): model_defaults, models (default: none: each model's own "
        "config.yaml)",
    )
    group = sub.add_argument_group("batching (every model; overrides config.yaml and --config)")
    group.add_argument(
        "--batching",
        choices=["on", "off"],
        help="dynamic batching (default: the model's config.yaml, else on)",
    )
    group.add_argument(
        "--max-batch-size",
        type=int,
        metavar="ROWS",
        help="rows per execution; larger requests are split (default: the model's config.yaml, "
        "else 32)",
    )
    group.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="US",
        help="optional wait for fuller batches (default: the model's config.yaml, else 0: "
        "dispatch at once)",
    )
    group.add_argument(
        "--max-queue-size",
        type=int,
        metavar="ROWS",
        help="rows queued before 'queue full' (default: the model's config.yaml, else 32 x "
        "max_batch_size)",
    )
    group.add_argument(
        "--instances",
        type=int,
        metavar="N",
        help="concurrent executions per model version (default: the model's config.yaml, else 1)",
    )
    group = sub.add_argument_group(
        "TLS (the gRPC port only: the HTTP port stays plain, for probes and scrapes)"
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="PEM certificate (chain) of the server (default: none: plaintext)",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        metavar="FILE",
        help="PEM private key of --tls-cert (default: none)",
    )
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA certificates: clients must present a certificate one of them signed "
        "(mutual TLS; default: none: no client certificate asked for)",
    )
    group = sub.add_argument_group(
        "tracing (OpenTelemetry, off by default; each flag wins over its standard OTEL_* "
        "variable; docs/tracing.md)"
    )
    group.add_argument(
        "--otel-endpoint",
        metavar="URL",
        help="turn tracing on: send spans over OTLP/gRPC to URL, e.g. "
        "http://otel-collector:4317 (env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT; default: none, tracing off; OTEL_SDK_DISABLED=true "
        "keeps it off)",
    )
    group.add_argument(
        "--otel-service-name",
        metavar="NAME",
        help="plexserve.name of the spans (env OTEL_SERVICE_NAME; default plexserve)",
    )
    group.add_argument(
        "--otel-sampler",
        metavar="SAMPLER",
        help="which requests are traced: always_on, always_off, traceidratio, "
        "parentbased_always_on, parentbased_always_off, parentbased_traceidratio (env "
        "OTEL_TRACES_SAMPLER; default parentbased_always_on: every request, unless the "
        "client's traceparent says its trace is not sampled)",
    )
    group.add_argument(
        "--otel-sampler-arg",
        metavar="RATIO",
        help="the fraction of traces the *traceidratio samplers keep, 0..1 (env "
        "OTEL_TRACES_SAMPLER_ARG; default 1.0)",
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
        metavar="N",
        help="threads inside one TensorFlow op (default: the CPUs this process may use -- its "
        "cgroup CPU quota, e.g. a pod's CPU limit, and affinity mask, not the node's cores -- "
        "rounded up, minus one left to the gRPC front end; 0: TensorFlow's default, every core "
        "of the node)",
    )
    group.add_argument(
        "--tf-inter-op-threads",
        type=int,
        default=1,
        metavar="N",
        help="ops run concurrently (default: 1; 0: TensorFlow's default)",
    )
    sub.set_defaults(run=cmd_serve)

    from plexserve.bench.options import add_arguments as add_bench_arguments

    sub = command("infer", "send one inference request to a running server and print the outputs")
    sub.add_argument("model", metavar="MODEL", help="the model's name")
    sub.add_argument(
        "--version",
        default="",
        metavar="V",
        help="model version (default: the newest available)",
    )
    sub.add_argument(
        "--input",
        dest="inputs",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="an input: NAME=FILE.npy, NAME=FILE.json or NAME=JSON (e.g. 'x=[[1, 2]]'); a value "
        "one dimension short of the model's input is one row; typed by the model's metadata "
        "(repeatable; default: none)",
    )
    sub.add_argument(
        "--url",
        metavar="HOST:PORT",
        help="the server (default: localhost:8500 with grpc, localhost:8501 with rest)",
    )
    sub.add_argument(
        "--protocol",
        choices=["grpc", "rest"],
        default="grpc",
        help="the Open Inference Protocol v2 over gRPC, or over REST (JSON)",
    )
    sub.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline of each call",
    )
    sub.set_defaults(run=cmd_infer)

    sub = command("bench", "load-test a running server (Open Inference Protocol v2)")
    add_bench_arguments(sub)
    sub.set_defaults(run=cmd_bench)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command in CLIENT_COMMANDS:  # before the imports below: they load TensorFlow
        return int(args.run(args))
    if args.command == "serve" and args.workers:
        from plexserve.settings import SettingsError

        try:
            return int(args.run(args))
        except SettingsError as error:
            print(f"plexserve serve: {error}", file=sys.stderr)
            return 2
    from plexserve.errors import ServingError
    from plexserve.export import ExportError
    from plexserve.models.registry import BuilderError
    from plexserve.settings import SettingsError

    try:
        return int(args.run(args))
    except (BuilderError, ExportError, ServingError, SettingsError) as error:
        print(f"plexserve {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
