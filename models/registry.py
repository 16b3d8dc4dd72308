"""Named model builders: registration, lookup, typed parameters and command-line overrides.

Contract:
- A *builder* is a plain callable (normally a function returning a Functional ``keras.Model``) whose
  keyword parameters are typed and have defaults. This module knows nothing of Keras or of serving:
  it never imports ``keras`` and never imports ``service``.
- ``BuilderRegistry`` maps a name to a ``Builder`` (the function plus its parsed signature). A name
  is registered once; registering a *different* function under a taken name is a ``BuilderError``
  naming both functions. Registering the very same function object again (a module imported twice
  through the same name) is a no-op.
- Built-in and third-party builder modules register at import time through ``register_builder``, the
  decorator of ``default_registry`` -- registration is the only import-time side effect allowed.
  ``load_module`` imports a module by name; ``load_entry_points`` loads the ``plexserve.builders``
  entry-point group. Into a registry other than the default one, both also adopt every builder the
  imported module declared through a registry decorator, so a fresh registry sees the same builders.
- ``BuilderParameter.parse`` turns a command-line string into a value of the parameter's annotation
  (``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]``, ``tuple[int, int, int]``,
  ``list[int]``, ``list[str]``, ``tuple[str, ...]``, ``X | None``); ``Builder.parse_overrides``
  does that for ``KEY=VALUE`` strings.
- Every problem is a ``BuilderError`` whose message says what was wrong and lists the valid choices.

Registries are plain objects, not thread-safe: fill them at start-up, read them afterwards.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "Builder",
    "BuilderError",
    "BuilderParameter",
    "BuilderRegistry",
    "default_registry",
    "register_builder",
]

F = TypeVar("F", bound=Callable[..., Any])

ENTRY_POINT_GROUP = "plexserve.builders"

# Set by a registry decorator on the functions it registers, so that a registry other than the one a
# module registered into can adopt the module's builders (see BuilderRegistry.load_module).
_MARKER = "__plexserve_builder__"

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_SCALARS: dict[type, str] = {int: "an int", float: "a float", bool: "a bool", str: "a str"}


class BuilderError(Exception):
    """A registry or builder-parameter problem; the message names the culprit and valid choices."""


def _qualified_name(function: object) -> str:
    module = getattr(function, "__module__", None) or "?"
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{qualname}"


def _type_name(annotation: Any) -> str:
    if annotation is Any:
        return "Any"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _parse_scalar(kind: type, text: str) -> Any:
    """Parse one scalar; ValueError when ``text`` is not a ``kind``."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(text)
    if kind is str:
        return text
    return kind(text)  # int() and float() strip whitespace and raise ValueError themselves


