"""SignatureRunner: executes one SavedModel's serving signature; and TensorFlow's process set-up.

Owned by a ModelVersion (service/repository.py). `load` is blocking (reads the SavedModel) and is
called off the event loop. `run` is the call every caller uses (`await run(inputs) -> outputs`,
the same call a DynamicBatcher offers); `submit` is its callback form, which the batcher uses to
spare a task and a future per batch. Either executes TensorFlow on the runner's own worker
threads, never on the event loop. `call` is the blocking form, for warm-up and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.saved_model import loader_impl

from plexserve.cpu import AvailableCpus, available_cpus, whole_cpus
from plexserve.errors import ExecutionFailed, InvalidInput, QueueDeadlineExceeded, UnsupportedModel
from plexserve.settings import SettingsError
from plexserve.signature import OIP_DATATYPES, SERVING_SIGNATURE, Signature, Tensors, TensorSpec
from plexserve.stats import ExecutionObserver
from plexserve.threads import name_thread

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace

log = logging.getLogger(__name__)

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


def session_config() -> tf.compat.v1.ConfigProto:
    """The Session options that match the process-wide set-up of `configure_tensorflow`: the same
    thread counts, the same visible GPU, memory growth on."""
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
    )
    visible = tf.config.get_visible_devices("GPU")
    if visible:
        physical = tf.config.list_physical_devices("GPU")
        config.gpu_options.visible_device_list = ",".join(
            str(physical.index(gpu)) for gpu in visible if gpu in physical
        )
        config.gpu_options.allow_growth = True
    else:
        config.device_count["GPU"] = 0
    return config


def _spec(name: str, info: Any, path: Path) -> TensorSpec:
    """A TensorSpec from a SignatureDef's TensorInfo."""
    dtype = tf.dtypes.as_dtype(info.dtype)
    numpy_dtype = np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
    if numpy_dtype not in _SUPPORTED:
        raise UnsupportedModel(
            f"{path}: tensor '{name}' has dtype {dtype.name}, "
            f"which the Open Inference Protocol cannot carry"
        )
    if info.tensor_shape.unknown_rank:
        raise UnsupportedModel(f"{path}: tensor '{name}' has unknown rank")
    shape = tuple(None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim)
    return TensorSpec(name, numpy_dtype, shape)


