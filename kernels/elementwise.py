"""Elementwise kernels of a training step (Numba), on Numba's thread pool like the convolutions.

All arrays are C-contiguous and flat-indexed; one float dtype per call; out may alias nothing (a kernel that can
write into an input says so and takes a flag for it).
"""
import numba as nb
import numpy as np

BLOCK = 1 << 14  # elements per parallel work item


@nb.njit(cache=True, nogil=True, parallel=True)
def relu_forward(x, y):
    """y = max(x, 0) elementwise; NaN stays NaN (as torch.relu)."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    n = xf.size
    zero = xf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = xf[i]
            yf[i] = v if (v > zero or v != v) else zero


@nb.njit(cache=True, nogil=True, parallel=True)
def relu_into(x):
    """x = max(x, 0) in place (NaN stays NaN)."""
    xf = x.reshape(-1)
    n = xf.size
    zero = xf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        xb = xf[b * BLOCK:min(n, (b + 1) * BLOCK)]
        for i in range(xb.size):
            v = xb[i]
            xb[i] = v if (v > zero or v != v) else zero


@nb.njit(cache=True, nogil=True)
def _add_relu_run(a, b, out, relu):
    zero = out.dtype.type(0)
    for i in range(out.size):
        v = a[i] + b[i]
        out[i] = v if (not relu or v > zero or v != v) else zero


@nb.njit(cache=True, nogil=True)
def _add_relu_run_into(a, b, relu):
    zero = a.dtype.type(0)
    for i in range(a.size):
        v = a[i] + b[i]
        a[i] = v if (not relu or v > zero or v != v) else zero


@nb.njit(cache=True, nogil=True, parallel=True)
def add_relu(a, b, y, relu, into_a):
    """y = a + b, with `relu` then max(., 0) (NaN stays NaN); a, b, y of one shape; with `into_a` the result goes
    into a and y is not read (an output that is an input must be named so: the loop over three arrays that may
    overlap would run scalar)."""
    af, bf, yf = a.reshape(-1), b.reshape(-1), y.reshape(-1)
    n = af.size
    for blk in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        if into_a:
            _add_relu_run_into(af[lo:hi], bf[lo:hi], relu)
        else:
            _add_relu_run(af[lo:hi], bf[lo:hi], yf[lo:hi], relu)


@nb.njit(cache=True, nogil=True)
def _scale_shift_run(x, s, t, out, relu):
    zero = out.dtype.type(0)
    for i in range(x.size):
        v = x[i] * s + t
        out[i] = v if (not relu or v > zero or v != v) else zero


@nb.njit(cache=True, nogil=True)
def _scale_shift_run_into(x, s, t, relu):
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i] * s + t
        x[i] = v if (not relu or v > zero or v != v) else zero


@nb.njit(cache=True, nogil=True, parallel=True)
def scale_shift(x, scale, shift, y, relu, into_x):
    """y[n, c, :] = x[n, c, :] * scale[c] + shift[c], with `relu` then max(., 0) (NaN stays NaN); with `into_x`
    the result goes into x and y is not read.

    x, y: (N, C, P) (the positions of a channel flattened); scale, shift: (C,)."""
    N, C, P = x.shape
    for row in nb.prange(N * C):
        n, c = row // C, row % C
        if into_x:
            _scale_shift_run_into(x[n, c], scale[c], shift[c], relu)
        else:
            _scale_shift_run(x[n, c], scale[c], shift[c], y[n, c], relu)


@nb.njit(cache=True, nogil=True, parallel=True)
def relu_backward(grad_y, y, grad_x):
    """grad_x = 0 where y <= 0, else grad_y (PyTorch's threshold_backward on the output: the gradient
    also passes where y is NaN).

    Each block works on slices: indexing the whole arrays, LLVM could not rule out that grad_x
    aliases the inputs and left the loop scalar and branchy (20x slower on random signs)."""
    gf, yf, xf = grad_y.reshape(-1), y.reshape(-1), grad_x.reshape(-1)
    n = gf.size
    zero = gf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        g, yb, out = gf[lo:hi], yf[lo:hi], xf[lo:hi]
        for i in range(hi - lo):
            out[i] = zero if yb[i] <= zero else g[i]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """torch.optim.SGD on flat arrays: g' = g + wd*p; buf = g' (first step) or momentum*buf + (1-dampening)*g';
    step = g' + momentum*buf (Nesterov) or buf (or g' without momentum); p -= lr * step."""
    for i in range(p.size):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            b = gi if first else momentum * buf[i] + (1 - dampening) * gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


@nb.njit(cache=True, nogil=True, error_model="numpy")
def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt):
    """torch.optim.Adam on flat arrays: g' = g + wd*p; m += (1-b1)(g' - m); v = b2 v + (1-b2) g'^2;
    p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps). Division by zero gives Inf or NaN as in PyTorch
    (eps = 0 where g' = 0), never an exception midway through the parameters."""
    step_size = lr / bias_correction1
    for i in range(p.size):
        gi = g[i] + weight_decay * p[i]
        mi = m[i] + (1 - beta1) * (gi - m[i])
        vi = beta2 * v[i] + (1 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / bias_correction2_sqrt + eps)


@nb.njit(cache=True, nogil=True, parallel=True)
def all_finite(a):
    """Whether the flat array a holds no NaN and no Inf (a[i] - a[i] is 0 exactly for finite a[i]);
    per block an integer OR, which vectorises, without early exit."""
    n = a.size
    blocks = (n + BLOCK - 1) // BLOCK
    bad = np.zeros(blocks, np.uint8)
    for b in nb.prange(blocks):
        flag = np.uint8(0)
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            d = a[i] - a[i]
            flag |= np.uint8(d != d)
        bad[b] = flag
    return not bad.any()


@nb.njit(cache=True, nogil=True, parallel=True)
def max_magnitude_bits(u, mask):
    """max over i of u[i] & mask, for u the bits of a flat float array (uint32 for float32, uint64 for float64)
    and mask clearing their sign bit: the bits of max |a[i]|. IEEE magnitudes sort like their bits, Inf and
    NaN above every finite value, so one integer max (which vectorises, where a float max with NaN rules does
    not: 2.9 ms for 3.2M float32, the time of a depthwise layer) answers both "largest" and "all finite"."""
    n = u.size
    blocks = (n + BLOCK - 1) // BLOCK
    top = np.zeros(blocks, u.dtype)
    for b in nb.prange(blocks):
        m = top[b]
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = u[i] & mask
            m = v if v > m else m
        top[b] = m
    return top.max() if blocks else u.dtype.type(0)


@nb.njit(cache=True, nogil=True, parallel=True)
def fingerprint(words):
    """sum of words[i] * (2i + 1) modulo 2^64 over the flat unsigned-integer array words (an array's bytes
    viewed as words): any change of one word changes it (odd factors are invertible modulo 2^64), and
    several changes cancel with probability about 2^-64."""
    n = words.size
    blocks = (n + BLOCK - 1) // BLOCK
    parts = np.zeros(blocks, np.uint64)
    for b in nb.prange(blocks):
        h = np.uint64(0)
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            h += np.uint64(words[i]) * np.uint64(2 * i + 1)
        parts[b] = h
    total = np.uint64(0)
    for b in range(blocks):
        total += parts[b]
    return total


# ---- per-channel passes over (N, C, P) arrays (P = H*W): channel sums, batch norm ----------------------------
# Sums are float64, kept in 8 partial accumulators so LLVM vectorises them (fastmath's reassociation, for the
# sums only: the order of a float64 sum of float32 terms moves its result by far less than float32's rounding).

_SUMS = {"reassoc", "contract"}


@nb.njit(cache=True, nogil=True, fastmath=_SUMS)
def _sum_runs(a, c):
    """sum over n, p of a[n, c, p] (float64)."""
    s = 0.0
    for n in range(a.shape[0]):
        row = a[n, c]
        for p in range(row.shape[0]):
            s += row[p]
    return s


@nb.njit(cache=True, nogil=True, parallel=True)
def channel_sums(a, out):
    """out[c] = sum over n, p of a[n, c, p] (float64 out (C,))."""
    for c in nb.prange(a.shape[1]):
        out[c] = _sum_runs(a, c)


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=_SUMS)
def channel_moments(a, mean, var):
    """mean[c], var[c] (float64, biased): of a[:, c, :], two passes over each channel."""
    N, C, P = a.shape
    count = N * P
    for c in nb.prange(C):
        m = _sum_runs(a, c) / count
        s = 0.0
        for n in range(N):
            row = a[n, c]
            for p in range(P):
                d = row[p] - m
                s += d * d
        mean[c] = m
        var[c] = s / count


