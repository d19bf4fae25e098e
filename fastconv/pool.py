"""Max and average pooling, forward and backward, with the semantics of torch.nn.functional.

Every algorithm is a (forward, backward) pair over batched, C-contiguous, validated arrays
and the ``Pool2dShape`` ``p``; ``naive`` is the plain-Python reference, ``direct`` the
compiled window loop.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np

from . import cuda, naive
from ._checks import MAX_SIZE_ARG, Pool2dShape, batched, check_algo, check_grad, contiguous, pool2d_shape
from .device import is_device_array
from .kernels import pool as pool_kernels


def _max_forward_direct(x: np.ndarray, p: Pool2dShape) -> tuple[np.ndarray, np.ndarray]:
    y = np.empty(p.y_shape, x.dtype)
    idx = np.empty(p.y_shape, np.int64)
    pool_kernels.max_pool2d_forward(x, y, idx, *p.kernel, *p.stride, *p.padding, *p.dilation)
    return y, idx


def _max_backward_direct(grad_y: np.ndarray, x: np.ndarray, p: Pool2dShape) -> np.ndarray:
    _, idx = _max_forward_direct(x, p)
    gx = np.empty(x.shape, x.dtype)
    pool_kernels.max_pool2d_backward(grad_y, idx, gx)
    return gx


def _avg_forward_direct(x: np.ndarray, p: Pool2dShape, count_include_pad: bool,
                        divisor_override: int | None) -> np.ndarray:
    y = np.empty(p.y_shape, x.dtype)
    pool_kernels.avg_pool2d_forward(x, y, *p.kernel, *p.stride, *p.padding, count_include_pad,
                                    divisor_override or 0)
    return y


def _avg_backward_direct(grad_y: np.ndarray, x: np.ndarray, p: Pool2dShape, count_include_pad: bool,
                         divisor_override: int | None) -> np.ndarray:
    gx = np.empty(x.shape, x.dtype)
    pool_kernels.avg_pool2d_backward(grad_y, gx, *p.kernel, *p.stride, *p.padding, count_include_pad,
                                     divisor_override or 0)
    return gx


MAX_POOL2D_ALGORITHMS = {
    "naive": (naive.max_pool2d, naive.max_pool2d_backward),
    "direct": (_max_forward_direct, _max_backward_direct),
}
AVG_POOL2D_ALGORITHMS = {
    "naive": (naive.avg_pool2d, naive.avg_pool2d_backward),
    "direct": (_avg_forward_direct, _avg_backward_direct),
}


def _prepare(op: str, algorithms: dict, x: np.ndarray, kernel_size, stride, padding, dilation,
             ceil_mode, algo: str) -> tuple[np.ndarray, bool, Pool2dShape, str]:
    check_algo(op, algo, list(algorithms))
    xb, unbatched = batched("x", x)
    p = pool2d_shape(xb, kernel_size, stride, padding, dilation, ceil_mode)
    return contiguous(xb), unbatched, p, ("direct" if algo == "auto" else algo)


def _grad(grad_y: np.ndarray, p: Pool2dShape, unbatched: bool, dtype: np.dtype) -> np.ndarray:
    gy = check_grad("grad_y", grad_y, p.y_shape[1:] if unbatched else p.y_shape, dtype)
    return contiguous(gy[None] if unbatched else gy)


def max_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False, *, algo: str = "auto"):
    """2-D max pooling with the semantics of ``torch.nn.functional.max_pool2d``.

    x: (N, C, H, W) or unbatched (C, H, W), float32/float64. kernel_size, stride (default:
    kernel_size), padding (at most half the kernel; padded positions never win) and dilation
    take an int or a (h, w) pair. Returns y (N, C, OH, OW) with
    OH = floor((H + 2*pad - dilation*(k-1) - 1) / stride) + 1 (ceil with ``ceil_mode``, as PyTorch),
    and with ``return_indices`` also int64 indices h*W + w into each input plane.
    NaN propagates: a window holding NaN yields NaN. Device arrays run on the GPU.
    """
    if is_device_array(x):
        return cuda.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, algo=algo)
    xb, unbatched, p, algo = _prepare("max_pool2d", MAX_POOL2D_ALGORITHMS, x, kernel_size, stride,
                                      padding, dilation, ceil_mode, algo)
    if p.n == 0:
        y, idx = np.zeros(p.y_shape, xb.dtype), np.zeros(p.y_shape, np.int64)
    else:
        y, idx = MAX_POOL2D_ALGORITHMS[algo][0](xb, p)
    if unbatched:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                        dilation=1, ceil_mode: bool = False, *, indices: np.ndarray | None = None,
                        algo: str = "auto") -> np.ndarray:
    """Gradient of ``max_pool2d`` with respect to x: each grad_y element is added at the input
    position its maximum came from. grad_y is shaped like max_pool2d's output; returns x's shape.
    ``indices``: the ones ``max_pool2d(..., return_indices=True)`` returned for this x, which
    spares recomputing the maxima (as PyTorch's backward takes them); each must lie in [0, H*W)."""
    if is_device_array(x):
        return cuda.max_pool2d_backward(grad_y, x, kernel_size, stride, padding, dilation, ceil_mode,
                                        indices=indices, algo=algo)
    xb, unbatched, p, algo = _prepare("max_pool2d", MAX_POOL2D_ALGORITHMS, x, kernel_size, stride,
                                      padding, dilation, ceil_mode, algo)
    gy = _grad(grad_y, p, unbatched, xb.dtype)
    if p.n == 0:
        gx = np.zeros(xb.shape, xb.dtype)
    elif indices is not None:
        gx = _scatter(gy, _indices(indices, p, unbatched), p, algo)
    else:
        gx = MAX_POOL2D_ALGORITHMS[algo][1](gy, xb, p)
    return gx[0] if unbatched else gx


def _indices(indices: object, p: Pool2dShape, unbatched: bool) -> np.ndarray:
    """Validated int64 C-contiguous (N, C, OH, OW) indices into each input plane."""
    shape = p.y_shape[1:] if unbatched else p.y_shape
    if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu" or indices.shape != shape:
        raise ValueError(f"indices must be an integer array of the output's shape {shape}, got "
                         f"{getattr(indices, 'dtype', type(indices).__name__)} {getattr(indices, 'shape', '')}")
    idx = np.ascontiguousarray(indices.reshape(p.y_shape), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= p.h * p.w):
        raise ValueError(f"indices must lie in [0, {p.h * p.w}) (positions in an input plane of {p.h}x{p.w}), "
                         f"got values in [{idx.min()}, {idx.max()}]")
    return idx


def _scatter(gy: np.ndarray, idx: np.ndarray, p: Pool2dShape, algo: str) -> np.ndarray:
    """gx with each gy element added at its index (NumPy's add.at for 'naive', the compiled loop otherwise)."""
    gx = np.zeros((p.n, p.c, p.h, p.w), gy.dtype)
    if algo == "naive":
        planes = np.arange(p.n * p.c)[:, None]
        np.add.at(gx.reshape(p.n * p.c, -1), (planes, idx.reshape(p.n * p.c, -1)), gy.reshape(p.n * p.c, -1))
    else:
        pool_kernels.max_pool2d_backward(gy, idx, gx)
    return gx


def _check_avg_args(count_include_pad: object, divisor_override: object) -> None:
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad must be a bool, got {count_include_pad!r}")
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, Integral):
            raise TypeError(f"divisor_override must be None or an int, got {divisor_override!r}")
        if divisor_override == 0 or abs(divisor_override) > MAX_SIZE_ARG:
            raise ValueError(f"divisor_override must be None or a non-zero int of magnitude at most "
                             f"{MAX_SIZE_ARG}, got {divisor_override!r}")


