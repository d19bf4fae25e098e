"""Training and evaluation loops, data sets by name, and ``.npz`` checkpoints.

    history = fc.train.fit(model, optimizer, train_loader, test_loader, epochs=10, out_dir="runs/lenet5")

``fit`` runs epochs of (forward, cross-entropy, backward, step), evaluates on the test loader after each,
shows a progress bar with loss, accuracy and images/s, and (with ``out_dir``) writes ``checkpoint.npz``, then
``history.json`` and ``history.csv`` after every epoch, each atomically, under a lock on the folder, so an
interrupted run resumes from its last epoch; Ctrl-C ends the run after the current epoch is saved.
Checkpoints hold only arrays and a JSON string, and nothing in them is trusted: the JSON ``meta`` is checked
field by field, and every array's header against the model it is loaded into before its data is read.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: --out is not locked against other processes
    fcntl = None

import numpy as np

from . import data, models, nn, optim, runtime, serialize
from .device import check_device, require_cuda, to

CHECKPOINT_VERSION = 1
MAX_META_BYTES = 16 * 2**20        # the JSON 'meta' entry (4 bytes per character)
MAX_CHECKPOINT_BYTES = 16 * 2**30  # all entries' data together, when no model says what to expect
Spec = dict[str, tuple[np.dtype, tuple[int, ...], bool]]  # entry name -> (dtype, shape, required)


class SettingError(ValueError):
    """A training setting (a key of ``DEFAULT_SETTINGS``, or the argument of that name) that cannot take its value.
    The message names it as Python does (`name`, by default the setting: 'train_size must be ...');
    ``setting`` and ``problem`` let the command line name its flag instead ('--train-size must be ...')."""

    def __init__(self, setting: str, problem: str, name: str | None = None) -> None:
        self.setting, self.problem = setting, problem
        super().__init__(f"{name or setting} {problem}")


@dataclass
class Dataset:
    """Train and test images (N, C, H, W) uint8 with int64 labels, and the normalization to apply."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]


def load_dataset(name: str, data_dir: str | Path | None = None, train_size: int | None = None,
                 test_size: int | None = None) -> Dataset:
    """'mnist' or 'cifar10'. MNIST without ``data_dir`` is the bundled 10,000-image test set, split into the
    first ``train_size`` (default 8,000) to train and the last ``test_size`` (default: the rest) to test;
    with ``data_dir`` holding the official train and test files, those are used. CIFAR-10 needs ``data_dir``
    (the binary version). ``train_size``/``test_size`` then keep the first images of each.
    A size out of range raises SettingError naming it and its largest value."""
    for size, what in [(train_size, "train_size"), (test_size, "test_size")]:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise SettingError(what, f"must be an integer >= 1, got {size!r}")
    if name == "mnist":
        mean, std, classes = data.MNIST_MEAN, data.MNIST_STD, tuple(str(d) for d in range(10))
        if data_dir is None:
            images, labels = data.load_mnist()
            n, train_size = len(images), 8000 if train_size is None else train_size
            if train_size >= n:
                raise SettingError("train_size", f"must be at most {n - 1:,}: the bundled MNIST set has {n:,} images "
                                   f"and at least one is left to test, got {train_size:,}")
            if test_size is not None and train_size + test_size > n:
                raise SettingError("test_size", f"must be at most {n - train_size:,}: the {n:,} bundled MNIST images "
                                   f"less the {train_size:,} to train, got {test_size:,}")
            parts = data.split(images, labels, train_size, test_size)
            return Dataset(name, *parts, mean, std, classes)
        train, test = data.load_mnist(data_dir, train=True), data.load_mnist(data_dir, train=False)
    elif name == "cifar10":
        if data_dir is None:
            raise SettingError("data_dir", "is needed for CIFAR-10: the folder of its binary version "
                               "(cifar-10-batches-bin)")
        mean, std, classes = data.CIFAR10_MEAN, data.CIFAR10_STD, data.CIFAR10_CLASSES
        train, test = data.load_cifar10(data_dir, train=True), data.load_cifar10(data_dir, train=False)
    else:
        raise SettingError("data", f"must be 'mnist' or 'cifar10', got {name!r}")
    for size, what, part in [(train_size, "train_size", train), (test_size, "test_size", test)]:
        if size is not None and size > len(part[0]):
            raise SettingError(what, f"must be at most {len(part[0]):,}, the {what.split('_')[0]} images in {data_dir}, "
                               f"got {size:,}")
    train = (train[0][:train_size], train[1][:train_size])
    test = (test[0][:test_size], test[1][:test_size])
    return Dataset(name, *train, *test, mean, std, classes)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """A model of ``fastconv.models.MODELS`` sized for the data (LeNet-5 and the CIFAR CNN depend on the image size),
    with dropout of probability `dropout` (none for 0)."""
    if name not in models.MODELS:
        raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {name!r}")
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
    if name in ("lenet5", "cifar_cnn"):
        kwargs["image_size"] = image_size
    return models.MODELS[name](**kwargs)


