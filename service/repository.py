"""ModelRepository: the model versions found in a repository folder, their states, and lookup.

Layout (TF Serving's): ROOT/NAME/VERSION/saved_model.pb with integer VERSION folders; anything
else (a build's temporary folder, stray files) is ignored. Every model lookup of every front end
goes through `resolve`. Loading and warm-up run on worker threads, off the event loop; the
repository object itself is used from the event loop only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from service.batching import DynamicBatcher
from service.errors import InvalidInput, ModelNotFound, ModelNotReady
from service.runner import SignatureRunner
from service.settings import BatchingSettings, ModelSettings, ServerConfig, SettingsError
from service.signature import Signature, Tensors
from service.stats import ExecutionStats

log = logging.getLogger(__name__)

RunnerLoader = Callable[[Path, int], SignatureRunner]


def load_runner(path: Path, threads: int) -> SignatureRunner:
    return SignatureRunner.load(path, threads=threads)


def batchable(signature: Signature) -> bool:
    """A model whose inputs fix dimension 0 cannot take merged batches."""
    return all(spec.shape and spec.shape[0] is None for spec in signature.inputs.values())


class ModelState(enum.Enum):
    LOADING = "LOADING"
    WARMING = "WARMING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"
    FAILED = "FAILED"


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    settings: ModelSettings = field(default_factory=ModelSettings)
    runner: SignatureRunner | None = None
    batcher: DynamicBatcher | None = None  # absent when batching is off
    stats: ExecutionStats = field(default_factory=ExecutionStats)

    @property
    def signature(self) -> Signature:
        if self.runner is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is {self.state.value}")
        return self.runner.signature

    @property
    def max_batch_size(self) -> int:
        return self.settings.batching.max_batch_size

    async def run(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        executor = self.batcher or self.runner
        if executor is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is {self.state.value}")
        return await executor.run(inputs, deadline)


def check_model_name(name: str) -> str:
    """A model name is one folder name: no separators, no '..', printable. Returns it."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or not name.isprintable()
    ):
        raise InvalidInput(
            f"invalid model name {name!r}: a model name is one printable folder "
            "name, not empty, without '/', '\\' or a leading '.'"
        )
    return name


def scan(root: Path) -> dict[str, list[int]]:
    """Model names -> sorted integer versions that hold a SavedModel."""
    found: dict[str, list[int]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = []
        for entry in model_dir.iterdir():
            if entry.is_dir() and entry.name.isdigit() and (entry / "saved_model.pb").is_file():
                versions.append(int(entry.name))
            else:
                log.debug("ignoring %s: not an integer version folder with a SavedModel", entry)
        if versions:
            found[model_dir.name] = sorted(versions)
    return found


@dataclass
class ModelRepository:
    root: Path
    config: ServerConfig = field(default_factory=ServerConfig)
    flags: dict[str, object] = field(default_factory=dict)  # command-line model settings
    load_runner: RunnerLoader = load_runner
    _models: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._models))

    def versions(self, name: str) -> list[ModelVersion]:
        return [self._models[name][v] for v in sorted(self._models.get(name, {}))]

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self for mv in self.versions(name)]

    def model_ready(self, name: str) -> bool:
        return any(mv.state is ModelState.AVAILABLE for mv in self.versions(name))

    def ready(self) -> bool:
        """Every model has an AVAILABLE version."""
        return bool(self._models) and all(self.model_ready(name) for name in self)

    def wanted_versions(self, name: str, found: list[int]) -> list[int]:
        """The versions the model's version policy selects among those found on disk. With
        unreadable settings, the newest: its load then fails with the settings error."""
        try:
            settings = self.config.model_settings(
                name, self.root / name, BatchingSettings(), self.flags
            )
        except SettingsError:
            return found[-1:]
        return settings.version_policy.select(found)

    async def load_all(self) -> None:
        """Load and warm the versions each policy selects; failures stay with their model."""
        for name, found in scan(self.root).items():
            for version in self.wanted_versions(name, found):
                mv = ModelVersion(name, version, self.root / name / str(version))
                self._models.setdefault(name, {})[mv.version] = mv
                await self._load(mv)

    def _prepare(self, mv: ModelVersion) -> SignatureRunner:
        """Blocking part of a load (a worker thread): settings, then the SavedModel."""
        mv.settings = self.config.model_settings(
            mv.name, mv.path.parent, BatchingSettings(), self.flags
        )
        runner = self.load_runner(mv.path, mv.settings.batching.instances)
        if mv.settings.batching.enabled and not batchable(runner.signature):
            log.info("model %s: inputs fix dimension 0, batching off", mv.name)
            off = replace(mv.settings.batching, enabled=False)
            mv.settings = replace(mv.settings, batching=off)
        return runner

    @staticmethod
    def _warm_up(mv: ModelVersion, runner: SignatureRunner) -> None:
        if mv.settings.warmup:
            for rows in mv.settings.batching.warmup_sizes():
                runner.warm_up(rows)

    async def _load(self, mv: ModelVersion) -> None:
        started = time.monotonic()
        try:
            runner = await asyncio.to_thread(self._prepare, mv)
            mv.state = ModelState.WARMING
            await asyncio.to_thread(self._warm_up, mv, runner)
        except Exception as error:  # any load failure marks this version FAILED, nothing else
            mv.state, mv.reason = ModelState.FAILED, f"{type(error).__name__}: {error}"
            log.error("model %s version %d FAILED: %s", mv.name, mv.version, mv.reason)
            return
        batching = mv.settings.batching
        if batching.enabled:
            mv.batcher = DynamicBatcher(runner, batching, name=mv.name, observer=mv.stats)
        else:
            runner.observer = mv.stats
        mv.runner, mv.state = runner, ModelState.AVAILABLE
        log.info(
            "model %s version %d AVAILABLE in %.2f s (batching %s)",
            mv.name,
            mv.version,
            time.monotonic() - started,
            f"up to {batching.max_batch_size} rows" if batching.enabled else "off",
        )

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version that serves (name, version); "" = the newest AVAILABLE version."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model '{name}'; available models: {sorted(self._models)}")
        if not version:
            available = [mv for mv in self.versions(name) if mv.state is ModelState.AVAILABLE]
            if not available:
                states = ", ".join(
                    f"{mv.version} {mv.state.value}" + (f" ({mv.reason})" if mv.reason else "")
                    for mv in self.versions(name)
                )
                raise ModelNotReady(f"model '{name}' has no available version: {states}")
            return available[-1]
        mv = versions.get(int(version)) if version.isdigit() else None
        if mv is None:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; versions: {sorted(versions)}"
            )
        if mv.state is not ModelState.AVAILABLE:
            raise ModelNotReady(
                f"model '{name}' version {mv.version} is {mv.state.value}"
                + (f": {mv.reason}" if mv.reason else "")
            )
        return mv

    def resolve_label(self, name: str, label: str) -> ModelVersion:
        """The version a label (`version_labels` in the model's settings) points at."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"unknown model '{name}'; available models: {sorted(self._models)}")
        labels = versions[-1].settings.version_labels
        if label not in labels:
            raise ModelNotFound(
                f"model '{name}' has no version label '{label}'; "
                f"labels: {dict(sorted(labels.items()))}"
            )
        return self.resolve(name, str(labels[label]))

    def close(self) -> None:
        for mv in self.all_versions():
            if mv.runner is not None:
                mv.runner.close()
                mv.runner, mv.batcher = None, None
            mv.state = ModelState.END
