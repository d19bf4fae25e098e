"""fastconv on a Dask cluster (``dask.distributed``): the cluster a command runs on, and batch inference.

``connect(workers=N)`` starts a local cluster of N worker processes on this machine, each running one task at
a time with fastconv's kernels on cores / N threads (so that workers x threads = cores); ``connect(scheduler=
"tcp://HOST:8786")`` joins a cluster started with ``dask scheduler`` and ``dask worker``. ``fastconv tune``
(``fastconv.tune``) runs its trials there, and ``predict`` runs a model over a Dask array of images there.

**Batch inference.** ``predict(model, images)`` maps each chunk of a Dask array (N, C, H, W) of images to the
model's logits (or class indices) on the workers. The model travels once: one payload (a fastconv model,
pickled, or an ONNX file's bytes) is broadcast to every worker, which loads it on its first chunk and keeps it
(``_worker_models``, keyed by the payload's digest) for every later chunk and call. Each chunk is computed by
``fastconv.predict.logits_in_batches``, the function ``fastconv predict`` runs in one process: batches of
``batch_size`` rows, the last one zero-padded, kernels picked by rule rather than timed. The results equal the
single-process ones bit for bit, however the images are chunked: a row's outputs depend on its image and on the
batch size only. Not on the thread count either: the forward kernels share work among threads by output
blocks and sum every output in the same order whatever the count (checked: 1 and 2 threads, LeNet-5 and
ResNet-20, fastconv models and ONNX files); what did differ between processes was ``algo="auto"``'s timing,
which may pick another algorithm (another summation order) in each process, hence the rule. Exactness
holds between machines of one CPU kind: the kernels' vector width (AVX2, AVX-512) changes the order of sums.

Needs the ``distributed`` extra: ``pip install -e ".[distributed]"``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np

from .predict import as_predictor, kernels_by_rule, logits_in_batches  # noqa: F401 (the one-process path)

DISTRIBUTED_EXTRA = 'the distributed tools are missing: pip install -e ".[distributed]" (dask[distributed], optuna)'


def _require_dask():
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError:
        raise ImportError(DISTRIBUTED_EXTRA) from None
    return distributed


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """The worker processes of a local cluster when none are asked for: one per core, at most 8 (single-threaded
    kernels in separate processes beat threads sharing a process on a busy machine: the README's measurements)."""
    return min(cores(), 8)


def local_threads(workers: int) -> int:
    """The kernel threads of each of `workers` local worker processes: the cores shared out, at least one."""
    return max(1, cores() // workers)


def connect(workers: int | None = None, scheduler: str | None = None, *, timeout: float = 30.0):
    """A ``distributed.Client``: of the cluster whose scheduler is at `scheduler` (``tcp://HOST:8786``), or of a
    new local cluster of `workers` worker processes (default ``default_workers()``), each running one task at a time with fastconv's
    kernels on ``local_threads(workers)`` threads. Close it (``client.close()``, and ``client.cluster.close()``
    for a local one) or use it in a ``with`` block. ValueError naming the argument when it cannot be used."""
    distributed = _require_dask()
    import dask
    if scheduler is not None and workers is not None:
        raise ValueError("give workers (a local cluster) or scheduler (an existing one), not both")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise ValueError(f"scheduler must be an address such as tcp://HOST:8786, got {scheduler!r}")
        try:
            return distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as error:
            raise ValueError(f"scheduler {scheduler!r}: no Dask scheduler answered within {timeout:g} s ({error}); "
                             "start one with `dask scheduler` and workers with `dask worker ADDRESS`") from None
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, Integral) or not 1 <= workers <= 256:
        raise ValueError(f"workers must be an integer from 1 to 256, got {workers!r}")
    threads = str(local_threads(int(workers)))
    # set before each worker process starts (Numba reads its thread count on import, which a spawned worker may do
    # while it imports the main script), in place of Dask's own, whose MALLOC_TRIM_THRESHOLD_ of 64 KiB makes
    # glibc hand every freed activation back to the system, to fault it in again on the next batch
    environ = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _driver_environ_kept():
            cluster = distributed.LocalCluster(
                n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=":0")  # any free port
    except RuntimeError as error:
        raise RuntimeError(f"the local Dask cluster's {workers} worker process(es) did not start ({error}). The "
                           "workers are spawned and import the main script: a script that starts a cluster must "
                           "do so under `if __name__ == \"__main__\":`") from error
    return distributed.Client(cluster)


WORKER_ENVIRON = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "MALLOC_TRIM_THRESHOLD_")


