"""Argument validation and the shape rules of every op, stated once.

Everything here runs before a compiled kernel: a kernel trusts what it is given,
so every bad rank, shape, dtype, size or argument is refused here with a
``TypeError`` or ``ValueError`` that names the argument, what was given and
what is allowed.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_SIZE_ARG = 2**31 - 1  # sizes, strides, paddings and dilations; kernels index in int64


@lru_cache(maxsize=1)
def memory_limit_bytes() -> int:
    """The machine's physical memory: no single output or workspace may exceed it (read once)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_fits(what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, before allocating, an array of `shape` that could not fit in memory."""
    nbytes = int(np.dtype(dtype).itemsize)
    for d in shape:
        nbytes *= int(d)
    limit = memory_limit_bytes()
    if nbytes > limit:
        raise ValueError(
            f"{what} of shape {tuple(int(d) for d in shape)} would need {nbytes / 2**30:.1f} GiB, "
            f"more than this machine's {limit / 2**30:.1f} GiB of memory"
        )


def check_algo(op: str, algo: object, names: list[str]) -> str:
    if not isinstance(algo, str) or (algo != "auto" and algo not in names):
        raise ValueError(f"algo for {op} must be 'auto' or one of {names}, got {algo!r}")
    return algo


def check_int(name: str, value: object, minimum: int) -> int:
    """`value` as an int: TypeError unless it is an integer (bool is not), ValueError below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def float_dtype(dtype: object) -> np.dtype:
    """`dtype` as a NumPy dtype: TypeError unless it is float32 or float64."""
    d = np.dtype(dtype)
    if d not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {d}")
    return d


def _as_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v)


def pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    """An int, a pair of ints or (as PyTorch accepts) a 1-tuple, each at least `minimum`, as (h, w)."""
    if type(value) is int and minimum <= value <= MAX_SIZE_ARG:   # the common case, without ABC checks
        return (value, value)
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        v = (_as_int(name, value[0]), _as_int(name, value[-1]))
    else:
        i = _as_int(name, value)
        v = (i, i)
    if min(v) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    if max(v) > MAX_SIZE_ARG:
        raise ValueError(f"{name} must be at most {MAX_SIZE_ARG}, got {value!r}")
    return v


def check_array(name: str, a: object, ndims: tuple[int, ...], dtype: np.dtype | None = None,
                device: bool = False) -> np.ndarray:
    """`a` must be a float32/float64 ndarray (a Numba device array if `device`) of one of the ranks
    `ndims` (and of `dtype`, if given)."""
    if device and not getattr(a, "__cuda_ndarray__", False):
        raise TypeError(f"{name} must be a CUDA device array like x, got {type(a).__name__}")
    if not device and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if _is_masked(a):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got a masked array: its mask would be ignored; pass "
                        f"{name}.filled(value) or {name}.data")
    if a.ndim not in ndims:
        ranks = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{name} must have {ranks} dimensions, got shape {a.shape}")
    if native(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if dtype is not None and native(a.dtype) != native(dtype):
        raise TypeError(f"{name} must have the input's dtype {native(dtype)}, got {native(a.dtype)}")
    return a


def _is_masked(a: object) -> bool:
    """Whether `a` is a numpy.ma masked array (asked without importing numpy.ma, which NumPy loads lazily:
    a masked array exists only once it is loaded)."""
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(a, ma.MaskedArray)


def native(dtype: np.dtype) -> np.dtype:
    """`dtype` in this machine's byte order: outputs and kernels always use it."""
    if not isinstance(dtype, np.dtype) or not dtype.isnative:
        dtype = np.dtype(dtype).newbyteorder("=")
    return dtype


def contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous, aligned, native-byte-order plain ndarray (a subclass such as np.memmap viewed as one),
    copied unless it already is one."""
    if type(a) is not np.ndarray:
        a = a.view(np.ndarray)
    if a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative:
        return a
    check_fits("a contiguous copy of the input", a.shape, a.dtype)
    return np.ascontiguousarray(a, dtype=native(a.dtype))


def check_bool(name: str, value: object) -> bool:
    """`value` as a bool; TypeError naming `name` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def as_array(name: str, a: object) -> object:
    """`a` itself when it is a NumPy or GPU array; a PyTorch CPU tensor (anything NumPy reads through
    ``__array__``, lists excluded) as the NumPy array it shares memory with. TypeError names `name`."""
    if isinstance(a, np.ndarray) or is_device_array(a) or not hasattr(a, "__array__"):
        return a
    try:
        return np.asarray(a)
    except (RuntimeError, TypeError, ValueError) as error:  # e.g. a tensor that requires grad
        raise TypeError(f"{name} cannot be read as a NumPy array: {error}") from None


