"""ModelRepository: which model versions are loaded, their lifecycle states, and lookup.

Layout (TF Serving's): ROOT/NAME/VERSION/saved_model.pb with integer VERSION folders; anything
else (a build's temporary folder, stray files) is ignored with a debug log line. Every model
lookup of every front end goes through `resolve`. Or one model in a folder of its own
(`SingleModel`: KServe's /mnt/models), read where it is.

Lifecycle of a version: LOADING -> WARMING -> AVAILABLE -> UNLOADING -> END, or FAILED(reason);
`TRANSITIONS` lists every legal step, and any other is a bug that raises IllegalTransition. A
version unloaded while it still loads (shutdown during start-up) ends at once, and its load,
when it returns, closes what it loaded.
`reconcile(name)` brings one model to what its version policy wants among the versions on disk,
availability first: new versions load and warm before superseded ones unload, and a version that
fails to load leaves the versions already serving in place. An unloading version stops taking
new requests at once ("latest" switches atomically: states change on the event loop) and closes
only when the requests already running or queued on it have finished (ref-counted in `run`).

Loads, warm-ups, closes and the scans of the model folders (poll mode's every few seconds
included) run on worker threads, one load at a time, never on the event loop; the repository
object itself is used from the event loop only. State changes are announced to
listeners (health, metrics, logs) synchronously on the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from plexserve.batching import DynamicBatcher
from plexserve.errors import (
    InvalidInput,
    LoadFailed,
    ModelNotFound,
    ModelNotReady,
    name_list,
    without_paths,
)
from plexserve.settings import (
    BatchingSettings,
    ModelSettings,
    ServerConfig,
    SettingsError,
    VersionPolicy,
)
from plexserve.signature import Signature, Tensors
from plexserve.stats import ExecutionStats, InflightCounter

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace, Tracing
    from plexserve.runner import SignatureRunner

log = logging.getLogger(__name__)

RunnerLoader = Callable[[Path, int], "SignatureRunner"]
Fingerprint = tuple[tuple[str, int, int], ...]


def load_runner(path: Path, threads: int) -> SignatureRunner:
    from plexserve.runner import SignatureRunner  # (TensorFlow: the model process only)

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


# Every legal step of a version's lifecycle. A version starts LOADING (announced once as
# LOADING -> LOADING); LOADING and WARMING may be cut short by an unload (shutdown during
# start-up); a FAILED version is unloaded to END when its model is.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.LOADING: frozenset(
        {ModelState.LOADING, ModelState.WARMING, ModelState.FAILED, ModelState.UNLOADING}
    ),
    ModelState.WARMING: frozenset({ModelState.AVAILABLE, ModelState.FAILED, ModelState.UNLOADING}),
    ModelState.AVAILABLE: frozenset({ModelState.UNLOADING}),
    ModelState.UNLOADING: frozenset({ModelState.END}),
    ModelState.FAILED: frozenset({ModelState.UNLOADING}),
    ModelState.END: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A lifecycle step `TRANSITIONS` does not allow: a bug in the repository, never input."""


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
    fingerprint: Fingerprint = ()
    since: float = field(default_factory=time.monotonic)  # when the current state began
    _inflight: InflightCounter = field(default_factory=InflightCounter)
    version_text: str = field(init=False)  # the version number as the protocols carry it

    def __post_init__(self) -> None:
        self.version_text = str(self.version)

    @property
    def signature(self) -> Signature:
        if self.runner is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is {self.state.value}")
        return self.runner.signature

    @property
    def max_batch_size(self) -> int:
        return self.settings.batching.max_batch_size

    async def run(
        self, inputs: Tensors, deadline: float | None = None, trace: RequestTrace | None = None
    ) -> Tensors:
        executor = self.batcher or self.runner
        if executor is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is {self.state.value}")
        self._inflight.enter()
        try:
            return await executor.run(inputs, deadline, trace)
        finally:
            self._inflight.exit()

    @property
    def inflight(self) -> int:
        """Requests running or queued on this version."""
        return self._inflight.count

    async def drained(self) -> None:
        """Return once no request runs or waits on this version."""
        await self._inflight.wait_idle()


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


