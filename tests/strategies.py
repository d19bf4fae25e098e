"""Hypothesis strategies shared by the tests (the checks they feed are in op_check.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import assume, strategies as st


DTYPES = [np.float32, np.float64]


LAYOUTS = ["c", "f", "strided", "readonly", "bigendian"]
FUZZ_LAYOUTS = LAYOUTS + ["reversed", "unaligned"]


def layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The same values in another memory layout: 'c', 'f' (Fortran order), 'strided' (a step-2
    view), 'readonly' (not writeable), 'bigendian' (non-native byte order), 'reversed' (negative
    strides: a reversed view of a reversed copy) or 'unaligned' (on a byte buffer offset by 1)."""
    if kind == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1] if a.ndim else a
    if kind == "unaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = np.ndarray(a.shape, a.dtype, buffer=buf, offset=1)
        u[...] = a
        return u
    if kind == "f":
        return np.asfortranarray(a)
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if kind == "bigendian":
        return a.astype(a.dtype.newbyteorder(">"))
    if kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    return a


@dataclass
class ConvCase:
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    stride: object
    padding: object
    dilation: object
    groups: int

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


def _size_arg(draw, lo: int, hi: int) -> tuple[object, tuple[int, int]]:
    """An int or pair argument as it would be written, and its (h, w) value."""
    if draw(st.booleans()):
        v = draw(st.integers(lo, hi))
        return v, (v, v)
    v = (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
    return v, v


@st.composite
def conv_cases(draw, max_batch: int = 2, dtypes=DTYPES, max_extra: int = 6) -> ConvCase:
    """Problems of up to 3 groups of 1-3 channels in and out, kernels 1-4, strides and dilations 1-3, int, 'valid'
    or 'same' padding, heights and widths up to `max_extra` above the smallest the kernel allows. One in four
    has the most common kernel, 3x3 at stride 1 and dilation 1 (the only one winograd takes), one in four a 1x1
    kernel (pointwise), so that records taking only those get many problems."""
    groups = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = draw(st.sampled_from(["any", "any", "3x3", "1x1"]))
    r, s = {"3x3": (3, 3), "1x1": (1, 1)}.get(kernel) or (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding_kind = draw(st.sampled_from(["int", "valid", "same"]))
    stride = 1 if padding_kind == "same" or kernel == "3x3" else _size_arg(draw, 1, 3)[0]
    dilation, (dh, dw) = (1, (1, 1)) if kernel != "any" else _size_arg(draw, 1, 3)
    if padding_kind == "int":
        padding, (ph, pw) = _size_arg(draw, 0, 2)
        pad_h, pad_w = 2 * ph, 2 * pw
    else:
        padding = padding_kind
        pad_h, pad_w = (dh * (r - 1), dw * (s - 1)) if padding_kind == "same" else (0, 0)
    min_h = max(1, dh * (r - 1) + 1 - pad_h)
    min_w = max(1, dw * (s - 1) + 1 - pad_w)
    h, w = draw(st.integers(min_h, min_h + max_extra)), draw(st.integers(min_w, min_w + max_extra))
    n = draw(st.integers(1, max_batch))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, groups * cg, h, w)).astype(dtype)
    if draw(st.booleans()) and n == 1:
        x = x[0]
    weight = rng.standard_normal((groups * kg, cg, r, s)).astype(dtype)
    bias = rng.standard_normal(groups * kg).astype(dtype) if draw(st.booleans()) else None
    x = layout(x, draw(st.sampled_from(LAYOUTS)))
    return ConvCase(x, weight, bias, stride, padding, dilation, groups)


@dataclass
class PoolCase:
    x: np.ndarray
    kernel_size: object
    stride: object
    padding: object
    dilation: object
    ceil_mode: bool


@st.composite
def pool_cases(draw, dilation: bool = True, max_batch: int = 2, dtypes=DTYPES) -> PoolCase:
    kernel_size, (kh, kw) = _size_arg(draw, 1, 4)
    if draw(st.booleans()):
        stride, (sh, sw) = None, (kh, kw)
    else:
        stride, (sh, sw) = _size_arg(draw, 1, 3)
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    padding = (ph, pw) if ph != pw else ph
    dil, (dh, dw) = _size_arg(draw, 1, 3) if dilation else (1, (1, 1))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), dh * (kh - 1) + 8))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), dw * (kw - 1) + 8))
    for size, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw)):
        # PyTorch accepts windows that hold no input element (dilation skips over the input);
        # fastconv refuses them (tested in test_errors), so generate only proper ones here.
        last = (size + 2 * p - d * (k - 1) - 1 + s - 1) // s + 1
        assume(all(any(0 <= o * s - p + t * d < size for t in range(k)) for o in range(last)))
    n, c = draw(st.integers(1, max_batch)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if draw(st.booleans()):
        x = np.round(x)  # ties: the first maximum must win
    if n == 1 and draw(st.booleans()):
        x = x[0]
    x = layout(x, draw(st.sampled_from(LAYOUTS)))
    return PoolCase(x, kernel_size, stride, padding, dil, draw(st.booleans()))