def is_device_array(a: object) -> bool:
    """Whether `a` is a GPU array: anything with __cuda_array_interface__ (Numba, CuPy, PyTorch CUDA), or a
    device array of Numba's CUDA simulator. The one rule for "is this on the GPU" (``device.device_of``)."""
    if isinstance(a, np.ndarray) or a is None:
        return False
    return hasattr(a, "__cuda_array_interface__") or bool(getattr(a, "__cuda_ndarray__", False))


def batched(name: str, x: np.ndarray) -> tuple[np.ndarray, bool]:
    """(N, C, H, W) view of a batched or unbatched (C, H, W) input, and whether it was unbatched."""
    check_array(name, x, (3, 4), device=is_device_array(x))
    return (x.reshape((1, *x.shape)), True) if x.ndim == 3 else (x, False)


def check_grad(name: str, grad: np.ndarray, shape: tuple[int, ...], dtype: np.dtype,
               device: bool = False) -> np.ndarray:
    check_array(name, grad, (len(shape),), dtype, device)
    if grad.shape != shape:
        raise ValueError(f"{name} must have the output's shape {shape}, got {grad.shape}")
    return grad


@dataclass(frozen=True)
class Conv2dShape:
    """Shape rule of conv2d: x (N, C, H, W), weight (K, C/groups, R, S) -> y (N, K, OH, OW).

    Padding is (top, bottom, left, right) so that 'same' with even kernels can pad
    asymmetrically as PyTorch does (the extra row/column goes bottom/right).
    OH = (H + top + bottom - dh*(R-1) - 1) // sh + 1, and OW likewise.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    groups: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    oh: int
    ow: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.oh, self.ow)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.s)

    @property
    def padded_shape(self) -> tuple[int, int, int, int]:
        top, bottom, left, right = self.padding
        return (self.n, self.c, self.h + top + bottom, self.w + left + right)

    @property
    def flops(self) -> int:
        """Multiply-adds times two of the forward pass."""
        return 2 * self.n * self.k * self.oh * self.ow * (self.c // self.groups) * self.r * self.s


def conv_padding(padding: object, kernel: tuple[int, int], dilation: tuple[int, int],
                 stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """padding as int, pair, 'valid' or 'same' -> (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' requires stride 1, got stride={stride}")
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    ph, pw = pair("padding", padding, 0)
    return (ph, ph, pw, pw)


def typed_key(value: object) -> object:
    """A hashable key of an argument that tells apart values equal across types (True and 1, 2.0 and 2), also
    inside tuples and lists; TypeError when the value is unhashable."""
    if isinstance(value, (tuple, list)):
        return type(value), tuple(typed_key(v) for v in value)
    hash(value)
    return type(value), value


def keyed_value(key: tuple) -> object:
    """The argument a ``typed_key`` stands for."""
    kind, value = key
    return kind(keyed_value(v) for v in value) if kind in (tuple, list) else value


def conv2d_shape(x: np.ndarray, weight: np.ndarray, stride: object, padding: object,
                 dilation: object, groups: object) -> Conv2dShape:
    """Validate conv2d arguments for a batched x (N, C, H, W) and return the shape rule (the arrays' checks
    on every call; the rest computed once per shape and arguments)."""
    check_array("weight", weight, (4,), x.dtype, is_device_array(x))
    try:
        args = tuple(typed_key(a) for a in (stride, padding, dilation, groups))
    except TypeError:  # an unhashable argument: validated below, uncached
        return _conv2d_rule(x.shape, np.dtype(x.dtype), weight.shape, stride, padding, dilation, groups)
    return _conv2d_rule_cached(x.shape, np.dtype(x.dtype), weight.shape, args)


@lru_cache(maxsize=1024)
def _conv2d_rule_cached(x_shape: tuple, dtype: np.dtype, w_shape: tuple, args: tuple) -> Conv2dShape:
    return _conv2d_rule(x_shape, dtype, w_shape, *(keyed_value(a) for a in args))


def _conv2d_rule(x_shape: tuple, dtype: np.dtype, w_shape: tuple, stride: object, padding: object,
                 dilation: object, groups: object) -> Conv2dShape:
    if isinstance(groups, bool) or not isinstance(groups, Integral) or not 1 <= groups <= MAX_SIZE_ARG:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    groups = int(groups)
    n, c, h, w = x_shape
    k, cg, r, s = w_shape
    if min(k, cg, r, s) < 1:
        raise ValueError(f"weight must have non-zero sizes, got shape {w_shape}")
    if c % groups:
        raise ValueError(f"input channels ({c}) must be divisible by groups ({groups})")
    if k % groups:
        raise ValueError(f"out channels of weight ({k}) must be divisible by groups ({groups})")
    if cg * groups != c:
        raise ValueError(
            f"weight must have in_channels/groups = {c // groups} channels in dimension 1, got shape {w_shape}: "
            f"x has {c} channels in dimension 1, the weight takes {cg * groups}"
            + (f" (x of shape {x_shape} looks channels-last, (N, H, W, C): fastconv takes (N, C, H, W), "
               "x.transpose(0, 3, 1, 2))" if x_shape[3] == cg * groups else "")
        )
    if min(c, h, w) < 1:
        raise ValueError(f"x must have non-zero channels, height and width, got shape {x_shape}")
    stride_hw = pair("stride", stride, 1)
    dilation_hw = pair("dilation", dilation, 1)
    pads = conv_padding(padding, (r, s), dilation_hw, stride_hw)
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    eff_r, eff_s = dilation_hw[0] * (r - 1) + 1, dilation_hw[1] * (s - 1) + 1
    if eff_r > hp or eff_s > wp:
        raise ValueError(
            f"kernel of effective size ({eff_r}, {eff_s}) is larger than the padded input ({hp}, {wp}): "
            f"the output would be empty"
        )
    oh = (hp - eff_r) // stride_hw[0] + 1
    ow = (wp - eff_s) // stride_hw[1] + 1
    shape = Conv2dShape(n, c, h, w, k, r, s, groups, stride_hw, dilation_hw, pads, oh, ow)
    check_fits("conv2d output", shape.y_shape, dtype)
    if any(pads):
        check_fits("zero-padded input", shape.padded_shape, dtype)
    return shape


@dataclass(frozen=True)
class Pool2dShape:
    """Shape rule of 2-D pooling: x (N, C, H, W) -> y (N, C, OH, OW), PyTorch's rule.

    OH = floor((H + 2*ph - dh*(kh-1) - 1 + (sh-1 if ceil_mode)) / sh) + 1, minus one
    when ceil_mode would start the last window inside the bottom padding; OW likewise.
    """

    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    oh: int
    ow: int

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.oh, self.ow)


