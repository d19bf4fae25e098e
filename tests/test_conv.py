"""conv2d and conv2d_backward: every algorithm against the naive reference, and finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings

import fastconv as fc
from strategies import assert_close, conv_algo_takes, conv_cases

COMPILED = [a for a in fc.algorithms("conv2d") if a != "naive"]


def _terms(case):
    cg, r, s = case.weight.shape[1:]
    return cg * r * s


@pytest.mark.parametrize("algo", COMPILED)
@given(case=conv_cases())
def test_forward_matches_naive(algo, case):
    if not conv_algo_takes(algo, case):
        return
    expected = fc.conv2d(case.x, case.weight, case.bias, **case.kwargs, algo="naive")
    actual = fc.conv2d(case.x, case.weight, case.bias, **case.kwargs, algo=algo)
    assert_close(actual, expected, _terms(case))


@pytest.mark.parametrize("algo", COMPILED)
@given(case=conv_cases())
def test_backward_matches_naive(algo, case):
    if not conv_algo_takes(algo, case):
        return
    y = fc.conv2d(case.x, case.weight, **case.kwargs, algo="naive")
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    gx0, gw0, gb0 = fc.conv2d_backward(grad_y, case.x, case.weight, **case.kwargs, algo="naive")
    gx, gw, gb = fc.conv2d_backward(grad_y, case.x, case.weight, **case.kwargs, algo=algo)
    k, cg, r, s = case.weight.shape
    assert_close(gx, gx0, (k // case.groups) * r * s)
    assert_close(gw, gw0, grad_y.size // k)
    assert_close(gb, gb0, grad_y.size // k)


def _finite_difference_check(case, algo):
    """Central differences of loss = sum(conv2d(x, w, b) * g) against conv2d_backward, in float64."""
    x, w = np.array(case.x, dtype=np.float64), case.weight.astype(np.float64)
    b = np.random.default_rng(1).standard_normal(w.shape[0])
    g = np.random.default_rng(2).standard_normal(fc.conv2d(x, w, b, **case.kwargs, algo=algo).shape)

    def loss(x_, w_, b_):
        return float(np.sum(fc.conv2d(x_, w_, b_, **case.kwargs, algo=algo) * g))

    gx, gw, gb = fc.conv2d_backward(g, x, w, **case.kwargs, algo=algo)
    eps = 1e-6
    for array, grad in ((x, gx), (w, gw), (b, gb)):
        numeric = np.empty_like(array)
        for i in np.ndindex(array.shape):
            old = array[i]
            array[i] = old + eps
            up = loss(x, w, b)
            array[i] = old - eps
            down = loss(x, w, b)
            array[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algo", COMPILED)
@settings(max_examples=10)
@given(case=conv_cases(max_batch=2, dtypes=[np.float64]))
def test_backward_matches_finite_differences(algo, case):
    if conv_algo_takes(algo, case):
        _finite_difference_check(case, algo)


def test_naive_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    from strategies import ConvCase
    case = ConvCase(rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 2, 2, 3)), None,
                    stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    _finite_difference_check(case, "naive")


@pytest.mark.parametrize("algo", ["im2col", "im2col_packed"])
def test_im2col_chunks_the_batch_under_the_workspace_limit(algo):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((7, 5, 9, 8)).astype(np.float32)
    expected = fc.conv2d(x, w, padding=1, algo="direct")
    expected_grads = fc.conv2d_backward(g, x, w, padding=1, algo="direct")
    from fastconv.kernels import matmul
    # per image: the columns (C*R*S rows), the GEMM output (K rows), the packed GEMM's copies (K + C*R*S rows);
    # whatever the chunk: the packed weights and one packed panel, C*R*S deep
    per_image = (3 * 9 + 5 + 5 + 3 * 9) * 9 * 8 * 4
    fixed = (5 + matmul.MR + matmul.NC) * 3 * 9 * 4
    old = fc.workspace_limit()
    try:
        for limit in (fixed + per_image, fixed + 2 * per_image + 1, fixed + 3 * per_image):
            fc.set_workspace_limit(limit)
            assert_close(fc.conv2d(x, w, padding=1, algo=algo), expected, 27)
            for got, want in zip(fc.conv2d_backward(g, x, w, padding=1, algo=algo), expected_grads):
                assert_close(got, want, 7 * 72)
        fc.set_workspace_limit(fixed + per_image - 1)
        with pytest.raises(ValueError, match="workspace"):
            fc.conv2d(x, w, padding=1, algo=algo)
        assert fc.conv2d(x, w, padding=1).shape == (7, 5, 9, 8)  # auto falls back to direct
    finally:
        fc.set_workspace_limit(old)


@pytest.mark.parametrize("algo", fc.algorithms("conv2d"))
def test_empty_batch(algo):
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    assert fc.conv2d(x, w, algo=algo).shape == (0, 3, 3, 3)
    gx, gw, gb = fc.conv2d_backward(np.zeros((0, 3, 3, 3), np.float32), x, w, algo=algo)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


def test_auto_matches_naive():
    rng = np.random.default_rng(5)
    for groups, c, k in ((1, 3, 4), (4, 4, 4)):
        x = rng.standard_normal((2, c, 7, 7))
        w = rng.standard_normal((k, c // groups, 3, 3))
        assert fc.conv2d(x, w, groups=groups, padding=1).dtype == np.float64
        assert_close(fc.conv2d(x, w, groups=groups, padding=1),
                     fc.conv2d(x, w, groups=groups, padding=1, algo="naive"), 9)


@pytest.mark.parametrize("x_shape,w_shape,stride,groups,expected", [
    ((64, 1, 28, 28), (6, 1, 5, 5), 1, 1, "direct"),           # LeNet-5 conv1
    ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, "direct"),         # ResNet stage
    ((8, 128, 56, 56), (128, 1, 3, 3), 1, 128, "direct"),      # depthwise
    ((8, 256, 28, 28), (256, 256, 3, 3), 1, 1, "im2col_packed"),  # VGG: deep GEMM
    ((8, 128, 28, 28), (256, 128, 3, 3), 2, 1, "im2col_packed"),  # strided downsample
    ((8, 256, 14, 14), (64, 256, 1, 1), 1, 1, "im2col_packed"),   # pointwise
])
def test_auto_rule(x_shape, w_shape, stride, groups, expected):
    from fastconv._checks import conv2d_shape
    from fastconv.conv import choose_conv2d_algorithm
    x, w = np.broadcast_to(np.float32(0), x_shape), np.broadcast_to(np.float32(0), w_shape)
    p = conv2d_shape(x, w, stride, 1, 1, groups)
    assert choose_conv2d_algorithm(p, 4) == expected
