"""Training and evaluation loops, data sets by name, and ``.npz`` checkpoints.

    history = fc.train.fit(model, optimizer, train_loader, test_loader, epochs=10, out_dir="runs/lenet5")

``fit`` runs epochs of (forward, cross-entropy, backward, step), evaluates on the test loader after each,
shows a progress bar with loss, accuracy and images/s, and (with ``out_dir``) writes ``history.json``,
``history.csv`` and ``checkpoint.npz`` after every epoch, so an interrupted run resumes from its last epoch.
Checkpoints hold only arrays and a JSON string: they load with ``allow_pickle=False``.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data, models, nn, optim
from ._checks import check_int
from .device import check_device, require_cuda, to

CHECKPOINT_VERSION = 1


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
    (the binary version). ``train_size``/``test_size`` then keep the first images of each."""
    if name == "mnist":
        mean, std, classes = data.MNIST_MEAN, data.MNIST_STD, tuple(str(d) for d in range(10))
        if data_dir is None:
            images, labels = data.load_mnist()
            parts = data.split(images, labels, 8000 if train_size is None else train_size, test_size)
            return Dataset(name, *parts, mean, std, classes)
        train, test = data.load_mnist(data_dir, train=True), data.load_mnist(data_dir, train=False)
    elif name == "cifar10":
        if data_dir is None:
            raise ValueError("CIFAR-10 needs --data-dir: the folder of the binary version (cifar-10-batches-bin)")
        mean, std, classes = data.CIFAR10_MEAN, data.CIFAR10_STD, data.CIFAR10_CLASSES
        train, test = data.load_cifar10(data_dir, train=True), data.load_cifar10(data_dir, train=False)
    else:
        raise ValueError(f"data set must be 'mnist' or 'cifar10', got {name!r}")
    for size, what in [(train_size, "train_size"), (test_size, "test_size")]:
        if size is not None and size < 1:
            raise ValueError(f"{what} must be at least 1, got {size}")
    train = (train[0][:train_size], train[1][:train_size])
    test = (test[0][:test_size], test[1][:test_size])
    return Dataset(name, *train, *test, mean, std, classes)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """A model of ``fastconv.models.MODELS`` sized for the data (LeNet-5 and the CIFAR CNN depend on the image size)."""
    if name not in models.MODELS:
        raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {name!r}")
    kwargs = dict(num_classes=num_classes, in_channels=in_channels)
    if name in ("lenet5", "cifar_cnn"):
        kwargs["image_size"] = image_size
    return models.MODELS[name](**kwargs)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=True, file=sys.stderr,
                dynamic_ncols=True)


def train_epoch(model: nn.Module, optimizer: optim.Optimizer, loader: data.DataLoader, *, progress: bool = True,
                desc: str = "train") -> dict[str, float]:
    """One pass over ``loader``: for each batch zero_grad, forward, cross-entropy, backward, step.
    Returns the mean loss and accuracy over the pass, its seconds and images/s."""
    model.train()
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


