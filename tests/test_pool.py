"""Max and average pooling: every CPU record of the registries (MAX_POOL2D, AVG_POOL2D, read when the tests are
collected) checked by op_check on generated problems; indices, NaN and Inf, empty batches."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from fastconv._checks import pool2d_shape
from fastconv.pool import AVG_POOL2D, MAX_POOL2D
from op_check import check_avg_pool2d, check_max_pool2d, record_params
from strategies import pool_cases

DIVISORS = st.sampled_from([None, 1, 3, -2])


@pytest.mark.parametrize("record", record_params(r for r in MAX_POOL2D.records("cpu") if not r.reference))
@given(case=pool_cases())
def test_max_pool2d(record, case):
    """y, indices and grad_x against the reference, finite differences and PyTorch (check_max_pool2d)."""
    check_max_pool2d(record, case)


@pytest.mark.parametrize("record", record_params(r for r in MAX_POOL2D.records("cpu") if r.reference))
@settings(max_examples=15)
@given(case=pool_cases(max_batch=1))
def test_max_pool2d_reference(record, case):
    """The reference (Python loops) on small problems: grad_x against finite differences, all of it against PyTorch
    (check_max_pool2d)."""
    check_max_pool2d(record, case)


@pytest.mark.parametrize("record", record_params(r for r in AVG_POOL2D.records("cpu") if not r.reference))
@given(case=pool_cases(dilation=False), count_include_pad=st.booleans(), divisor_override=DIVISORS)
def test_avg_pool2d(record, case, count_include_pad, divisor_override):
    """y and grad_x against the reference, finite differences and PyTorch (check_avg_pool2d)."""
    check_avg_pool2d(record, case, count_include_pad, divisor_override)


@pytest.mark.parametrize("record", record_params(r for r in AVG_POOL2D.records("cpu") if r.reference))
@settings(max_examples=15)
@given(case=pool_cases(dilation=False, max_batch=1), count_include_pad=st.booleans(), divisor_override=DIVISORS)
def test_avg_pool2d_reference(record, case, count_include_pad, divisor_override):
    """The reference (Python loops) on small problems: grad_x against finite differences, all of it against PyTorch
    (check_avg_pool2d)."""
    check_avg_pool2d(record, case, count_include_pad, divisor_override)


def test_max_pool_backward_refuses_bad_indices():
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4)
    y, idx = fc.max_pool2d(x, 2, return_indices=True)
    gy = np.ones_like(y)
    for bad in (idx + 16, idx - 20, idx[:1], idx.astype(np.float64), idx.tolist()):
        with pytest.raises(ValueError, match="indices"):
            fc.max_pool2d_backward(gy, x, 2, indices=bad)


@pytest.mark.parametrize("algo", fc.algorithms("max_pool2d"))
def test_max_pool_nan_and_inf_follow_pytorch(algo):
    nan, inf = np.nan, np.inf
    x = np.array([[[[1.0, nan, 3.0, nan, -inf, -inf, 2.0, 2.0], [-inf] * 8]]])
    y, idx = fc.max_pool2d(x, 2, return_indices=True, algo=algo)  # every record runs 2x2 windows
    # NaN wins its window (the last NaN's index), -inf ties keep the first, equal maxima keep the first.
    np.testing.assert_array_equal(idx[0, 0, 0], [1, 3, 4, 6])
    assert np.isnan(y[0, 0, 0, :2]).all() and y[0, 0, 0, 2] == -inf and y[0, 0, 0, 3] == 2.0
    if MAX_POOL2D["cpu", algo].unsupported(pool2d_shape(x, (1, 4), None, 0, 1, False)) is None:
        y, idx = fc.max_pool2d(x, (1, 4), return_indices=True, algo=algo)
        np.testing.assert_array_equal(idx[0, 0, 0], [3, 6])


@pytest.mark.parametrize("op", [fc.max_pool2d, fc.avg_pool2d])
def test_pool_empty_batch(op):
    x = np.zeros((0, 2, 6, 6), np.float32)
    assert op(x, 2).shape == (0, 2, 3, 3)
