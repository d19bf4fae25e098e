"""Saving a model and loading it back without the code that built it: ``fc.save(model, path)``,
``model = fc.load(path)``.

The file is a fastconv checkpoint (``fastconv.train``): an .npz holding the model's ``state_dict``
('model/<name>' entries) and a JSON 'meta' with the model's architecture, each module's class name
and the arguments it was constructed with (numbers, strings, None, tuples, lists, dtypes and other
modules; ``Module.constructor_args``). So a ``Sequential`` of ``fc.nn`` layers, or a model of
``fc.models``, comes back as it was saved: same layers, weights, buffers, dtype and training mode.

Loading trusts nothing in the file: only classes of ``fastconv.nn`` (and the ones passed in
``modules``) are built, their parameters start as zeros (nothing is drawn, no memory is touched),
and every array's name, dtype and shape is checked against the rebuilt model before its data is read
(``train.load_checkpoint``). Anything else raises ValueError naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import nn
from ._checks import float_dtype, native

_TAGS = ("module", "tuple", "list", "dtype")


def _encode(value: object, where: str) -> object:
    """A constructor argument as JSON: plain values as they are, the rest tagged ({'module': ...}, ...)."""
    if isinstance(value, nn.Module):
        return {"module": architecture(value)}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [_encode(v, where) for v in value]}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"dtype": np.dtype(value).name}
    raise ValueError(f"cannot save {where}: a constructor argument is a {type(value).__name__}; fc.save keeps "
                     "numbers, strings, None, tuples, lists, dtypes and modules (save model.state_dict() instead)")


def architecture(module: nn.Module) -> dict:
    """{'type': class name, 'args': [...], 'kwargs': {...}}: what rebuilds `module` (weights aside)."""
    args, kwargs = module.constructor_args()
    where = type(module).__name__
    return {"type": where, "args": [_encode(a, where) for a in args],
            "kwargs": {k: _encode(v, where) for k, v in kwargs.items()}}


def _decode(value: object, classes: dict[str, type]) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _TAGS):
        raise ValueError(f"an argument must be a number, string, null or one of {list(_TAGS)}, got "
                         f"{str(value)[:80]}")
    (tag, inner), = value.items()
    if tag == "module":
        return _build(inner, classes)
    if tag == "dtype":
        if inner not in ("float32", "float64"):
            raise ValueError(f"a dtype argument must be 'float32' or 'float64', got {str(inner)[:40]}")
        return np.dtype(inner)
    if not isinstance(inner, list):
        raise ValueError(f"a {tag} argument must hold a list, got {type(inner).__name__}")
    items = [_decode(v, classes) for v in inner]
    return tuple(items) if tag == "tuple" else items


def build(spec: object, classes: dict[str, type], budget: int) -> nn.Module:
    """The module `spec` (``architecture``) describes, its parameters zeros, all its arrays together at most
    `budget` bytes (``nn.zero_parameters``)."""
    with nn.zero_parameters(budget):
        return _build(spec, classes)


def _build(spec: object, classes: dict[str, type]) -> nn.Module:
    if not (isinstance(spec, dict) and set(spec) == {"type", "args", "kwargs"} and isinstance(spec["args"], list)
            and isinstance(spec["kwargs"], dict)):
        raise ValueError("a module must be described as {'type': ..., 'args': [...], 'kwargs': {...}}")
    cls = classes.get(spec["type"]) if isinstance(spec["type"], str) else None
    if cls is None:
        raise ValueError(f"unknown module class {str(spec['type'])[:80]!r}: fc.load builds fastconv.nn's layers and "
                         "the classes passed as modules={'Name': Class}")
    args = [_decode(a, classes) for a in spec["args"]]
    kwargs = {k: _decode(v, classes) for k, v in spec["kwargs"].items()}
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{cls.__name__}: {error}") from None


def _classes(modules: dict[str, type] | None) -> dict[str, type]:
    classes = {name: c for name, c in vars(nn).items() if isinstance(c, type) and issubclass(c, nn.Module)}
    for name, c in (modules or {}).items():
        if not (isinstance(c, type) and issubclass(c, nn.Module)):
            raise TypeError(f"modules must map names to Module subclasses, got {name!r}: {c!r}")
        classes[name] = c
    return classes


def _model_dtype(model: nn.Module) -> np.dtype:
    dtypes = {native(v.dtype) for v in model.state_dict().values() if np.dtype(v.dtype).kind == "f"}
    if len(dtypes) > 1:
        raise ValueError(f"cannot save a model whose arrays mix dtypes {sorted(map(str, dtypes))}: convert it "
                         "with model.to(dtype) first")
    return dtypes.pop() if dtypes else np.dtype(np.float32)


def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def describe(model: nn.Module) -> dict:
    """What ``load`` needs besides the weights: {'architecture', 'dtype', 'training'}; ValueError when the
    model does not rebuild from its constructor arguments (see ``save``)."""
    spec = architecture(model)
    state = model.state_dict()
    try:
        classes = {**_classes(None), **{type(m).__name__: type(m) for m in model.modules()}}
        rebuilt = build(json.loads(json.dumps(spec)), classes, 2 * sum(v.nbytes for v in state.values()))
    except ValueError as error:
        raise ValueError(f"cannot save {type(model).__name__}: it does not rebuild from its constructor "
                         f"arguments ({error})") from None
    if _shapes(rebuilt) != _shapes(model):
        raise ValueError(f"cannot save {type(model).__name__}: its layers changed after it was constructed, so its "
                         "constructor arguments no longer describe it; save model.state_dict() instead")
    return {"architecture": spec, "dtype": _model_dtype(model).name, "training": bool(model.training)}


def save(model: nn.Module, path: str | Path) -> Path:
    """Write `model` (architecture, parameters and buffers, dtype, training mode) to `path` (.npz),
    atomically. Parameters on the GPU are copied to the host. Raises ValueError when the model cannot be
    rebuilt from its constructor arguments (a layer added or replaced after construction, a constructor
    argument of another type: save ``model.state_dict()`` then). Layers of classes outside ``fastconv.nn``
    are saved by class name: ``load`` needs them passed as ``modules``."""
    from .device import to
    from .train import CHECKPOINT_VERSION, _atomic_write
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    meta = {**describe(model), "epochs_done": 0, "history": [], "version": CHECKPOINT_VERSION}
    arrays = {f"model/{k}": to(v, "cpu") for k, v in model.state_dict().items()}
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    return _atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: str | Path, modules: dict[str, type] | None = None) -> nn.Module:
    """The model saved by ``save`` at `path` (on the CPU; ``.to('cuda')`` moves it). A checkpoint of
    ``fastconv train`` or ``train.fit`` loads too (its model; the optimizer state is not used). `modules`:
    classes outside ``fastconv.nn`` that the file names, as {'Name': Class}.

    The file's entries are read first (``train.load_checkpoint``: bounded, nothing unpickled), then the
    model is built from its meta's architecture with at most twice the bytes of weights the file holds,
    and every entry must match the model's names and shapes. ValueError names the file otherwise."""
    from . import train
    path = Path(path)
    classes = _classes(modules)
    meta, parts = train.load_checkpoint(path)
    if "architecture" not in meta:
        if "settings" in meta:
            return train.restore(path)[0].model
        raise ValueError(f"{path}: the checkpoint says nothing of its model's architecture (no 'architecture' or "
                         "'settings' in its meta): build the model in code and load its weights with "
                         "train.load_checkpoint and model.load_state_dict")
    weights = parts["model"]
    try:
        dtype = float_dtype(meta.get("dtype"))
        model = build(meta["architecture"], classes, 2 * sum(v.nbytes for v in weights.values()))
    except (TypeError, ValueError, MemoryError, RecursionError) as error:
        raise ValueError(f"{path}: cannot build the model its meta describes: {str(error)[:300]}") from None
    if not isinstance(meta.get("training", True), bool):
        raise ValueError(f"{path}: checkpoint meta field 'training' must be true or false")
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != _shapes(model):
        missing, unexpected = sorted(set(_shapes(model)) - set(shapes)), sorted(set(shapes) - set(_shapes(model)))
        wrong = sorted(k for k in set(shapes) & set(_shapes(model)) if shapes[k] != _shapes(model)[k])
        raise ValueError(f"{path}: the weights do not fit the model its meta describes: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, of another shape {wrong[:5]}")
    state = model.state_dict()
    odd = sorted(k for k, v in weights.items() if v.dtype.kind not in ("f" if state[k].dtype.kind == "f" else "iu"))
    if odd:
        raise ValueError(f"{path}: entries {odd[:5]} hold {weights[odd[0]].dtype}, not the model's kind of numbers")
    model.to(dtype)
    model.load_state_dict(weights)
    return model.train(meta.get("training", True))