def _progress(total: int, desc: str, enabled: bool, leave: bool = True):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=leave, file=sys.stderr,
                dynamic_ncols=True)


def train_epoch(model: nn.Module, optimizer: optim.Optimizer, loader: data.DataLoader, *, progress: bool = True,
                desc: str = "train") -> dict[str, float]:
    """One pass over ``loader``: for each batch zero_grad, forward, cross-entropy, backward, step.
    Returns the mean loss and accuracy over the pass, its seconds and images/s. The batches are data: the
    model's input gradient is turned off (``Module.set_input_grad``); freed memory is kept for the next step
    (``runtime.keep_freed_memory``)."""
    model.train()
    model.set_input_grad(False)
    runtime.keep_freed_memory()
    device = model.device
    bar = _progress(loader.num_examples, desc, progress)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        logits = model(to(x, device))
        loss, grad = nn.cross_entropy(logits, y)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} after {seen} images: lower the learning rate")
        model.backward(grad)
        optimizer.step()
        loss_sum += loss * len(y)
        correct += int((to(logits, "cpu").argmax(axis=1) == y).sum())
        seen += len(y)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
            bar.update(len(y))
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "train_seconds": seconds,
            "images_per_second": seen / seconds}


def evaluate(model: nn.Module, loader: data.DataLoader, num_classes: int, *, progress: bool = False,
             desc: str = "evaluate") -> dict:
    """Mean loss, accuracy and the confusion matrix (rows: true class, columns: predicted) over ``loader``, in
    eval mode and under ``nn.no_grad`` (layers keep nothing for backward: each activation is freed once the next
    layer has read it); with `progress` a tqdm bar on stderr. On the CPU a last partial batch runs padded to the
    loader's batch size, so that evaluation meets only the problems a training epoch with that loader's batch
    size has tuned (``fastconv.autotune``) and compiled: with ``build_run``'s loaders, none new."""
    model.eval()
    device = model.device

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, y in loader:
            if device == "cpu" and len(y) < loader.batch_size:
                # a last partial batch, zero-padded to the batch size: a problem size that is new would make
                # algo="auto" time every candidate, compiling kernels the training never needed
                logits = model(np.concatenate([x, np.zeros((loader.batch_size - len(y), *x.shape[1:]), x.dtype)]))
                yield logits[:len(y)], y
            else:
                yield model(to(x, device)), y

    bar = _progress(loader.num_examples, desc, progress, leave=False)  # the caller prints the result
    with nn.no_grad():
        result = score(batches(), num_classes, bar)
    if bar is not None:
        bar.close()
    return result


