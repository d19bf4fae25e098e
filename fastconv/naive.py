"""Reference implementations in plain Python loops: the oracle of the tests and
the baseline of the benchmarks. Never chosen by ``algo="auto"``.

Arrays are turned into nested lists and every sum is accumulated in Python
floats (double precision); results come back in the input's dtype. Padding is
handled by bounds tests, independently of how the compiled kernels pad. Convolution
multiplies the weights by the zero padding as PyTorch does, so a non-finite weight (or
grad_y, for grad_weight) that meets padding gives NaN (inf * 0), never a silent zero.
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import Conv2dShape, Pool2dShape


def _zeros(*shape: int) -> list:
    if len(shape) == 1:
        return [0.0] * shape[0]
    return [_zeros(*shape[1:]) for _ in range(shape[0])]


def _taps(o: int, stride: int, pad: int, dilation: int, k: int, size: int) -> list[tuple[int, int]]:
    """(kernel tap, input position) pairs of output position `o` that fall inside the input."""
    first = o * stride - pad
    return [(t, first + t * dilation) for t in range(k) if 0 <= first + t * dilation < size]


def _padded_taps(o: int, stride: int, pad: int, dilation: int, k: int, size: int) -> list[tuple[int, int | None]]:
    """(kernel tap, input position) pairs of output position `o`, position None in the zero padding."""
    first = o * stride - pad
    return [(t, i if 0 <= i < size else None) for t, i in ((t, first + t * dilation) for t in range(k))]


def _windows(p: Conv2dShape):
    """(n, k, first input channel of k's group, oh, ow, row taps, column taps) of every output position, the
    taps as ``_padded_taps`` gives them."""
    cg, kg = p.c // p.groups, p.k // p.groups
    (sh, sw), (dh, dw), (top, _, left, _) = p.stride, p.dilation, p.padding
    for n in range(p.n):
        for k in range(p.k):
            for oh in range(p.oh):
                rows = _padded_taps(oh, sh, top, dh, p.r, p.h)
                for ow in range(p.ow):
                    yield n, k, (k // kg) * cg, oh, ow, rows, _padded_taps(ow, sw, left, dw, p.s, p.w)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/groups, R, S)) + bias (K,)."""
    xl, wl = x.tolist(), weight.tolist()
    bl = bias.tolist() if bias is not None else [0.0] * p.k
    y = _zeros(p.n, p.k, p.oh, p.ow)
    for n, k, c0, oh, ow, rows, cols in _windows(p):
        acc = bl[k]
        for c in range(p.c // p.groups):
            plane, wkc = xl[n][c0 + c], wl[k][c]
            for r, h in rows:
                for s, w in cols:
                    acc += wkc[r][s] * (0.0 if h is None or w is None else plane[h][w])
        y[n][k][oh][ow] = acc
    return np.array(y, dtype=x.dtype).reshape(p.y_shape)


def conv2d_backward_input(grad_y: np.ndarray, weight: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """grad_x (N, C, H, W) of conv2d for grad_y (N, K, OH, OW)."""
    gyl, wl = grad_y.tolist(), weight.tolist()
    gx = _zeros(p.n, p.c, p.h, p.w)
    for n, k, c0, oh, ow, rows, cols in _windows(p):
        gout = gyl[n][k][oh][ow]
        for c in range(p.c // p.groups):
            gplane, wkc = gx[n][c0 + c], wl[k][c]
            for r, h in rows:
                for s, w in cols:
                    if h is not None and w is not None:
                        gplane[h][w] += wkc[r][s] * gout
    return np.array(gx, dtype=grad_y.dtype).reshape(p.x_shape)


def conv2d_backward_weight(grad_y: np.ndarray, x: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """grad_weight (K, C/groups, R, S) of conv2d for grad_y (N, K, OH, OW); the zero padding adds 0 * grad_y
    (NaN where grad_y is not finite, as PyTorch)."""
    gyl, xl = grad_y.tolist(), x.tolist()
    gw = _zeros(p.k, p.c // p.groups, p.r, p.s)
    for n, k, c0, oh, ow, rows, cols in _windows(p):
        gout = gyl[n][k][oh][ow]
        for c in range(p.c // p.groups):
            plane, gwkc = xl[n][c0 + c], gw[k][c]
            for r, h in rows:
                for s, w in cols:
                    gwkc[r][s] += (0.0 if h is None or w is None else plane[h][w]) * gout
    return np.array(gw, dtype=x.dtype).reshape(p.w_shape)


def max_pool2d(x: np.ndarray, p: Pool2dShape) -> tuple[np.ndarray, np.ndarray]:
    """(y (N, C, OH, OW), indices (N, C, OH, OW) int64 flat per-plane) of max pooling.

    PyTorch's rule: scanning the window row by row, an element replaces the current
    maximum when it is greater or NaN: NaN propagates (the last NaN's index is
    reported) and ties keep the first.
    """
    xl = x.tolist()
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    y, idx = _zeros(p.n, p.c, p.oh, p.ow), _zeros(p.n, p.c, p.oh, p.ow)
    for n in range(p.n):
        for c in range(p.c):
            plane = xl[n][c]
            for oh in range(p.oh):
                rows = _taps(oh, sh, ph, dh, kh, p.h)
                for ow in range(p.ow):
                    best, best_i = -math.inf, -1
                    for _, h in rows:
                        for _, w in _taps(ow, sw, pw, dw, kw, p.w):
                            v = plane[h][w]
                            if best_i < 0 or v > best or math.isnan(v):
                                best, best_i = v, h * p.w + w
                    y[n][c][oh][ow], idx[n][c][oh][ow] = best, best_i
    return (np.array(y, dtype=x.dtype).reshape(p.y_shape),
            np.array(idx, dtype=np.int64).reshape(p.y_shape))


def max_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, p: Pool2dShape,
                        indices: np.ndarray | None = None) -> np.ndarray:
    """grad_x (N, C, H, W): each grad_y element goes to the position its max came from (`indices`, or
    found again from x when None)."""
    idx = max_pool2d(x, p)[1] if indices is None else indices
    gyl, il = grad_y.tolist(), idx.tolist()
    gx = _zeros(p.n, p.c, p.h * p.w)
    for n in range(p.n):
        for c in range(p.c):
            for oh in range(p.oh):
                for ow in range(p.ow):
                    gx[n][c][il[n][c][oh][ow]] += gyl[n][c][oh][ow]
    return np.array(gx, dtype=x.dtype).reshape(x.shape)


def _avg_window(o: int, stride: int, pad: int, k: int, size: int,
                ) -> tuple[int, int, int]:
    """(first, end, size counting padding) of an average-pooling window, PyTorch's rule."""
    first = o * stride - pad
    end = min(first + k, size + pad)
    return max(first, 0), min(end, size), end - first


def _avg_divisor(p: Pool2dShape, oh: int, ow: int, count_include_pad: bool,
                 divisor_override: int | None) -> tuple[range, range, int]:
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    h0, h1, hsize = _avg_window(oh, sh, ph, kh, p.h)
    w0, w1, wsize = _avg_window(ow, sw, pw, kw, p.w)
    if divisor_override:
        divisor = divisor_override
    elif count_include_pad:
        divisor = hsize * wsize
    else:
        divisor = (h1 - h0) * (w1 - w0)
    return range(h0, h1), range(w0, w1), divisor


def avg_pool2d(x: np.ndarray, p: Pool2dShape, count_include_pad: bool,
               divisor_override: int | None) -> np.ndarray:
    """y (N, C, OH, OW): window sums over the input divided by PyTorch's divisor."""
    xl = x.tolist()
    y = _zeros(p.n, p.c, p.oh, p.ow)
    for n in range(p.n):
        for c in range(p.c):
            plane = xl[n][c]
            for oh in range(p.oh):
                for ow in range(p.ow):
                    hs, ws, divisor = _avg_divisor(p, oh, ow, count_include_pad, divisor_override)
                    y[n][c][oh][ow] = sum(plane[h][w] for h in hs for w in ws) / divisor
    return np.array(y, dtype=x.dtype).reshape(p.y_shape)


def avg_pool2d_backward(grad_y: np.ndarray, x: np.ndarray, p: Pool2dShape, count_include_pad: bool,
                        divisor_override: int | None) -> np.ndarray:
    """grad_x (N, C, H, W): each grad_y element spread evenly over its window's divisor."""
    gyl = grad_y.tolist()
    gx = _zeros(p.n, p.c, p.h, p.w)
    for n in range(p.n):
        for c in range(p.c):
            gplane = gx[n][c]
            for oh in range(p.oh):
                for ow in range(p.ow):
                    hs, ws, divisor = _avg_divisor(p, oh, ow, count_include_pad, divisor_override)
                    share = gyl[n][c][oh][ow] / divisor
                    for h in hs:
                        for w in ws:
                            gplane[h][w] += share
    return np.array(gx, dtype=x.dtype).reshape(x.shape)


def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c (M, N) = a (M, K) @ b (K, N), the i-j-k triple loop."""
    al, bt = a.tolist(), b.T.tolist()
    c = [[sum(ai * bj for ai, bj in zip(row, col)) for col in bt] for row in al]
    return np.array(c, dtype=a.dtype).reshape(a.shape[0], b.shape[1])