@dataclass(frozen=True)
class BuilderParameter:
    """One keyword parameter of a builder: its name, resolved annotation and default."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def parse(self, text: str) -> Any:
        """Parse a command-line string into a value of this parameter's annotation."""
        return self._parse(self.annotation, text)

    def _fail(self, text: str, expected: str, detail: str = "") -> BuilderError:
        suffix = f" ({detail})" if detail else ""
        return BuilderError(f"parameter {self.name!r}: {text!r} is not {expected}{suffix}")

    def _parse(self, annotation: Any, text: str) -> Any:
        if annotation is Any or annotation is inspect.Parameter.empty:
            return text
        if isinstance(annotation, type) and annotation in _SCALARS:
            try:
                return _parse_scalar(annotation, text)
            except ValueError:
                detail = "expected true/false/1/0/yes/no" if annotation is bool else ""
                raise self._fail(text, _SCALARS[annotation], detail) from None
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType) and type(None) in args:
            if text.strip().lower() == "none":
                return None
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                return self._parse(rest[0], text)
        if origin in (tuple, list):
            return self._parse_sequence(annotation, origin, args, text)
        raise BuilderError(
            f"parameter {self.name!r}: cannot parse a value of type {_type_name(annotation)} "
            f"from the command line; supported: int, float, bool, str, tuple[int, ...], "
            f"tuple[int, int, int], list[int], list[str], tuple[str, ...]"
        )

    def _parse_sequence(
        self, annotation: Any, origin: Any, args: tuple[Any, ...], text: str
    ) -> Any:
        expected = f"a {_type_name(annotation)}"
        items = [item.strip() for item in text.split(",")] if text.strip() else []
        if origin is tuple and args and args[-1] is not Ellipsis:
            kinds = list(args)
            if len(items) != len(kinds):
                raise self._fail(
                    text,
                    expected,
                    f"expected {len(kinds)} comma-separated values, got {len(items)}",
                )
        else:
            element = args[0] if args else str
            kinds = [element] * len(items)
        values = []
        for kind, item in zip(kinds, items, strict=True):
            if not (isinstance(kind, type) and kind in _SCALARS):
                raise BuilderError(
                    f"parameter {self.name!r}: cannot parse elements of type {_type_name(kind)} "
                    f"from the command line; supported elements: int, float, bool, str"
                )
            try:
                values.append(_parse_scalar(kind, item))
            except ValueError:
                raise self._fail(text, expected, f"{item!r} is not {_SCALARS[kind]}") from None
        return tuple(values) if origin is tuple else values

    def describe(self) -> str:
        """``"filters: int = 64"``; a required parameter has no ``= ...`` part."""
        text = f"{self.name}: {_type_name(self.annotation)}"
        if not self.required:
            text += f" = {self.default!r}"
        return text