def score(batches: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, bar=None) -> dict:
    """Mean cross-entropy loss, accuracy and confusion matrix (rows: true class, columns: predicted) of batches of
    (logits on any device, int labels), summed batch by batch; `bar`, a tqdm bar, advanced by each batch."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, seen = 0.0, 0
    for logits, y in batches:
        loss, _ = nn.cross_entropy(logits, y)
        loss_sum += loss * len(y)
        seen += len(y)
        np.add.at(confusion, (y, to(logits, "cpu").argmax(axis=1)), 1)
        if bar is not None:
            bar.set_postfix(acc=f"{np.trace(confusion) / seen:.4f}", refresh=False)
            bar.update(len(y))
    return {"test_loss": loss_sum / seen, "test_accuracy": float(np.trace(confusion) / seen), "confusion": confusion}


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write `path` through a temporary file of its own in the same folder (``.NAME.RANDOM.tmp``), flushed to
    disk and renamed over `path`: readers see the old file or the new one, concurrent writers never share
    a temporary, and an interrupted write leaves `path` as it was (and removes its temporary)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: optim.Optimizer,
                    scheduler: optim.LRScheduler | None, meta: dict) -> Path:
    """Write model, optimizer and scheduler state and a JSON ``meta`` (run settings, history) to one .npz,
    atomically (``_atomic_write``)."""
    arrays = {f"model/{k}": to(v, "cpu") for k, v in model.state_dict().items()}
    arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    if scheduler is not None:
        arrays.update({f"scheduler/{k}": v for k, v in scheduler.state_dict().items()})
    try:  # what fc.load needs to rebuild the model without code
        meta = {**serialize.describe(model), **meta}
    except ValueError:
        pass
    arrays["meta"] = np.array(json.dumps({**meta, "version": CHECKPOINT_VERSION}))
    return _atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def checkpoint_spec(model: nn.Module, optimizer: optim.Optimizer, scheduler: optim.LRScheduler | None) -> Spec:
    """The entries a checkpoint of this model, optimizer and scheduler may hold: name -> (dtype, shape, required)."""
    spec: Spec = {f"model/{k}": (np.dtype(v.dtype), tuple(v.shape), True) for k, v in model.state_dict().items()}
    spec.update({f"optimizer/{k}": v for k, v in optimizer.state_spec().items()})
    if scheduler is not None:
        spec.update({f"scheduler/{k}": v for k, v in scheduler.state_spec().items()})
    return spec


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, expect: tuple[np.dtype, tuple] | None,
              budget: int) -> np.ndarray:
    """One .npy entry of a checkpoint, trusting nothing in it: a format 1.0/2.0 header, a plain
    numeric or unicode dtype (no objects, so no pickle; no structured or empty dtypes), a shape of
    non-negative ints; with `expect` (dtype, shape) the entry must have that shape and a dtype of the
    same kind. All of this is checked on the header, before the data: only then are its bytes (at most
    `budget`) read, in chunks, so that only bytes really present are allocated, and exactly the
    declared count must be there."""
    where = f"{path}: entry {info.filename!r}"
    with zf.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version not in _NPY_HEADERS:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = _NPY_HEADERS[version](member)
        except (ValueError, TypeError, SyntaxError, RecursionError, tokenize.TokenError) as error:  # header parsing
            raise ValueError(f"{where} is not a valid .npy array: {error}") from None
        if dtype.kind not in "biufcU" or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
            raise ValueError(f"{where} has dtype {dtype}; a checkpoint holds plain numbers and the 'meta' string")
        if len(shape) > 32 or any(type(d) is not int or d < 0 for d in shape):
            raise ValueError(f"{where} has an invalid shape {shape}")
        if expect is not None and (tuple(shape) != expect[1] or dtype.kind not in "biuf"
                                   or not np.can_cast(dtype, expect[0], "same_kind")):
            raise ValueError(f"{where} is {dtype} {tuple(shape)}; the model needs {expect[0]} {expect[1]}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > budget:
            raise ValueError(f"{where} declares {nbytes} bytes of data, more than the {budget} a checkpoint may hold")
        contents = data._read_at_most(member, nbytes + 1)
    if len(contents) != nbytes:
        raise ValueError(f"{where} is {'truncated' if len(contents) < nbytes else 'too long'}: its header "
                         f"declares {nbytes} bytes of data")
    array = np.frombuffer(contents, dtype, math.prod(shape))
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_entries(path: Path, spec: Spec | None, only_meta: bool = False, skip: tuple[str, ...] = ()
                  ) -> dict[str, np.ndarray]:
    """The checkpoint's entries by name (without '.npy'), each checked before it is read (``_read_npy``):
    'meta' a string of at most MAX_META_BYTES, the others against `spec` (or, without one, together at
    most MAX_CHECKPOINT_BYTES). Entries whose names start with one of `skip` are neither checked nor read."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path} is not a fastconv checkpoint (.npz): it does not start as a zip file")
    arrays: dict[str, np.ndarray] = {}
    budget = MAX_CHECKPOINT_BYTES
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [info.filename.removesuffix(".npy") for info in infos]
            counts = collections.Counter(names)
            for info, key in zip(infos, names):
                if not info.filename.endswith(".npy") or counts[key] > 1:
                    raise ValueError(f"{path}: unexpected or duplicate entry {info.filename!r}")
                if spec is not None and key != "meta" and key not in spec and not key.startswith(skip):
                    raise ValueError(f"{path}: entry {key!r} does not belong to this model, optimizer and schedule")
                if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(f"{path}: entry {info.filename!r} is encrypted or compressed with "
                                     f"method {info.compress_type}; only stored and deflated entries are read")
            for info, key in zip(infos, names):
                if (only_meta and key != "meta") or key.startswith(skip):
                    continue
                if key == "meta":
                    arrays[key] = _read_npy(path, zf, info, None, MAX_META_BYTES)
                    if arrays[key].dtype.kind != "U" or arrays[key].shape != ():
                        raise ValueError(f"{path} is not a fastconv checkpoint: its 'meta' entry is not a JSON string")
                else:
                    arrays[key] = _read_npy(path, zf, info, None if spec is None else spec[key][:2], budget)
                    budget -= arrays[key].nbytes
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, OverflowError, NotImplementedError,
            UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a fastconv checkpoint (.npz): {type(error).__name__}: {error}") from None
    if "meta" not in arrays:
        raise ValueError(f"{path} is not a fastconv checkpoint: it has no JSON 'meta' entry")
    missing = [] if spec is None or only_meta else sorted(k for k, (_, _, required) in spec.items()
                                                          if required and k not in arrays)
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {missing}")
    return arrays


HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "train_seconds", "images_per_second",
                  "test_loss", "test_accuracy", "test_seconds")


