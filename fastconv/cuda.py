"""The pieces of a training step on an NVIDIA GPU, on device arrays: products, ReLU, sums, BatchNorm's
per-channel arithmetic, losses and optimizer updates (conv2d, pooling and GEMM are records of their ops'
registries: conv.py, pool.py, gemm.py). The numba.cuda kernels of ``fastconv.kernels.cuda_*`` run on the
default stream (asynchronously: results are device arrays; ``fastconv.device.synchronize()`` waits).
"""
from __future__ import annotations

from functools import cache
from types import ModuleType

import numpy as np

from .device import as_device, empty, require_cuda, to_device, zeros as device_zeros


@cache
def kernels() -> dict[str, ModuleType]:
    """The numba.cuda kernel modules, imported on first use (numba.cuda is imported only then)."""
    require_cuda()
    from .kernels import cuda_elementwise, cuda_matmul
    return {"elementwise": cuda_elementwise, "gemm": cuda_matmul}


def _k(name: str) -> ModuleType:
    return kernels()[name]


def zeros(shape: tuple[int, ...], dtype: np.dtype) -> object:
    return device_zeros(shape, dtype, "cuda")


def flat(a: object) -> object:
    return a.reshape(a.size)


def channel_sum(a, out=None):
    """(C,) sums over N and the spatial positions of a (N, C, ...) device array; added into `out` if given."""
    a3 = a.reshape(a.shape[0], a.shape[1], a.size // max(1, a.shape[0] * a.shape[1]))
    if out is None:
        out = zeros((a.shape[1],), a.dtype) if a.size == 0 else empty((a.shape[1],), a.dtype)
        beta = 0.0
    else:
        beta = 1.0
    if a.size:
        _k("elementwise").channel_sum(a3, out, beta)
    return out


# ---- the pieces of a training step ---------------------------------------------------------

def matmul(a, b, trans_a: bool = False, trans_b: bool = False, out=None):
    """op(a) @ op(b) for validated C-contiguous device matrices (op transposes in place, no copy);
    added into `out` when given."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = empty((m, n), a.dtype) if out is None else out
    _k("gemm").gemm(a, b, c, trans_a, trans_b, 0.0 if out is None else 1.0)
    return c


def relu(x):
    y = empty(x.shape, x.dtype)
    if x.size:
        _k("elementwise").relu_forward(flat(x), flat(y))
    return y


def relu_backward(grad_y, y):
    gx = empty(y.shape, y.dtype)
    if y.size:
        _k("elementwise").relu_backward(flat(grad_y), flat(y), flat(gx))
    return gx


def add(a, b, out=None):
    """a + b for device arrays of one shape; into `out` (which may be a) when given."""
    out = empty(a.shape, a.dtype) if out is None else out
    if a.size:
        _k("elementwise").add(flat(a), flat(b), flat(out))
    return out


def mul(a, b, out=None):
    out = empty(a.shape, a.dtype) if out is None else out
    if a.size:
        _k("elementwise").mul(flat(a), flat(b), flat(out))
    return out


def add_channel_bias(y, b) -> None:
    """y (N, K, ...) += b[k], in place."""
    if y.size:
        _k("elementwise").add_channel_bias(y.reshape(y.shape[0], y.shape[1], y.size // (y.shape[0] * y.shape[1])), b)


def channel_affine(x, scale, shift):
    """x (N, C, ...) * scale[c] + shift[c]."""
    y = empty(x.shape, x.dtype)
    if x.size:
        n, c = x.shape[0], x.shape[1]
        _k("elementwise").channel_affine(x.reshape(n, c, x.size // (n * c)), scale, shift,
                                         y.reshape(n, c, x.size // (n * c)))
    return y


def batch_norm_backward_input(g, xhat, mean_g, mean_gxhat):
    n, c = g.shape[0], g.shape[1]
    shape3 = (n, c, g.size // (n * c))
    gx = empty(g.shape, g.dtype)
    _k("elementwise").batch_norm_backward_input(g.reshape(shape3), xhat.reshape(shape3), mean_g, mean_gxhat,
                                                gx.reshape(shape3))
    return gx


def total(a) -> float:
    """The sum of all elements, as a Python float (synchronizes)."""
    return _k("elementwise").total(flat(a)) if a.size else 0.0


def softmax(logits):
    out = empty(logits.shape, logits.dtype)
    _k("elementwise").softmax(logits, out)
    return out


def cross_entropy(logits, labels) -> tuple[float, object]:
    """(mean loss, grad) as ``fastconv.nn.cross_entropy``; labels int64 on the device or the host
    (host labels are checked against the class count, device labels are trusted)."""
    n, classes = logits.shape
    if isinstance(labels, np.ndarray):
        labels = to_device(labels.astype(np.int64))
    else:
        labels = as_device("labels", labels, kinds="i")
        if labels.dtype != np.int64 or labels.shape != (n,):
            raise ValueError(f"labels must be an int64 array of shape ({n},), got {labels.dtype} {labels.shape}")
    grad, losses = empty(logits.shape, logits.dtype), empty((n,), logits.dtype)
    _k("elementwise").cross_entropy(logits, labels, grad, losses)
    return total(losses) / n, grad


def fill(a, value: float) -> None:
    if a.size:
        _k("elementwise").fill(flat(a), value)


def sgd_update(p, g, buf, *args) -> None:
    _k("elementwise").sgd_update(flat(p), flat(g), flat(buf), *args)


def adam_update(p, g, m, v, *args) -> None:
    _k("elementwise").adam_update(flat(p), flat(g), flat(m), flat(v), *args)


def scaled_difference(a, b, scale: float):
    out = empty(a.shape, a.dtype)
    if a.size:
        _k("elementwise").scaled_difference(flat(a), flat(b), scale, flat(out))
    return out
