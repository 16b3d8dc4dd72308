"""Tracing settings and request ids: the part of tracing that every process loads.

OpenTelemetry itself lives in service/otel.py and is imported by `start_tracing` only when
tracing is on, so that a server without tracing starts, and uses memory, as it did before.

Tracing is on when an OTLP endpoint is given (`--otel-endpoint`, or the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT) and OTEL_SDK_DISABLED is not
true. `tracing_settings` reads the flags first and the OTEL_* variables second; the server itself
reads no environment (its settings say everything), so tests are not steered by the shell.

A request id is what the client named its request: the Open Inference Protocol's `id`, else an
`x-request-id` header or gRPC metadata entry. It is appended to the error messages the client
gets and written in access-log lines, so a complaint can be matched with the server's logs.
Pure functions and data: no I/O, no asyncio; used from the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plexserve.settings import SettingsError

if TYPE_CHECKING:
    from plexserve.otel import Tracing

log = logging.getLogger(__name__)

REQUEST_ID = "x-request-id"  # gRPC metadata keys are lower case; HTTP headers match any case
DEFAULT_SERVICE_NAME = "plexserve"
DEFAULT_SAMPLER = "parentbased_always_on"  # the OpenTelemetry specification's default
# The samplers of the OpenTelemetry specification that take no plug-in; *traceidratio reads
# the sampler argument, a probability.
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go and which requests are traced. No endpoint: tracing off."""

    endpoint: str | None = None  # OTLP/gRPC receiver, e.g. http://otel-collector:4317
    service_name: str = DEFAULT_SERVICE_NAME
    sampler: str = DEFAULT_SAMPLER
    sampler_arg: float | None = None  # probability of the *traceidratio samplers (default 1)

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    def describe(self) -> str:
        arg = "" if self.sampler_arg is None else f" {self.sampler_arg:g}"
        return (
            f"OTLP/gRPC to {self.endpoint}, service.name {self.service_name}, "
            f"sampler {self.sampler}{arg}"
        )


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_settings(
    env: Mapping[str, str],
    endpoint: str | None = None,
    service_name: str | None = None,
    sampler: str | None = None,
    sampler_arg: str | None = None,
) -> TracingSettings:
    """The tracing settings from flags (the arguments; None = not given), then the standard
    OTEL_* variables in `env`, then the defaults. Raises SettingsError naming the bad value."""
    if _true(env.get("OTEL_SDK_DISABLED")):
        if endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            log.info("tracing off: OTEL_SDK_DISABLED=true")
        return TracingSettings()
    endpoint = (
        endpoint
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )
    if endpoint:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(name, "").strip()
            if protocol:
                if protocol != "grpc":
                    raise SettingsError(
                        f"{name}={protocol}: plexserve exports traces over OTLP/gRPC only "
                        "(a collector's port 4317): unset it or set it to grpc"
                    )
                break  # the traces-specific variable wins
    sampler = (sampler or env.get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER).strip().lower()
    if sampler not in SAMPLERS:
        raise SettingsError(
            f"tracing sampler {sampler!r} (--otel-sampler or OTEL_TRACES_SAMPLER) is not one "
            f"of {', '.join(SAMPLERS)}"
        )
    text = sampler_arg if sampler_arg is not None else env.get("OTEL_TRACES_SAMPLER_ARG")
    ratio: float | None = None
    if text not in (None, "") and sampler.endswith("traceidratio"):
        try:
            ratio = float(text)  # type: ignore[arg-type]
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise SettingsError(
                f"tracing sampler argument {text!r} (--otel-sampler-arg or "
                "OTEL_TRACES_SAMPLER_ARG) must be a probability between 0 and 1"
            )
    name = (service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME).strip()
    return TracingSettings(endpoint, name or DEFAULT_SERVICE_NAME, sampler, ratio)


def start_tracing(settings: TracingSettings, service_version: str) -> Tracing | None:
    """The server's Tracing (OpenTelemetry imported now), or None when tracing is off."""
    if not settings.enabled:
        return None
    from plexserve.otel import Tracing

    tracing = Tracing(settings, service_version)
    log.info("tracing: %s", settings.describe())
    return tracing


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str:
    """One gRPC metadata entry as text ("" when absent)."""
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def given(request_id: str) -> Callable[[], str]:
    """A request id already read, in the form the data plane takes (read when needed)."""
    return lambda: request_id


def with_request_id(message: str, request_id: str) -> str:
    """The message a client gets, naming the request id it sent (when it sent one)."""
    if not request_id:
        return message
    if len(request_id) > 64:  # a client's id, of any length: messages stay short
        request_id = request_id[:64] + "..."
    return f"{message} (request id {request_id})"
