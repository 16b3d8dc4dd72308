"""SignatureRunner: calls one SavedModel's serving function.

Owned by a ModelVersion (service/repository.py). `load` is blocking (reads the SavedModel) and is
called off the event loop. `run` is the call every caller uses (`await run(inputs) -> outputs`,
the same call a DynamicBatcher offers); it executes TensorFlow on the runner's own executor
thread, never on the event loop. `call` is the blocking form, for warm-up and benchmarks.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from service.cpu import AvailableCpus, available_cpus, whole_cpus
from service.errors import InvalidInput, QueueDeadlineExceeded, UnsupportedModel
from service.settings import SettingsError
from service.signature import OIP_DATATYPES, Signature, Tensors, TensorSpec
from service.stats import ExecutionObserver

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
_SUPPORTED = set(OIP_DATATYPES.values())


def default_intra_op_threads(available: AvailableCpus | None = None) -> int:
    """The CPUs this process may use (its cgroup quota and affinity mask, not the node's cores:
    see service/cpu.py), rounded up, minus one left to the Python front end: it holds the GIL and
    needs most of a core at high request rates, while TensorFlow's default pools take every core.
    On 2 cores this multiplied batched throughput at 32 clients by 1.8 and cut a lone request's
    p50 by 20% (bench/batching.py, README "Dynamic batching"). At least 1."""
    available = available or available_cpus()
    return max(1, whole_cpus(available.cpus) - 1)


def _set_threads(kind: str, wanted: int) -> None:
    getter = getattr(tf.config.threading, f"get_{kind}_parallelism_threads")
    if wanted == getter():
        return
    try:
        getattr(tf.config.threading, f"set_{kind}_parallelism_threads")(wanted)
    except RuntimeError:  # TensorFlow already ran something in this process (tests do)
        log.warning("TensorFlow is initialized: %s threads stay %d, not %d", kind, getter(), wanted)


def configure_tensorflow(
    intra_op_threads: int | None = None, inter_op_threads: int = 1, device: str = "auto"
) -> list[str]:
    """Process-wide TensorFlow set-up; call once, before the first model loads.

    `device`: "auto" leaves placement to TensorFlow (ops go to the first GPU when there is one),
    "cpu" hides every GPU, "gpu:N" leaves only GPU N visible (SettingsError when there is no GPU
    N). On a GPU, memory growth is turned on so that TensorFlow does not reserve all device
    memory at the first call (several model versions share the device during a swap).
    `intra_op_threads` None = the CPUs this process may use (its cgroup quota, not the node's
    cores) but one (see default_intra_op_threads); 0 = TensorFlow's own default (every core of
    the node), for either count. Returns the GPUs in use.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    elif device.startswith("gpu:"):
        index = int(device.removeprefix("gpu:"))
        if index >= len(gpus):
            raise SettingsError(
                f"--device {device}: this machine has {len(gpus)} GPU(s) visible to TensorFlow"
            )
        tf.config.set_visible_devices([gpus[index]], "GPU")
        gpus = [gpus[index]]
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized: the setting is fixed for this process
            log.warning("could not enable memory growth on %s: TensorFlow already initialized", gpu)
    available = available_cpus()
    if intra_op_threads is None:
        intra_op_threads = default_intra_op_threads(available)
        log.info(
            "%s: TensorFlow intra-op threads %d by default", available.describe(), intra_op_threads
        )
    else:
        log.info("%s", available.describe())
    _set_threads("intra_op", intra_op_threads)
    _set_threads("inter_op", inter_op_threads)
    log.info(
        "TensorFlow threads: intra-op %d, inter-op %d (0 = TensorFlow's default)",
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    return [gpu.name for gpu in gpus]


def _spec(name: str, tensor: Any, path: Path) -> TensorSpec:
    dtype = np.dtype(tensor.dtype.as_numpy_dtype) if tensor.dtype != tf.string else np.dtype(object)
    if dtype not in _SUPPORTED:
        raise UnsupportedModel(
            f"{path}: tensor '{name}' has dtype {tensor.dtype.name}, "
            f"which the Open Inference Protocol cannot carry"
        )
    if tensor.shape.rank is None:
        raise UnsupportedModel(f"{path}: tensor '{name}' has unknown rank")
    return TensorSpec(name, dtype, tuple(tensor.shape.as_list()))


def _reason(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what was wrong ("indices[0] = 1000 is not in
    [0, 100)"), without the graph boilerplate around it."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(noise)]
    return useful[0] if useful else lines[0]


def signature_of(function: Any, path: Path) -> Signature:
    """The Signature of a loaded concrete function (keyword inputs, dict outputs)."""
    args, kwargs = function.structured_input_signature
    if args:
        raise UnsupportedModel(f"{path}: signature takes positional inputs; expected named ones")
    outputs = function.structured_outputs
    if not isinstance(outputs, dict):
        raise UnsupportedModel(
            f"{path}: signature returns {type(outputs).__name__}, expected a dict"
        )
    # Sorted by name: TensorFlow's order is not stable across loads, metadata should be.
    return Signature(
        inputs={name: _spec(name, kwargs[name], path) for name in sorted(kwargs)},
        outputs={name: _spec(name, outputs[name], path) for name in sorted(outputs)},
    )


class SignatureRunner:
    def __init__(
        self,
        path: Path,
        function: Callable[..., dict[str, Any]],
        signature: Signature,
        keep_alive: Any = None,
        threads: int = 1,
    ) -> None:
        self.path = path
        self.signature = signature
        self._function = function
        self._keep_alive = keep_alive  # the loaded SavedModel object owns the function's variables
        # `threads` concurrent executions (batching.instances); TensorFlow parallelizes inside one
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tf-run")
        # Set when nothing else (no DynamicBatcher) observes this runner's executions.
        self.observer: ExecutionObserver | None = None

    @classmethod
    def load(
        cls, path: Path, signature_name: str = SERVING_SIGNATURE, threads: int = 1
    ) -> SignatureRunner:
        """Load a SavedModel (blocking). Raises UnsupportedModel when it cannot be served."""
        loaded = tf.saved_model.load(str(path))
        if signature_name not in loaded.signatures:
            raise UnsupportedModel(
                f"{path}: no signature '{signature_name}'; "
                f"it has {sorted(loaded.signatures.keys())}"
            )
        function = loaded.signatures[signature_name]
        return cls(path, function, signature_of(function, path), keep_alive=loaded, threads=threads)

    def call(self, inputs: Tensors) -> Tensors:
        """Run the signature on this thread (blocking)."""
        try:
            results = self._function(**{name: tf.constant(value) for name, value in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            # e.g. an embedding id out of range: the request's values, not the server, are wrong
            raise InvalidInput(f"the model rejected the input values: {_reason(error)}") from None
        return {name: tensor.numpy() for name, tensor in results.items()}

    async def run(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        """Run on an executor thread. A request whose deadline passed while it waited for a
        thread is not computed."""
        if self.observer is None and deadline is None:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self.call, inputs
            )
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._call_observed, inputs, deadline, time.monotonic()
        )

    def _call_observed(self, inputs: Tensors, deadline: float | None, submitted: float) -> Tensors:
        started = time.monotonic()
        if deadline is not None and started >= deadline:
            raise QueueDeadlineExceeded(
                f"{self.path}: the request's deadline passed after "
                f"{(started - submitted) * 1000:.1f} ms waiting to run; it was not computed"
            )
        outputs = self.call(inputs)
        if self.observer is not None:
            rows = next(iter(inputs.values())).shape[0]
            self.observer.observe_queue(started - submitted)
            self.observer.observe_execution(rows, 0, time.monotonic() - started)
        return outputs

    def warm_up(self, rows: int = 1) -> None:
        """Call the serving function once at `rows` rows (blocking): TensorFlow's first call at a
        new batch size costs tens of milliseconds, which no request should pay."""
        inputs = {}
        for name, spec in self.signature.inputs.items():
            dims = (rows, *(1 if d is None else d for d in spec.shape[1:]))
            inputs[name] = (
                np.full(dims, b"", dtype=object)
                if spec.dtype == object
                else np.zeros(dims, spec.dtype)
            )
        self._executor.submit(self.call, inputs).result()

    def close(self) -> None:
        """Release the SavedModel (blocking; call off the event loop)."""
        self._executor.shutdown(wait=True)
        self._function = None  # type: ignore[assignment]
        self._keep_alive = None
        release_memory()


def release_memory() -> None:
    """Free what an unloaded model leaves behind, now (blocking; off the event loop).

    A loaded SavedModel's objects form reference cycles, so dropping it frees nothing until
    Python's full collection runs, on its own schedule: resident memory grew 50 MiB over 20
    unload+load cycles of a 52k-parameter model. A collection here, then glibc's malloc_trim
    to return the freed heap to the OS, kept it within 3 MiB (bench/lifecycle.py). With
    the import-time objects frozen (`freeze_startup_objects`) this collection takes ~10 ms.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the collection alone still frees the cycles
        pass


def freeze_startup_objects() -> int:
    """Move every object alive now (TensorFlow's modules: ~320k objects) out of the garbage
    collector's sight: a full collection then takes ~10 ms instead of ~120 ms with the GIL
    held, a stall every request would otherwise feel. Call once, before any model loads, so
    that models stay collectable. Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
