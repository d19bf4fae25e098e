"""Max and average pooling, forward and backward, with the semantics of torch.nn.functional, on every
device. The shape rule is ``Pool2dShape`` (``_checks``); the algorithms are the records of ``MAX_POOL2D``
and ``AVG_POOL2D``; the public functions validate once and run the record of the array's device.

``MAX_POOL2D`` records: ``forward(x, p, indices=True) -> (y, indices)`` (without `indices` a record may skip
them and return None: a network's inference needs none) and ``backward(grad_y, x, p, indices) -> grad_x``
(indices None: found again from x). ``AVG_POOL2D`` records: ``forward(x, p, count_include_pad,
divisor_override) -> y`` and ``backward(grad_y, x, p, count_include_pad, divisor_override) -> grad_x``.
x, grad_x (N, C, H, W); y, grad_y, indices (N, C, OH, OW), indices int64 h*W + w within each plane;
batched, C-contiguous, validated, on the record's device; p the ``Pool2dShape``; divisor_override
None or a non-zero int. ``naive`` is the plain-Python reference, ``direct`` the compiled window loop,
``window_2x2`` (max pooling) the same for 2x2 windows at stride 2 with the four taps spelled out.

``adaptive_avg_pool2d`` has no registry: where its windows tile x it is ``avg_pool2d``, elsewhere one
compiled loop per device (``kernels/pooling.py``, ``kernels/cuda_pooling.py``).
"""
from __future__ import annotations

from functools import partial
from numbers import Integral

import numpy as np

from . import naive
from ._checks import MAX_SIZE_ARG, Pool2dShape, as_array, batched, check_fits, check_grad, contiguous, pool2d_shape
from .algorithm import Algorithm, Registry
from .device import as_device, device_of, empty, zeros
from .kernels import pooling

MAX_POOL2D = Registry("max_pool2d", __doc__)
AVG_POOL2D = Registry("avg_pool2d", __doc__)