def evaluate(model: nn.Module, loader: data.DataLoader, num_classes: int) -> dict:
    """Mean loss, accuracy and the confusion matrix (rows: true class, columns: predicted) in eval mode."""
    model.eval()
    device = model.device
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, seen = 0.0, 0
    for x, y in loader:
        logits = model(to(x, device))
        loss, _ = nn.cross_entropy(logits, y)
        loss_sum += loss * len(y)
        seen += len(y)
        np.add.at(confusion, (y, to(logits, "cpu").argmax(axis=1)), 1)
    return {"test_loss": loss_sum / seen, "test_accuracy": float(np.trace(confusion) / seen), "confusion": confusion}


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: optim.Optimizer,
                    scheduler: optim.LRScheduler | None, meta: dict) -> Path:
    """Write model, optimizer and scheduler state and a JSON ``meta`` (run settings, history) to one .npz."""
    arrays = {f"model/{k}": to(v, "cpu") for k, v in model.state_dict().items()}
    arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    if scheduler is not None:
        arrays.update({f"scheduler/{k}": v for k, v in scheduler.state_dict().items()})
    arrays["meta"] = np.array(json.dumps({**meta, "version": CHECKPOINT_VERSION}))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint behind
    return path


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy entry of a checkpoint, trusting nothing in it: a format 1.0/2.0 header, a plain
    numeric or unicode dtype (no objects, so no pickle; no structured or empty dtypes), a shape of
    non-negative ints whose byte count is then read in chunks: only bytes really present are
    allocated, and exactly that count must be there."""
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
        nbytes = math.prod(shape) * dtype.itemsize
        contents = data._read_at_most(member, nbytes + 1)
    if len(contents) != nbytes:
        raise ValueError(f"{where} is {'truncated' if len(contents) < nbytes else 'too long'}: its header "
                         f"declares {nbytes} bytes of data")
    array = np.frombuffer(contents, dtype, math.prod(shape))
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(meta, {'model': ..., 'optimizer': ..., 'scheduler': ...}) from a checkpoint written by save_checkpoint.

    The file must be a zip (stored or deflated entries, none encrypted, no duplicate names) of
    .npy entries named 'meta' (a 0-d unicode array holding a JSON dict with the checkpoint version)
    and 'model/...', 'optimizer/...', 'scheduler/...'. Nothing is unpickled, and no array is
    allocated from a declared size before its bytes are read. Raises ValueError naming the file
    for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path} is not a fastconv checkpoint (.npz): it does not start as a zip file")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy") or key in arrays:
                    raise ValueError(f"{path}: unexpected or duplicate entry {info.filename!r}")
                if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(f"{path}: entry {info.filename!r} is encrypted or compressed with "
                                     f"method {info.compress_type}; only stored and deflated entries are read")
                arrays[key] = _read_npy(path, zf, info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, OverflowError, NotImplementedError,
            UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a fastconv checkpoint (.npz): {type(error).__name__}: {error}") from None
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise ValueError(f"{path} is not a fastconv checkpoint: it has no JSON 'meta' entry")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, too many digits, too deep
        raise ValueError(f"{path}: corrupt checkpoint metadata: {str(error)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("version") != CHECKPOINT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else meta
        raise ValueError(f"{path}: unsupported checkpoint version {str(version)[:100]}")
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
    """history.json and history.csv: one record per epoch."""
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    with open(out_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def fit(model: nn.Module, optimizer: optim.Optimizer, train_loader: data.DataLoader, test_loader: data.DataLoader,
        epochs: int, *, scheduler: optim.LRScheduler | None = None, num_classes: int = 10,
        out_dir: str | Path | None = None, meta: dict | None = None, history: list[dict] | None = None,
        progress: bool = True, log=print) -> list[dict]:
    """Train until ``epochs`` epochs are done (counting those already in ``history``, for resuming).

    After each epoch: evaluate on ``test_loader``, step the scheduler, append to the history and, with
    ``out_dir``, write history.json/.csv and checkpoint.npz (with ``meta`` and the history inside).
    Returns the history: per epoch lr, train loss/accuracy, test loss/accuracy, seconds and images/s.
    """
    history = list(history or [])
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    train_loader.epoch = len(history)
    for epoch in range(len(history) + 1, epochs + 1):
        lr = optimizer.lr
        stats = train_epoch(model, optimizer, train_loader, progress=progress, desc=f"epoch {epoch}/{epochs}")
        start = time.perf_counter()
        result = evaluate(model, test_loader, num_classes)
        record = {"epoch": epoch, "lr": lr, **stats, "test_loss": result["test_loss"],
                  "test_accuracy": result["test_accuracy"], "test_seconds": time.perf_counter() - start}
        history.append(record)
        if scheduler is not None:
            scheduler.step()
        log(f"epoch {epoch}/{epochs}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
            f"{record['train_seconds']:.1f} s, {record['images_per_second']:,.0f} img/s")
        if out is not None:
            write_history(out, history)
            save_checkpoint(out / "checkpoint.npz", model, optimizer, scheduler,
                            {**(meta or {}), "epochs_done": epoch, "history": history})
    return history


DEFAULT_SETTINGS = {
    "model": "lenet5", "data": "mnist", "data_dir": None, "train_size": None, "test_size": None,
    "epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": None, "momentum": 0.9, "nesterov": False,
    "weight_decay": 0.0, "schedule": "none", "step_size": 10, "augment": None, "seed": 0, "dtype": "float32",
    "device": "cpu",
}
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01}


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


def build_run(settings: dict) -> Run:
    """The data, model, optimizer, schedule and loaders that ``settings`` (keys of DEFAULT_SETTINGS) describe.
    Parameters are initialized from ``fc.manual_seed(settings['seed'])``."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(unknown)}")
    s = {**DEFAULT_SETTINGS, **settings}
    if s["optimizer"] not in DEFAULT_LR:
        raise ValueError(f"optimizer must be one of {sorted(DEFAULT_LR)}, got {s['optimizer']!r}")
    if s["schedule"] not in ("none", "step", "cosine"):
        raise ValueError(f"schedule must be 'none', 'step' or 'cosine', got {s['schedule']!r}")
    check_int("epochs", s["epochs"], 1)
    if check_device(s["device"]) == "cuda":
        require_cuda()  # says why before any data is loaded
    s["lr"] = DEFAULT_LR[s["optimizer"]] if s["lr"] is None else s["lr"]
    s["augment"] = (s["data"] == "cifar10") if s["augment"] is None else s["augment"]
    ds = load_dataset(s["data"], s["data_dir"], s["train_size"], s["test_size"])
    nn.manual_seed(s["seed"])
    _, channels, height, width = ds.train_images.shape
    model = build_model(s["model"], channels, min(height, width), len(ds.classes)).to(s["dtype"]).to(s["device"])
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
    test_loader = data.DataLoader(ds.test_images, ds.test_labels, max(s["batch_size"], 256), **loader_args)
    return Run(s, ds, model, opt, scheduler() if scheduler else None, train_loader, test_loader)


