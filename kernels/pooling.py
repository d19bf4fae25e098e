"""Max, average and adaptive average pooling, forward and backward, with PyTorch's CPU semantics (Numba).

x, gx: (N, C, H, W) float32 or float64, C-contiguous.
y, gy: (N, C, OH, OW), same dtype as x, C-contiguous.
idx: (N, C, OH, OW) int64, flat per-plane index h*W + w of each max (return_indices convention).

The caller validates arguments and computes OH, OW with PyTorch's rule (ceil_mode
included), so every window holds at least one in-bounds position. Kernels run
``prange`` over the N*C planes; each plane writes only its own outputs. Numba
compiles each function on first call and caches it on disk; importing compiles nothing.
Inner loops index with ``np.uint64`` (indices there are never negative), which spares
Numba's negative-index fix-ups.
"""
import numba as nb
import numpy as np

from . import pool_windows

_tap_range = nb.njit(cache=True, nogil=True)(pool_windows.tap_range)
_avg_window = nb.njit(cache=True, nogil=True)(pool_windows.avg_window)
_avg_divisor = nb.njit(cache=True, nogil=True)(pool_windows.avg_divisor)
_adaptive_window = nb.njit(cache=True, nogil=True)(pool_windows.adaptive_window)


@nb.njit(cache=True, nogil=True)
def _taps(out_len, in_len, k, stride, pad, dil):
    """``tap_range`` of every output o: arrays t0, t1."""
    t0 = np.empty(out_len, np.int64)
    t1 = np.empty(out_len, np.int64)
    for o in range(out_len):
        t0[o], t1[o] = _tap_range(o, in_len, k, stride, pad, dil)
    return t0, t1


@nb.njit(cache=True, nogil=True)
def _avg_bounds(out_len, in_len, k, stride, pad):
    """``avg_window`` of every output o: arrays lo, hi, extent."""
    lo = np.empty(out_len, np.int64)
    hi = np.empty(out_len, np.int64)
    ext = np.empty(out_len, np.int64)
    for o in range(out_len):
        lo[o], hi[o], ext[o] = _avg_window(o, in_len, k, stride, pad)
    return lo, hi, ext


@nb.njit(cache=True, nogil=True)
def _adaptive_bounds(out_len, in_len):
    """``adaptive_window`` of every output o: arrays lo, hi."""
    lo = np.empty(out_len, np.int64)
    hi = np.empty(out_len, np.int64)
    for o in range(out_len):
        lo[o], hi[o] = _adaptive_window(o, in_len, out_len)
    return lo, hi


