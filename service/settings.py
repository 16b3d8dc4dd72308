"""Per-model settings (batching, version policy, version labels, warm-up, rows per request) and
the server config file, parsed and validated with errors that name the file, the field and the
bad value.

A model's settings are layered, later layers winning field by field:
  1. defaults (derived from the model where it matters: see `derive_batching`)
  2. the server config's `model_defaults:`
  3. the model's own REPO/NAME/config.yaml
  4. the server config's `models: {NAME: ...}`
  5. command-line flags (they apply to every model)
Pure data and parsing: no TensorFlow, no I/O beyond reading the YAML files asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

MODEL_CONFIG = "config.yaml"
DEFAULT_MAX_BATCH_SIZE = 32
# Rows a model's queue holds per row of max_batch_size before new requests are refused
# (UNAVAILABLE "queue full"): a bounded queue keeps latency bounded under overload.
QUEUE_ROWS_PER_BATCH_ROW = 32


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class BatchingSettings:
    enabled: bool = True
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = 0
    allowed_batch_sizes: tuple[int, ...] = ()  # () = any size up to max_batch_size, no padding
    max_queue_size: int = 0  # rows; 0 = QUEUE_ROWS_PER_BATCH_ROW * max_batch_size
    instances: int = 1

    @property
    def queue_limit(self) -> int:
        return self.max_queue_size or QUEUE_ROWS_PER_BATCH_ROW * self.max_batch_size

    def padded_size(self, rows: int) -> int:
        """The batch size TensorFlow sees for `rows` rows: the next allowed size, if any."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def warmup_sizes(self) -> tuple[int, ...]:
        """Every batch size an execution can have: TensorFlow's first call at a new size costs
        milliseconds to tens of milliseconds, paid at warm-up instead of by a request."""
        if not self.enabled:
            return (1,)
        return self.allowed_batch_sizes or tuple(range(1, self.max_batch_size + 1))


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, found: Sequence[int]) -> list[int]:
        """Which of the versions found on disk should be loaded."""
        ordered = sorted(found)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count :]