def restore(checkpoint: str | Path, **overrides) -> tuple[Run, list[dict]]:
    """The run saved in ``checkpoint`` with its weights, optimizer and schedule state, and its history.
    ``overrides`` replace settings (such as a larger ``epochs`` to train on, or another ``data_dir``)."""
    meta, parts = load_checkpoint(checkpoint)
    run = build_run({**meta["settings"], **{k: v for k, v in overrides.items() if v is not None}})
    run.model.load_state_dict(parts["model"])
    run.optimizer.load_state_dict(parts["optimizer"])
    if run.scheduler is not None and parts["scheduler"]:
        run.scheduler.load_state_dict(parts["scheduler"])
    return run, meta.get("history", [])


def train(settings: dict, out_dir: str | Path, *, resume: str | Path | None = None, progress: bool = True,
          log=print) -> list[dict]:
    """``fastconv train``: build (or resume) a run, fit it, and write its history, checkpoint and curves."""
    out = Path(out_dir)
    if resume is not None:
        run, history = restore(resume, **settings)
    else:
        run, history = build_run(settings), []
    ds = run.dataset
    log(f"{run.settings['model']} ({run.model.num_parameters():,} parameters) on {ds.name}: "
        f"{len(ds.train_labels):,} train / {len(ds.test_labels):,} test images, {run.settings['optimizer']} "
        f"lr {run.settings['lr']:g}, batch {run.settings['batch_size']}; writing to {out}")
    history = fit(run.model, run.optimizer, run.train_loader, run.test_loader, run.settings["epochs"],
                  scheduler=run.scheduler, num_classes=len(ds.classes), out_dir=out, meta=run.meta,
                  history=history, progress=progress, log=log)
    try:
        from . import plots
        log(f"wrote {plots.training_curves(history, out / 'curves.png')}")
    except ImportError:
        log('no plots: matplotlib is missing (pip install -e ".[plot]")')
    return history