def _reason(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what was wrong ("indices[0] = 1000 is not in
    [0, 100)"), without the graph boilerplate around it."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(noise)]
    return useful[0] if useful else lines[0]


def signature_of(signature_def: Any, path: Path) -> Signature:
    """The Signature of a SavedModel's SignatureDef (named inputs and outputs)."""
    # Sorted by name: metadata should not depend on the order TensorFlow wrote them in.
    return Signature(
        inputs={n: _spec(n, signature_def.inputs[n], path) for n in sorted(signature_def.inputs)},
        outputs={
            n: _spec(n, signature_def.outputs[n], path) for n in sorted(signature_def.outputs)
        },
    )


def read_signature(path: Path, signature_name: str = SERVING_SIGNATURE) -> Signature:
    """The named signature of the SavedModel in `path`, read from saved_model.pb alone."""
    saved_model = loader_impl.parse_saved_model(str(path))
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            if signature_name not in meta_graph.signature_def:
                raise UnsupportedModel(
                    f"{path}: no signature '{signature_name}'; it has "
                    f"{sorted(k for k in meta_graph.signature_def if not k.startswith('__'))}"
                )
            return signature_of(meta_graph.signature_def[signature_name], path)
    raise UnsupportedModel(f"{path}: no MetaGraph tagged 'serve'")


# Called on the worker thread when an execution ends: (outputs or None, error or None,
# monotonic time it started, monotonic time it ended).
Done = Callable[[Tensors | None, BaseException | None, float, float], None]
_Job = tuple[Tensors, Done, float | None, float]  # inputs, done, deadline, submitted at


class SignatureRunner:
    """Runs one SavedModel's serving signature the way TensorFlow Serving does: the SavedModel is
    loaded into its own graph and Session, and each execution is one Session callable with the
    signature's tensors fed and fetched in a fixed order. Against calling the restored
    `tf.function` eagerly, one call holds the GIL for a fraction of the time (one C++ call
    instead of TensorFlow's Python dispatch), which matters because the event loop needs it.

    Executions run on the runner's own `threads` worker threads, in submission order; `submit`
    is the non-blocking form the batcher uses, `run` the awaitable one, `call` the blocking one.
    """

    def __init__(
        self,
        path: Path,
        session: tf.compat.v1.Session,
        signature_def: Any,
        signature: Signature,
        threads: int = 1,
    ) -> None:
        self.path = path
        self.signature = signature
        self._session = session
        self._inputs = list(signature.inputs)
        self._outputs = list(signature.outputs)
        # Session::MakeCallable, as Keras's graph-mode backend called it: a feed list given to
        # the public `Session.make_callable` makes it fall back to the whole Python
        # `Session.run` (fetch handler, feed conversion, graph-element lookups per call): 230 µs
        # of CPU per call of an identity graph here, most of it holding the GIL, against 28 µs.
        options = config_pb2.CallableOptions(
            feed=[signature_def.inputs[n].name for n in self._inputs],
            fetch=[signature_def.outputs[n].name for n in self._outputs],
        )
        self._callable = session._make_callable_from_options(options)
        # Set when nothing else (no DynamicBatcher) observes this runner's executions.
        self.observer: ExecutionObserver | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        label = path.parent.name or "model"
        self._threads = [
            threading.Thread(target=self._work, name=f"tf-run:{label}", daemon=True)
            for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def load(
        cls,
        path: Path,
        signature_name: str = SERVING_SIGNATURE,
        threads: int = 1,
        config: tf.compat.v1.ConfigProto | None = None,
    ) -> SignatureRunner:
        """Load a SavedModel (blocking). Raises UnsupportedModel when it cannot be served."""
        signature = read_signature(path, signature_name)
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=config or session_config())
        try:
            with graph.as_default(), _quiet_deprecation():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
            return cls(path, session, meta_graph.signature_def[signature_name], signature, threads)
        except BaseException:
            session.close()
            raise

    def call(self, inputs: Tensors) -> Tensors:
        """Run the signature on this thread (blocking). Every output must have as many rows as
        the inputs (ExecutionFailed otherwise): the rows are split back per request."""
        try:
            results = self._callable(*[inputs[name] for name in self._inputs])
        except tf.errors.InvalidArgumentError as error:
            # e.g. an embedding id out of range: the request's values, not the server, are wrong
            raise InvalidInput(f"the model rejected the input values: {_reason(error)}") from None
        rows = len(next(iter(inputs.values()))) if inputs else 0
        outputs = {}
        for name, array in zip(self._outputs, results, strict=True):
            if array.ndim == 0 or array.shape[0] != rows:
                raise ExecutionFailed(
                    f"model '{self.path.parent.name}' returned output '{name}' with shape "
                    f"{list(array.shape)} for a batch of {rows} rows"
                )
            outputs[name] = array
        return outputs

    def submit(self, inputs: Tensors, done: Done, deadline: float | None = None) -> None:
        """Queue one execution; `done` is called on a worker thread when it ends. One whose
        `deadline` (monotonic) has passed when a worker takes it is not computed: it ends with
        QueueDeadlineExceeded."""
        self._jobs.put((inputs, done, deadline, time.monotonic()))

    def _work(self) -> None:
        name_thread(threading.current_thread().name)
        while (job := self._jobs.get()) is not None:
            inputs, done, deadline, submitted = job
            started = time.monotonic()
            try:
                if deadline is not None and started >= deadline:
                    raise QueueDeadlineExceeded(
                        f"model '{self.path.parent.name}': the request's deadline passed after "
                        f"{(started - submitted) * 1000:.1f} ms waiting to run; it was not computed"
                    )
                outputs = self.call(inputs)
            except BaseException as error:  # noqa: BLE001 - handed to whoever submitted
                done(None, error, started, time.monotonic())
            else:
                done(outputs, None, started, time.monotonic())

    async def run(
        self, inputs: Tensors, deadline: float | None = None, trace: RequestTrace | None = None
    ) -> Tensors:
        """Run on a worker thread. A request whose deadline passed while it waited for a thread
        is not computed. A traced request gets its queue and execute spans (service/otel.py)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Tensors, float, float]] = loop.create_future()
        submitted = time.monotonic()

        def done(
            outputs: Tensors | None, error: BaseException | None, started: float, ended: float
        ) -> None:
            loop.call_soon_threadsafe(_settle, future, outputs, error, started, ended)

        self.submit(inputs, done, deadline)
        outputs, started, ended = await future
        if self.observer is not None:
            self.observer.observe_queue(started - submitted)
            self.observer.observe_execution(len(next(iter(inputs.values()))), 0, ended - started)
        if trace is not None:
            trace.ran(submitted, started, ended, len(next(iter(inputs.values()))))
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
        results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self.submit(inputs, lambda outputs, error, started, ended: results.put(error))
        if (error := results.get()) is not None:
            raise error

    def close(self) -> None:
        """Stop the worker threads and release the SavedModel (blocking; off the event loop)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._session.close()
        self._callable = None
        release_memory()


def _settle(
    future: asyncio.Future[tuple[Tensors, float, float]],
    outputs: Tensors | None,
    error: BaseException | None,
    started: float,
    ended: float,
) -> None:
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert outputs is not None
        future.set_result((outputs, started, ended))


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """The v1 loader is what TensorFlow Serving itself uses; its deprecation notice (one line per
    process, at WARNING) says nothing an operator can act on."""
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf_log.setLevel(level)


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