def _max_forward(x: np.ndarray, p: Pool2dShape, indices: bool = True, windows_2x2: bool = False,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """The compiled window loop (without `indices`, its values-only form), or with `windows_2x2` its 2x2
    stride-2 form (``window_2x2_unsupported``)."""
    y = np.empty(p.y_shape, x.dtype)
    if not indices and not windows_2x2:
        pooling.max_pool2d_values(x, y, *p.kernel, *p.stride, *p.padding, *p.dilation)
        return y, None
    idx = np.empty(p.y_shape, np.int64)
    if windows_2x2:
        pooling.max_pool2d_forward_2x2(x, y, idx)
    else:
        pooling.max_pool2d_forward(x, y, idx, *p.kernel, *p.stride, *p.padding, *p.dilation)
    return y, idx


def _max_backward(grad_y: np.ndarray, x: np.ndarray, p: Pool2dShape, indices: np.ndarray | None,
                  windows_2x2: bool = False) -> np.ndarray:
    idx = _max_forward(x, p, windows_2x2=windows_2x2)[1] if indices is None else indices
    gx = np.empty(x.shape, x.dtype)
    (pooling.max_pool2d_backward_2x2 if windows_2x2 else pooling.max_pool2d_backward)(grad_y, idx, gx)
    return gx


def window_2x2_unsupported(p: Pool2dShape) -> str | None:
    """None for 2x2 windows at stride 2 without padding or dilation that lie inside x (no ceil_mode window
    past its edge), else why not."""
    if (p.kernel, p.stride, p.padding, p.dilation) == ((2, 2), (2, 2), (0, 0), (1, 1)) and \
            (p.oh, p.ow) == (p.h // 2, p.w // 2):
        return None
    return (f"needs 2x2 windows at stride 2 inside x, without padding or dilation, got kernel {p.kernel}, "
            f"stride {p.stride}, padding {p.padding}, dilation {p.dilation}, output {(p.oh, p.ow)} of {(p.h, p.w)}")


def _avg_forward_direct(x: np.ndarray, p: Pool2dShape, count_include_pad: bool,
                        divisor_override: int | None) -> np.ndarray:
    y = np.empty(p.y_shape, x.dtype)
    pooling.avg_pool2d_forward(x, y, *p.kernel, *p.stride, *p.padding, count_include_pad, divisor_override or 0)
    return y


def _avg_backward_direct(grad_y: np.ndarray, x: np.ndarray, p: Pool2dShape, count_include_pad: bool,
                         divisor_override: int | None) -> np.ndarray:
    gx = np.empty(x.shape, x.dtype)
    pooling.avg_pool2d_backward(grad_y, gx, *p.kernel, *p.stride, *p.padding, count_include_pad,
                                divisor_override or 0)
    return gx


def _cuda_pooling():
    from .kernels import cuda_pooling  # numba.cuda is imported only when a GPU is used
    return cuda_pooling


def _max_forward_naive(x: np.ndarray, p: Pool2dShape, indices: bool = True) -> tuple[np.ndarray, np.ndarray]:
    return naive.max_pool2d(x, p)


def _max_forward_cuda(x, p: Pool2dShape, indices: bool = True):
    y, idx = empty(p.y_shape, x.dtype), empty(p.y_shape, np.int64)
    _cuda_pooling().max_pool2d_forward(x, y, idx, *p.kernel, *p.stride, *p.padding, *p.dilation)
    return y, idx


def _max_backward_cuda(grad_y, x, p: Pool2dShape, indices):
    idx = _max_forward_cuda(x, p)[1] if indices is None else indices
    gx = empty(x.shape, x.dtype)
    _cuda_pooling().max_pool2d_backward(grad_y, idx, gx)
    return gx


def _avg_forward_cuda(x, p: Pool2dShape, count_include_pad: bool, divisor_override: int | None):
    y = empty(p.y_shape, x.dtype)
    _cuda_pooling().avg_pool2d_forward(x, y, *p.kernel, *p.stride, *p.padding, count_include_pad,
                                       divisor_override or 0)
    return y


def _avg_backward_cuda(grad_y, x, p: Pool2dShape, count_include_pad: bool, divisor_override: int | None):
    gx = empty(x.shape, x.dtype)
    _cuda_pooling().avg_pool2d_backward(grad_y, gx, *p.kernel, *p.stride, *p.padding, count_include_pad,
                                        divisor_override or 0)
    return gx


def _direct(p: Pool2dShape, itemsize: int) -> str:
    return "direct"


def _max_rule(p: Pool2dShape, itemsize: int) -> str:
    """window_2x2 where it runs (the four taps spelled out: 3x faster on CIFAR's 64x32x30x30, 4.5 -> 1.4 ms),
    else direct."""
    return "window_2x2" if window_2x2_unsupported(p) is None else "direct"


MAX_POOL2D.add(Algorithm("naive", "cpu", _max_forward_naive, naive.max_pool2d_backward, reference=True))
MAX_POOL2D.add(Algorithm("direct", "cpu", _max_forward, _max_backward))
MAX_POOL2D.add(Algorithm("window_2x2", "cpu", partial(_max_forward, windows_2x2=True),
                         partial(_max_backward, windows_2x2=True), unsupported=window_2x2_unsupported))
MAX_POOL2D.add(Algorithm("direct", "cuda", _max_forward_cuda, _max_backward_cuda))
AVG_POOL2D.add(Algorithm("naive", "cpu", naive.avg_pool2d, naive.avg_pool2d_backward, reference=True))
AVG_POOL2D.add(Algorithm("direct", "cpu", _avg_forward_direct, _avg_backward_direct))
AVG_POOL2D.add(Algorithm("direct", "cuda", _avg_forward_cuda, _avg_backward_cuda))
MAX_POOL2D.rules.update(cpu=_max_rule, cuda=_direct)
AVG_POOL2D.rules.update(cpu=_direct, cuda=_direct)


def _prepare(registry: Registry, x, kernel_size, stride, padding, dilation, ceil_mode, algo: str):
    """(device, batched C-contiguous x, unbatched, p, the algorithm's name)."""
    x = as_array("x", x)
    device = device_of(x)
    registry.check(algo, device)
    if device == "cuda":
        x = as_device("x", x)
    xb, unbatched = batched("x", x)
    p = pool2d_shape(xb, kernel_size, stride, padding, dilation, ceil_mode)
    if algo != "auto":
        registry.require(algo, device, p, xb.dtype.itemsize if p.n else None)
    if device == "cpu":
        xb = contiguous(xb)
    return device, xb, unbatched, p, (registry.rule(p, xb.dtype.itemsize, device) if algo == "auto" else algo)


def _grad(grad_y, p: Pool2dShape, unbatched: bool, dtype: np.dtype, device: str):
    gy = as_device("grad_y", grad_y) if device == "cuda" else as_array("grad_y", grad_y)
    gy = check_grad("grad_y", gy, p.y_shape[1:] if unbatched else p.y_shape, dtype, device=device == "cuda")
    return contiguous(gy.reshape(p.y_shape)) if device == "cpu" else gy.reshape(p.y_shape)


def _unbatch(a, p: Pool2dShape, unbatched: bool):
    return a.reshape(a.shape[1:]) if unbatched else a


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
    device, xb, unbatched, p, algo = _prepare(MAX_POOL2D, x, kernel_size, stride, padding, dilation, ceil_mode,
                                              algo)
    if p.n == 0:
        y, idx = zeros(p.y_shape, xb.dtype, device), zeros(p.y_shape, np.int64, device)
    else:
        y, idx = MAX_POOL2D[device, algo].forward(xb, p, indices=bool(return_indices))
    y = _unbatch(y, p, unbatched)
    return (y, _unbatch(idx, p, unbatched)) if return_indices else y


def max_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                        dilation=1, ceil_mode: bool = False, *, indices: np.ndarray | None = None,
                        algo: str = "auto") -> np.ndarray:
    """Gradient of ``max_pool2d`` with respect to x: each grad_y element is added at the input
    position its maximum came from. grad_y is shaped like max_pool2d's output; returns x's shape.
    ``indices``: the ones ``max_pool2d(..., return_indices=True)`` returned for this x, which
    spares recomputing the maxima (as PyTorch's backward takes them); each must lie in [0, H*W) (on the
    GPU they are trusted to)."""
    device, xb, unbatched, p, algo = _prepare(MAX_POOL2D, x, kernel_size, stride, padding, dilation, ceil_mode,
                                              algo)
    gy = _grad(grad_y, p, unbatched, xb.dtype, device)
    if p.n == 0:
        gx = zeros(xb.shape, xb.dtype, device)
    else:
        idx = None if indices is None else _indices(indices, p, unbatched, device)
        gx = MAX_POOL2D[device, algo].backward(gy, xb, p, idx)
    return _unbatch(gx, p, unbatched)


def _indices(indices: object, p: Pool2dShape, unbatched: bool, device: str):
    """Validated int64 C-contiguous (N, C, OH, OW) indices into each input plane."""
    shape = p.y_shape[1:] if unbatched else p.y_shape
    if device == "cuda":
        idx = as_device("indices", indices, kinds="i")
        if idx.shape != shape or idx.dtype != np.int64:
            raise ValueError(f"indices must be an int64 device array of the output's shape, got {idx.dtype} {idx.shape}")
        return idx.reshape(p.y_shape)
    if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu" or indices.shape != shape:
        raise ValueError(f"indices must be an integer array of the output's shape {shape}, got "
                         f"{getattr(indices, 'dtype', type(indices).__name__)} {getattr(indices, 'shape', '')}")
    idx = np.ascontiguousarray(indices.reshape(p.y_shape), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= p.h * p.w):
        raise ValueError(f"indices must lie in [0, {p.h * p.w}) (positions in an input plane of {p.h}x{p.w}), "
                         f"got values in [{idx.min()}, {idx.max()}]")
    return idx


def _check_avg_args(count_include_pad: object, divisor_override: object) -> tuple[bool, int | None]:
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad must be a bool, got {count_include_pad!r}")
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, Integral):
            raise TypeError(f"divisor_override must be None or an int, got {divisor_override!r}")
        if divisor_override == 0 or abs(divisor_override) > MAX_SIZE_ARG:
            raise ValueError(f"divisor_override must be None or a non-zero int of magnitude at most "
                             f"{MAX_SIZE_ARG}, got {divisor_override!r}")
    return bool(count_include_pad), None if divisor_override is None else int(divisor_override)


