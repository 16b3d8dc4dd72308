"""Export refuses models whose signature would lose their names, and writes versions atomically."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from plexserve.export import ExportError, export_model
from plexserve.repository import scan


def tiny(**names: str) -> keras.Model:
    a = keras.Input((2,), name=names.get("input", "a"))
    return keras.Model({a.name: a}, {names.get("output", "y"): keras.layers.Dense(1)(a)})


def test_unnamed_input_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    x = keras.Input((2,))
    model = keras.Model(x, {"y": keras.layers.Dense(1)(x)})
    with pytest.raises(ExportError, match=r"inputs \['keras_tensor.*'\] have no explicit name"):
        export_model(model, tmp_path, "m")


def test_list_outputs_are_refused_naming_the_tensors(tmp_path: Path) -> None:
    x = keras.Input((2,), name="x")
    model = keras.Model(
        x, [keras.layers.Dense(1, name="d1")(x), keras.layers.Dense(1, name="d2")(x)]
    )
    with pytest.raises(ExportError, match=r"outputs must be a dict.*list of tensors.*output_0"):
        export_model(model, tmp_path, "m")


def test_single_tensor_output_is_refused(tmp_path: Path) -> None:
    x = keras.Input((2,), name="x")
    with pytest.raises(ExportError, match="outputs must be a dict"):
        export_model(keras.Model(x, keras.layers.Dense(1)(x)), tmp_path, "m")


def test_a_name_used_as_input_and_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"names \['same'\] are both an input and an output"):
        export_model(tiny(input="same", output="same"), tmp_path, "m")


@pytest.mark.parametrize("name", ["", "..", "a/b", "/abs", ".hidden", "tab\tname"])
def test_bad_model_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(Exception, match="invalid model name"):
        export_model(tiny(), tmp_path / "repo", name)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_versions_count_up_and_are_never_overwritten(tmp_path: Path) -> None:
    first = export_model(tiny(), tmp_path, "m")
    second = export_model(tiny(), tmp_path, "m")
    assert (first.version, second.version) == (1, 2)
    assert set(second.signature.inputs) == {"a"} and set(second.signature.outputs) == {"y"}
    with pytest.raises(ExportError, match="already exists"):
        export_model(tiny(), tmp_path, "m", version=1)
    assert scan(tmp_path) == {"m": [1, 2]}


def test_a_failed_export_leaves_no_version_and_no_temporary_folder(tmp_path: Path) -> None:
    model = tiny()

    def interrupted(path: str, **kwargs: object) -> None:
        (Path(path) / "saved_model.pb").write_bytes(b"half written")
        raise KeyboardInterrupt

    model.export = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        export_model(model, tmp_path, "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_the_scanner_ignores_what_an_interrupted_build_leaves(tmp_path: Path) -> None:
    export_model(tiny(), tmp_path, "m")
    killed = tmp_path / "m" / ".building-2-x1y2"  # what a build killed mid-write leaves behind
    killed.mkdir()
    (killed / "saved_model.pb").write_bytes(b"half written")
    (tmp_path / "m" / "notes.txt").write_text("stray file")
    (tmp_path / "m" / "3").mkdir()  # a version folder without a SavedModel
    assert scan(tmp_path) == {"m": [1]}


def test_a_version_is_readable_by_other_users(tmp_path: Path) -> None:
    """A server often runs as another user than the build (a container's non-root user)."""
    exported = export_model(tiny(), tmp_path, "m")
    assert exported.path.stat().st_mode & 0o777 == 0o755
