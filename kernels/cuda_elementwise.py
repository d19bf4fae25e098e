"""Elementwise kernels, reductions, losses and optimizer steps of a training step on the GPU (numba.cuda).

Arrays are C-contiguous device arrays of one float dtype (float32 or float64) per call and flat
unless a docstring states a shape; ``out`` may alias an input where stated. Launchers cast float
scalars to the arrays' dtype, queue kernels on the default stream and return at once (``total``
synchronizes). Reductions run in a fixed order (same result every run) and accumulate in float64
shared memory, so one compiled kernel per dtype needs no dtype-specific shared array.
Kernels compile on first launch and are cached on disk; importing compiles nothing.
"""
import math

import numpy as np
from numba import cuda, float64

THREADS = 256  # threads per block; a power of two for the tree reductions
MAX_BLOCKS = 8192  # beyond this, threads loop grid-stride


def launch(n, max_blocks=MAX_BLOCKS):
    """(blocks, threads) for n items: blocks of THREADS (at most max_blocks; None: no cap, for kernels
    without a grid-stride loop), or one block of the smallest power of two >= n (a warp at least)."""
    threads = 32
    while threads < min(n, THREADS):
        threads *= 2
    blocks = -(-n // threads)
    return max(1, blocks if max_blocks is None else min(blocks, max_blocks)), threads


@cuda.jit(cache=True)
def _relu_forward(x, y):
    zero = x.dtype.type(0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if (v > zero or v != v) else zero


@cuda.jit(cache=True)
def _relu_backward(grad_y, y, grad_x):
    zero = y.dtype.type(0)
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        grad_x[i] = zero if y[i] <= zero else grad_y[i]


@cuda.jit(cache=True)
def _sigmoid_forward(x, y):
    one = x.dtype.type(1)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if v < 0:
            e = math.exp(v)
            y[i] = e / (one + e)
        else:
            y[i] = one / (one + math.exp(-v))


@cuda.jit(cache=True)
def _sigmoid_backward(grad_y, y, grad_x):
    one = y.dtype.type(1)
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        grad_x[i] = grad_y[i] * (one - y[i]) * y[i]


@cuda.jit(cache=True)
def _tanh_forward(x, y):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] = math.tanh(x[i])


@cuda.jit(cache=True)
def _tanh_backward(grad_y, y, grad_x):
    one = y.dtype.type(1)
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        grad_x[i] = grad_y[i] * (one - y[i] * y[i])


@cuda.jit(cache=True)
def _leaky_relu_forward(x, y, negative_slope):
    zero = x.dtype.type(0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if v > zero else v * negative_slope


@cuda.jit(cache=True)
def _leaky_relu_backward(grad_y, x, grad_x, negative_slope):
    zero = x.dtype.type(0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        grad_x[i] = grad_y[i] if x[i] > zero else grad_y[i] * negative_slope


@cuda.jit(cache=True)
def _copy_corner(src, dst):
    """src (N, C, H, W), dst (N, C, H', W'): dst[n, c, h, w] = src[n, c, h, w] for h < min(H, H'), w < min(W, W')."""
    N, C = dst.shape[0], dst.shape[1]
    rows, cols = min(src.shape[2], dst.shape[2]), min(src.shape[3], dst.shape[3])
    for i in range(cuda.grid(1), N * C * rows * cols, cuda.gridsize(1)):
        w = i % cols
        h = (i // cols) % rows
        q = i // (cols * rows)
        dst[q // C, q % C, h, w] = src[q // C, q % C, h, w]


@cuda.jit(cache=True)
def _fill(a, value):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def _add(a, b, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


@cuda.jit(cache=True)
def _mul(a, b, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] * b[i]


@cuda.jit(cache=True)
def _scaled_difference(a, b, scale, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = scale * (a[i] - b[i])


@cuda.jit(cache=True)
def _add_channel_bias(y, b):
    """y (N, K, P) += b[k]."""
    K, P = y.shape[1], y.shape[2]
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        q = i // P
        y[q // K, q % K, i - q * P] += b[q % K]


@cuda.jit(cache=True)
def _channel_affine(x, scale, shift, y):
    """x, y (N, C, P): y = x * scale[c] + shift[c]."""
    C, P = x.shape[1], x.shape[2]
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        q = i // P
        n, c, p = q // C, q % C, i - q * P
        y[n, c, p] = x[n, c, p] * scale[c] + shift[c]


@cuda.jit(cache=True)
def _batch_norm_backward_input(g, xhat, mean_g, mean_gxhat, gx):
    """(N, C, P) arrays, (C,) means: gx = g - mean_g[c] - xhat * mean_gxhat[c]."""
    C, P = g.shape[1], g.shape[2]
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        q = i // P
        n, c, p = q // C, q % C, i - q * P
        gx[n, c, p] = g[n, c, p] - mean_g[c] - xhat[n, c, p] * mean_gxhat[c]


@cuda.jit(device=True)
def _block_sum(acc):
    """The float64 sum of acc over the block's threads (a power of two, at most THREADS), in a fixed
    tree order; valid in thread 0."""
    t = cuda.threadIdx.x
    partial = cuda.shared.array(THREADS, float64)
    partial[t] = acc
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    return partial[0]


@cuda.jit(cache=True)
def _channel_sum(x, out, beta):
    """x (N, C, P), one block per channel c: out[c] = beta*out[c] + sum over n, p of x[n, c, p]."""
    N, P = x.shape[0], x.shape[2]
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    # Threads tile (n, p) as a (THREADS // lanes) x lanes grid, so small P still keeps them busy.
    lanes = max(1, min(P, cuda.blockDim.x))
    rows = cuda.blockDim.x // lanes
    acc = 0.0
    if t < rows * lanes:
        for n in range(t // lanes, N, rows):
            for p in range(t % lanes, P, lanes):
                acc += x[n, c, p]
    s = _block_sum(acc)
    if t == 0:
        if beta != 0:
            s += beta * out[c]
        out[c] = s


@cuda.jit(cache=True)
def _block_totals(x, partials):
    """partials[b] = float64 sum of block b's grid-stride share of the flat x."""
    acc = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        acc += x[i]
    s = _block_sum(acc)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = s


@cuda.jit(device=True)
def _exp_shifted_row(logits, i, out):
    """out[i, j] = exp(logits[i, j] - m) with m the row's maximum; returns (m, the row's sum of out)."""
    m = logits[i, 0]
    for j in range(1, logits.shape[1]):
        m = max(m, logits[i, j])
    total = logits.dtype.type(0)
    for j in range(logits.shape[1]):
        e = math.exp(logits[i, j] - m)
        out[i, j] = e
        total += e
    return m, total


@cuda.jit(cache=True)
def _cross_entropy(logits, labels, grad, losses, rows):
    """One thread per row of logits (N, classes); rows = N in logits' dtype."""
    for i in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        m, total = _exp_shifted_row(logits, i, grad)
        label = labels[i]
        losses[i] = math.log(total) - (logits[i, label] - m)
        for j in range(logits.shape[1]):
            g = grad[i, j] / total
            if j == label:
                g -= logits.dtype.type(1)
            grad[i, j] = g / rows


@cuda.jit(cache=True)
def _softmax(logits, out):
    """One thread per row of logits (N, classes); out may alias logits."""
    for i in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        _, total = _exp_shifted_row(logits, i, out)
        for j in range(logits.shape[1]):
            out[i, j] /= total


@cuda.jit(cache=True)
def _sgd_update(p, g, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov, first):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            b = gi if first else momentum * buf[i] + one_minus_dampening * gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


@cuda.jit(cache=True)
def _adam_update(p, g, m, v, step_size, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
                 bias_correction2_sqrt):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i] + weight_decay * p[i]
        mi = m[i] + one_minus_beta1 * (gi - m[i])
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) / bias_correction2_sqrt + eps)


def relu_forward(x, y):
    """y = max(x, 0) elementwise; NaN stays NaN (as torch.relu). y may alias x."""
    _relu_forward[launch(x.size)](x, y)


def relu_backward(grad_y, y, grad_x):
    """grad_x = grad_y where y > 0, else 0 (PyTorch's threshold_backward on the output)."""
    _relu_backward[launch(y.size)](grad_y, y, grad_x)


def sigmoid_forward(x, y):
    """y = 1 / (1 + exp(-x)) (exp(x) / (1 + exp(x)) for x < 0: exp never overflows), as kernels/elementwise.py."""
    _sigmoid_forward[launch(x.size)](x, y)


def sigmoid_backward(grad_y, y, grad_x):
    """grad_x = grad_y * y * (1 - y) for y = sigmoid(x)."""
    _sigmoid_backward[launch(y.size)](grad_y, y, grad_x)


def tanh_forward(x, y):
    """y = tanh(x)."""
    _tanh_forward[launch(x.size)](x, y)


def tanh_backward(grad_y, y, grad_x):
    """grad_x = grad_y * (1 - y * y) for y = tanh(x)."""
    _tanh_backward[launch(y.size)](grad_y, y, grad_x)


def leaky_relu_forward(x, y, negative_slope):
    """y = x where x > 0, else x * negative_slope (NaN stays NaN)."""
    _leaky_relu_forward[launch(x.size)](x, y, x.dtype.type(negative_slope))


def leaky_relu_backward(grad_y, x, grad_x, negative_slope):
    """grad_x = grad_y where x > 0, else grad_y * negative_slope (PyTorch's rule, on the input)."""
    _leaky_relu_backward[launch(x.size)](grad_y, x, grad_x, x.dtype.type(negative_slope))


def copy_corner(src, dst):
    """dst (N, C, H', W')[..., :h, :w] = src (N, C, H, W)[..., :h, :w], h = min(H, H'), w = min(W, W'); the rest
    of dst is left as it is."""
    rows, cols = min(src.shape[2], dst.shape[2]), min(src.shape[3], dst.shape[3])
    _copy_corner[launch(src.shape[0] * src.shape[1] * rows * cols)](src, dst)


def fill(a, value):
    """a[:] = value."""
    _fill[launch(a.size)](a, a.dtype.type(value))


def add(a, b, out):
    """out = a + b; out may be a (``add(dst, src, dst)`` accumulates in place)."""
    _add[launch(out.size)](a, b, out)


def mul(a, b, out):
    """out = a * b; out may alias a."""
    _mul[launch(out.size)](a, b, out)


def scaled_difference(a, b, scale, out):
    """out = scale * (a - b); out may alias a."""
    _scaled_difference[launch(out.size)](a, b, out.dtype.type(scale), out)


def add_channel_bias(y, b):
    """y (N, K, P) += b (K,) along axis 1, in place (Linear passes P = 1)."""
    _add_channel_bias[launch(y.size)](y, b)


def channel_sum(x, out, beta):
    """out (C,) = beta * out + x.sum over n and p for x (N, C, P); beta is 0.0 (out is not read) or 1.0.

    One block per channel; each sums in float64 in a fixed order, so every run gives the same result.
    """
    _channel_sum[x.shape[1], launch(x.shape[0] * x.shape[2])[1]](x, out, float(beta))


def channel_affine(x, scale, shift, y):
    """x, y (N, C, P), scale, shift (C,): y = x * scale[c] + shift[c]; y may alias x."""
    _channel_affine[launch(x.size)](x, scale, shift, y)


def batch_norm_backward_input(g, xhat, mean_g, mean_gxhat, gx):
    """g, xhat, gx (N, C, P), mean_g, mean_gxhat (C,): gx = g - mean_g[c] - xhat * mean_gxhat[c]."""
    _batch_norm_backward_input[launch(g.size)](g, xhat, mean_g, mean_gxhat, gx)


def total(x):
    """The sum of all elements of a flat x as a Python float; synchronizes.

    Blocks sum fixed grid-stride shares in float64 on the device; the host adds their partials
    exactly (math.fsum), so every run gives the same result.
    """
    blocks, threads = launch(x.size)
    partials = cuda.device_array(blocks, np.float64)
    _block_totals[blocks, threads](x, partials)
    return math.fsum(partials.copy_to_host())


def cross_entropy(logits, labels, grad, losses):
    """Per row i of logits (N, classes) with int64 labels (N,): shifted = logits[i] - max,
    losses[i] = log(sum(exp(shifted))) - shifted[label], grad[i] = (softmax - onehot(label)) / N.

    grad (N, classes) and losses (N,) in logits' dtype; one thread per row. The mean loss is
    ``total(losses) / N``.
    """
    n = logits.shape[0]
    _cross_entropy[launch(n)](logits, labels, grad, losses, logits.dtype.type(n))


def softmax(logits, out):
    """out (N, classes) = exp(logits - row max) / its row sum; one thread per row; out may alias logits."""
    _softmax[launch(logits.shape[0])](logits, out)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """torch.optim.SGD in place on flat arrays, the formulas of kernels/elementwise.py: g' = g + wd*p;
    buf = g' (first step) or momentum*buf + (1-dampening)*g'; step = g' + momentum*buf (Nesterov)
    or buf (or g' without momentum); p -= lr * step. buf is unused (any array) when momentum is 0."""
    t = p.dtype.type
    _sgd_update[launch(p.size)](p, g, buf, t(lr), t(momentum), t(1 - dampening), t(weight_decay),
                                          bool(nesterov), bool(first))


def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt):
    """torch.optim.Adam in place on flat arrays, the formulas of kernels/elementwise.py: g' = g + wd*p;
    m += (1-b1)(g' - m); v = b2 v + (1-b2) g'^2; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)."""
    t = p.dtype.type
    _adam_update[launch(p.size)](p, g, m, v, t(lr / bias_correction1), t(1 - beta1), t(beta2),
                                           t(1 - beta2), t(eps), t(weight_decay), t(bias_correction2_sqrt))