@nb.njit(cache=True, nogil=True, parallel=True)
def batch_norm_forward(x, mean, invstd, weight, bias, xhat, y):
    """xhat = (x - mean[c]) * invstd[c]; y = xhat * weight[c] + bias[c] (mean, invstd, weight, bias in x's dtype)."""
    N, C, P = x.shape
    for item in nb.prange(N * C):
        n, c = item // C, item % C
        m, s, w, b = mean[c], invstd[c], weight[c], bias[c]
        xr, hr, yr = x[n, c], xhat[n, c], y[n, c]
        for p in range(P):
            h = (xr[p] - m) * s
            hr[p] = h
            yr[p] = h * w + b


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=_SUMS)
def batch_norm_backward_sums(grad_y, xhat, sum_g, sum_gx):
    """sum_g[c] = sum of grad_y[:, c], sum_gx[c] = sum of grad_y * xhat over channel c (float64), one pass."""
    N, C, P = grad_y.shape
    for c in nb.prange(C):
        s, sx = 0.0, 0.0
        for n in range(N):
            gr, hr = grad_y[n, c], xhat[n, c]
            for p in range(P):
                s += gr[p]
                sx += gr[p] * hr[p]
        sum_g[c] = s
        sum_gx[c] = sx


@nb.njit(cache=True, nogil=True, parallel=True)
def batch_norm_backward_input(grad_y, xhat, scale, mean_g, mean_gx, grad_x):
    """grad_x = scale[c] * (grad_y - mean_g[c] - xhat * mean_gx[c]) (all per-channel values in x's dtype)."""
    N, C, P = grad_y.shape
    for item in nb.prange(N * C):
        n, c = item // C, item % C
        s, mg, mgx = scale[c], mean_g[c], mean_gx[c]
        gr, hr, out = grad_y[n, c], xhat[n, c], grad_x[n, c]
        for p in range(P):
            out[p] = s * (gr[p] - mg - hr[p] * mgx)