def default_max_request_rows(batching: BatchingSettings) -> int:
    """Half of what the queue holds, and at least max_batch_size: one request never fills the
    queue, so the requests behind it still find room and take turns with its batches."""
    return max(batching.max_batch_size, batching.queue_limit // 2)


@dataclass(frozen=True)
class ModelSettings:
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: Mapping[str, int] = field(default_factory=dict)
    warmup: bool = True
    # Rows one request may carry; a larger one is refused (INVALID_ARGUMENT) before it is
    # queued. Unless set, default_max_request_rows(batching) of the model's own batching.
    max_request_rows: int = default_max_request_rows(BatchingSettings())


def _fail(source: str, path: str, message: str) -> SettingsError:
    return SettingsError(f"{source}: {path}: {message}")


def _int(source: str, path: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, path, f"{value!r} is not an integer >= {minimum}")
    return value


def _bool(source: str, path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, path, f"{value!r} is not true or false")
    return value


def _mapping(source: str, path: str, value: Any, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(source, path, f"expected a mapping, got {value!r}")
    unknown = sorted(set(map(str, value)) - set(known))
    if unknown:
        raise _fail(source, path, f"unknown fields {unknown}; known: {list(known)}")
    return value


_BATCHING_FIELDS = [f for f in BatchingSettings.__dataclass_fields__]
_MODEL_FIELDS = ["batching", "version_policy", "version_labels", "warmup", "max_request_rows"]


def _batching_layer(source: str, value: Any) -> dict[str, Any]:
    raw = _mapping(source, "batching", value, _BATCHING_FIELDS)
    checked: dict[str, Any] = {}
    for key, item in raw.items():
        path = f"batching.{key}"
        if key == "enabled":
            checked[key] = _bool(source, path, item)
        elif key == "allowed_batch_sizes":
            if not isinstance(item, list) or not item:
                raise _fail(source, path, f"expected a non-empty list of sizes, got {item!r}")
            sizes = tuple(_int(source, path, size, 1) for size in item)
            if list(sizes) != sorted(set(sizes)):
                raise _fail(source, path, f"{list(sizes)} is not strictly increasing")
            checked[key] = sizes
        else:
            minimum = {"max_queue_delay_us": 0, "max_queue_size": 1}.get(key, 1)
            checked[key] = _int(source, path, item, minimum)
    return checked


def _version_policy(source: str, value: Any) -> VersionPolicy:
    if value == "all":
        return VersionPolicy("all")
    raw = _mapping(source, "version_policy", value, ["latest", "specific"])
    if len(raw) != 1:
        raise _fail(
            source, "version_policy", f"give one of all, latest: N, specific: [..]; got {value!r}"
        )
    if "latest" in raw:
        return VersionPolicy(
            "latest", count=_int(source, "version_policy.latest", raw["latest"], 1)
        )
    versions = raw["specific"]
    if not isinstance(versions, list) or not versions:
        raise _fail(
            source, "version_policy.specific", f"expected a list of versions, got {versions!r}"
        )
    return VersionPolicy(
        "specific", versions=tuple(_int(source, "version_policy.specific", v, 1) for v in versions)
    )


def _labels(source: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise _fail(source, "version_labels", f"expected a mapping label: version, got {value!r}")
    labels = {}
    for label, version in value.items():
        if not isinstance(label, str) or not label or not label.isprintable():
            raise _fail(source, "version_labels", f"invalid label {label!r}")
        labels[label] = _int(source, f"version_labels.{label}", version, 1)
    return labels


def model_layer(source: str, value: Any) -> dict[str, Any]:
    """One checked layer of a model's settings; `source` names where it came from."""
    if value is None:
        return {}
    raw = _mapping(source, "(top level)", value, _MODEL_FIELDS)
    layer: dict[str, Any] = {}
    if "batching" in raw:
        layer["batching"] = _batching_layer(source, raw["batching"])
    if "version_policy" in raw:
        layer["version_policy"] = _version_policy(source, raw["version_policy"])
    if "version_labels" in raw:
        layer["version_labels"] = _labels(source, raw["version_labels"])
    if "warmup" in raw:
        layer["warmup"] = _bool(source, "warmup", raw["warmup"])
    if "max_request_rows" in raw:
        layer["max_request_rows"] = _int(source, "max_request_rows", raw["max_request_rows"], 1)
    return layer


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not valid YAML: {error}") from None


def merge_layers(
    model: str, base: BatchingSettings, layers: Sequence[tuple[str, Mapping[str, Any]]]
) -> ModelSettings:
    """Apply checked layers in order over `base` batching defaults; check the result as a whole."""
    settings = ModelSettings(batching=base)
    batching_source = "defaults"
    rows_source = ""  # where max_request_rows was set; "": nowhere, the default applies
    for source, layer in layers:
        if "batching" in layer:
            settings = replace(settings, batching=replace(settings.batching, **layer["batching"]))
            batching_source = source
        if "max_request_rows" in layer:
            rows_source = source
        for key in ("version_policy", "version_labels", "warmup", "max_request_rows"):
            if key in layer:
                settings = replace(settings, **{key: layer[key]})
    batching = settings.batching
    if batching.allowed_batch_sizes:
        largest = batching.allowed_batch_sizes[-1]
        explicit_max = any("max_batch_size" in layer.get("batching", {}) for _, layer in layers)
        if not explicit_max:
            batching = replace(batching, max_batch_size=largest)
        elif largest != batching.max_batch_size:
            raise SettingsError(
                f"model '{model}' ({batching_source}): batching.allowed_batch_sizes ends at "
                f"{largest} but batching.max_batch_size is {batching.max_batch_size}; the largest "
                "allowed size must equal max_batch_size"
            )
    if batching.max_queue_size and batching.max_queue_size < batching.max_batch_size:
        raise SettingsError(
            f"model '{model}' ({batching_source}): batching.max_queue_size "
            f"{batching.max_queue_size} is smaller than batching.max_batch_size "
            f"{batching.max_batch_size}"
        )
    if not rows_source:
        return replace(
            settings, batching=batching, max_request_rows=default_max_request_rows(batching)
        )
    if batching.enabled and settings.max_request_rows > batching.queue_limit:
        raise SettingsError(
            f"model '{model}' ({rows_source}): max_request_rows {settings.max_request_rows} is "
            f"more than the model's queue holds ({batching.queue_limit} rows): such a request "
            "is only taken by an empty queue, and every other request is turned away until it "
            "is done; raise batching.max_queue_size with it"
        )
    return replace(settings, batching=batching)


@dataclass(frozen=True)
class ServerConfig:
    """The server config file (`--config FILE`): settings for every model and for named ones."""

    model_defaults: Mapping[str, Any] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "server config"

    @classmethod
    def load(cls, path: Path | None) -> ServerConfig:
        if path is None:
            return cls()
        if not path.is_file():
            raise SettingsError(f"{path}: no such file")
        source = str(path)
        raw = _mapping(source, "(top level)", read_yaml(path) or {}, ["model_defaults", "models"])
        models = _mapping(
            source, "models", raw.get("models") or {}, list(map(str, raw.get("models") or {}))
        )
        return cls(
            model_defaults=model_layer(f"{source} model_defaults", raw.get("model_defaults")),
            models={
                name: model_layer(f"{source} models.{name}", value)
                for name, value in models.items()
            },
            source=source,
        )

    def model_settings(
        self,
        name: str,
        model_dir: Path,
        base: BatchingSettings,
        flags: Mapping[str, Any] | None = None,
    ) -> ModelSettings:
        """The settings of model `name`, reading its config.yaml now (so edits are picked up
        on the next load)."""
        config_file = model_dir / MODEL_CONFIG
        layers: list[tuple[str, Mapping[str, Any]]] = [
            (f"{self.source} model_defaults", self.model_defaults),
            (str(config_file), model_layer(str(config_file), read_yaml(config_file))),
            (f"{self.source} models.{name}", self.models.get(name, {})),
        ]
        if flags:
            layers.append(("command line", model_layer("command line", flags)))
        return merge_layers(name, base, layers)
