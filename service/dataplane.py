"""DataPlane: the one core every protocol front end calls.

Resolve the model version, decode the request (the front end's codec, called back so that a
request refused while decoding is counted like any other), validate the inputs against the
signature, run, check and select the outputs, and count the outcome (Prometheus metrics and the
version's own statistics). Knows no protobuf and no front end: tensors are
`dict[str, numpy.ndarray]` keyed by the signature's names. Used from the event loop.

Tracing (service/otel.py): a front end passes the RequestTrace of a sampled request, and the
data plane times its decoding and hands it to the model's batcher or runner; without one,
nothing of tracing runs. `request_id` is read only when an access-log line is written.

Shutdown: after `refuse_new_requests()`, every new request is answered UNAVAILABLE (ShuttingDown)
and `drain()` waits for the ones already accepted (queued in a batcher or running) to be answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc

from plexserve.errors import InvalidInput, ServingError, ShuttingDown, SignatureNotFound
from plexserve.metrics import UNKNOWN_MODEL
from plexserve.repository import ModelRepository, ModelVersion
from plexserve.signature import SERVING_SIGNATURE, Tensors
from plexserve.stats import InflightCounter

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace, Tracing

access_log = logging.getLogger("plexserve.access")
OK = grpc.StatusCode.OK

# The front end's decoder: its request -> (inputs by name, requested output names; empty = all)
Decode = Callable[[], tuple[Tensors, Sequence[str]]]


class UnresolvedObserver(Protocol):
    """Counts requests answered before a version was resolved: the Prometheus metrics in the
    process that has them, a worker's counters shipped to the model process otherwise."""

    def observe_unresolved(
        self, model: str, version: str, protocol: str, code: grpc.StatusCode, seconds: float
    ) -> None: ...


@dataclass(frozen=True)
class InferResult:
    model: ModelVersion
    outputs: Tensors


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        metrics: UnresolvedObserver | None = None,
        access_log_sample: float = 0.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.access_log_sample = access_log_sample  # fraction of requests logged, 0 = none
        self.tracing = tracing  # None: tracing off
        self.accepting = True
        self._inflight = InflightCounter()  # accepted requests not answered yet

    def refuse_new_requests(self) -> None:
        """From now on `infer` answers UNAVAILABLE at once; requests already accepted go on."""
        self.accepting = False

    @property
    def inflight(self) -> int:
        return self._inflight.count

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the accepted requests to be answered; return how many
        are still running (0: all answered)."""
        return await self._inflight.wait_idle(timeout)

    def resolve(self, name: str, version: str = "", label: str = "") -> ModelVersion:
        """The version that serves `name` at `version`, or at the version `label` points to
        (`version_labels` in the model's settings); neither = the newest AVAILABLE version."""
        if label:
            return self.repository.resolve_label(name, label)
        return self.repository.resolve(name, version)

    async def infer(
        self,
        name: str,
        version: str,
        decode: Decode,
        timeout: float | None = None,
        *,
        protocol: str,
        label: str = "",
        signature_name: str = "",
        request_id: Callable[[], str] | None = None,
        trace: RequestTrace | None = None,
    ) -> InferResult:
        """Answer one request for (name, version or label); neither = the newest available.

        `decode` is the front end's decoder, called once the model is known. `timeout`: seconds
        the caller still waits (its gRPC deadline); a request still queued when it passes is
        answered DEADLINE_EXCEEDED without being computed. `signature_name`: "" or the one
        signature every version serves (`serving_default`). `protocol` ("v2", "tfserving")
        labels the request metrics. `request_id`: the client's name for the request, read when
        an access-log line is written. `trace`: the request's trace when it is sampled.
        """
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        model: ModelVersion | None = None
        rows, code = 0, OK
        self._inflight.enter()
        try:
            if not self.accepting:
                raise ShuttingDown(
                    "the server is shutting down and takes no new requests: send them to "
                    "another replica"
                )
            repository = self.repository
            model = (
                repository.resolve(name, version)
                if not label
                else repository.resolve_label(name, label)
            )
            if signature_name and signature_name != SERVING_SIGNATURE:
                raise SignatureNotFound(
                    f'Serving signature key "{signature_name}" not found. Model '
                    f"'{model.name}' version {model.version} serves \"{SERVING_SIGNATURE}\" only"
                )
            if trace is None:
                inputs, requested = decode()
                signature = model.signature
                rows = signature.validate(inputs)
            else:
                inputs, requested, rows = trace.decode(model, decode)
                signature = model.signature
            if rows > model.settings.max_request_rows:
                raise InvalidInput(
                    f"the request has {rows} rows; model '{model.name}' takes at most "
                    f"{model.settings.max_request_rows} per request (its max_request_rows): "
                    "send them in several requests"
                )
            if requested:
                signature.check_outputs(requested)
            if rows == 0:  # TensorFlow is never called with 0 rows (conv models raise on it)
                names = requested or signature.outputs
                return InferResult(model, {n: signature.outputs[n].empty(0) for n in names})
            results = await model.run(inputs, deadline, trace)
            if requested:  # those, in the order asked for
                results = {n: results[n] for n in requested}
            return InferResult(model, results)
        except ServingError as error:
            code = error.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self._inflight.exit()
            seconds = time.perf_counter() - started
            if model is not None:
                model.stats.observe_request(protocol, code, rows, seconds)
            elif self.metrics is not None:
                known = name in self.repository
                self.metrics.observe_unresolved(
                    name if known else UNKNOWN_MODEL, "", protocol, code, seconds
                )
            if self.access_log_sample and random.random() < self.access_log_sample:
                self._access_log(
                    protocol,
                    name,
                    model.version if model is not None else version,
                    code,
                    rows,
                    seconds,
                    request_id() if request_id is not None else "",
                    trace.trace_id if trace is not None else "",
                )

    @staticmethod
    def _access_log(
        protocol: str,
        name: str,
        version: int | str,
        code: grpc.StatusCode,
        rows: int,
        seconds: float,
        request_id: str,
        trace_id: str,
    ) -> None:
        """One line (logger plexserve.access); the request id and trace id when there are."""
        line = "%s model=%s version=%s code=%s rows=%d ms=%.3f"
        args: list[object] = [protocol, name, version, code.name, rows, seconds * 1000]
        extra = {"protocol": protocol, "model": name, "code": code.name}
        if request_id:
            line += " request_id=%s"
            args.append(request_id)
            extra["request_id"] = request_id
        if trace_id:
            line += " trace_id=%s"
            args.append(trace_id)
            extra["trace_id"] = trace_id
        access_log.info(line, *args, extra=extra)