# Versions are folder names of ASCII digits; int64 (TF Serving's version type) has 19 digits.
MAX_VERSION_DIGITS = 19


def check_version(version: str, field: str = "model_version") -> str:
    """A version a client named: "" (the newest) or ASCII decimal digits, at most
    MAX_VERSION_DIGITS of them ("007" is version 7). Anything else is refused naming `field`:
    str.isdigit() takes "²" (which int() refuses) and "١" (which int() reads as 1), and int()
    refuses more than 4,300 digits. Returns it."""
    if version and not (
        len(version) <= MAX_VERSION_DIGITS and version.isascii() and version.isdigit()
    ):
        shown = (
            repr(version)
            if len(version) <= 40
            else f"{version[:20]!r}... ({len(version)} characters)"
        )
        raise InvalidInput(
            f"{field} is {shown}, not a version: a version is a whole number written in ASCII "
            f"digits 0-9, at most {MAX_VERSION_DIGITS} of them (empty: the newest version)"
        )
    return version


def scan_model(model_dir: Path) -> list[int]:
    """Sorted integer versions of one model folder that hold a SavedModel."""
    versions = []
    for entry in model_dir.iterdir() if model_dir.is_dir() else ():
        if entry.is_dir() and entry.name.isdigit() and (entry / "saved_model.pb").is_file():
            versions.append(int(entry.name))
        elif entry.name != "config.yaml":
            log.debug("ignoring %s: not an integer version folder with a SavedModel", entry)
    return sorted(versions)


