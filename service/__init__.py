"""plexserve: Keras Functional-API models served over gRPC and REST, with dynamic batching.

Installed as one namespace: this folder (service/ in the repository) is `plexserve`, the builders
(models/) are `plexserve.models`. `from plexserve import register_builder` is the one name a
builder module needs; it is looked up on first use, so `import plexserve` alone imports neither
Keras nor TensorFlow.
"""

from __future__ import annotations

from typing import Any

_BUILDER_API = ("register_builder", "default_registry", "Builder", "BuilderError")


def __getattr__(name: str) -> Any:
    if name in _BUILDER_API:
        from plexserve.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'plexserve' has no attribute {name!r}")
