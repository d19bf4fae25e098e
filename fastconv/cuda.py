"""The ops on an NVIDIA GPU: conv2d, pooling, GEMM and the pieces of a training step, on device arrays.

The public functions of fastconv (``fc.conv2d``, ``fc.max_pool2d``, ...) come here when x is a
device array; arguments are validated by the same shape rules as on the CPU, then the numba.cuda
kernels of ``fastconv.kernels.cuda_*`` run on the default stream (asynchronously: results are
device arrays; ``fastconv.device.synchronize()`` waits). Every algorithm is a (forward, backward)
pair with the signatures of the CPU tables in conv.py and pool.py.
"""
from __future__ import annotations

from functools import cache
from types import ModuleType

import numpy as np

from ._checks import (Conv2dShape, Pool2dShape, batched, check_algo, check_array, check_fits, check_grad,
                      conv2d_shape, pool2d_shape)
from .config import batch_chunk, workspace_limit
from .device import as_device, empty, require_cuda, to_device


@cache
def kernels() -> dict[str, ModuleType]:
    """The numba.cuda kernel modules, imported on first use (numba.cuda is imported only then)."""
    require_cuda()
    from .kernels import cuda_conv, cuda_elementwise, cuda_gemm, cuda_pool
    return {"conv": cuda_conv, "elementwise": cuda_elementwise, "gemm": cuda_gemm, "pool": cuda_pool}


def _k(name: str) -> ModuleType:
    return kernels()[name]


def zeros(shape: tuple[int, ...], dtype: np.dtype) -> object:
    a = empty(shape, dtype)
    if a.size:
        _k("elementwise").fill(a.reshape(a.size), 0)
    return a


def flat(a: object) -> object:
    return a.reshape(a.size)


# ---- conv2d -----------------------------------------------------------------------------------------

def _conv_args(p: Conv2dShape) -> tuple[int, ...]:
    """stride, top/left padding and dilation in the kernels' order (sh, sw, pt, pl, dh, dw)."""
    return (*p.stride, p.padding[0], p.padding[2], *p.dilation)


def _forward_direct(x, weight, bias, p: Conv2dShape):
    y = empty(p.y_shape, x.dtype)
    _k("conv").conv2d_forward(x, weight, bias, y, *_conv_args(p), p.groups)
    return y


def _backward_direct(grad_y, x, weight, p: Conv2dShape):
    gx, gw = empty(p.x_shape, x.dtype), empty(weight.shape, x.dtype)
    _k("conv").conv2d_backward_input(grad_y, weight, gx, *_conv_args(p), p.groups)
    _k("conv").conv2d_backward_weight(grad_y, x, gw, *_conv_args(p), p.groups)
    return gx, gw


def _im2col_args(p: Conv2dShape) -> tuple[int, ...]:
    return (p.padding[0], p.padding[2], *p.stride, *p.dilation, p.r, p.s, p.oh, p.ow)


def _im2col_bytes_per_image(p: Conv2dShape, itemsize: int) -> int:
    """The column matrix (C*R*S rows) and the GEMM's K output rows, OH*OW wide, per image."""
    return (p.c * p.r * p.s + p.k) * p.oh * p.ow * itemsize


def _chunk(p: Conv2dShape, itemsize: int) -> int:
    """Images per chunk: as many as the workspace limit allows (one big GEMM keeps a GPU busy)."""
    return batch_chunk("im2col", _im2col_bytes_per_image(p, itemsize), p.n, workspace_limit())