def _pool_out(size: int, k: int, p: int, s: int, d: int, ceil_mode: bool) -> int:
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_args(kernel_size: object, stride: object, padding: object, dilation: object,
                ceil_mode: object) -> tuple[tuple[int, int], ...]:
    """Validate pooling arguments that do not depend on x: (kernel, stride, padding, dilation) pairs."""
    kernel = pair("kernel_size", kernel_size, 1)
    stride_hw = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else pair("stride", stride, 1)
    pad = pair("padding", padding, 0)
    dil = pair("dilation", dilation, 1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size {kernel}, got padding={padding!r}")
    return kernel, stride_hw, pad, dil


def pool2d_shape(x: np.ndarray, kernel_size: object, stride: object, padding: object,
                 dilation: object, ceil_mode: object) -> Pool2dShape:
    """Validate pooling arguments for a batched x (N, C, H, W) and return the shape rule (computed once per
    shape and arguments)."""
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    try:
        keys = tuple(typed_key(a) for a in args)
    except TypeError:  # an unhashable argument: validated below, uncached
        return _pool2d_rule(x.shape, np.dtype(x.dtype), *args)
    return _pool2d_rule_cached(x.shape, np.dtype(x.dtype), keys)


@lru_cache(maxsize=1024)
def _pool2d_rule_cached(x_shape: tuple, dtype: np.dtype, args: tuple) -> Pool2dShape:
    return _pool2d_rule(x_shape, dtype, *(keyed_value(a) for a in args))


def _pool2d_rule(x_shape: tuple, dtype: np.dtype, kernel_size: object, stride: object, padding: object,
                 dilation: object, ceil_mode: object) -> Pool2dShape:
    kernel, stride_hw, pad, dil = pool2d_args(kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x_shape
    if min(c, h, w) < 1:
        raise ValueError(f"x must have non-zero channels, height and width, got shape {x_shape}")
    oh = _pool_out(h, kernel[0], pad[0], stride_hw[0], dil[0], bool(ceil_mode))
    ow = _pool_out(w, kernel[1], pad[1], stride_hw[1], dil[1], bool(ceil_mode))
    if oh < 1 or ow < 1:
        raise ValueError(
            f"input of size ({h}, {w}) is too small for kernel_size={kernel}, dilation={dil}, "
            f"padding={pad}: the output would be empty ({oh}, {ow})"
        )
    for name, size, out, k, s, p, d in (("height", h, oh, kernel[0], stride_hw[0], pad[0], dil[0]),
                                        ("width", w, ow, kernel[1], stride_hw[1], pad[1], dil[1])):
        first = np.arange(out, dtype=np.int64) * s - p  # input position of each window's tap 0
        first_inside = np.where(first >= 0, 0, (d - 1 - first) // d)  # its first tap at position >= 0
        if not ((first_inside < k) & (first + first_inside * d < size)).all():
            raise ValueError(
                f"with dilation={dil} and padding={pad}, some pooling window along the {name} "
                f"holds no input element (input {name} {size}): choose a smaller padding or dilation"
            )
    shape = Pool2dShape(n, c, h, w, kernel, stride_hw, pad, dil, oh, ow)
    check_fits("pooling output", shape.y_shape, dtype)
    return shape