@contextlib.contextmanager
def _driver_environ_kept() -> Iterator[None]:
    """The workers' variables (``WORKER_ENVIRON``) taken out of this process's environment while a local cluster
    starts, and the environment put back as it was after: a Dask nanny reads them from here over its
    configuration, and writes its variables into here before it spawns a worker, for good (a process this one
    starts later would inherit them)."""
    saved = dict(os.environ)
    for key in WORKER_ENVIRON:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def cluster(workers: int | None = None, scheduler: str | None = None, *, timeout: float = 30.0) -> Iterator[object]:
    """``connect(workers, scheduler)`` as a ``with`` block: the client, closed at the end with the local cluster
    it started (an existing cluster given by `scheduler` keeps running)."""
    client = connect(workers, scheduler, timeout=timeout)
    try:
        yield client
    finally:
        local = client.cluster if scheduler is None else None
        client.close()
        if local is not None:
            local.close()


# ---- batch inference -----------------------------------------------------------------------------------------

OUTPUTS = ("logits", "classes")
KEPT_MODELS = 4  # models a worker keeps loaded (the latest used)


@dataclass(frozen=True)
class _Payload:
    """What a worker loads a model from: `kind` 'module' (`data` a pickled fastconv model) or a file's suffix
    (`data` the file's bytes); `digest` names the model in the workers' caches."""
    kind: str
    data: bytes
    digest: str

    def __repr__(self) -> str:  # a payload can be large: never print its bytes
        return f"_Payload({self.kind!r}, {len(self.data):,} bytes, {self.digest[:12]})"


def _payload(kind: str, data: bytes) -> _Payload:
    return _Payload(kind, data, hashlib.sha256(kind.encode() + b"\0" + data).hexdigest())


def _resolve(model: object) -> tuple[object, _Payload]:
    """(the driver's Predictor, the payload the workers load) for a fastconv module, a model file or a Predictor."""
    model = as_predictor(Path(model) if isinstance(model, os.PathLike) else model)
    if model.module is not None:  # a fastconv model (given, or loaded from its file): shipped as itself
        device = getattr(model.module, "device", "cpu")
        if device != "cpu":
            raise ValueError(f"model is on {device}: the workers run it on their CPUs; move it with "
                             "model.to('cpu') first")
        return model, _module_payload(model.module, model.name)
    if model.source is None:
        raise TypeError(f"model: the predictor {model.name} has neither a fastconv model nor a file behind it")
    return model, _payload(model.source.suffix.lower() or ".onnx", model.source.read_bytes())