def avg_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None, *,
               algo: str = "auto") -> np.ndarray:
    """2-D average pooling with the semantics of ``torch.nn.functional.avg_pool2d``.

    x: (N, C, H, W) or unbatched (C, H, W). Each output is its window's sum divided by
    ``divisor_override`` if given, else by the window size counting zero padding
    (``count_include_pad``) or by the number of input elements in it. Output size as max_pool2d
    with dilation 1. Device arrays run on the GPU.
    """
    divisor = _check_avg_args(count_include_pad, divisor_override)
    device, xb, unbatched, p, algo = _prepare(AVG_POOL2D, x, kernel_size, stride, padding, 1, ceil_mode, algo)
    y = zeros(p.y_shape, xb.dtype, device) if p.n == 0 else AVG_POOL2D[device, algo].forward(xb, p, *divisor)
    return _unbatch(y, p, unbatched)


def avg_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, kernel_size, stride=None, padding=0,
                        ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: int | None = None, *, algo: str = "auto") -> np.ndarray:
    """Gradient of ``avg_pool2d`` with respect to x: each grad_y element divided by its window's
    divisor and added to every input position of the window. Returns x's shape."""
    divisor = _check_avg_args(count_include_pad, divisor_override)
    device, xb, unbatched, p, algo = _prepare(AVG_POOL2D, x, kernel_size, stride, padding, 1, ceil_mode, algo)
    gy = _grad(grad_y, p, unbatched, xb.dtype, device)
    gx = zeros(xb.shape, xb.dtype, device) if p.n == 0 else AVG_POOL2D[device, algo].backward(gy, xb, p, *divisor)
    return _unbatch(gx, p, unbatched)


