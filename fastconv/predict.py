"""``fastconv predict MODEL INPUT``: class probabilities of a batch of images by a trained model.

MODEL is an ONNX file (``.onnx``, run by ``fastconv.onnx``) or a fastconv model file (``fc.save``, or a
checkpoint of ``fastconv train`` / ``train.fit``). INPUT is an ``.npy`` array (N, C, H, W) or (C, H, W)
of model-ready numbers, an ``.npz`` holding one such array (or the one named by ``key``), or a folder
of PNG/JPEG images, which are read in name order, converted to the model's channels (grey or RGB),
resized to its input size (bilinear) and normalized: scaled to [0, 1], then (x - mean) / std, with the
mean and std a fastconv checkpoint records or those given (default none).

The model runs through ``logits_in_batches``: batches of one size (the last one zero-padded), kernels picked by
rule. ``fastconv.distributed.predict`` (``fastconv predict --workers N``) runs the same function on each chunk
of a Dask cluster, so both give the same numbers.
"""
from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np

from . import nn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Predictor:
    """A model as a function of a batch: `logits(x)` (N, classes); what its input must be, and class names."""
    name: str
    logits: object
    channels: int | None
    size: tuple[int, int] | None
    dtype: np.dtype
    classes: list[str] | None
    mean: list[float] | None
    std: list[float] | None
    module: nn.Module | None = None  # the fastconv model behind `logits`, None for an ONNX file
    source: Path | None = None       # the file it was loaded from, None for a module given in code


def module_predictor(model: nn.Module, name: str | None = None, meta: dict | None = None) -> Predictor:
    """A fastconv model as a Predictor (``model.predict``: eval mode, no gradients); `meta`: what a checkpoint
    records (settings, class names, mean and std)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    meta = meta or {}
    settings = meta.get("settings", {})
    first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
    size = None
    if settings.get("data") in ("mnist", "cifar10"):
        size = (28, 28) if settings["data"] == "mnist" else (32, 32)
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype if state else np.float32
    return Predictor(name or type(model).__name__, lambda x: model.predict(x), getattr(first, "in_channels", None),
                     size, np.dtype(dtype), meta.get("classes"), meta.get("mean"), meta.get("std"), model)


def load_predictor(path: Path) -> Predictor:
    """The model at `path`: ONNX (by suffix or content) or a fastconv model file / checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    with open(path, "rb") as f:
        zipped = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    if path.suffix.lower() == ".onnx" or not zipped:
        from . import onnx as fx
        model = fx.load(path)
        if len(model.input_names) != 1:
            raise ValueError(f"{path} takes {len(model.input_names)} inputs; predict feeds one batch of images")
        _, dtype, shape = model.inputs[0]
        rank4 = shape is not None and len(shape) == 4
        return Predictor(str(path), lambda x: model.run({model.input_names[0]: x})[model.output_names[0]],
                         shape[1] if rank4 else None, (shape[2], shape[3]) if rank4 and shape[2] and shape[3] else None,
                         dtype, None, None, None, None, path)
    from . import serialize, train
    predictor = module_predictor(serialize.load(path), str(path), train.read_meta(path))
    predictor.source = path
    return predictor


