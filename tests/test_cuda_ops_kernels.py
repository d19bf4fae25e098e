"""GPU pooling and elementwise kernels (fastconv.kernels.cuda_pooling, cuda_elementwise) against the CPU ones.

Runs on a real GPU, or under Numba's CUDA simulator (tests/conftest.py picks it when no driver is
found), which runs every CUDA thread as a Python thread: shapes stay tiny.
"""
import math

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no CUDA device and no simulator", allow_module_level=True)

import fastconv  # noqa: E402
from fastconv import nn  # noqa: E402
from fastconv._checks import pool2d_shape  # noqa: E402
from fastconv.kernels import cuda_elementwise, cuda_pooling, elementwise, pooling  # noqa: E402
from op_check import assert_close  # noqa: E402

DTYPES = [np.float32, np.float64]


def _close(got, want, dtype):
    """The tests' one tolerance policy (op_check.assert_close) on a result against its expectation in `dtype`."""
    assert_close(got, np.asarray(want).astype(dtype), terms=10)


def _same(got, want):
    """Bitwise equal (NaN at the same places counts as equal)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- pooling

# (shape, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    ((2, 3, 7, 7), 3, 2, 1, 1, False),
    ((1, 2, 5, 6), 3, 1, 1, 1, False),  # overlapping windows: one input feeds several outputs
    ((1, 2, 6, 7), (2, 3), (2, 1), (1, 1), (2, 1), True),
    ((2, 1, 5, 5), 2, 2, 0, 1, True),  # ceil_mode: clipped last windows
]


def _max_input(rng, shape, dtype, specials):
    """Few distinct values (many ties), plus NaN and -inf in some windows when specials."""
    x = rng.integers(-2, 3, shape).astype(dtype)
    if specials:
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, 4, replace=False)] = np.nan
        flat[rng.choice(flat.size, 3, replace=False)] = -np.inf
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("shape, k, s, p, d, ceil", MAX_CASES)
def test_max_pool2d_matches_cpu_bitwise(shape, k, s, p, d, ceil, specials, dtype):
    rng = np.random.default_rng(0)
    x = _max_input(rng, shape, dtype, specials)
    ps = pool2d_shape(x, k, s, p, d, ceil)
    want_y, want_idx = fastconv.max_pool2d(x, k, s, p, d, ceil, return_indices=True)

    y = cuda.device_array(ps.y_shape, dtype)
    idx = cuda.device_array(ps.y_shape, np.int64)
    cuda_pooling.max_pool2d_forward(cuda.to_device(x), y, idx, *ps.kernel, *ps.stride, *ps.padding, *ps.dilation)
    _same(y.copy_to_host(), want_y)
    _same(idx.copy_to_host(), want_idx)

    gy = _rand(rng, ps.y_shape, dtype)
    want_gx = np.empty(shape, dtype)
    pooling.max_pool2d_backward(gy, want_idx, want_gx)
    gx = cuda.to_device(np.full(shape, 7, dtype))  # stale values must be overwritten
    cuda_pooling.max_pool2d_backward(cuda.to_device(gy), cuda.to_device(want_idx), gx)
    _same(gx.copy_to_host(), want_gx)


# (shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    ((2, 3, 7, 7), 3, 2, 1, False, True, None),
    ((1, 2, 6, 7), (3, 2), (2, 1), (1, 1), True, False, None),
    ((2, 1, 5, 5), 3, 2, 1, True, True, None),  # ceil_mode: the last window is clipped to [-p, L + p)
    ((1, 2, 5, 6), 3, 1, 1, False, False, 5),
    ((1, 1, 7, 5), (2, 3), (3, 2), (1, 0), True, True, -2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, s, p, ceil, include_pad, override", AVG_CASES)
def test_avg_pool2d_matches_cpu_bitwise(shape, k, s, p, ceil, include_pad, override, dtype):
    rng = np.random.default_rng(1)
    x = _rand(rng, shape, dtype)
    ps = pool2d_shape(x, k, s, p, 1, ceil)
    args = (*ps.kernel, *ps.stride, *ps.padding, include_pad, override or 0)

    y = cuda.device_array(ps.y_shape, dtype)
    cuda_pooling.avg_pool2d_forward(cuda.to_device(x), y, *args)
    _same(y.copy_to_host(), fastconv.avg_pool2d(x, k, s, p, ceil, include_pad, override))

    gy = _rand(rng, ps.y_shape, dtype)
    gx = cuda.to_device(np.full(shape, 7, dtype))
    cuda_pooling.avg_pool2d_backward(cuda.to_device(gy), gx, *args)
    _same(gx.copy_to_host(), fastconv.avg_pool2d_backward(gy, x, k, s, p, ceil, include_pad, override))


# ---------------------------------------------------------------- elementwise

@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_cpu_bitwise(dtype):
    rng = np.random.default_rng(2)
    x = _rand(rng, 300, dtype)
    x[:4] = [np.nan, -0.0, 0.0, -np.inf]
    want_y = np.empty_like(x)
    elementwise.relu_forward(x, want_y)
    y = cuda.device_array_like(x)
    cuda_elementwise.relu_forward(cuda.to_device(x), y)
    _same(y.copy_to_host(), want_y)

    gy = _rand(rng, 300, dtype)
    want_gx = np.empty_like(x)
    elementwise.relu_backward(gy, want_y, want_gx)
    gx = cuda.device_array_like(x)
    cuda_elementwise.relu_backward(cuda.to_device(gy), y, gx)
    _same(gx.copy_to_host(), want_gx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fill_add_mul_scaled_difference(dtype):
    rng = np.random.default_rng(3)
    a, b = _rand(rng, 300, dtype), _rand(rng, 300, dtype)
    da, db, out = cuda.to_device(a), cuda.to_device(b), cuda.device_array(300, dtype)

    cuda_elementwise.fill(out, 0.1)
    _same(out.copy_to_host(), np.full(300, 0.1, dtype))
    cuda_elementwise.add(da, db, out)
    _close(out.copy_to_host(), a + b, dtype)
    cuda_elementwise.mul(da, db, out)
    _close(out.copy_to_host(), a * b, dtype)
    cuda_elementwise.scaled_difference(da, db, 0.3, out)
    _close(out.copy_to_host(), dtype(0.3) * (a - b), dtype)
    cuda_elementwise.add(da, db, da)  # in place
    _close(da.copy_to_host(), a + b, dtype)
    cuda_elementwise.mul(da, db, da)
    _close(da.copy_to_host(), (a + b) * b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 3, 1)])
def test_add_channel_bias(shape, dtype):
    rng = np.random.default_rng(4)
    y, b = _rand(rng, shape, dtype), _rand(rng, shape[1], dtype)
    dy = cuda.to_device(y)
    cuda_elementwise.add_channel_bias(dy, cuda.to_device(b))
    _close(dy.copy_to_host(), y + b[None, :, None], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, beta", [((2, 2, 50), 0.0), ((2, 2, 150), 1.0), ((5, 2, 1), 1.0)])
def test_channel_sum(shape, beta, dtype):
    rng = np.random.default_rng(5)
    x, old = _rand(rng, shape, dtype), _rand(rng, shape[1], dtype)
    dx = cuda.to_device(x)
    # beta = 0 must not read out: NaN there would leak into the result.
    out = cuda.to_device(old if beta else np.full(shape[1], np.nan, dtype))
    cuda_elementwise.channel_sum(dx, out, beta)
    got = out.copy_to_host()
    _close(got, beta * old + x.astype(np.float64).sum(axis=(0, 2)), dtype)
    again = cuda.to_device(old if beta else np.zeros(shape[1], dtype))
    cuda_elementwise.channel_sum(dx, again, beta)
    _same(again.copy_to_host(), got)  # deterministic


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_affine_in_place_and_batch_norm_backward_input(dtype):
    rng = np.random.default_rng(6)
    shape = (2, 3, 7)
    x, g = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
    scale, shift = _rand(rng, 3, dtype), _rand(rng, 3, dtype)
    dx = cuda.to_device(x)
    cuda_elementwise.channel_affine(dx, cuda.to_device(scale), cuda.to_device(shift), dx)
    _close(dx.copy_to_host(), x * scale[None, :, None] + shift[None, :, None], dtype)

    gx = cuda.device_array(shape, dtype)
    cuda_elementwise.batch_norm_backward_input(cuda.to_device(g), cuda.to_device(x), cuda.to_device(scale),
                                               cuda.to_device(shift), gx)
    _close(gx.copy_to_host(), g - scale[None, :, None] - x * shift[None, :, None], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 700])  # 700: three blocks
def test_total(n, dtype):
    x = _rand(np.random.default_rng(7), n, dtype)
    dx = cuda.to_device(x)
    got = cuda_elementwise.total(dx)
    assert isinstance(got, float)
    assert math.isclose(got, math.fsum(x.astype(np.float64)), rel_tol=1e-12, abs_tol=1e-12)
    assert cuda_elementwise.total(dx) == got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, classes, scale", [(5, 10, 3.0), (3, 7, 1000.0)])
def test_cross_entropy_and_softmax(n, classes, scale, dtype):
    rng = np.random.default_rng(8)
    logits = (scale * rng.standard_normal((n, classes))).astype(dtype)
    labels = rng.integers(0, classes, n)
    want_loss, want_grad = nn.cross_entropy(logits, labels)

    dlogits = cuda.to_device(logits)
    grad, losses = cuda.device_array((n, classes), dtype), cuda.device_array(n, dtype)
    cuda_elementwise.cross_entropy(dlogits, cuda.to_device(labels.astype(np.int64)), grad, losses)
    assert math.isclose(cuda_elementwise.total(losses) / n, want_loss, rel_tol=2e-5 if dtype == np.float32 else 1e-10, abs_tol=1e-5 if dtype == np.float32 else 1e-11)
    _close(grad.copy_to_host(), want_grad, dtype)

    out = cuda.device_array((n, classes), dtype)
    cuda_elementwise.softmax(dlogits, out)
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    _close(out.copy_to_host(), e / e.sum(axis=1, keepdims=True), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, dampening, weight_decay, nesterov, first", [
    (0.0, 0.0, 0.0, False, True),
    (0.9, 0.0, 1e-2, False, True),
    (0.9, 0.1, 0.0, False, False),
    (0.9, 0.0, 1e-2, True, False),
])
def test_sgd_update_matches_cpu(momentum, dampening, weight_decay, nesterov, first, dtype):
    rng = np.random.default_rng(9)
    p, g, buf = (_rand(rng, 200, dtype) for _ in range(3))
    t = np.dtype(dtype).type
    args = (t(0.05), t(momentum), t(dampening), t(weight_decay), nesterov, first)
    dp, dbuf = cuda.to_device(p), cuda.to_device(buf)
    cuda_elementwise.sgd_update(dp, cuda.to_device(g), dbuf, *args)
    elementwise.sgd_update(p, g, buf, *args)
    _close(dp.copy_to_host(), p, dtype)
    _close(dbuf.copy_to_host(), buf, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update_matches_cpu(weight_decay, dtype):
    rng = np.random.default_rng(10)
    p, g, m = (_rand(rng, 200, dtype) for _ in range(3))
    v = rng.random(200).astype(dtype)
    t = np.dtype(dtype).type
    b1, b2, steps = 0.9, 0.999, 3
    args = (t(1e-3), t(b1), t(b2), t(1e-8), t(weight_decay), t(1 - b1 ** steps), t(math.sqrt(1 - b2 ** steps)))
    dp, dm, dv = cuda.to_device(p), cuda.to_device(m), cuda.to_device(v)
    cuda_elementwise.adam_update(dp, cuda.to_device(g), dm, dv, *args)
    elementwise.adam_update(p, g, m, v, *args)
    _close(dp.copy_to_host(), p, dtype)
    _close(dm.copy_to_host(), m, dtype)
    _close(dv.copy_to_host(), v, dtype)
