"""Model builders for plexserve: the registry and the built-in Functional-API architectures.

Importing this package registers every built-in builder in ``default_registry`` (registration is the
only import-time side effect). It never imports ``service``: builders know nothing of serving.
Built-ins: echo, mlp, multi_input, inception, residual, shared_encoder, multi_output,
text_classifier, multi_task, vision_tabular -- each returns a Functional ``keras.Model`` with
named Inputs and dict outputs.
"""

# The builder modules are imported for their registration side effect.
from plexserve.models import (  # noqa: F401
    echo,
    inception,
    mlp,
    multi_input,
    multi_output,
    multi_task,
    residual,
    shared_encoder,
    text_classifier,
    vision_tabular,
)
from plexserve.models.registry import (
    Builder,
    BuilderError,
    BuilderParameter,
    BuilderRegistry,
    default_registry,
    register_builder,
)

__all__ = [
    "Builder",
    "BuilderError",
    "BuilderParameter",
    "BuilderRegistry",
    "default_registry",
    "register_builder",
]