def _module_payload(module: object, name: str) -> _Payload:
    """A fastconv model as the file ``fc.save`` writes (architecture and weights: nothing a forward pass left
    behind travels), named by a digest of its architecture and weights, so that the same model sent again is
    found in the workers' caches; a model that does not rebuild from its constructor arguments (``fc.save``
    refuses it) travels pickled, named by a digest of the pickle."""
    from . import serialize
    try:
        spec = serialize.describe(module)
    except ValueError:
        spec = None
    if spec is not None:
        with tempfile.TemporaryDirectory(prefix="fastconv-model-") as folder:
            data = serialize.save(module, Path(folder) / "model.npz").read_bytes()
        digest = hashlib.sha256(b"npz\0" + json.dumps(spec, sort_keys=True).encode())
        for key, value in sorted(module.state_dict().items()):
            value = np.ascontiguousarray(value)
            digest.update(f"\0{key}\0{value.dtype.str}\0{value.shape}\0".encode())
            digest.update(value.tobytes())
        return _Payload(".npz", data, digest.hexdigest())
    try:
        import cloudpickle  # a dependency of dask: pickles classes defined in __main__ by value
        data = cloudpickle.dumps(module, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise TypeError(f"model: {name} neither rebuilds from its constructor arguments (fc.save) nor pickles, "
                        f"so it cannot travel to the workers: {type(error).__name__}: {error}") from None
    return _payload("module", data)


_worker_models: OrderedDict[str, object] = OrderedDict()  # digest -> Predictor, the latest used last
_worker_lock = threading.Lock()  # _worker_models and _worker_loads
_worker_loads: dict[str, int] = {}
_run_lock = threading.Lock()  # one chunk at a time per process: a model runs in one thread at a time, and the
# kernels' settings (kernels_by_rule) are the process's


def _load_payload(payload: _Payload) -> object:
    """The Predictor of a payload, as ``load_predictor`` reads a file."""
    from .predict import load_predictor, module_predictor
    if payload.kind == "module":
        return module_predictor(pickle.loads(payload.data))
    with tempfile.TemporaryDirectory(prefix="fastconv-model-") as folder:
        path = Path(folder) / f"model{payload.kind}"
        path.write_bytes(payload.data)
        return load_predictor(path)


def _worker_predictor(payload: _Payload) -> object:
    """This process's Predictor of `payload`: loaded on the first call, kept for the later ones (the
    KEPT_MODELS latest used)."""
    with _worker_lock:
        predictor = _worker_models.get(payload.digest)
        if predictor is not None:
            _worker_models.move_to_end(payload.digest)
            return predictor
        predictor = _worker_models[payload.digest] = _load_payload(payload)
        _worker_loads[payload.digest] = _worker_loads.get(payload.digest, 0) + 1
        while len(_worker_models) > KEPT_MODELS:
            _worker_models.popitem(last=False)
        return predictor


def loads() -> dict[str, int]:
    """How many times this process has loaded each model payload (by digest) to run ``predict``'s chunks; run
    it on the workers with ``client.run(fastconv.distributed.loads)``."""
    with _worker_lock:
        return dict(_worker_loads)


def _predict_block(block: np.ndarray, payload: _Payload, batch_size: int, output: str, classes: int,
                   dtype: str, algorithm: str, workspace: int) -> np.ndarray:
    """One chunk of ``predict`` on a worker: its logits (rows, classes), or class indices (rows,)."""
    if len(block) == 0:
        logits = np.empty((0, classes), dtype)
    else:
        predictor = _worker_predictor(payload)
        with _run_lock, kernels_by_rule(algorithm, workspace):  # the driver's algorithm and workspace limit
            logits = logits_in_batches(predictor, block, batch_size)
        if logits.shape[1] != classes or logits.dtype != np.dtype(dtype):
            raise RuntimeError(f"the model gave {logits.shape[1]} {logits.dtype} outputs per image on a worker and "
                               f"{classes} {dtype} on the driver")
    return logits.argmax(axis=1).astype(np.int64) if output == "classes" else logits


def chunked(images: np.ndarray, batch_size: int = 64, batches: int = 4, client: object = None) -> object:
    """A NumPy batch (N, C, H, W) as a Dask array of chunks of `batches` batches of `batch_size` rows; with a
    `client`, its chunks are scattered to that cluster's workers now (rather than sent inside every graph that
    reads them)."""
    _require_dask()
    import dask.array as da
    rows = max(1, batches * batch_size)
    if client is None:
        return da.from_array(images, chunks=(rows, *images.shape[1:]))
    parts = [images[start:start + rows] for start in range(0, len(images), rows)] or [images]
    futures = _client(client).scatter(parts, hash=False)
    return da.concatenate([da.from_delayed(f, shape=p.shape, dtype=p.dtype) for f, p in zip(futures, parts)])


def _client(client: object) -> object:
    distributed = _require_dask()
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ValueError("no Dask client: pass client=, or call fastconv.distributed.connect() first (it becomes "
                         "the default client)") from None


def predict(model: object, images: object, *, client: object = None, output: str = "logits",
            batch_size: int = 64) -> object:
    """The model's outputs for a Dask array of images, computed on the cluster: a lazy Dask array, logits
    (N, classes) in the model's dtype, or with ``output="classes"`` the int64 index of each row's largest
    logit (N,), chunked along N as `images` is.

    model: a fastconv ``nn.Module`` on the CPU, the path of a model file (ONNX, ``fc.save``, a checkpoint of
    ``fastconv train``), or a ``fastconv.predict.Predictor``. It is loaded here once (to check it and count
    its outputs on one image of zeros) and sent to every worker once (``client.scatter(..., broadcast=True)``):
    an ONNX file as its bytes, a fastconv model as ``fc.save`` writes it (pickled where it cannot be saved so);
    each worker loads it on its first chunk and keeps it for the later chunks and calls. The driver's fixed
    conv2d algorithm and workspace limit (``set_conv2d_algorithm``, ``set_workspace_limit``) apply on the
    workers too.
    images: a ``dask.array.Array`` (N, C, H, W) of float32/float64 numbers (or of the model's dtype), chunked
    along N (it is rechunked to one chunk along C, H and W); a NumPy array is wrapped in chunks of four
    batches. Each chunk becomes the model's dtype and runs through ``fastconv.predict.logits_in_batches``
    with `batch_size`: the results equal that function's on the whole array in one process, bit for bit.
    client: a ``distributed.Client``, default the current one (``connect`` makes one). Compute the result
    with that client (``client.compute``, ``gather``, or ``.compute()`` where it is the default).
    Raises TypeError or ValueError naming the argument that cannot be used, before anything runs on the
    cluster."""
    _require_dask()
    import dask.array as da
    from . import config
    if output not in OUTPUTS:
        raise ValueError(f"output must be 'logits' or 'classes', got {output!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)
    host = images if isinstance(images, np.ndarray) else None
    if host is not None:
        if images.ndim != 4:
            raise ValueError(f"images must have 4 dimensions (N, C, H, W), got shape {images.shape}")
        images = chunked(images, batch_size)
    elif not isinstance(images, da.Array):
        raise TypeError(f"images must be a dask.array.Array (or numpy.ndarray) of shape (N, C, H, W), got "
                        f"{type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have 4 dimensions (N, C, H, W), got shape {images.shape}")
    if any(not (isinstance(d, Integral) or (isinstance(d, float) and d.is_integer())) for d in images.shape[1:]):
        raise ValueError(f"images must have known C, H and W, got shape {images.shape}")
    if images.dtype.kind != "f":
        raise TypeError(f"images must hold float32 or float64 numbers, got {images.dtype} (scale integer pixels "
                        "to floats first, e.g. images / 255)")
    predictor, payload = _resolve(model)
    if images.dtype not in (np.float32, np.float64, predictor.dtype):
        raise TypeError(f"images must hold float32, float64 or {predictor.dtype} numbers, got {images.dtype}")
    c, h, w = (int(d) for d in images.shape[1:])
    if predictor.channels is not None and predictor.channels != c:
        raise ValueError(f"images have {c} channels, the model takes {predictor.channels}")
    if predictor.size is not None and tuple(predictor.size) != (h, w):
        raise ValueError(f"images are {h}x{w}, the model takes {predictor.size[0]}x{predictor.size[1]}")
    client = _client(client)
    if host is not None:
        images = chunked(host, batch_size, client=client)
    with kernels_by_rule():  # as the workers run it: no timing here either
        probe = np.asarray(predictor.logits(np.zeros((1, c, h, w), predictor.dtype)))
    classes, dtype = int(probe.size), probe.dtype
    # a key of its own for each call: a key that an earlier call's result, now gone, is releasing meanwhile
    # could be lost under this one (the workers' caches, keyed by digest, still load a model only once)
    shipped = client.scatter(payload, broadcast=True, hash=False)
    images = images.rechunk({1: -1, 2: -1, 3: -1})
    common = dict(dtype=np.int64 if output == "classes" else dtype, token=f"fastconv-predict-{output}")
    args = (shipped, batch_size, output, classes, dtype.name, config.conv2d_algorithm(), config.workspace_limit())
    if output == "classes":
        return images.map_blocks(_predict_block, *args, drop_axis=[1, 2, 3], chunks=(images.chunks[0],), **common)
    return images.map_blocks(_predict_block, *args, drop_axis=[2, 3], chunks=(images.chunks[0], (classes,)),
                             **common)


def gather(array: object, client: object = None, *, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """The NumPy array of a Dask array computed on `client`'s cluster (default: the current client), with a
    tqdm bar on stderr over its chunks as they finish when `progress`."""
    distributed = _require_dask()
    from tqdm import tqdm
    client = _client(client)
    persisted = client.persist(array)
    futures = distributed.futures_of(persisted)
    rows = dict(enumerate(array.chunks[0]))
    known = all(isinstance(r, Integral) for r in rows.values())
    with tqdm(total=int(sum(rows.values())) if known else len(futures), desc=desc, unit="img" if known else "chunk",
              file=sys.stderr, disable=not progress, leave=False) as bar:
        for future in distributed.as_completed(futures):
            if future.status == "error":
                future.result()  # raises the worker's error here
            key = future.key
            bar.update(rows.get(key[1], 1) if known and isinstance(key, tuple) and len(key) > 1 else 1)
    return np.asarray(client.compute(persisted, sync=True))