def avg_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None, *,
               algo: str = "auto") -> np.ndarray:
    """2-D average pooling with the semantics of ``torch.nn.functional.avg_pool2d``.

    x: (N, C, H, W) or unbatched (C, H, W). Each output is its window's sum divided by
    ``divisor_override`` if given, else by the window size counting zero padding
    (``count_include_pad``) or by the number of input elements in it. Output size as max_pool2d
    with dilation 1. Device arrays run on the GPU.
    """
    _check_avg_args(count_include_pad, divisor_override)
    if is_device_array(x):
        return cuda.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                               algo=algo)
    xb, unbatched, p, algo = _prepare("avg_pool2d", AVG_POOL2D_ALGORITHMS, x, kernel_size, stride,
                                      padding, 1, ceil_mode, algo)
    if p.n == 0:
        y = np.zeros(p.y_shape, xb.dtype)
    else:
        y = AVG_POOL2D_ALGORITHMS[algo][0](xb, p, bool(count_include_pad),
                                           None if divisor_override is None else int(divisor_override))
    return y[0] if unbatched else y


def avg_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                        ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: int | None = None, *, algo: str = "auto") -> np.ndarray:
    """Gradient of ``avg_pool2d`` with respect to x: each grad_y element divided by its window's
    divisor and added to every input position of the window. Returns x's shape."""
    _check_avg_args(count_include_pad, divisor_override)
    if is_device_array(x):
        return cuda.avg_pool2d_backward(grad_y, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                        divisor_override, algo=algo)
    xb, unbatched, p, algo = _prepare("avg_pool2d", AVG_POOL2D_ALGORITHMS, x, kernel_size, stride,
                                      padding, 1, ceil_mode, algo)
    gy = _grad(grad_y, p, unbatched, xb.dtype)
    if p.n == 0:
        gx = np.zeros(xb.shape, xb.dtype)
    else:
        gx = AVG_POOL2D_ALGORITHMS[algo][1](gy, xb, p, bool(count_include_pad),
                                            None if divisor_override is None else int(divisor_override))
    return gx[0] if unbatched else gx