# ---- adaptive average pooling ------------------------------------------------------------------------

def adaptive_pool2d_size(output_size: object, h: int, w: int) -> tuple[int, int]:
    """(OH, OW) of adaptive pooling: output_size an int or a pair of ints >= 1 or None (None keeps the
    input's size along that axis); TypeError/ValueError name the argument."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair of ints or None, got {output_size!r}")
        sizes = tuple(output_size)
    else:
        sizes = (output_size, output_size)
    out = []
    for size, full in zip(sizes, (h, w)):
        if size is None:
            out.append(full)
        elif isinstance(size, bool) or not isinstance(size, Integral):
            raise TypeError(f"output_size must be an int or a pair of ints or None, got {output_size!r}")
        elif not 1 <= size <= MAX_SIZE_ARG:
            raise ValueError(f"output_size must be at least 1 and at most {MAX_SIZE_ARG}, got {output_size!r}")
        else:
            out.append(int(size))
    return out[0], out[1]


def _prepare_adaptive(x, output_size):
    """(device, batched C-contiguous x, unbatched, (N, C, OH, OW))."""
    x = as_array("x", x)
    device = device_of(x)
    if device == "cuda":
        x = as_device("x", x)
    xb, unbatched = batched("x", x)
    n, c, h, w = xb.shape
    if min(c, h, w) < 1:
        raise ValueError(f"x must have non-zero channels, height and width, got shape {x.shape}")
    y_shape = (n, c, *adaptive_pool2d_size(output_size, h, w))
    check_fits("adaptive pooling output", y_shape, xb.dtype)
    return device, (contiguous(xb) if device == "cpu" else xb), unbatched, y_shape


def _tiles(x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The kernel (H/OH, W/OW) where the adaptive windows tile x (H % OH == 0 and W % OW == 0), else None."""
    (h, w), (oh, ow) = x_shape[2:], y_shape[2:]
    return (h // oh, w // ow) if h % oh == 0 and w % ow == 0 else None


def adaptive_avg_pool2d(x: np.ndarray, output_size) -> np.ndarray:
    """2-D adaptive average pooling with the semantics of ``torch.nn.functional.adaptive_avg_pool2d``.

    x: (N, C, H, W) or unbatched (C, H, W); output_size: OH or (OH, OW), an entry None keeps H or W.
    Returns y (N, C, OH, OW): y[..., i, j] is the mean of x over rows [floor(i*H/OH), ceil((i+1)*H/OH)) and
    columns [floor(j*W/OW), ceil((j+1)*W/OW)) (windows may overlap; OH may exceed H). Where the windows tile
    x (H % OH == 0 and W % OW == 0) this is ``avg_pool2d`` with kernel = stride = (H/OH, W/OW), and runs as
    one. Device arrays run on the GPU."""
    device, xb, unbatched, y_shape = _prepare_adaptive(x, output_size)
    kernel = _tiles(xb.shape, y_shape)
    if kernel is not None:
        y = avg_pool2d(xb, kernel)
    elif y_shape[0] == 0:
        y = zeros(y_shape, xb.dtype, device)
    elif device == "cpu":
        y = np.empty(y_shape, xb.dtype)
        pooling.adaptive_avg_pool2d_forward(xb, y)
    else:
        y = empty(y_shape, xb.dtype)
        _cuda_pooling().adaptive_avg_pool2d_forward(xb, y)
    return y.reshape(y_shape[1:]) if unbatched else y


def adaptive_avg_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, output_size) -> np.ndarray:
    """Gradient of ``adaptive_avg_pool2d`` with respect to x: each grad_y element divided by its window's size
    and added to every input position of the window. grad_y is shaped like the output; returns x's shape."""
    device, xb, unbatched, y_shape = _prepare_adaptive(x, output_size)
    gy = as_device("grad_y", grad_y) if device == "cuda" else as_array("grad_y", grad_y)
    gy = check_grad("grad_y", gy, y_shape[1:] if unbatched else y_shape, xb.dtype, device=device == "cuda")
    gy = contiguous(gy.reshape(y_shape)) if device == "cpu" else gy.reshape(y_shape)
    kernel = _tiles(xb.shape, y_shape)
    if kernel is not None:
        gx = avg_pool2d_backward(gy, xb, kernel)
    elif y_shape[0] == 0:
        gx = zeros(xb.shape, xb.dtype, device)
    elif device == "cpu":
        gx = np.empty(xb.shape, xb.dtype)
        pooling.adaptive_avg_pool2d_backward(gy, gx)
    else:
        gx = empty(xb.shape, xb.dtype)
        _cuda_pooling().adaptive_avg_pool2d_backward(gy, gx)
    return gx.reshape(gx.shape[1:]) if unbatched else gx