@nb.njit(cache=True, nogil=True, parallel=True)
def max_pool2d_forward(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """y[n,c,oh,ow] = max over the window, idx = its flat index h*W + w within the plane.

    Matches PyTorch's CPU scan (taps r-major then s, take when ``v > best or isnan(v)``,
    from best = -inf at the first in-bounds tap): ties keep the first maximum; if the
    window holds a NaN, the result is the last NaN and its index. Computed branch-free
    as a strict ``>`` max/argmax that never takes a NaN, plus the index of the last NaN.
    """
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(N * C, H * W)
    yf = y.reshape(N * C, OH * OW)
    idf = idx.reshape(N * C, OH * OW)
    r0s, r1s = _taps(OH, H, kh, sh, ph, dh)
    s0s, s1s = _taps(OW, W, kw, sw, pw, dw)
    ninf = x.dtype.type(-np.inf)
    for p in nb.prange(N * C):
        xp = xf[p]
        yp = yf[p]
        ip = idf[p]
        for oh in range(OH):
            hb = oh * sh - ph
            r0 = r0s[oh]
            r1 = r1s[oh]
            for ow in range(OW):
                wb = ow * sw - pw
                s0 = s0s[ow]
                s1 = s1s[ow]
                best = ninf
                bi = (hb + r0 * dh) * W + wb + s0 * dw
                ni = -1
                for r in range(r0, r1):
                    row = (hb + r * dh) * W + wb
                    for s in range(s0, s1):
                        i = row + s * dw
                        v = xp[np.uint64(i)]
                        bi = i if v > best else bi
                        best = v if v > best else best
                        ni = i if v != v else ni
                if ni >= 0:
                    bi = ni
                    best = xp[np.uint64(ni)]
                yp[oh * OW + ow] = best
                ip[oh * OW + ow] = bi


@nb.njit(cache=True, nogil=True)
def _max_row_tap(x_row, out, lo, hi, sw, col0):
    """out[o] = max(out[o], x_row[o*sw + col0]) for o in [lo, hi) (NaN sticks)."""
    for o in range(lo, hi):
        v = x_row[np.uint64(o * sw + col0)]
        b = out[np.uint64(o)]
        out[np.uint64(o)] = v if (v > b or v != v) and b == b else b


@nb.njit(cache=True, nogil=True, parallel=True)
def max_pool2d_values(x, y, kh, kw, sh, sw, ph, pw, dh, dw):
    """y[n,c,oh,ow] = max over the window (NaN if it holds one), without indices: the same values as
    max_pool2d_forward. Per output row, taps outermost and the row's outputs innermost, each tap over the
    outputs whose window reads it inside x (``_taps`` of the columns gives those outputs)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(N * C, H * W)
    yf = y.reshape(N * C, OH * OW)
    ninf = x.dtype.type(-np.inf)
    lo = np.empty(kw, np.int64)
    hi = np.empty(kw, np.int64)
    for s in range(kw):
        col0 = s * dw - pw  # input column of output 0's tap s
        lo[s] = min(OW, max(0, (-col0 + sw - 1) // sw))
        hi[s] = max(lo[s], min(OW, (W - 1 - col0) // sw + 1)) if W - 1 - col0 >= 0 else lo[s]
    for p in nb.prange(N * C):
        xp = xf[p]
        yp = yf[p]
        for oh in range(OH):
            out = yp[oh * OW:(oh + 1) * OW]
            for o in range(OW):
                out[o] = ninf
            for r in range(kh):
                row = oh * sh - ph + r * dh
                if row >= 0 and row < H:
                    x_row = xp[row * W:(row + 1) * W]
                    for s in range(kw):
                        _max_row_tap(x_row, out, lo[s], hi[s], sw, s * dw - pw)


@nb.njit(cache=True, nogil=True, parallel=True)
def max_pool2d_backward(gy, idx, gx):
    """gx = 0, then gx[n, c, idx // W, idx % W] += gy[n, c, oh, ow] for every output, in output order."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    gyf = gy.reshape(N * C, OH * OW)
    idf = idx.reshape(N * C, OH * OW)
    gxf = gx.reshape(N * C, H * W)
    for p in nb.prange(N * C):
        gxp = gxf[p]
        gyp = gyf[p]
        ip = idf[p]
        gxp[:] = 0
        for o in range(OH * OW):
            gxp[np.uint64(ip[o])] += gyp[o]


@nb.njit(cache=True, nogil=True, parallel=True)
def avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """y = (sum over the clipped window, accumulated in x's dtype) / divisor, as PyTorch's CPU kernel.

    divisor = divisor_override if non-zero (0 means None), else the window size counted with
    padding (clipped to [-p, L + p)) if count_include_pad, else without it.
    """
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(N * C, H * W)
    yf = y.reshape(N * C, OH * OW)
    h0s, h1s, exh = _avg_bounds(OH, H, kh, sh, ph)
    w0s, w1s, exw = _avg_bounds(OW, W, kw, sw, pw)
    zero = x.dtype.type(0)
    for p in nb.prange(N * C):
        xp = xf[p]
        yp = yf[p]
        for oh in range(OH):
            h0 = h0s[oh]
            h1 = h1s[oh]
            for ow in range(OW):
                w0 = w0s[ow]
                w1 = w1s[ow]
                if h0 >= h1 or w0 >= w1:
                    yp[oh * OW + ow] = zero
                    continue
                div = _avg_divisor(divisor_override, count_include_pad, exh[oh] * exw[ow], (h1 - h0) * (w1 - w0))
                acc = zero
                for h in range(h0, h1):
                    row = h * W
                    for w in range(w0, w1):
                        acc += xp[np.uint64(row + w)]
                yp[oh * OW + ow] = acc / x.dtype.type(div)


@nb.njit(cache=True, nogil=True, parallel=True)
def avg_pool2d_backward(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """gx = 0, then gy[n,c,oh,ow] / divisor is added to every position of its clipped window."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    gyf = gy.reshape(N * C, OH * OW)
    gxf = gx.reshape(N * C, H * W)
    h0s, h1s, exh = _avg_bounds(OH, H, kh, sh, ph)
    w0s, w1s, exw = _avg_bounds(OW, W, kw, sw, pw)
    for p in nb.prange(N * C):
        gyp = gyf[p]
        gxp = gxf[p]
        gxp[:] = 0
        for oh in range(OH):
            h0 = h0s[oh]
            h1 = h1s[oh]
            for ow in range(OW):
                w0 = w0s[ow]
                w1 = w1s[ow]
                div = _avg_divisor(divisor_override, count_include_pad, exh[oh] * exw[ow], (h1 - h0) * (w1 - w0))
                g = gyp[oh * OW + ow] / gx.dtype.type(div)
                for h in range(h0, h1):
                    row = h * W
                    for w in range(w0, w1):
                        gxp[np.uint64(row + w)] += g


@nb.njit(cache=True, nogil=True, parallel=True)
def max_pool2d_forward_2x2(x, y, idx):
    """max_pool2d_forward for 2x2 windows at stride 2 without padding or dilation, OH = H // 2, OW = W // 2:
    the same scan and NaN rule with the four taps spelled out (LLVM then vectorises along ow)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(N * C, H * W)
    yf = y.reshape(N * C, OH * OW)
    idf = idx.reshape(N * C, OH * OW)
    for p in nb.prange(N * C):
        xp, yp, ip = xf[p], yf[p], idf[p]
        for oh in range(OH):
            top = xp[2 * oh * W:(2 * oh + 1) * W]
            bottom = xp[(2 * oh + 1) * W:(2 * oh + 2) * W]
            y_row = yp[oh * OW:(oh + 1) * OW]
            i_row = ip[oh * OW:(oh + 1) * OW]
            base = 2 * oh * W
            for ow in range(OW):
                j = 2 * ow
                a, b, c, d = top[j], top[j + 1], bottom[j], bottom[j + 1]
                best, bi = a, 0
                bi = 1 if b > best else bi
                best = b if b > best else best
                bi = W if c > best else bi
                best = c if c > best else best
                bi = W + 1 if d > best else bi
                best = d if d > best else best
                nan = d != d or c != c or b != b or a != a
                ni = W + 1 if d != d else (W if c != c else (1 if b != b else 0))
                y_row[ow] = (d if d != d else (c if c != c else (b if b != b else a))) if nan else best
                i_row[ow] = base + j + (ni if nan else bi)


@nb.njit(cache=True, nogil=True, parallel=True)
def max_pool2d_backward_2x2(gy, idx, gx):
    """max_pool2d_backward for max_pool2d_forward_2x2's windows (they tile x's first 2*OH rows and 2*OW
    columns without overlap): each window's four elements written once, gy at its max, zeros elsewhere. A
    plane whose indices (given by the caller) leave their windows is redone as max_pool2d_backward does it."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    gyf = gy.reshape(N * C, OH * OW)
    idf = idx.reshape(N * C, OH * OW)
    gxf = gx.reshape(N * C, H * W)
    zero = gx.dtype.type(0)
    for p in nb.prange(N * C):
        gxp, gyp, ip = gxf[p], gyf[p], idf[p]
        stray = False
        if 2 * OH < H or 2 * OW < W:  # the last row or column that no window covers
            gxp[:] = zero
        for oh in range(OH):
            top = gxp[2 * oh * W:(2 * oh + 1) * W]
            bottom = gxp[(2 * oh + 1) * W:(2 * oh + 2) * W]
            g_row = gyp[oh * OW:(oh + 1) * OW]
            i_row = ip[oh * OW:(oh + 1) * OW]
            base = 2 * oh * W
            for ow in range(OW):
                j = 2 * ow
                k = i_row[ow] - base - j
                g = g_row[ow]
                top[j] = g if k == 0 else zero
                top[j + 1] = g if k == 1 else zero
                bottom[j] = g if k == W else zero
                bottom[j + 1] = g if k == W + 1 else zero
                stray |= not (k == 0 or k == 1 or k == W or k == W + 1)
        if stray:
            gxp[:] = zero
            for o in range(OH * OW):
                gxp[np.uint64(ip[o])] += gyp[o]


@nb.njit(cache=True, nogil=True, parallel=True)
def adaptive_avg_pool2d_forward(x, y):
    """y[n,c,oh,ow] = mean of x[n,c] over the adaptive window (``pool_windows.adaptive_window`` of oh over H
    rows and of ow over W columns), summed in x's dtype."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(N * C, H * W)
    yf = y.reshape(N * C, OH * OW)
    h0s, h1s = _adaptive_bounds(OH, H)
    w0s, w1s = _adaptive_bounds(OW, W)
    zero = x.dtype.type(0)
    for p in nb.prange(N * C):
        xp = xf[p]
        yp = yf[p]
        for oh in range(OH):
            h0 = h0s[oh]
            h1 = h1s[oh]
            for ow in range(OW):
                w0 = w0s[ow]
                w1 = w1s[ow]
                acc = zero
                for h in range(h0, h1):
                    row = h * W
                    for w in range(w0, w1):
                        acc += xp[np.uint64(row + w)]
                yp[oh * OW + ow] = acc / x.dtype.type((h1 - h0) * (w1 - w0))


@nb.njit(cache=True, nogil=True, parallel=True)
def adaptive_avg_pool2d_backward(gy, gx):
    """gx = 0, then gy[n,c,oh,ow] / (its window's size) is added to every position of its adaptive window,
    in output order."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    gyf = gy.reshape(N * C, OH * OW)
    gxf = gx.reshape(N * C, H * W)
    h0s, h1s = _adaptive_bounds(OH, H)
    w0s, w1s = _adaptive_bounds(OW, W)
    for p in nb.prange(N * C):
        gyp = gyf[p]
        gxp = gxf[p]
        gxp[:] = 0
        for oh in range(OH):
            h0 = h0s[oh]
            h1 = h1s[oh]
            for ow in range(OW):
                w0 = w0s[ow]
                w1 = w1s[ow]
                g = gyp[oh * OW + ow] / gx.dtype.type((h1 - h0) * (w1 - w0))
                for h in range(h0, h1):
                    row = h * W
                    for w in range(w0, w1):
                        gxp[np.uint64(row + w)] += g