def read_inputs(source: Path, predictor: Predictor, key: str | None = None, size: tuple[int, int] | None = None,
                mean: list[float] | None = None, std: list[float] | None = None) -> tuple[list[str], np.ndarray]:
    """(item names, batch (N, C, H, W) in the model's dtype) from an .npy/.npz file or a folder of images."""
    if source.is_dir():
        return _read_images(source, predictor, size or predictor.size, mean or predictor.mean, std or predictor.std)
    if not source.is_file():
        raise FileNotFoundError(f"no input at {source}")
    if source.suffix.lower() == ".npz":
        with np.load(source, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None and len(names) != 1:
                raise ValueError(f"{source} holds arrays {names[:10]}: name one with --key")
            if key is not None and key not in names:
                raise ValueError(f"{source} has no array {key!r}; it holds {names[:10]}")
            batch = archive[key or names[0]]
    elif source.suffix.lower() == ".npy":
        batch = np.load(source, allow_pickle=False)
    else:
        raise ValueError(f"INPUT must be an .npy or .npz file or a folder of PNG/JPEG images, got {source}")
    if batch.dtype.kind not in "fiu" or batch.ndim not in (3, 4):
        raise ValueError(f"{source} holds a {batch.dtype} array of shape {batch.shape}; predict needs numbers of "
                         "shape (N, C, H, W) or (C, H, W)")
    batch = batch.reshape((1, *batch.shape)) if batch.ndim == 3 else batch
    return [f"{source.name}[{i}]" for i in range(len(batch))], batch.astype(predictor.dtype)


def _read_images(folder: Path, predictor: Predictor, size: tuple[int, int] | None, mean: list[float] | None,
                 std: list[float] | None) -> tuple[list[str], np.ndarray]:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install pillow (matplotlib brings it)") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no PNG or JPEG image")
    if size is None:
        raise ValueError("the model does not say its input size: pass --size HxW")
    channels = predictor.channels or 3
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels} channels; images give 1 (grey) or 3 (RGB)")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(image, np.float32) / 255.0
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path} is not a readable image: {error}") from None
        images.append(array.reshape(size[0], size[1], channels).transpose(2, 0, 1))
    batch = np.stack(images)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ValueError(f"--{name} needs 1 or {channels} values, got {len(values)}")
    if mean is not None:
        batch -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    if std is not None:
        batch /= np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return [p.name for p in files], batch.astype(predictor.dtype)


@contextlib.contextmanager
def kernels_by_rule(algorithm: str | None = None, workspace: int | None = None) -> Iterator[None]:
    """Within the block ``algo="auto"`` picks each kernel by its rule and times nothing (``autotune.by_rule``), so
    that every process computes a problem with the same algorithm; `algorithm` and `workspace`, when given, hold
    as ``set_conv2d_algorithm`` and ``set_workspace_limit`` do (for the whole process; the rules read both) and
    are put back after."""
    from . import autotune, config
    saved = config.conv2d_algorithm(), config.workspace_limit()
    try:
        if algorithm is not None and algorithm != saved[0]:
            config.set_conv2d_algorithm(algorithm)
        if workspace is not None and workspace != saved[1]:
            config.set_workspace_limit(workspace)
        with autotune.by_rule():
            yield
    finally:
        if config.conv2d_algorithm() != saved[0]:
            config.set_conv2d_algorithm(saved[0])
        if config.workspace_limit() != saved[1]:
            config.set_workspace_limit(saved[1])


def as_predictor(model: object) -> Predictor:
    """A Predictor of `model`: itself, a fastconv ``nn.Module`` (``module_predictor``) or a model file's path
    (``load_predictor``); TypeError for anything else."""
    if isinstance(model, Predictor):
        return model
    if isinstance(model, nn.Module):
        return module_predictor(model)
    if isinstance(model, (str, Path)):
        return load_predictor(Path(model))
    raise TypeError(f"model must be a fastconv.nn.Module or the path of a model file (.onnx, fc.save, a checkpoint "
                    f"of fastconv train), got {type(model).__name__}")


def logits_in_batches(predictor: Predictor | nn.Module | str | Path, x: np.ndarray, batch_size: int = 64, *,
                      progress: Callable[[int], object] | None = None) -> np.ndarray:
    """The model's outputs (N, outputs) for the images x (N, C, H, W) (`predictor`: a Predictor, or what
    ``as_predictor`` takes), computed in batches of `batch_size` rows in the model's dtype, the last partial
    batch zero-padded to `batch_size` (as ``train.evaluate`` does), with kernels picked by rule
    (``kernels_by_rule``): every row is computed in a problem of one size by one algorithm, so its outputs
    depend on its own image and on `batch_size` only, not on the other rows, on where the batches start, on
    the kernels' thread count or on which process runs it (``fastconv predict``, and
    ``fastconv.distributed.predict`` on every worker, compute through this function). `progress` is called
    with the rows of each batch done. An empty x gives an array of shape (0, 0)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    batch_size = int(batch_size)
    predictor = as_predictor(predictor)
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must be a batch (N, C, H, W) of images, got shape {x.shape}")
    n = len(x)
    out = None
    with kernels_by_rule():
        for start in range(0, n, batch_size):
            rows = x[start:start + batch_size].astype(predictor.dtype, copy=False)
            m = len(rows)
            if m < batch_size:
                rows = np.concatenate([rows, np.zeros((batch_size - m, *x.shape[1:]), rows.dtype)])
            y = np.asarray(predictor.logits(np.ascontiguousarray(rows)))
            y = y.reshape(batch_size, -1)
            if out is None:
                out = np.empty((n, y.shape[1]), y.dtype)
            out[start:start + m] = y[:m]
            if progress is not None:
                progress(m)
    return out if out is not None else np.empty((0, 0), predictor.dtype)


def to_probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of the model's outputs (N, classes): softmax, unless the model ends in one."""
    sums = logits.sum(axis=1)
    already = (logits >= 0).all() and np.allclose(sums, 1, atol=1e-3)  # the model ends in a Softmax
    return logits if already else nn.softmax(logits.astype(np.float64)).astype(logits.dtype)