def _forward_im2col(x, weight, bias, p: Conv2dShape):
    """Per batch chunk: col (C*R*S, nb*OH*OW) = im2col(x); per group out_g = w_g @ col_g; y = out + bias."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _chunk(p, x.dtype.itemsize)
    col_all, out_all = empty((p.c * p.r * p.s, nb * plane), x.dtype), empty((p.k, nb * plane), x.dtype)
    w2 = weight.reshape(p.k, crs_g)
    y = empty(p.y_shape, x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col, out = _columns(col_all, m * plane), _columns(out_all, m * plane)
        _k("conv").im2col(x, col, n0, *_im2col_args(p))
        for g in range(p.groups):
            _k("gemm").gemm(w2[g * kg:(g + 1) * kg], col[g * crs_g:(g + 1) * crs_g], out[g * kg:(g + 1) * kg],
                            False, False)
        _k("conv").kn_to_nchw(out, bias, y, n0)
    return y


def _columns(buf, cols: int):
    """The first `cols` columns of a (rows, width) buffer as a C-contiguous (rows, cols) array (reusing it)."""
    return flat(buf)[:buf.shape[0] * cols].reshape(buf.shape[0], cols)


def _backward_im2col(grad_y, x, weight, p: Conv2dShape):
    """Per chunk and group: grad_w_g += gy_g @ col_g.T; dcol_g = w_g.T @ gy_g; grad_x = col2im(dcol)."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _chunk(p, x.dtype.itemsize)
    col_all, gy_all = empty((p.c * p.r * p.s, nb * plane), x.dtype), empty((p.k, nb * plane), x.dtype)
    w2 = weight.reshape(p.k, crs_g)
    gw = empty((p.k, crs_g), x.dtype)
    gx = empty(p.x_shape, x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col, gy = _columns(col_all, m * plane), _columns(gy_all, m * plane)
        _k("conv").nchw_to_kn(grad_y, gy, n0)
        _k("conv").im2col(x, col, n0, *_im2col_args(p))
        for g in range(p.groups):
            col_g, gy_g = col[g * crs_g:(g + 1) * crs_g], gy[g * kg:(g + 1) * kg]
            _k("gemm").gemm(gy_g, col_g, gw[g * kg:(g + 1) * kg], False, True, 1.0 if n0 else 0.0)
            _k("gemm").gemm(w2[g * kg:(g + 1) * kg], gy_g, col_g, True, False)  # col_g becomes dcol_g
        _k("conv").col2im(col, gx, n0, *_im2col_args(p))
    return gx, gw.reshape(weight.shape)


CONV2D_ALGORITHMS = {
    "direct": (_forward_direct, _backward_direct),
    "im2col": (_forward_im2col, _backward_im2col),
}


ALGORITHMS = {"conv2d": list(CONV2D_ALGORITHMS), "max_pool2d": ["direct"], "avg_pool2d": ["direct"],
              "gemm": ["tiled"]}


SMALL_FLOPS = 2**22  # below this a conv is a few microseconds of work: one direct kernel beats five launches


def choose_conv2d_algorithm(p: Conv2dShape, itemsize: int) -> str:
    """``auto`` on the GPU: im2col + tiled GEMM whenever one image's workspace fits the limit (the
    GEMM reuses every input through shared memory), except for tiny problems, where direct's single
    launch wins."""
    fits = _im2col_bytes_per_image(p, itemsize) <= workspace_limit()
    return "im2col" if fits and p.flops >= SMALL_FLOPS else "direct"


def _conv_prepare(x, weight, stride, padding, dilation, groups, algo: str):
    check_algo("conv2d", algo, list(CONV2D_ALGORITHMS))
    xb, unbatched = batched("x", as_device("x", x))
    weight = as_device("weight", weight)
    p = conv2d_shape(xb, weight, stride, padding, dilation, groups)
    if algo == "auto":
        algo = choose_conv2d_algorithm(p, xb.dtype.itemsize)
    if algo == "im2col" and p.n:
        _chunk(p, xb.dtype.itemsize)
    return xb, weight, unbatched, p, algo


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1, *, algo: str = "auto"):
    """``fastconv.conv2d`` on device arrays (see it for the semantics); returns a device array."""
    xb, weight, unbatched, p, algo = _conv_prepare(x, weight, stride, padding, dilation, groups, algo)
    if bias is None:
        b = zeros((p.k,), xb.dtype)
    else:
        b = check_array("bias", as_device("bias", bias), (1,), xb.dtype, device=True)
        if b.shape != (p.k,):
            raise ValueError(f"bias must have shape ({p.k},), got {b.shape}")
    y = CONV2D_ALGORITHMS[algo][0](xb, weight, b, p) if p.n else zeros(p.y_shape, xb.dtype)
    return y.reshape(p.y_shape[1:]) if unbatched else y


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups: int = 1, *, algo: str = "auto"):
    """``fastconv.conv2d_backward`` on device arrays: (grad_x, grad_weight, grad_bias) device arrays."""
    xb, weight, unbatched, p, algo = _conv_prepare(x, weight, stride, padding, dilation, groups, algo)
    gy = check_grad("grad_y", as_device("grad_y", grad_y), p.y_shape[1:] if unbatched else p.y_shape,
                    xb.dtype, device=True).reshape(p.y_shape)
    if p.n:
        gx, gw = CONV2D_ALGORITHMS[algo][1](gy, xb, weight, p)
    else:
        gx, gw = zeros(p.x_shape, xb.dtype), zeros(weight.shape, xb.dtype)
    gb = channel_sum(gy)
    return (gx.reshape(p.x_shape[1:]) if unbatched else gx), gw, gb


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


# ---- pooling ----------------------------------------------------------------------------------------

