"""Builder output -> a SavedModel version in the repository, atomically.

`check_exportable` refuses models whose exported signature would not carry the model's own names
(FACTS.md: unnamed Inputs export as `keras_tensor_N`, list outputs as `output_0`). `export_model`
writes into a temporary folder next to the target (ignored by the repository scanner because its
name is not an integer), checks the written signature, then renames it into place: an
interrupted build never leaves a version the server would try to load.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from plexserve.errors import UnsupportedModel
from plexserve.repository import check_model_name
from plexserve.runner import read_signature
from plexserve.signature import SERVING_SIGNATURE, Signature

_AUTO_NAME = re.compile(r"^(keras_tensor|input_layer)(_\d+)?$")


class ExportError(Exception):
    pass


@dataclass(frozen=True)
class Exported:
    path: Path
    version: int
    signature: Signature


def check_exportable(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise ExportError(f"a builder must return a keras.Model, got {type(model).__name__}")
    inputs = [tensor.name for tensor in model.inputs]
    unnamed = [name for name in inputs if _AUTO_NAME.match(name)]
    if unnamed:
        raise ExportError(
            f"inputs {unnamed} have no explicit name: give every keras.Input a "
            "name= (it becomes the signature's input name)"
        )
    duplicated = sorted({name for name in inputs if inputs.count(name) > 1})
    if duplicated:
        raise ExportError(f"input names {duplicated} are used more than once")
    if not isinstance(model.output, dict):
        tensors = model.output if isinstance(model.output, list | tuple) else [model.output]
        names = [getattr(t, "name", "?") for t in tensors]
        raise ExportError(
            f"outputs must be a dict keyed by output name; got a "
            f"{type(model.output).__name__} of tensors {names} (they would export "
            "as output_0, output_1, ...)"
        )
    shared = sorted(set(inputs) & set(model.output))
    if shared:
        raise ExportError(f"names {shared} are both an input and an output name")


def next_version(model_dir: Path) -> int:
    versions = (
        [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    )
    return max(versions, default=0) + 1


def load_signature(path: Path) -> Signature:
    """The serving signature of a SavedModel on disk."""
    try:
        return read_signature(path, SERVING_SIGNATURE)
    except UnsupportedModel as error:
        raise ExportError(error.message) from None


def export_model(model: Any, repository: Path, name: str, version: int | None = None) -> Exported:
    check_exportable(model)
    model_dir = repository / check_model_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = model_dir / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists: versions are immutable, build a new one")
    staging = Path(tempfile.mkdtemp(prefix=f".building-{version}-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a server run as another user
    try:
        model.export(str(staging), format="tf_saved_model", verbose=False)
        signature = load_signature(staging)
        expected_inputs = {tensor.name for tensor in model.inputs}
        if set(signature.inputs) != expected_inputs or set(signature.outputs) != set(model.output):
            raise ExportError(
                f"the exported signature has inputs {sorted(signature.inputs)} and "
                f"outputs {sorted(signature.outputs)}; the model has "
                f"{sorted(expected_inputs)} and {sorted(model.output)}"
            )
        staging.rename(target)  # atomic on one filesystem; fails if another build took the version
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Exported(target, version, signature)