# ---- activations: y = f(x) and grad_x = grad_y * f'(.) over flat arrays, in blocks like relu ------------------

@nb.njit(cache=True, nogil=True, parallel=True)
def sigmoid_forward(x, y):
    """y = 1 / (1 + exp(-x)), as exp(x) / (1 + exp(x)) for x < 0 so that exp never overflows; NaN stays NaN."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    n = xf.size
    one = xf.dtype.type(1)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        xb, out = xf[lo:hi], yf[lo:hi]
        for i in range(hi - lo):
            v = xb[i]
            if v < 0:
                e = np.exp(v)
                out[i] = e / (one + e)
            else:
                out[i] = one / (one + np.exp(-v))


@nb.njit(cache=True, nogil=True, parallel=True)
def sigmoid_backward(grad_y, y, grad_x):
    """grad_x = grad_y * y * (1 - y), y = sigmoid(x) (PyTorch's sigmoid_backward on the output)."""
    gf, yf, xf = grad_y.reshape(-1), y.reshape(-1), grad_x.reshape(-1)
    n = gf.size
    one = gf.dtype.type(1)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        g, yb, out = gf[lo:hi], yf[lo:hi], xf[lo:hi]
        for i in range(hi - lo):
            out[i] = g[i] * (one - yb[i]) * yb[i]


@nb.njit(cache=True, nogil=True, parallel=True)
def tanh_backward(grad_y, y, grad_x):
    """grad_x = grad_y * (1 - y * y), y = tanh(x) (PyTorch's tanh_backward on the output)."""
    gf, yf, xf = grad_y.reshape(-1), y.reshape(-1), grad_x.reshape(-1)
    n = gf.size
    one = gf.dtype.type(1)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        g, yb, out = gf[lo:hi], yf[lo:hi], xf[lo:hi]
        for i in range(hi - lo):
            out[i] = g[i] * (one - yb[i] * yb[i])


@nb.njit(cache=True, nogil=True, parallel=True)
def leaky_relu_forward(x, y, negative_slope):
    """y = x where x > 0, else x * negative_slope (NaN stays NaN); negative_slope in x's dtype."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    n = xf.size
    zero = xf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        xb, out = xf[lo:hi], yf[lo:hi]
        for i in range(hi - lo):
            v = xb[i]
            out[i] = v if v > zero else v * negative_slope


@nb.njit(cache=True, nogil=True, parallel=True)
def leaky_relu_backward(grad_y, x, grad_x, negative_slope):
    """grad_x = grad_y where x > 0, else grad_y * negative_slope (PyTorch's leaky_relu_backward, on the input)."""
    gf, xf, of = grad_y.reshape(-1), x.reshape(-1), grad_x.reshape(-1)
    n = gf.size
    zero = gf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        g, xb, out = gf[lo:hi], xf[lo:hi], of[lo:hi]
        for i in range(hi - lo):
            out[i] = g[i] if xb[i] > zero else g[i] * negative_slope