def _pool_prepare(op: str, x, kernel_size, stride, padding, dilation, ceil_mode, algo: str):
    check_algo(op, algo, ALGORITHMS[op])
    xb, unbatched = batched("x", as_device("x", x))
    return xb, unbatched, pool2d_shape(xb, kernel_size, stride, padding, dilation, ceil_mode)


def _pool_grad(grad_y, p: Pool2dShape, unbatched: bool, dtype):
    shape = p.y_shape[1:] if unbatched else p.y_shape
    return check_grad("grad_y", as_device("grad_y", grad_y), shape, dtype, device=True).reshape(p.y_shape)


def _window(p: Pool2dShape) -> tuple[int, ...]:
    return (*p.kernel, *p.stride, *p.padding)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False, *, algo: str = "auto"):
    """``fastconv.max_pool2d`` on device arrays; indices are an int64 device array."""
    xb, unbatched, p = _pool_prepare("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode, algo)
    y, idx = empty(p.y_shape, xb.dtype), empty(p.y_shape, np.int64)
    if p.n:
        _k("pool").max_pool2d_forward(xb, y, idx, *_window(p), *p.dilation)
    if unbatched:
        y, idx = y.reshape(p.y_shape[1:]), idx.reshape(p.y_shape[1:])
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_y, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False, *,
                        indices=None, algo: str = "auto"):
    """``fastconv.max_pool2d_backward`` on device arrays. ``indices`` (from ``max_pool2d(...,
    return_indices=True)`` on this x) spare recomputing the maxima; they are trusted to lie in the plane."""
    xb, unbatched, p = _pool_prepare("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode, algo)
    gy = _pool_grad(grad_y, p, unbatched, xb.dtype)
    gx = empty((p.n, p.c, p.h, p.w), xb.dtype)
    if p.n:
        if indices is None:
            _, idx = max_pool2d(xb, kernel_size, stride, padding, dilation, ceil_mode, True)
        else:
            idx = as_device("indices", indices, kinds="i")
            if idx.shape != (p.y_shape[1:] if unbatched else p.y_shape) or idx.dtype != np.int64:
                raise ValueError(f"indices must be an int64 device array of the output's shape, got "
                                 f"{idx.dtype} {idx.shape}")
            idx = idx.reshape(p.y_shape)
        _k("pool").max_pool2d_backward(gy, idx, gx)
    return gx.reshape((p.c, p.h, p.w)) if unbatched else gx


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None, *, algo: str = "auto"):
    """``fastconv.avg_pool2d`` on device arrays (arguments checked by the caller)."""
    xb, unbatched, p = _pool_prepare("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode, algo)
    y = empty(p.y_shape, xb.dtype)
    if p.n:
        _k("pool").avg_pool2d_forward(xb, y, *_window(p), bool(count_include_pad), divisor_override or 0)
    return y.reshape(p.y_shape[1:]) if unbatched else y


def avg_pool2d_backward(grad_y, x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                        count_include_pad: bool = True, divisor_override: int | None = None, *, algo: str = "auto"):
    """``fastconv.avg_pool2d_backward`` on device arrays."""
    xb, unbatched, p = _pool_prepare("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode, algo)
    gy = _pool_grad(grad_y, p, unbatched, xb.dtype)
    gx = empty((p.n, p.c, p.h, p.w), xb.dtype)
    if p.n:
        _k("pool").avg_pool2d_backward(gy, gx, *_window(p), bool(count_include_pad), divisor_override or 0)
    return gx.reshape((p.c, p.h, p.w)) if unbatched else gx


# ---- GEMM and the pieces of a training step ---------------------------------------------------------

def matmul(a, b, trans_a: bool = False, trans_b: bool = False, out=None):
    """op(a) @ op(b) for validated C-contiguous device matrices (op transposes in place, no copy);
    added into `out` when given."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = empty((m, n), a.dtype) if out is None else out
    _k("gemm").gemm(a, b, c, trans_a, trans_b, 0.0 if out is None else 1.0)
    return c


def gemm(a, b, *, algo: str = "auto"):
    """``fastconv.gemm`` on device arrays: c (M, N) = a (M, K) @ b (K, N) with the tiled shared-memory GEMM."""
    check_algo("gemm", algo, ALGORITHMS["gemm"])
    a, b = as_device("a", a), as_device("b", b)
    check_array("a", a, (2,), device=True)
    check_array("b", b, (2,), a.dtype, device=True)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions must agree: a is {a.shape}, b is {b.shape}")
    check_fits("gemm output", (a.shape[0], b.shape[1]), a.dtype)
    return matmul(a, b)


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
