"""Tests for models/registry.py: registration, lookup, typed parameters, overrides and loading.

Every test uses its own ``BuilderRegistry()``; the default registry is never mutated (where a module
registers through ``register_builder``, the default registry is swapped for a fresh one first).
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import plexserve.models.registry
from plexserve.models.registry import Builder, BuilderError, BuilderParameter, BuilderRegistry


def small(width: int = 4, shape: tuple[int, int, int] = (8, 8, 3), name: str = "x") -> str:
    """Build a small thing.

    Longer description that is not the summary.
    """
    return f"{name}:{width}:{shape}"


def needs_size(size: int, scale: float = 1.0) -> float:
    return size * scale


def untyped(value, flag=True):  # deliberately unannotated
    """Untyped builder."""
    return value, flag


def other_small() -> str:
    return "other"


def annotated(
    count: int = 1,
    ratio: float = 0.5,
    enabled: bool = False,
    label: str = "a",
    dims: tuple[int, ...] = (),
    shape: tuple[int, int, int] = (1, 1, 1),
    ids: list[int] | None = None,
    words: list[str] | None = None,
    tokens: tuple[str, ...] = (),
    maybe: int | None = None,
    anything: Any = None,
    mapping: dict[str, int] | None = None,
) -> None:
    """Every supported annotation."""


@pytest.fixture
def registry() -> BuilderRegistry:
    registry = BuilderRegistry()
    registry.register("small", small)
    registry.register("needs_size", needs_size)
    registry.register("annotated", annotated)
    return registry


def param(name: str) -> BuilderParameter:
    return Builder.from_function("annotated", annotated).parameter(name)


# --- registration and lookup ---------------------------------------------------------------------


def test_register_and_get(registry: BuilderRegistry) -> None:
    builder = registry.get("small")
    assert builder.name == "small"
    assert builder.function is small
    assert builder.build(width=2) == "x:2:(8, 8, 3)"
    assert "small" in registry
    assert "missing" not in registry
    assert 3 not in registry


def test_register_returns_the_function_and_decorator_registers() -> None:
    registry = BuilderRegistry()
    assert registry.register("small", small) is small

    @registry.decorator("decorated")
    def decorated(units: int = 3) -> int:
        """Decorated builder."""
        return units

    assert decorated(units=5) == 5  # the decorator returns the function itself
    assert registry.get("decorated").function is decorated
    assert registry.get("decorated").summary == "Decorated builder."


def test_names_and_iteration_are_sorted(registry: BuilderRegistry) -> None:
    assert registry.names() == ["annotated", "needs_size", "small"]
    assert [builder.name for builder in registry] == ["annotated", "needs_size", "small"]


def test_parameters_come_from_the_signature(registry: BuilderRegistry) -> None:
    parameters = registry.get("small").parameters
    assert [(p.name, p.annotation, p.default) for p in parameters] == [
        ("width", int, 4),
        ("shape", tuple[int, int, int], (8, 8, 3)),
        ("name", str, "x"),
    ]
    size, scale = registry.get("needs_size").parameters
    assert size.default is inspect.Parameter.empty
    assert size.required
    assert (scale.annotation, scale.default, scale.required) == (float, 1.0, False)


def test_string_annotations_are_resolved() -> None:
    # This module uses `from __future__ import annotations`: raw annotations are strings.
    assert isinstance(inspect.signature(small).parameters["width"].annotation, str)
    assert Builder.from_function("small", small).parameter("width").annotation is int


def test_missing_annotation_is_any() -> None:
    value, flag = Builder.from_function("untyped", untyped).parameters
    assert value.annotation is Any and value.required
    assert flag.annotation is Any and flag.default is True
    assert flag.parse("false") == "false"  # Any parses as str


def test_describe() -> None:
    builder = Builder.from_function("small", small)
    assert [p.describe() for p in builder.parameters] == [
        "width: int = 4",
        "shape: tuple[int, int, int] = (8, 8, 3)",
        "name: str = 'x'",
    ]
    assert Builder.from_function("needs_size", needs_size).parameter("size").describe() == (
        "size: int"
    )


def test_summary_is_the_first_docstring_line(registry: BuilderRegistry) -> None:
    assert registry.get("small").summary == "Build a small thing."
    assert registry.get("needs_size").summary == ""


def test_duplicate_name_names_both_functions() -> None:
    registry = BuilderRegistry()
    registry.register("small", small)
    with pytest.raises(BuilderError) as caught:
        registry.register("small", other_small)
    message = str(caught.value)
    assert "'small'" in message
    assert f"{__name__}.small" in message
    assert f"{__name__}.other_small" in message
    assert registry.get("small").function is small


def test_registering_the_same_function_again_is_a_no_op() -> None:
    registry = BuilderRegistry()
    registry.register("small", small)
    registry.register("small", small)
    assert registry.names() == ["small"]


def test_unknown_builder_lists_known_names(registry: BuilderRegistry) -> None:
    with pytest.raises(
        BuilderError, match=r"unknown builder 'nope'; known: annotated, needs_size, small"
    ):
        registry.get("nope")


# --- parsing command-line values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("count", "42", 42),
        ("count", " -3 ", -3),
        ("ratio", "0.25", 0.25),
        ("ratio", "2", 2.0),
        ("enabled", "true", True),
        ("enabled", "TRUE", True),
        ("enabled", "Yes", True),
        ("enabled", "1", True),
        ("enabled", "false", False),
        ("enabled", "No", False),
        ("enabled", "0", False),
        ("label", "hello world", "hello world"),
        ("dims", "32,32,3", (32, 32, 3)),
        ("dims", "7", (7,)),
        ("dims", "", ()),
        ("shape", "16, 16, 1", (16, 16, 1)),
        ("ids", "1,2,3", [1, 2, 3]),
        ("words", "a,b", ["a", "b"]),
        ("tokens", "good,bad,ugly", ("good", "bad", "ugly")),
        ("maybe", "none", None),
        ("maybe", "5", 5),
        ("anything", "text", "text"),
    ],
)
def test_parse(name: str, text: str, expected: Any) -> None:
    value = param(name).parse(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("count", "abc", "parameter 'count': 'abc' is not an int"),
        ("count", "1.5", "parameter 'count': '1.5' is not an int"),
        ("ratio", "fast", "parameter 'ratio': 'fast' is not a float"),
        ("enabled", "maybe", "parameter 'enabled': 'maybe' is not a bool"),
        (
            "dims",
            "32,x,3",
            "parameter 'dims': '32,x,3' is not a tuple[int, ...] ('x' is not an int)",
        ),
        ("shape", "32,32", "parameter 'shape': '32,32' is not a tuple[int, int, int]"),
        ("shape", "1,2,3,4", "expected 3 comma-separated values, got 4"),
        ("ids", "1,two", "parameter 'ids': '1,two' is not a list[int]"),
        ("mapping", "a=1", "parameter 'mapping': cannot parse a value of type dict[str, int]"),
    ],
)
def test_parse_errors_name_parameter_and_value(name: str, text: str, message: str) -> None:
    with pytest.raises(BuilderError) as caught:
        param(name).parse(text)
    assert message in str(caught.value)


def test_parse_overrides(registry: BuilderRegistry) -> None:
    builder = registry.get("small")
    overrides = builder.parse_overrides(["width=8", "shape=16,16,1", "name=a=b"])
    assert overrides == {"width": 8, "shape": (16, 16, 1), "name": "a=b"}
    assert builder.build(**overrides) == "a=b:8:(16, 16, 1)"
    assert builder.parse_overrides([]) == {}


def test_parse_overrides_missing_equals(registry: BuilderRegistry) -> None:
    with pytest.raises(BuilderError) as caught:
        registry.get("small").parse_overrides(["width8"])
    message = str(caught.value)
    assert "'width8' is not KEY=VALUE" in message
    assert "width: int = 4" in message  # lists the parameters


def test_parse_overrides_unknown_key_lists_parameters(registry: BuilderRegistry) -> None:
    with pytest.raises(BuilderError) as caught:
        registry.get("small").parse_overrides(["depth=3"])
    message = str(caught.value)
    assert "builder 'small' has no parameter 'depth'" in message
    assert "width: int = 4, shape: tuple[int, int, int] = (8, 8, 3), name: str = 'x'" in message


def test_parse_overrides_bad_value_names_parameter(registry: BuilderRegistry) -> None:
    with pytest.raises(BuilderError, match=r"parameter 'width': 'wide' is not an int"):
        registry.get("small").parse_overrides(["width=wide"])


def test_parse_overrides_repeated_key(registry: BuilderRegistry) -> None:
    with pytest.raises(BuilderError, match=r"'width' is given twice"):
        registry.get("small").parse_overrides(["width=1", "width=2"])


def test_build_with_unknown_keyword_lists_parameters(registry: BuilderRegistry) -> None:
    with pytest.raises(BuilderError) as caught:
        registry.get("small").build(depth=3)
    message = str(caught.value)
    assert "builder 'small' has no parameter 'depth'" in message
    assert "width: int = 4" in message


def test_build_without_a_required_parameter(registry: BuilderRegistry) -> None:
    with pytest.raises(BuilderError, match=r"builder 'needs_size' needs a value for 'size'"):
        registry.get("needs_size").build()
    assert registry.get("needs_size").build(size=3, scale=2.0) == 6.0


# --- loading modules and entry points ------------------------------------------------------------


@pytest.fixture
def scratch_default_registry(monkeypatch: pytest.MonkeyPatch) -> BuilderRegistry:
    """Route ``register_builder`` into a throwaway registry so the real default stays untouched."""
    scratch = BuilderRegistry()
    monkeypatch.setattr(plexserve.models.registry, "default_registry", scratch)
    return scratch


def write_module(directory: Path, name: str, builder_name: str) -> None:
    source = f'''
        from plexserve.models.registry import register_builder


        @register_builder("{builder_name}")
        def build(units: int = 2) -> int:
            """A builder from a loaded module."""
            return units * 10
        '''
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_load_module_registers_through_register_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch_default_registry: BuilderRegistry
) -> None:
    write_module(tmp_path, "plexserve_test_loaded_module", "from_module")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plexserve_test_loaded_module", raising=False)

    scratch_default_registry.load_module("plexserve_test_loaded_module")
    builder = scratch_default_registry.get("from_module")
    assert builder.summary == "A builder from a loaded module."
    assert builder.build(units=3) == 30

    # Another registry loading the (already imported) module adopts the same builder.
    fresh = BuilderRegistry()
    fresh.load_module("plexserve_test_loaded_module")
    assert fresh.get("from_module").function is builder.function
    # Loading again is harmless.
    scratch_default_registry.load_module("plexserve_test_loaded_module")
    assert scratch_default_registry.names() == ["from_module"]


def test_load_module_missing_names_the_module() -> None:
    with pytest.raises(
        BuilderError, match=r"cannot import builders module 'no_such_plexserve_mod'"
    ):
        BuilderRegistry().load_module("no_such_plexserve_mod")


def test_load_module_failing_import_names_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plexserve_test_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BuilderError, match=r"'plexserve_test_broken' failed: RuntimeError: boom"):
        BuilderRegistry().load_module("plexserve_test_broken")


def write_distribution(directory: Path, entry_points: str) -> None:
    dist_info = directory / "plexserve_fakepkg-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: plexserve-fakepkg\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_load_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch_default_registry: BuilderRegistry
) -> None:
    (tmp_path / "plexserve_fakemod.py").write_text(
        textwrap.dedent(
            '''
            def func(size: int = 3) -> int:
                """A builder from an entry point."""
                return size + 1
            '''
        )
    )
    write_module(tmp_path, "plexserve_fakemod_registering", "registered_by_import")
    write_distribution(
        tmp_path,
        """
        [plexserve.builders]
        from_entry_point = plexserve_fakemod:func
        whole_module = plexserve_fakemod_registering
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("plexserve_fakemod", "plexserve_fakemod_registering"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    registry = BuilderRegistry()
    names = registry.load_entry_points()
    assert names == ["from_entry_point", "whole_module"]
    assert registry.names() == ["from_entry_point", "registered_by_import"]
    builder = registry.get("from_entry_point")
    assert builder.summary == "A builder from an entry point."
    assert builder.build(size=4) == 5
    # Loading twice is harmless: the function is already registered.
    assert registry.load_entry_points() == names
    assert registry.names() == ["from_entry_point", "registered_by_import"]


def test_load_entry_points_failure_names_the_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(
        tmp_path,
        """
        [plexserve.builders]
        broken = plexserve_no_such_module:func
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BuilderError, match=r"cannot load builder entry point 'broken'"):
        BuilderRegistry().load_entry_points()


def test_load_entry_points_of_an_empty_group() -> None:
    registry = BuilderRegistry()
    assert registry.load_entry_points("plexserve.no_such_group") == []
    assert registry.names() == []