def _number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_meta(meta: object, where: str) -> dict:
    """A checkpoint's parsed 'meta': the version, epochs_done and a history of that many records
    (HISTORY_FIELDS, numbers, epochs 1, 2, ...), and where present the run's settings (``check_settings``),
    classes, mean and std. Raises ValueError naming `where` and the field."""
    if not isinstance(meta, dict) or meta.get("version") != CHECKPOINT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else meta
        raise ValueError(f"{where}: unsupported checkpoint version {str(version)[:100]}")
    if "settings" in meta:  # fit writes what its caller passes; fastconv train passes its settings
        if not isinstance(meta["settings"], dict):
            raise ValueError(f"{where}: checkpoint meta field 'settings' must be an object of training settings")
        try:
            check_settings(meta["settings"])
        except ValueError as error:
            raise ValueError(f"{where}: checkpoint meta: {error}") from None
    done = meta.get("epochs_done")
    if type(done) is not int or done < 0:
        raise ValueError(f"{where}: checkpoint meta field 'epochs_done' must be an integer >= 0, got {str(done)[:50]}")
    history = meta.get("history")
    if not isinstance(history, list) or len(history) != done:
        raise ValueError(f"{where}: checkpoint meta field 'history' must be a list of {done} epoch records")
    for i, record in enumerate(history):
        if not (isinstance(record, dict) and set(record) == set(HISTORY_FIELDS) and record["epoch"] == i + 1
                and all(_number(record[k]) for k in HISTORY_FIELDS)):
            raise ValueError(f"{where}: checkpoint meta field 'history' record {i} must hold the numbers "
                             f"{list(HISTORY_FIELDS)} of epoch {i + 1}")
    for field in ("classes", "mean", "std"):
        value = meta.get(field)
        kind = str if field == "classes" else Real
        if value is not None and not (isinstance(value, list) and all(isinstance(v, kind) for v in value)):
            raise ValueError(f"{where}: checkpoint meta field {field!r} must be a list of "
                             f"{'names' if field == 'classes' else 'numbers'}")
    return meta


def _parse_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, too many digits, too deep
        raise ValueError(f"{path}: corrupt checkpoint metadata: {str(error)[:200]}") from None
    return check_meta(meta, str(path))


def read_meta(path: str | Path) -> dict:
    """A checkpoint's 'meta' (``check_meta``), reading no other entry's data."""
    path = Path(path)
    return _parse_meta(path, _read_entries(path, None, only_meta=True))


