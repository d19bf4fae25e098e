"""Max and average pooling: the compiled kernels against the naive reference, and finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from strategies import assert_close, pool_cases


def _pool_kwargs(case):
    return dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
                ceil_mode=case.ceil_mode)


@given(case=pool_cases())
def test_max_pool_matches_naive(case):
    kw = dict(_pool_kwargs(case), dilation=case.dilation)
    y0, i0 = fc.max_pool2d(case.x, **kw, return_indices=True, algo="naive")
    y, i = fc.max_pool2d(case.x, **kw, return_indices=True, algo="direct")
    assert_close(y, y0)
    np.testing.assert_array_equal(i, i0)
    assert i.dtype == np.int64
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    gx0 = fc.max_pool2d_backward(grad_y, case.x, **kw, algo="naive")
    assert_close(fc.max_pool2d_backward(grad_y, case.x, **kw, algo="direct"), gx0, 9)
    for algo in ("naive", "direct"):  # with the forward's indices: the same gradient, no recomputation
        assert_close(fc.max_pool2d_backward(grad_y, case.x, **kw, indices=i, algo=algo), gx0, 9)


def test_max_pool_backward_refuses_bad_indices():
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4)
    y, idx = fc.max_pool2d(x, 2, return_indices=True)
    gy = np.ones_like(y)
    for bad in (idx + 16, idx - 20, idx[:1], idx.astype(np.float64), idx.tolist()):
        with pytest.raises(ValueError, match="indices"):
            fc.max_pool2d_backward(gy, x, 2, indices=bad)


@given(case=pool_cases(dilation=False), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, 1, 3, -2]))
def test_avg_pool_matches_naive(case, count_include_pad, divisor_override):
    kw = dict(_pool_kwargs(case), count_include_pad=count_include_pad, divisor_override=divisor_override)
    y0 = fc.avg_pool2d(case.x, **kw, algo="naive")
    assert_close(fc.avg_pool2d(case.x, **kw, algo="direct"), y0, 16)
    grad_y = np.random.default_rng(0).standard_normal(y0.shape).astype(y0.dtype)
    gx0 = fc.avg_pool2d_backward(grad_y, case.x, **kw, algo="naive")
    assert_close(fc.avg_pool2d_backward(grad_y, case.x, **kw, algo="direct"), gx0, 16)


@pytest.mark.parametrize("algo", fc.algorithms("max_pool2d"))
def test_max_pool_nan_and_inf_follow_pytorch(algo):
    nan, inf = np.nan, np.inf
    x = np.array([[[[1.0, nan, 3.0, nan, -inf, -inf, 2.0, 2.0]]]])
    y, idx = fc.max_pool2d(x, (1, 2), return_indices=True, algo=algo)
    # NaN wins its window (the last NaN's index), -inf ties keep the first, equal maxima keep the first.
    np.testing.assert_array_equal(idx[0, 0, 0], [1, 3, 4, 6])
    assert np.isnan(y[0, 0, 0, :2]).all() and y[0, 0, 0, 2] == -inf and y[0, 0, 0, 3] == 2.0
    y, idx = fc.max_pool2d(x, (1, 4), return_indices=True, algo=algo)
    np.testing.assert_array_equal(idx[0, 0, 0], [3, 6])


@settings(max_examples=15)
@given(case=pool_cases(dtypes=[np.float64]), count_include_pad=st.booleans())
def test_pool_backward_matches_finite_differences(case, count_include_pad):
    x = np.array(case.x, dtype=np.float64)
    x += np.arange(x.size).reshape(x.shape) * 1e-3  # distinct values: max pooling is differentiable
    ops = [
        (lambda x_: fc.max_pool2d(x_, **_pool_kwargs(case), dilation=case.dilation),
         lambda g: fc.max_pool2d_backward(g, x, **_pool_kwargs(case), dilation=case.dilation)),
        (lambda x_: fc.avg_pool2d(x_, **_pool_kwargs(case), count_include_pad=count_include_pad),
         lambda g: fc.avg_pool2d_backward(g, x, **_pool_kwargs(case), count_include_pad=count_include_pad)),
    ]
    for forward, backward in ops:
        g = np.random.default_rng(1).standard_normal(forward(x).shape)
        grad = backward(g)
        numeric = np.empty_like(x)
        eps = 1e-7
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + eps
            up = np.sum(forward(x) * g)
            x[i] = old - eps
            down = np.sum(forward(x) * g)
            x[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", [fc.max_pool2d, fc.avg_pool2d])
def test_pool_empty_batch(op):
    x = np.zeros((0, 2, 6, 6), np.float32)
    assert op(x, 2).shape == (0, 2, 3, 3)