def predict(predictor: Predictor, batch: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Class probabilities (N, classes): softmax of the model's outputs, computed by ``logits_in_batches``."""
    from tqdm import tqdm
    with tqdm(total=len(batch), desc="predict", unit="img", file=sys.stderr,
              disable=not progress or len(batch) <= batch_size, leave=False) as bar:
        logits = logits_in_batches(predictor, batch, batch_size, progress=bar.update)
    return to_probabilities(logits)


def write_csv(path: Path, names: list[str], probabilities: np.ndarray, classes: list[str] | None, top_k: int) -> Path:
    """One row per item: its name, then the top-k (class, probability) pairs."""
    order = np.argsort(-probabilities, axis=1)[:, :top_k]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item"] + [f"{kind}{k + 1}" for k in range(order.shape[1]) for kind in ("class", "p")])
        for name, row, p in zip(names, order, probabilities):
            writer.writerow([name] + [v for c in row for v in (_label(c, classes), f"{p[c]:.6f}")])
    return path


def _label(index: int, classes: list[str] | None) -> str:
    return classes[index] if classes and index < len(classes) else str(int(index))


def command(model: Path, source: Path, top_k: int = 5, batch_size: int = 64, out: Path | None = None,
            key: str | None = None, size: tuple[int, int] | None = None, mean: list[float] | None = None,
            std: list[float] | None = None, progress: bool = True, show: int = 20, workers: int | None = None,
            scheduler: str | None = None) -> int:
    """``fastconv predict``: print the top-k classes of each item (the first `show`) and write them as CSV. With
    `workers` (a local Dask cluster of that many processes) or `scheduler` (an existing cluster) the model runs
    on the cluster (``fastconv.distributed.predict``), with the same results."""
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"--top-k and --batch-size must be at least 1, got {top_k} and {batch_size}")
    if workers is not None and scheduler is not None:
        raise ValueError("--workers and --scheduler: give one of them (a local cluster, or an existing one's address)")
    if workers is not None or scheduler is not None:
        from . import distributed
        distributed._require_dask()  # says what to install before the model and the images are read
    predictor = load_predictor(model)
    names, batch = read_inputs(source, predictor, key, size, mean, std)
    if workers is None and scheduler is None:
        probabilities = predict(predictor, batch, batch_size, progress)
    else:
        with distributed.cluster(workers, scheduler) as client:
            logits = distributed.predict(predictor, distributed.chunked(batch, batch_size, client=client), client=client,
                                         batch_size=batch_size)
            probabilities = to_probabilities(distributed.gather(logits, client, progress=progress, desc="predict"))
    order = np.argsort(-probabilities, axis=1)[:, :top_k]
    for name, row, p in list(zip(names, order, probabilities))[:show]:
        print(f"{name}: " + ", ".join(f"{_label(c, predictor.classes)} {p[c]:.1%}" for c in row))
    if len(names) > show:
        print(f"... and {len(names) - show} more")
    written = write_csv(out or Path("predictions.csv"), names, probabilities, predictor.classes, top_k)
    print(f"wrote {written} ({len(names)} items, top {min(top_k, probabilities.shape[1])} classes each)")
    return 0