def load_checkpoint(path: str | Path, spec: Spec | None = None, skip: tuple[str, ...] = ()
                    ) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(meta, {'model': ..., 'optimizer': ..., 'scheduler': ...}) from a checkpoint written by save_checkpoint.

    The file must be a zip (stored or deflated entries, none encrypted, no duplicate names) of
    .npy entries named 'meta' (a 0-d unicode array holding a JSON dict: ``check_meta``) and
    'model/...', 'optimizer/...', 'scheduler/...'. With `spec` (``checkpoint_spec`` of the model to
    load into) every entry's name, dtype and shape are checked before its data is read, and the
    required ones must be there; without it, the entries may hold at most MAX_CHECKPOINT_BYTES.
    Nothing is unpickled, and no array is allocated from a declared size before its bytes are read.
    Entries whose names start with one of `skip` ('optimizer/', ...) are left unread.
    Raises ValueError naming the file for anything else.
    """
    path = Path(path)
    arrays = _read_entries(path, spec, skip=skip)
    meta = _parse_meta(path, arrays)
    parts: dict[str, dict[str, np.ndarray]] = {"model": {}, "optimizer": {}, "scheduler": {}}
    for key, value in arrays.items():
        part, _, name = key.partition("/")
        if part not in parts or not name:
            raise ValueError(f"{path}: unexpected entry {key!r}")
        if value.dtype.kind == "U":
            raise ValueError(f"{path}: entry {key!r} holds text, not numbers")
        parts[part][name] = value
    return meta, parts


def write_history(out_dir: Path, history: list[dict]) -> None:
    """history.json and history.csv: one record per epoch, each file written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(HISTORY_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _atomic_write(out_dir / "history.json", lambda f: f.write((json.dumps(history, indent=2) + "\n").encode()))
    _atomic_write(out_dir / "history.csv", lambda f: f.write(text.getvalue().encode()))


_locked_outputs: dict[Path, int] = {}  # folders this process holds the lock of, with a count (re-entrant)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` (an exclusive, non-blocking POSIX flock, re-entrant within the process) while a run
    writes `out`; raises RuntimeError when another run holds it. Stale temporaries of interrupted writes
    (``.checkpoint.npz.*.tmp``, ...) are removed once the lock is taken."""
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    if key in _locked_outputs:
        _locked_outputs[key] += 1
        try:
            yield
        finally:
            _locked_outputs[key] -= 1
        return
    with open(out / ".lock", "a") as lock_file:
        if fcntl is not None:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another fastconv run is writing to {out}: wait for it to end or choose another "
                                   "--out") from None
        for stale in [*out.glob(".checkpoint.npz.*.tmp"), *out.glob(".history.*.tmp"), out / "checkpoint.npz.tmp.npz"]:
            with contextlib.suppress(OSError):
                stale.unlink()
        _locked_outputs[key] = 1
        try:
            yield
        finally:
            del _locked_outputs[key]
            if fcntl is not None:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


class _StopRequest:
    """SIGINT while fit runs (main thread only): the first Ctrl-C asks to stop after the epoch is saved,
    a second one stops at once (KeyboardInterrupt). The handler writes its notice straight to file
    descriptor 2: a print could land inside another print to the same stream, which Python refuses."""

    NOTICE = b"\nCtrl-C: finishing this epoch and saving it; press Ctrl-C again to stop at once\n"

    def __init__(self) -> None:
        self.requested, self.previous = False, None

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        with contextlib.suppress(OSError):
            os.write(2, self.NOTICE)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def fit(model: nn.Module, optimizer: optim.Optimizer, train_loader: data.DataLoader, test_loader: data.DataLoader,
        epochs: int, *, scheduler: optim.LRScheduler | None = None, num_classes: int = 10,
        out_dir: str | Path | None = None, meta: dict | None = None, history: list[dict] | None = None,
        progress: bool = True, log=print) -> list[dict]:
    """Train until ``epochs`` epochs are done (counting those already in ``history``, for resuming).

    After each epoch: evaluate on ``test_loader``, step the scheduler, append to the history and, with
    ``out_dir``, write checkpoint.npz (with ``meta`` and the history inside), then history.json/.csv,
    each atomically, holding ``output_lock(out_dir)`` throughout. The checkpoint's ``meta['settings']`` are
    ``fit_settings`` of the arguments updated with ``meta['settings']`` when given (checked: ``check_settings``),
    so that ``fastconv train --resume``, ``fastconv evaluate`` and ``fastconv visualize`` rebuild the run. The
    checkpoint is the record of the run: if the process dies between the files, the history files lag it by one
    epoch until the next write.
    Ctrl-C (in the main thread) ends the run after the current epoch is saved; a second Ctrl-C raises
    KeyboardInterrupt at once, after saying which epoch the checkpoint holds.
    Returns the history: per epoch lr, train loss/accuracy, test loss/accuracy, seconds and images/s.
    """
    history = list(history or [])
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "checkpoint.npz" if out is not None else None
    settings = (meta or {}).get("settings", {})
    if not isinstance(settings, dict):
        raise TypeError(f"meta['settings'] must be a dict of training settings, got {type(settings).__name__}")
    check_settings(settings)
    if out is not None:
        settings = {**fit_settings(model, optimizer, scheduler, train_loader, epochs, num_classes), **settings}
    resume = f"fastconv train --resume {checkpoint}" if checkpoint is not None else ""
    with contextlib.ExitStack() as stack:
        if out is not None:
            stack.enter_context(output_lock(out))
        stop = stack.enter_context(_StopRequest())
        train_loader.epoch = len(history)
        epoch = len(history)
        saved = len(history) if checkpoint is not None and checkpoint.is_file() else 0
        try:
            for epoch in range(len(history) + 1, epochs + 1):
                lr = optimizer.lr
                stats = train_epoch(model, optimizer, train_loader, progress=progress, desc=f"epoch {epoch}/{epochs}")
                start = time.perf_counter()
                result = evaluate(model, test_loader, num_classes, progress=progress, desc=f"test {epoch}/{epochs}")
                record = {"epoch": epoch, "lr": lr, **stats, "test_loss": result["test_loss"],
                          "test_accuracy": result["test_accuracy"], "test_seconds": time.perf_counter() - start}
                history.append(record)
                if scheduler is not None:
                    scheduler.step()
                log(f"epoch {epoch}/{epochs}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
                    f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
                    f"{record['train_seconds']:.1f} s, {record['images_per_second']:,.0f} img/s")
                if out is not None:
                    save_checkpoint(checkpoint, model, optimizer, scheduler,
                                    {**(meta or {}), "settings": settings, "epochs_done": epoch, "history": history})
                    saved = epoch
                    write_history(out, history)
                if stop.requested and epoch < epochs:
                    log(f"stopped after epoch {epoch} of {epochs}" + (f": {checkpoint} holds it; continue with "
                                                                      f"{resume}" if out is not None else ""))
                    break
        except KeyboardInterrupt:
            log(f"\ninterrupted in epoch {epoch}" + (f": {checkpoint} holds epoch {saved}; continue with {resume}"
                                                     if saved else ": no epoch saved"))
            raise
    return history


DEFAULT_SETTINGS = {
    "model": "lenet5", "data": "mnist", "data_dir": None, "train_size": None, "test_size": None,
    "epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": None, "momentum": 0.9, "nesterov": False,
    "weight_decay": 0.0, "dropout": 0.0, "schedule": "none", "step_size": 10, "augment": None, "seed": 0, "dtype": "float32",
    "device": "cpu",
}
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01}


def fit_settings(model: nn.Module, optimizer: optim.Optimizer, scheduler: optim.LRScheduler | None,
                 loader: data.DataLoader, epochs: int, num_classes: int = 10) -> dict:
    """The training settings (keys of DEFAULT_SETTINGS) that ``fit``'s arguments determine, which it writes into its
    checkpoints: the model's name where it is a model of ``fastconv.models`` as ``build_model`` makes it for the
    loader's images; the optimizer and schedule where ``build_run`` makes the same ones (Adam with PyTorch's betas
    and eps, SGD without dampening; StepLR by 0.1, cosine annealing to 0 over `epochs`); the loader's batch size,
    seed, augmentation (none, or crops padded by 4 and flips) and dtype; the model's device and `epochs`. The data
    set is not among them: the loader holds arrays, which do not say where they came from."""
    s: dict = {"epochs": epochs, "batch_size": loader.batch_size, "seed": loader.seed, "dtype": loader.dtype.name,
               "device": model.device}
    name = _model_name(model, loader.images.shape[1:], num_classes)
    if name is not None:
        s["model"] = name
        s["dropout"] = next((m.p for m in model.modules() if isinstance(m, nn.Dropout)), 0.0)
    if (loader.crop_padding, loader.flip) in ((0, False), (4, True)):
        s["augment"] = loader.flip
    if type(optimizer) is optim.Adam and optimizer.betas == (0.9, 0.999) and optimizer.eps == 1e-8:
        s.update(optimizer="adam", lr=optimizer.initial_lr, weight_decay=optimizer.weight_decay)
    elif type(optimizer) is optim.SGD and optimizer.dampening == 0:
        s.update(optimizer="sgd", lr=optimizer.initial_lr, momentum=optimizer.momentum, nesterov=optimizer.nesterov,
                 weight_decay=optimizer.weight_decay)
    if scheduler is None:
        s["schedule"] = "none"
    elif type(scheduler) is optim.StepLR and scheduler.gamma == 0.1:
        s.update(schedule="step", step_size=scheduler.step_size)
    elif type(scheduler) is optim.CosineAnnealingLR and scheduler.eta_min == 0 and scheduler.T_max == epochs:
        s["schedule"] = "cosine"
    return s


def _model_name(model: nn.Module, image_shape: tuple[int, ...], num_classes: int) -> str | None:
    """The name in ``models.MODELS`` of the model `model` is (the same layers built with the same arguments as
    ``build_model`` builds it for images of `image_shape`, (C, H, W)), or None."""
    try:
        spec = serialize.architecture(model)
    except ValueError:
        return None
    channels, height, width = image_shape
    dropout = next((m.p for m in model.modules() if isinstance(m, nn.Dropout)), 0.0)
    for name in models.MODELS:
        try:
            with nn.zero_parameters(2**62):  # draws nothing from the generator that initializes parameters
                candidate = build_model(name, channels, min(height, width), num_classes, dropout)
        except ValueError:
            continue
        if serialize.architecture(candidate) == spec:
            return name
    return None


@dataclass
class Run:
    """Everything a training run is made of, built from its settings (and restored from a checkpoint)."""

    settings: dict
    dataset: Dataset
    model: nn.Sequential
    optimizer: optim.Optimizer
    scheduler: optim.LRScheduler | None
    train_loader: data.DataLoader
    test_loader: data.DataLoader

    @property
    def meta(self) -> dict:
        return {"settings": self.settings, "classes": list(self.dataset.classes),
                "mean": list(self.dataset.mean), "std": list(self.dataset.std)}


def _int_at_least(low: int) -> Callable[[object], bool]:
    return lambda v: type(v) is int and low <= v < 2**63


def _choice(*allowed: object) -> Callable[[object], bool]:
    return lambda v: isinstance(v, str) and v in allowed


def _finite_non_negative(v: object) -> bool:
    return _number(v) and math.isfinite(v) and v >= 0


def _optional(rule: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or rule(v)


SETTING_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and v in models.MODELS, f"one of {sorted(models.MODELS)}"),
    "data": (_choice("mnist", "cifar10"), "'mnist' or 'cifar10'"),
    "data_dir": (_optional(lambda v: isinstance(v, str)), "a folder name or null"),
    "train_size": (_optional(_int_at_least(1)), "an integer >= 1 or null"),
    "test_size": (_optional(_int_at_least(1)), "an integer >= 1 or null"),
    "epochs": (_int_at_least(1), "an integer >= 1"),
    "batch_size": (_int_at_least(1), "an integer >= 1"),
    "optimizer": (_choice(*DEFAULT_LR), f"one of {sorted(DEFAULT_LR)}"),
    "lr": (_optional(_finite_non_negative), "a finite number >= 0 or null"),
    "momentum": (_finite_non_negative, "a finite number >= 0"),
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "weight_decay": (_finite_non_negative, "a finite number >= 0"),
    "dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "schedule": (_choice("none", "step", "cosine"), "'none', 'step' or 'cosine'"),
    "step_size": (_int_at_least(1), "an integer >= 1"),
    "augment": (_optional(lambda v: isinstance(v, bool)), "true, false or null"),
    "seed": (_int_at_least(0), "an integer >= 0"),
    "dtype": (_choice("float32", "float64"), "'float32' or 'float64'"),
    "device": (_choice("cpu", "cuda"), "'cpu' or 'cuda'"),
}


def check_settings(settings: dict) -> dict:
    """The settings (keys of DEFAULT_SETTINGS, any subset) checked against SETTING_RULES; raises ValueError
    naming unknown names, SettingError naming the first setting that breaks its rule."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(map(str, unknown))}")
    for name, value in settings.items():
        rule, expected = SETTING_RULES[name]
        if not rule(value):
            raise SettingError(name, f"must be {expected}, got {str(value)[:100]!r}", f"setting {name!r}")
    return settings