def _signature_parameters(
    function: Callable[..., Any],
) -> tuple[tuple[BuilderParameter, ...], bool]:
    """The named parameters of ``function`` and whether it also accepts ``**kwargs``."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise BuilderError(
            f"cannot read the signature of {_qualified_name(function)}: {exc}"
        ) from exc
    try:
        hints = typing.get_type_hints(function)
    except TypeError:  # not a function, class or module (e.g. functools.partial): raw annotations
        hints = {}
    except Exception as exc:  # an unresolvable forward reference: say which function
        raise BuilderError(
            f"cannot resolve the type hints of {_qualified_name(function)}: {exc}"
        ) from exc
    parameters = []
    var_keyword = False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        annotation = hints.get(parameter.name, parameter.annotation)
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            annotation = Any
        parameters.append(BuilderParameter(parameter.name, annotation, parameter.default))
    return tuple(parameters), var_keyword


@dataclass(frozen=True)
class Builder:
    """A registered builder: its name, function, docstring summary and typed parameters."""

    name: str
    function: Callable[..., Any]
    summary: str
    parameters: tuple[BuilderParameter, ...]
    accepts_extra_keywords: bool = False

    @classmethod
    def from_function(cls, name: str, function: Callable[..., Any]) -> Builder:
        parameters, var_keyword = _signature_parameters(function)
        doc = inspect.getdoc(function) or ""
        summary = doc.strip().splitlines()[0].strip() if doc.strip() else ""
        return cls(name, function, summary, parameters, var_keyword)

    def parameter(self, name: str) -> BuilderParameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise BuilderError(
            f"builder {self.name!r} has no parameter {name!r}; parameters: {self._listing()}"
        )

    def _listing(self) -> str:
        return ", ".join(p.describe() for p in self.parameters) or "(none)"

    def parse_overrides(self, assignments: Sequence[str]) -> dict[str, Any]:
        """``["filters=8", "shape=16,16,3"]`` -> ``{"filters": 8, "shape": (16, 16, 3)}``."""
        overrides: dict[str, Any] = {}
        for assignment in assignments:
            key, separator, text = assignment.partition("=")
            key = key.strip()
            if not separator or not key:
                raise BuilderError(
                    f"builder {self.name!r}: {assignment!r} is not KEY=VALUE; "
                    f"parameters: {self._listing()}"
                )
            if key in overrides:
                raise BuilderError(f"builder {self.name!r}: parameter {key!r} is given twice")
            overrides[key] = self.parameter(key).parse(text)
        return overrides

    def build(self, **params: Any) -> Any:
        """Call the builder with ``params`` (the other parameters keep their defaults)."""
        known = {p.name for p in self.parameters}
        unknown = sorted(set(params) - known)
        if unknown and not self.accepts_extra_keywords:
            raise BuilderError(
                f"builder {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"parameters: {self._listing()}"
            )
        missing = [p.name for p in self.parameters if p.required and p.name not in params]
        if missing:
            raise BuilderError(
                f"builder {self.name!r} needs a value for {', '.join(map(repr, missing))}; "
                f"parameters: {self._listing()}"
            )
        return self.function(**params)


class BuilderRegistry:
    """Builders by name. Not thread-safe: register at start-up, read afterwards."""

    def __init__(self) -> None:
        self._builders: dict[str, Builder] = {}

    def register(self, name: str, function: F) -> F:
        """Register ``function`` under ``name`` and return it unchanged."""
        if not isinstance(name, str) or not name:
            raise BuilderError(f"a builder name must be a non-empty string, not {name!r}")
        if not callable(function):
            raise BuilderError(f"builder {name!r}: {function!r} is not callable")
        existing = self._builders.get(name)
        if existing is not None:
            if existing.function is function:
                return function
            raise BuilderError(
                f"builder name {name!r} is already registered to "
                f"{_qualified_name(existing.function)}; "
                f"cannot register {_qualified_name(function)} under it"
            )
        self._builders[name] = Builder.from_function(name, function)
        return function

    def decorator(self, name: str) -> Callable[[F], F]:
        """``@registry.decorator("name")`` registers the decorated function under ``name``."""

        def register(function: F) -> F:
            self.register(name, function)
            try:
                setattr(function, _MARKER, name)
            except (AttributeError, TypeError):  # a builtin or slotted callable: no adoption
                pass
            return function

        return register

    def get(self, name: str) -> Builder:
        try:
            return self._builders[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise BuilderError(f"unknown builder {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __iter__(self) -> Iterator[Builder]:
        return iter([self._builders[name] for name in self.names()])

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __len__(self) -> int:
        return len(self._builders)

    def _has_function(self, function: object) -> bool:
        return any(builder.function is function for builder in self._builders.values())

    def _adopt(self, module: types.ModuleType) -> None:
        """Register here the builders ``module`` declared through a registry decorator."""
        for value in list(vars(module).values()):
            name = getattr(value, _MARKER, None)
            if (
                isinstance(name, str)
                and callable(value)
                and getattr(value, "__module__", None) == module.__name__
                and not self._has_function(value)
            ):
                self.register(name, value)

    def load_module(self, module: str) -> None:
        """Import ``module`` so that its ``@register_builder`` functions register."""
        try:
            imported = importlib.import_module(module)
        except BuilderError:
            raise
        except ImportError as exc:
            raise BuilderError(f"cannot import builders module {module!r}: {exc}") from exc
        except Exception as exc:
            raise BuilderError(
                f"importing builders module {module!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._adopt(imported)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Load every entry point of ``group``; return their names (sorted)."""
        names = []
        for entry_point in sorted(
            importlib.metadata.entry_points(group=group), key=lambda e: e.name
        ):
            try:
                loaded = entry_point.load()
            except BuilderError:
                raise
            except Exception as exc:
                raise BuilderError(
                    f"cannot load builder entry point {entry_point.name!r} "
                    f"({entry_point.value}) of group {group!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if isinstance(loaded, types.ModuleType):
                self._adopt(loaded)
            elif callable(loaded):
                if not self._has_function(loaded):
                    self.register(entry_point.name, loaded)
            else:
                raise BuilderError(
                    f"builder entry point {entry_point.name!r} ({entry_point.value}) is neither a "
                    f"module nor a callable but {type(loaded).__name__}"
                )
            names.append(entry_point.name)
        return names


default_registry = BuilderRegistry()


def register_builder(name: str) -> Callable[[F], F]:
    """``@register_builder("name")``: register a builder in the default registry."""
    # Looked up at call time (not bound once), so a test can substitute the default registry.
    return default_registry.decorator(name)
