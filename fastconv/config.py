"""Process-wide settings of fastconv (the workspace limit, a fixed conv2d algorithm), and the scratch buffers kernels
reuse across calls."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from numbers import Integral

import numpy as np

_workspace_limit = 256 * 2**20


def workspace_limit() -> int:
    """Bytes an algorithm may use for scratch buffers (im2col's column matrix): 256 MiB by default."""
    return _workspace_limit


def set_workspace_limit(nbytes: int) -> None:
    """Set the scratch-buffer cap in bytes; im2col then works through the batch in chunks that fit."""
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, Integral) or nbytes < 1:
        raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
    _workspace_limit = int(nbytes)


def batch_chunk(what: str, per_image: int, n: int, target: int, fixed: int = 0) -> int:
    """Images per batch chunk for an algorithm needing `per_image` bytes of workspace per image plus
    `fixed` bytes whatever the chunk: the fewest chunks within both the workspace limit and `target`
    bytes (at least one image each), of equal size. ValueError, naming `what`, when one image does not
    fit the limit."""
    limit = workspace_limit()
    if fixed + per_image > limit:
        raise ValueError(
            f"{what} needs {(fixed + per_image) / 2**20:.1f} MiB of workspace for one image, above the workspace "
            f"limit of {limit / 2**20:.1f} MiB: raise it with fastconv.set_workspace_limit() or use algo='direct'"
        )
    most = max(1, min(n, (limit - fixed) // per_image, target // per_image))
    chunks = -(-n // most)
    return -(-n // chunks)


_scratch = threading.local()


def scratch(name: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A flat scratch array of `size` elements named `name`, kept per thread and reused by later calls
    (no page faults, no allocator churn); its contents are undefined."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get((name, np.dtype(dtype)))
    if buf is None or buf.size < size:
        buffers.pop((name, np.dtype(dtype)), None)  # free the old one before allocating the bigger one
        buf = buffers[(name, np.dtype(dtype))] = np.empty(size, dtype)
    return buf[:size]


_kept: dict[tuple, tuple] = {}
_kept_lock = threading.Lock()


def unchanging(array: np.ndarray) -> bool:
    """Whether `array` is taken to stay as it is while it lives: read-only, and so is every array it views, down to
    memory that is its own or an immutable bytes object (a loaded ONNX model's weights). An array that owns its
    memory can be made writeable again: whoever does so and writes to it must not have handed it to a kernel as
    unchanging."""
    base = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    return base is None or isinstance(base, bytes)


def kept_for(array: np.ndarray, key: tuple, make: Callable[[], object]) -> object | None:
    """``make()``, computed once per (`array`, `key`) and kept while `array` lives, where `array` is ``unchanging``
    (a kernel's packed or transformed weights); None for any other array (the caller computes its own)."""
    if not unchanging(array):
        return None
    entry = (id(array), key)
    with _kept_lock:
        hit = _kept.get(entry)
    if hit is not None and hit[0]() is array:
        return hit[1]
    value = make()
    with _kept_lock:
        _kept[entry] = (weakref.ref(array, lambda _, entry=entry: _kept.pop(entry, None)), value)
    return value


def release_scratch() -> None:
    """Free this thread's scratch buffers (they are allocated again when needed)."""
    _scratch.__dict__.pop("buffers", None)


_conv2d_algorithm = "auto"


def conv2d_algorithm() -> str:
    """The algorithm every ``conv2d`` call made with ``algo="auto"`` runs (its backward passes and the layers of
    every model included): 'auto', the default (measured per problem, ``fastconv.autotune``), or the name
    ``set_conv2d_algorithm`` fixed."""
    return _conv2d_algorithm


def set_conv2d_algorithm(name: str = "auto") -> None:
    """Fix the algorithm of every ``algo="auto"`` conv2d call, forward and backward, in this process: `name` is
    one of ``fastconv.algorithms("conv2d")`` (or of its ``device="cuda"`` list, for models on the GPU), or 'auto'
    to measure again. Calls that name an algorithm keep theirs. There is no fallback: a call the fixed algorithm
    cannot compute (depthwise on a dense layer, winograd on a 5x5 kernel, a workspace above the limit, a name
    without a version on the array's device) raises ValueError saying so. ``fastconv train --algo NAME`` sets it."""
    global _conv2d_algorithm
    from .conv import CONV2D  # conv imports this module
    names = list(dict.fromkeys(CONV2D.names("cpu") + CONV2D.names("cuda")))
    if not isinstance(name, str) or (name != "auto" and name not in names):
        raise ValueError(f"name must be 'auto' or one of {names}, got {name!r}")
    _conv2d_algorithm = name