def scan(root: Path) -> dict[str, list[int]]:
    """Model names -> sorted integer versions that hold a SavedModel."""
    found: dict[str, list[int]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = scan_model(model_dir)
        if versions:
            found[model_dir.name] = versions
    return found


def fingerprint(version_dir: Path) -> Fingerprint:
    """Names, sizes and mtimes of a version's files: unchanged between two polls = fully copied."""
    try:
        files = [(p, p.stat()) for p in version_dir.rglob("*") if p.is_file()]
    except OSError:
        return ()
    return tuple(
        sorted((str(p.relative_to(version_dir)), s.st_size, s.st_mtime_ns) for p, s in files)
    )


@dataclass(frozen=True)
class SingleModel:
    """One model served from a folder of its own, read in place (nothing is copied or written,
    so a read-only mount works): `plexserve serve --model-name NAME --model-dir DIR`, the layout
    KServe's storage initializer leaves in /mnt/models. DIR holds either one SavedModel
    (DIR/saved_model.pb: version 1) or integer version folders (DIR/N/saved_model.pb), like a
    model folder of a repository; DIR/config.yaml holds the model's settings either way."""

    name: str
    directory: Path

    def flat(self) -> bool:
        return (self.directory / "saved_model.pb").is_file()

    def versions(self) -> list[int]:
        return [1] if self.flat() else scan_model(self.directory)

    def version_path(self, version: int) -> Path:
        return self.directory if self.flat() else self.directory / str(version)

    def describe(self) -> str:
        if self.flat():
            return f"{self.directory} as model '{self.name}': one SavedModel, version 1"
        versions = self.versions()
        found = f"versions {versions}" if versions else "no SavedModel yet"
        return f"{self.directory} as model '{self.name}': {found}"


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str = ""


class ModelRepository:
    def __init__(
        self,
        root: Path,
        config: ServerConfig | None = None,
        flags: dict[str, object] | None = None,
        load_runner: RunnerLoader = load_runner,
        single_model: SingleModel | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.root = root
        self.tracing = tracing  # given to each batcher: it makes the spans of executions
        self.single_model = single_model  # set: that one model, instead of scanning `root`
        self.config = config or ServerConfig()
        self.flags = flags or {}
        self.load_runner = load_runner
        # called on every state change with (version, previous state, seconds in it)
        self.listeners: list[Callable[[ModelVersion, ModelState, float], None]] = []
        # explicit model control: the models asked for; None = every model on disk
        self.requested: set[str] | None = None
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._newest: dict[str, ModelVersion] = {}  # name -> newest AVAILABLE version
        self._locks: dict[str, asyncio.Lock] = {}
        self._load_slot: asyncio.Semaphore | None = None
        self._seen: dict[tuple[str, int], Fingerprint] = {}  # poll mode: last fingerprint seen
        # Start-up: models the server will load and has not reached yet. `resolve` answers
        # them UNAVAILABLE (retry), not NOT_FOUND (a client's mistake, not retried).
        self.pending: set[str] = set()
        # Worker mode: have the workers ship their per-request counters (service/model_process.py)
        self.flush_counters: Callable[[], Awaitable[None]] | None = None

    # --- where models are on disk: ROOT/NAME/VERSION, or the one SingleModel ---

    def _scan(self) -> dict[str, list[int]]:
        if self.single_model is None:
            return scan(self.root)
        versions = self.single_model.versions()
        return {self.single_model.name: versions} if versions else {}

    def _on_disk(self, name: str) -> list[int]:
        if self.single_model is None:
            return scan_model(self.root / name)
        return self.single_model.versions() if name == self.single_model.name else []

    def _folder(self, name: str) -> Path:
        """The model's own folder (its config.yaml)."""
        single = self.single_model
        return single.directory if single and name == single.name else self.root / name

    def _version_path(self, name: str, version: int) -> Path:
        single = self.single_model
        if single and name == single.name:
            return single.version_path(version)
        return self.root / name / str(version)

    # --- queries (event loop) ---

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._models))

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def versions(self, name: str) -> list[ModelVersion]:
        return [self._models[name][v] for v in sorted(self._models.get(name, {}))]

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self for mv in self.versions(name)]

    def model_ready(self, name: str) -> bool:
        return any(mv.state is ModelState.AVAILABLE for mv in self.versions(name))

    def expected(self) -> list[str]:
        """The models that should be serving: those asked for (explicit), else all known."""
        return sorted(self.requested) if self.requested is not None else list(self)

    def ready(self, any_model: bool = False) -> bool:
        """Every expected model has an AVAILABLE version (`any_model`: at least one has)."""
        expected = self.expected()
        if not expected:
            return False
        ready = [self.model_ready(name) for name in expected]
        return any(ready) if any_model else all(ready)

    def index(self) -> list[IndexEntry]:
        """Every model of the repository: loaded versions with their state, the rest UNAVAILABLE."""
        entries = [
            IndexEntry(mv.name, str(mv.version), mv.state.value, mv.reason)
            for mv in self.all_versions()
        ]
        for name in sorted(set(self._scan()) - set(self._models)):
            entries.append(IndexEntry(name, "", "UNAVAILABLE", "not loaded"))
        return entries

    async def current_index(self) -> list[IndexEntry]:
        """`index()`, for front ends that may run in a worker process (where it is asked of the
        model process)."""
        return self.index()

    async def statistics(
        self, name: str = "", version: str = ""
    ) -> list[tuple[ModelVersion, ExecutionStats]]:
        """Every loaded version of `name` ("": of every model) at `version` ("": every one),
        with its counters, every request answered so far counted (in worker mode the workers
        ship theirs first: `flush_counters`)."""
        versions = [
            mv
            for model in ([name] if name else list(self))
            for mv in self.versions(model)
            if not version or str(mv.version) == version
        ]
        return list(zip(versions, await self._counters(versions), strict=True))

    async def _counters(self, versions: list[ModelVersion]) -> list[ExecutionStats]:
        if self.flush_counters is not None:
            await self.flush_counters()
        return [mv.stats for mv in versions]

    def resolve(self, name: str, version: str = "", field: str = "model_version") -> ModelVersion:
        """The version that serves (name, version); "" = the newest AVAILABLE version. A version
        that is not one (see `check_version`) is refused naming `field`, the request's field
        that carried it."""
        if not version and (newest := self._newest.get(name)) is not None:
            return newest  # every request of most clients: one lookup
        check_version(version, field)
        versions = self._models.get(check_model_name(name))
        if not versions:
            if name in self.pending:
                raise ModelNotReady(f"model '{name}' is waiting to load: the server is starting")
            raise ModelNotFound(
                f"unknown model '{name}'; available models: {name_list(sorted(self._models))}"
            )
        if not version:
            available = [mv for mv in self.versions(name) if mv.state is ModelState.AVAILABLE]
            if not available:
                states = ", ".join(
                    f"{mv.version} {mv.state.value}" + (f" ({mv.reason})" if mv.reason else "")
                    for mv in self.versions(name)
                )
                raise ModelNotReady(f"model '{name}' has no available version: {states}")
            return available[-1]
        mv = versions.get(int(version))
        if mv is None:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; "
                f"versions: {name_list(sorted(versions))}"
            )
        if mv.state is not ModelState.AVAILABLE:
            raise ModelNotReady(
                f"model '{name}' version {mv.version} is {mv.state.value}"
                + (f": {mv.reason}" if mv.reason else "")
            )
        return mv

    def resolve_label(self, name: str, label: str) -> ModelVersion:
        """The version a label (`version_labels` in the model's settings) points at."""
        versions = self.versions(check_model_name(name))
        if not versions:
            raise ModelNotFound(
                f"unknown model '{name}'; available models: {name_list(sorted(self._models))}"
            )
        labels = versions[-1].settings.version_labels
        if label not in labels:
            raise ModelNotFound(
                f"model '{name}' has no version label '{label}'; "
                f"labels: {dict(sorted(labels.items()))}"
            )
        return self.resolve(name, str(labels[label]))

    def public_text(self, text: str) -> str:
        """`text` without the server's filesystem paths, for clients: the repository (or the
        one model's folder) becomes <repository> (<model dir>), the server config file its
        name, and any other absolute path its last part ("NAME/VERSION/saved_model.pb" in the
        repository stays readable; where the repository lives does not show)."""
        places: list[tuple[str, str]] = []
        if self.single_model is not None:
            places.append((str(self.single_model.directory), "<model dir>"))
        places.append((str(self.root), "<repository>"))
        config = Path(self.config.source)
        if config.is_absolute():
            places.append((str(config), config.name))
        for path, shown in places:
            for form in {path, str(Path(path).absolute()), str(Path(path).resolve())}:
                if Path(form).is_absolute() and form != "/":
                    text = re.sub(re.escape(form) + r"(?![\w-])", shown, text)
        return without_paths(text)

    # --- control (event loop) ---

    def _model_dir(self, name: str) -> Path:
        """The folder of a model named by a client: inside the repository, or refused."""
        model_dir = self.root / check_model_name(name)
        root = self.root.resolve()
        if not model_dir.resolve().is_relative_to(root):
            raise InvalidInput(f"invalid model name {name!r}: it leads outside the repository")
        return model_dir

    def version_policy(self, name: str) -> VersionPolicy:
        """The model's version policy; with unreadable settings the default (the newest version),
        whose load then fails with the settings error for all to see."""
        try:
            settings = self.config.model_settings(
                name, self._folder(name), BatchingSettings(), self.flags
            )
        except SettingsError:
            return VersionPolicy()
        return settings.version_policy

    async def load_all(self) -> None:
        """Reconcile every model on disk (model control `none` and `poll`)."""
        names = list(await asyncio.to_thread(self._scan))
        self.pending.update(names)
        try:
            for name in names:
                await self.reconcile(name)
                self.pending.discard(name)
        finally:
            self.pending.difference_update(names)

    async def load_model(self, name: str) -> None:
        """Explicit control: load (or reload, picking up new versions) one model."""
        self._model_dir(name)
        if not await asyncio.to_thread(self._on_disk, name):
            models = name_list(sorted(await asyncio.to_thread(self._scan)))
            raise ModelNotFound(f"no model '{name}' in the repository; models: {models}")
        if self.requested is not None:
            self.requested.add(name)
        await self.reconcile(name)
        failed = [mv for mv in self.versions(name) if mv.state is ModelState.FAILED]
        if failed or not self.model_ready(name):
            reasons = "; ".join(f"version {mv.version}: {mv.reason}" for mv in failed)
            serving = [mv.version for mv in self.versions(name) if mv.state is ModelState.AVAILABLE]
            still = f"; still serving versions {serving}" if serving else ""
            raise LoadFailed(f"model '{name}' failed to load: {reasons}{still}")

    async def unload_model(self, name: str) -> None:
        """Explicit control: unload every version; running requests finish first."""
        self._model_dir(name)
        if self.requested is not None:
            self.requested.discard(name)
        if name not in self._models:
            raise ModelNotFound(
                f"model '{name}' is not loaded; loaded: {name_list(sorted(self._models))}"
            )
        async with self._lock(name):
            await asyncio.gather(*(self._unload(mv) for mv in self.versions(name)))
            self._forget_if_empty(name)

    async def poll(self) -> None:
        """One poll: reconcile models on disk, unload models gone from it."""
        on_disk = await asyncio.to_thread(self._scan)
        for name in on_disk:
            await self.reconcile(name, settle=True)
        for name in set(self._models) - set(on_disk):
            await self.reconcile(name)

    async def poll_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except Exception:  # a bad poll must not stop the next one
                log.exception("repository poll failed")

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def reconcile(self, name: str, settle: bool = False) -> None:
        """Bring `name` to its policy: load wanted versions, then unload superseded ones.

        `settle` (poll mode): load a version only once its files are unchanged since the last
        poll, so a version being copied in is not loaded half-written.
        """
        async with self._lock(name):
            found = await asyncio.to_thread(self._on_disk, name)
            policy = await asyncio.to_thread(self.version_policy, name)
            versions = self._models.setdefault(name, {})
            wanted: list[int] = []
            if policy.kind == "latest":
                # the newest `count` versions that load: a newer version that fails (or is
                # still being copied) leaves the next older one serving
                available = 0
                for version in reversed(found):
                    if available == policy.count:
                        break
                    wanted.append(version)
                    mv = await self._ensure_loaded(name, version, settle)
                    available += mv is not None and mv.state is ModelState.AVAILABLE
            else:
                wanted = policy.select(found)
                for version in wanted:
                    await self._ensure_loaded(name, version, settle)
            serving_wanted = any(
                versions[v].state is ModelState.AVAILABLE for v in wanted if v in versions
            )
            for version, mv in list(versions.items()):
                if version in wanted:
                    continue
                if mv.state is ModelState.FAILED:
                    del versions[version]
                elif version not in found or serving_wanted:
                    await self._unload(mv)
                # else: the wanted versions failed; this one keeps serving
            self._forget_if_empty(name)

    async def _ensure_loaded(self, name: str, version: int, settle: bool) -> ModelVersion | None:
        """The version loaded (or FAILED), loading it first if it is new, or if it FAILED and
        its files changed since; None while it is still settling (poll mode)."""
        versions = self._models.setdefault(name, {})
        current = versions.get(version)
        if current is not None and current.state is not ModelState.FAILED:
            return current
        path = self._version_path(name, version)
        print_ = await asyncio.to_thread(fingerprint, path)
        if current is not None and current.fingerprint == print_:
            return current  # FAILED and unchanged: retrying would fail the same way
        if settle and self._seen.get((name, version)) != print_:
            self._seen[(name, version)] = print_
            return current  # still changing (or first seen): look again next poll
        mv = ModelVersion(name, version, path, fingerprint=print_)
        versions[version] = mv
        await self._load(mv)
        return mv

    def _forget_if_empty(self, name: str) -> None:
        """A model with no version left is unknown: `resolve` says NOT_FOUND and lists the
        models that have versions, never a name it then calls unknown."""
        if not self._models.get(name):
            self._models.pop(name, None)

    def _set_state(self, mv: ModelVersion, state: ModelState, reason: str = "") -> None:
        if state not in TRANSITIONS[mv.state]:
            raise IllegalTransition(
                f"model {mv.name} version {mv.version}: {mv.state.value} -> {state.value} is "
                "not a step of the lifecycle"
            )
        now = time.monotonic()
        took = now - mv.since
        previous, mv.state, mv.reason, mv.since = mv.state, state, reason, now
        because = f": {reason}" if reason else ""
        args: tuple[object, ...]
        if previous is state:  # a new version's first state
            line, args = "model %s version %d: %s", (mv.name, mv.version, state.value)
        else:
            line = "model %s version %d: %s -> %s after %.3f s%s"
            args = (mv.name, mv.version, previous.value, state.value, took, because)
        if state is ModelState.FAILED:
            log.error(line, *args)
        else:
            log.info(line, *args)
        available = [v for v in self.versions(mv.name) if v.state is ModelState.AVAILABLE]
        if available:
            self._newest[mv.name] = available[-1]
        else:
            self._newest.pop(mv.name, None)
        for listener in self.listeners:
            listener(mv, previous, took)

    def _prepare(self, mv: ModelVersion) -> SignatureRunner:
        """Blocking part of a load (a worker thread): settings, then the SavedModel."""
        mv.settings = self.config.model_settings(
            mv.name, self._folder(mv.name), BatchingSettings(), self.flags
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
        if self._load_slot is None:
            self._load_slot = asyncio.Semaphore(1)
        async with self._load_slot:  # one load at a time: it competes with serving for the CPU
            if mv.state is not ModelState.LOADING:
                return  # unloaded while it waited for its turn
            self._set_state(mv, ModelState.LOADING)
            runner = None
            try:
                runner = await asyncio.to_thread(self._prepare, mv)
                if not self._unloaded(mv):
                    self._set_state(mv, ModelState.WARMING)
                    await asyncio.to_thread(self._warm_up, mv, runner)
            except Exception as error:  # a load failure marks this version FAILED, nothing else
                if runner is not None:
                    await asyncio.to_thread(runner.close)
                if not self._unloaded(mv):
                    reason = f"{type(error).__name__}: {error}"
                    public = self.public_text(reason)
                    if public != reason:  # the log keeps where the files are; clients see `public`
                        log.error(
                            "model %s version %d failed to load: %s", mv.name, mv.version, reason
                        )
                    self._set_state(mv, ModelState.FAILED, public)
                return
        if self._unloaded(mv):  # unloaded while it loaded: what it loaded goes too
            await asyncio.to_thread(runner.close)
            return
        batching = mv.settings.batching
        if batching.enabled:
            mv.batcher = DynamicBatcher(
                runner, batching, name=mv.name, observer=mv.stats, tracing=self.tracing
            )
        else:
            runner.observer = mv.stats
        mv.runner = runner
        self._set_state(mv, ModelState.AVAILABLE)

    @staticmethod
    def _unloaded(mv: ModelVersion) -> bool:
        return mv.state in (ModelState.UNLOADING, ModelState.END)

    async def _unload(self, mv: ModelVersion) -> None:
        if mv.state in (ModelState.UNLOADING, ModelState.END):
            return
        self._set_state(mv, ModelState.UNLOADING)  # resolve() stops returning it now
        await mv.drained()
        runner, mv.runner, mv.batcher = mv.runner, None, None
        if runner is not None:
            await asyncio.to_thread(runner.close)
        self._set_state(mv, ModelState.END)
        versions = self._models.get(mv.name, {})
        if versions.get(mv.version) is mv:
            del versions[mv.version]
            self._forget_if_empty(mv.name)

    async def close(self) -> None:
        """Unload everything (after the front ends stopped taking requests)."""
        for name in list(self._models):
            for mv in self.versions(name):
                await self._unload(mv)
        self._models.clear()
