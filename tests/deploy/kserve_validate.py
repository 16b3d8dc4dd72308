"""Validate KServe manifests against the KServe Python SDK's resource models, offline.

Run by the tools venv's Python (the `kserve` package lives there, never in the product):
    .tools-venv/bin/python tests/deploy/kserve_validate.py FILE.yaml ...   (or - for stdin)

The SDK's models (kserve.models.V1alpha1ClusterServingRuntime, V1beta1InferenceService, ...,
with the Kubernetes client's models for the core types they embed: V1Container, V1Probe, ...)
are generated from KServe's OpenAPI definitions. Each object is walked against them strictly:
every field must be one the model declares (a misspelt or misplaced field is an error, where the
API server would silently drop it), every value must have the declared type (str, int, bool,
list, map, nested model), and each model is then constructed, which runs the SDK's own checks
(required fields such as a container's name). Prints one line per problem and exits 1 if any;
otherwise one line per object checked.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib import metadata
from typing import Any

import kubernetes.client
import yaml


def _sdk_models() -> types.ModuleType:
    """kserve.models without `import kserve`, whose package start-up loads the model server
    (FastAPI, pandas, ...: seconds) that validation never uses."""
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        assert spec is not None and spec.submodule_search_locations, "the kserve SDK is missing"
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    import kserve.models

    return kserve.models


KSERVE_MODELS = _sdk_models()

SDK = f"kserve {metadata.version('kserve')} SDK"
RESOURCES = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def model_class(name: str) -> Any:
    for module in (KSERVE_MODELS, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(f"no SDK model named {name}")


def check(value: Any, type_name: str, path: str, problems: list[str]) -> Any:
    """`value` checked against the SDK type `type_name`; returns it built as SDK objects."""
    # kserve's models say list[X] and dict(str, X); the Kubernetes client's List[X], Dict[str, X]
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list ({type_name}), got {value!r}")
            return None
        inner = type_name[len("list[") : -1]
        return [check(item, inner, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping ({type_name}), got {value!r}")
            return None
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        return {key: check(item, inner, f"{path}.{key}", problems) for key, item in value.items()}
    simple = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "object": lambda v: True,  # int-or-string ports, free-form status
        "datetime": lambda v: isinstance(v, str),
        "date": lambda v: isinstance(v, str),
    }
    if type_name in simple:
        if not simple[type_name](value):
            problems.append(f"{path}: expected {type_name}, got {value!r}")
        return value
    cls = model_class(type_name)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name}), got {value!r}")
        return None
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    arguments = {}
    for key, item in value.items():
        if key not in fields:
            problems.append(
                f"{path}.{key}: {type_name} has no field '{key}' (fields: {sorted(fields)})"
            )
            continue
        attribute = fields[key]
        arguments[attribute] = check(item, cls.openapi_types[attribute], f"{path}.{key}", problems)
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:  # the SDK's required-field and value checks
        problems.append(f"{path}: {type_name}: {' '.join(str(error).split())}")
        return None


def validate(document: Any) -> tuple[str, list[str]]:
    if not isinstance(document, dict):
        return "?", [f"not a Kubernetes object: {document!r}"]
    key = (document.get("apiVersion"), document.get("kind"))
    name = f"{key[1]}/{(document.get('metadata') or {}).get('name', '?')}"
    if key not in RESOURCES:
        return name, [f"{name}: apiVersion/kind {key} is not a KServe resource this checks"]
    problems: list[str] = []
    check(document, RESOURCES[key], name, problems)
    return name, problems


def main(paths: list[str]) -> int:
    problems: list[str] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path).read()
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            name, found = validate(document)
            problems += [f"{path}: {line}" for line in found]
            if not found:
                print(f"{path}: {name}: valid ({SDK} models)")
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["-"]))
