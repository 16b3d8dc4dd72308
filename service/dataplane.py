"""DataPlane: the one core every protocol front end calls.

Resolve the model version, validate the inputs against its signature, run it, check and select
the outputs. Knows no protobuf and no front end: tensors are `dict[str, numpy.ndarray]` keyed by
the signature's names. Used from the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import ExecutionFailed
from service.repository import ModelRepository, ModelVersion
from service.signature import Tensors


@dataclass(frozen=True)
class InferResult:
    model: ModelVersion
    outputs: Tensors


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Tensors,
        requested: Sequence[str] = (),
        timeout: float | None = None,
    ) -> InferResult:
        """`timeout`: seconds the caller still waits (the gRPC deadline); a request still queued
        when it passes is answered DEADLINE_EXCEEDED without being computed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        model = self.repository.resolve(name, version)
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