def build_run(settings: dict, dataset: Dataset | None = None) -> Run:
    """The data, model, optimizer, schedule and loaders that ``settings`` (keys of DEFAULT_SETTINGS) describe;
    `dataset`: the data set they name, already loaded (``load_dataset``), instead of loading it again.
    Parameters are initialized from ``fc.manual_seed(settings['seed'])``. The test loader takes batches of the
    training's size: the problems the training epoch has already tuned (``algo="auto"``) and compiled."""
    s = {**DEFAULT_SETTINGS, **check_settings(settings)}
    if check_device(s["device"]) == "cuda":
        require_cuda()  # says why before any data is loaded
    s["lr"] = DEFAULT_LR[s["optimizer"]] if s["lr"] is None else s["lr"]
    s["augment"] = (s["data"] == "cifar10") if s["augment"] is None else s["augment"]
    ds = dataset or load_dataset(s["data"], s["data_dir"], s["train_size"], s["test_size"])
    nn.manual_seed(s["seed"])
    _, channels, height, width = ds.train_images.shape
    model = build_model(s["model"], channels, min(height, width), len(ds.classes), s["dropout"])
    model = model.to(s["dtype"]).to(s["device"])
    if s["optimizer"] == "adam":
        opt: optim.Optimizer = optim.Adam(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    else:
        opt = optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], nesterov=s["nesterov"],
                        weight_decay=s["weight_decay"])
    scheduler = {"none": None, "step": lambda: optim.StepLR(opt, s["step_size"]),
                 "cosine": lambda: optim.CosineAnnealingLR(opt, s["epochs"])}[s["schedule"]]
    loader_args = dict(mean=ds.mean, std=ds.std, dtype=s["dtype"])
    train_loader = data.DataLoader(ds.train_images, ds.train_labels, s["batch_size"], shuffle=True, seed=s["seed"],
                                   crop_padding=4 if s["augment"] else 0, flip=bool(s["augment"]), **loader_args)
    test_loader = data.DataLoader(ds.test_images, ds.test_labels, s["batch_size"], **loader_args)
    return Run(s, ds, model, opt, scheduler() if scheduler else None, train_loader, test_loader)


