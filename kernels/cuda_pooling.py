"""Max, average and adaptive average pooling on the GPU (numba.cuda), bit for bit the semantics of
``kernels/pooling.py``.

x, gx: (N, C, H, W) float32 or float64; y, gy: (N, C, OH, OW) of the same dtype;
idx: (N, C, OH, OW) int64, flat index h*W + w of each max within its input plane.
All are C-contiguous device arrays; the caller validates arguments and computes OH, OW, so every
window holds at least one in-bounds position. Launchers queue kernels on the default stream and
return at once. Kernels compile on first launch and are cached on disk; importing compiles nothing.
"""
import math

from numba import cuda

from . import pool_windows
from .cuda_elementwise import launch


_taps = cuda.jit(device=True)(pool_windows.tap_range)
_avg_window = cuda.jit(device=True)(pool_windows.avg_window)
_avg_divisor = cuda.jit(device=True)(pool_windows.avg_divisor)
_adaptive_window = cuda.jit(device=True)(pool_windows.adaptive_window)


@cuda.jit(cache=True)
def _max_forward(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """One thread per output; the scan of kernels/pooling.py (strict > max, then the last NaN wins)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for o in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = o % OW
        oh = (o // OW) % OH
        c = (o // (OW * OH)) % C
        n = o // (OW * OH * C)
        hb = oh * sh - ph
        wb = ow * sw - pw
        r0, r1 = _taps(oh, H, kh, sh, ph, dh)
        s0, s1 = _taps(ow, W, kw, sw, pw, dw)
        best = x.dtype.type(-math.inf)
        bi = (hb + r0 * dh) * W + wb + s0 * dw
        ni = -1
        for r in range(r0, r1):
            h = hb + r * dh
            for s in range(s0, s1):
                w = wb + s * dw
                v = x[n, c, h, w]
                if v > best:
                    best = v
                    bi = h * W + w
                if v != v:
                    ni = h * W + w
        if ni >= 0:
            bi = ni
            best = x[n, c, ni // W, ni % W]
        y[n, c, oh, ow] = best
        idx[n, c, oh, ow] = bi


@cuda.jit(cache=True)
def _zero(a):
    """a[:] = 0 for a flat a."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = 0


@cuda.jit(cache=True)
def _max_scatter(gy, idx, gx):
    """gy, idx (planes, OH*OW), gx (planes, H*W) zeroed: one thread per plane adds gy at idx in output order."""
    for p in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        for o in range(gy.shape[1]):
            gx[p, idx[p, o]] += gy[p, o]


@cuda.jit(cache=True)
def _avg_forward(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """One thread per output: the window's sum in x's dtype, divided by the divisor."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    zero = x.dtype.type(0)
    for o in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = o % OW
        oh = (o // OW) % OH
        c = (o // (OW * OH)) % C
        n = o // (OW * OH * C)
        h0, h1, exh = _avg_window(oh, H, kh, sh, ph)
        w0, w1, exw = _avg_window(ow, W, kw, sw, pw)
        if h0 >= h1 or w0 >= w1:
            y[n, c, oh, ow] = zero
            continue
        div = _avg_divisor(divisor_override, count_include_pad, exh * exw, (h1 - h0) * (w1 - w0))
        acc = zero
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / x.dtype.type(div)


@cuda.jit(cache=True)
def _avg_backward(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """One thread per input: the sum of gy / divisor over the windows holding it, in (oh, ow) order."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        # Output o's clipped window holds h iff o*s - p <= h < o*s - p + k (h is inside [0, H)).
        oh0 = 0 if h + ph < kh else (h + ph - kh) // sh + 1
        oh1 = min((h + ph) // sh + 1, OH)
        ow0 = 0 if w + pw < kw else (w + pw - kw) // sw + 1
        ow1 = min((w + pw) // sw + 1, OW)
        acc = gx.dtype.type(0)
        for oh in range(oh0, oh1):
            h0, h1, exh = _avg_window(oh, H, kh, sh, ph)
            for ow in range(ow0, ow1):
                w0, w1, exw = _avg_window(ow, W, kw, sw, pw)
                div = _avg_divisor(divisor_override, count_include_pad, exh * exw, (h1 - h0) * (w1 - w0))
                acc += gy[n, c, oh, ow] / gx.dtype.type(div)
        gx[n, c, h, w] = acc


@cuda.jit(cache=True)
def _adaptive_avg_forward(x, y):
    """One thread per output: the mean over its adaptive window, summed in x's dtype."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for o in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = o % OW
        oh = (o // OW) % OH
        c = (o // (OW * OH)) % C
        n = o // (OW * OH * C)
        h0, h1 = _adaptive_window(oh, H, OH)
        w0, w1 = _adaptive_window(ow, W, OW)
        acc = x.dtype.type(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / x.dtype.type((h1 - h0) * (w1 - w0))


@cuda.jit(cache=True)
def _adaptive_avg_backward(gy, gx):
    """One thread per input: the sum of gy / window size over the windows holding it, in (oh, ow) order."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        oh0, oh1 = _adaptive_window(h, OH, H)  # the outputs whose windows hold row h
        ow0, ow1 = _adaptive_window(w, OW, W)
        acc = gx.dtype.type(0)
        for oh in range(oh0, oh1):
            h0, h1 = _adaptive_window(oh, H, OH)
            for ow in range(ow0, ow1):
                w0, w1 = _adaptive_window(ow, W, OW)
                acc += gy[n, c, oh, ow] / gx.dtype.type((h1 - h0) * (w1 - w0))
        gx[n, c, h, w] = acc


def max_pool2d_forward(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """y[n,c,oh,ow] = max over the window, idx = its flat index h*W + w within the plane.

    Ties keep the first maximum (taps r-major, then s); a window holding NaN yields its last NaN
    and that NaN's index; padded positions never win. Integers are host ints.
    """
    _max_forward[launch(y.size)](x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw)


def max_pool2d_backward(gy, idx, gx):
    """gx = 0, then gx[n, c, idx // W, idx % W] += gy[n, c, oh, ow] for every output, in output order.

    Deterministic and bitwise equal to the CPU kernel: one thread per (n, c) plane, no atomics.
    """
    N, C, H, W = gx.shape
    planes = N * C
    gx_planes = gx.reshape(planes, H * W)
    _zero[launch(gx.size)](gx.reshape(gx.size))
    _max_scatter[launch(planes)](gy.reshape(planes, gy.size // planes),
                                           idx.reshape(planes, idx.size // planes), gx_planes)


def avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """y = (sum over the clipped window, accumulated in x's dtype) / divisor, as kernels/pooling.py.

    divisor = divisor_override if non-zero (0 means None), else the window size counted with
    padding (clipped to [-p, L + p)) if count_include_pad, else without it.
    """
    _avg_forward[launch(y.size)](x, y, kh, kw, sh, sw, ph, pw, bool(count_include_pad),
                                           int(divisor_override))


def avg_pool2d_backward(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """gx[n,c,h,w] = sum of gy[n,c,oh,ow] / divisor over the windows holding (h, w), in output order
    (bitwise the CPU kernel's scatter), one thread per gx element."""
    _avg_backward[launch(gx.size)](gy, gx, kh, kw, sh, sw, ph, pw, bool(count_include_pad),
                                             int(divisor_override))


def adaptive_avg_pool2d_forward(x, y):
    """y = the mean of x over each output's adaptive window (``pool_windows.adaptive_window``), as
    kernels/pooling.py."""
    _adaptive_avg_forward[launch(y.size)](x, y)


def adaptive_avg_pool2d_backward(gy, gx):
    """gx[n,c,h,w] = sum of gy[n,c,oh,ow] / window size over the windows holding (h, w), in output order
    (the CPU kernel's scatter as a gather), one thread per gx element."""
    _adaptive_avg_backward[launch(gx.size)](gy, gx)
