"""DataPlane: the one core every protocol front end calls.

Resolve the model version, validate the inputs against its signature, run it, check and select
the outputs. Knows no protobuf and no front end: tensors are `dict[str, numpy.ndarray]` keyed by
the signature's names. Used from the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import ExecutionFailed, SignatureNotFound
from service.repository import ModelRepository, ModelVersion
from service.runner import SERVING_SIGNATURE
from service.signature import Tensors


@dataclass(frozen=True)
class InferResult:
    model: ModelVersion
    outputs: Tensors


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

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
        inputs: Tensors,
        requested: Sequence[str] = (),
        timeout: float | None = None,
        *,
        protocol: str,
        label: str = "",
        signature_name: str = "",
    ) -> InferResult:
        """`timeout`: seconds the caller still waits (the gRPC deadline); a request still queued
        when it passes is answered DEADLINE_EXCEEDED without being computed. `signature_name`:
        "" or the one signature every version serves (`serving_default`). `protocol` names the
        calling front end ("oip", "tfserving"): the label request metrics will carry; nothing
        reads it yet."""
        deadline = None if timeout is None else time.monotonic() + timeout
        model = self.resolve(name, version, label)
        if signature_name and signature_name != SERVING_SIGNATURE:
            raise SignatureNotFound(
                f"Serving signature key \"{signature_name}\" not found. Model '{model.name}' "
                f'version {model.version} serves "{SERVING_SIGNATURE}" only'
            )
        signature = model.signature
        rows = signature.validate(signature.conform(inputs))
        names = signature.select_outputs(requested)
        if rows == 0:  # TensorFlow is never called with 0 rows (conv models raise on it)
            return InferResult(model, {n: signature.outputs[n].empty(0) for n in names})
        results = await model.run(inputs, deadline)
        for output in names:
            array = results[output]
            if array.ndim == 0 or array.shape[0] != rows:
                raise ExecutionFailed(
                    f"model '{model.name}' version {model.version} returned output '{output}' "
                    f"with shape {list(array.shape)} for {rows} input rows"
                )
        return InferResult(model, {n: results[n] for n in names})