TO_RESUME = ("optimizer", "schedule", "augment")  # settings fit leaves out where build_run cannot make the same


def restore(checkpoint: str | Path, *, model_only: bool = False, log: Callable[[str], object] | None = None,
            **overrides) -> tuple[Run, list[dict]]:
    """The run saved in ``checkpoint`` with its weights, optimizer and schedule state, and its history.
    ``overrides`` replace settings (such as a larger ``epochs`` to train on, or another ``data_dir``); the
    model cannot be replaced (SettingError naming both). Settings neither gives take DEFAULT_SETTINGS' values;
    `log` is then told which data set that is, if the checkpoint names none (one of ``fit``, whose loaders do
    not know). With `model_only` (evaluate, visualize) only the model's weights are read: the optimizer and
    schedule need not be ones ``build_run`` makes. The checkpoint's meta is read and checked first (ValueError
    naming the file and a field that is missing), then every array against the rebuilt run
    (``checkpoint_spec``) before its data is read."""
    meta = read_meta(checkpoint)
    saved = meta.get("settings", {})
    required = ("model",) if model_only else ("model", *TO_RESUME)
    for name in required:
        if name not in saved:
            raise ValueError(f"{checkpoint}: checkpoint meta field 'settings.{name}' is missing: {_MISSING[name]}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("model", saved["model"]) != saved["model"]:
        raise SettingError("model", f"{overrides['model']} does not match {checkpoint}, which holds a {saved['model']} "
                           f"model: a resumed run keeps its model. Leave --model out to continue the "
                           f"{saved['model']} run, or train {overrides['model']} from the start into another --out")
    run = build_run({**saved, **overrides})
    if log is not None and "data" not in {*saved, *overrides}:
        log(f"{checkpoint} does not say which data set it was trained on (fit's checkpoints do not): using "
            f"{run.dataset.name}, {len(run.dataset.train_labels):,} train / {len(run.dataset.test_labels):,} test "
            "images, the defaults; choose with --data, --data-dir, --train-size, --test-size")
    spec = checkpoint_spec(run.model, run.optimizer, run.scheduler)
    if model_only:
        spec = {k: v for k, v in spec.items() if k.startswith("model/")}
    _, parts = load_checkpoint(checkpoint, spec, skip=("optimizer/", "scheduler/") if model_only else ())
    run.model.load_state_dict(parts["model"])
    if not model_only:
        run.optimizer.load_state_dict(parts["optimizer"])
        if run.scheduler is not None and parts["scheduler"]:
            run.scheduler.load_state_dict(parts["scheduler"])
    return run, meta["history"]


_MISSING = {
    "model": f"the command line builds the models of fastconv.models ({', '.join(models.MODELS)}) by name, and this "
             "checkpoint's is none of them (or its settings were removed); load it in Python with fastconv.load(path)",
    **{name: f"fit writes it where build_run makes the same {name} as fit ran with (Adam with default betas and eps "
             "or SGD without dampening, StepLR by 0.1 or cosine annealing over the epochs, no augmentation or "
             "crops padded by 4 and flips); continue this run in Python: load its state with "
             "train.load_checkpoint, then fit(..., history=meta['history'])"
       for name in TO_RESUME},
}


def train(settings: dict, out_dir: str | Path, *, resume: str | Path | None = None, overwrite: bool = False,
          progress: bool = True, log=print) -> list[dict]:
    """``fastconv train``: build (or resume) a run, fit it, and write its history, checkpoint and curves.

    `out_dir` is locked while the run writes it (``output_lock``). A folder that already holds a run is
    continued only as ``resume`` of its own checkpoint, or started over (its files removed first) with
    `overwrite`; else ValueError. Resuming a checkpoint that already holds the run's ``epochs`` (they count the
    resumed ones) raises SettingError saying what to pass."""
    out = Path(out_dir)
    with output_lock(out):
        existing = out / "checkpoint.npz"
        continuing = resume is not None and existing.exists() and existing.resolve() == Path(resume).resolve()
        if (existing.exists() or (out / "history.json").exists()) and not continuing:
            if not overwrite:
                raise ValueError(f"{out} already holds a training run: continue it with --resume {existing}, or "
                                 "pass --overwrite to replace it (or choose another --out)")
            for name in ("checkpoint.npz", "history.json", "history.csv", "curves.png"):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
        if resume is not None:
            meta = read_meta(resume)
            saved = meta.get("settings", {})
            epochs, done = settings.get("epochs", saved.get("epochs", DEFAULT_SETTINGS["epochs"])), meta["epochs_done"]
            if done >= epochs:
                if continuing:  # the history files of a run killed after its last save lag the checkpoint
                    write_history(out, meta["history"])
                own = "" if "epochs" in settings else " (the checkpoint's own: none was given)"
                raise SettingError("epochs", f"{epochs}{own} counts every epoch of the run, resumed ones included, and "
                                   f"{resume} already holds {done}: nothing is left to train. Pass --epochs "
                                   f"{done + 1} or more to train further")
            run, history = restore(resume, log=log, **settings)
        else:
            run, history = build_run(settings), []
        ds = run.dataset
        log(f"{run.settings['model']} ({run.model.num_parameters():,} parameters) on {ds.name}: "
            f"{len(ds.train_labels):,} train / {len(ds.test_labels):,} test images, {run.settings['optimizer']} "
            f"lr {run.settings['lr']:g}, batch {run.settings['batch_size']}; writing to {out}")
        if history:
            write_history(out, history)  # the checkpoint is the record: history files lagging it are rewritten
        history = fit(run.model, run.optimizer, run.train_loader, run.test_loader, run.settings["epochs"],
                      scheduler=run.scheduler, num_classes=len(ds.classes), out_dir=out, meta=run.meta,
                      history=history, progress=progress, log=log)
        try:
            from . import plots
            title = (f"{run.settings['model']} on {ds.name} ({len(ds.train_labels):,} train images), "
                     f"{run.settings['optimizer']} lr {run.settings['lr']:g}, batch {run.settings['batch_size']}: "
                     f"run {out.name}")
            log(f"wrote {plots.training_curves(history, out / 'curves.png', title)}")
        except ImportError:
            log('no plots: matplotlib is missing (pip install -e ".[plot]")')
    return history
