"""conv2d and conv2d_backward: every CPU record of the registry (CONV2D, read when the tests are collected)
checked by op_check.check_conv2d on generated problems; batch chunking, empty batches and auto."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from fastconv._checks import batched, conv2d_shape
from fastconv.conv import CONV2D
from op_check import assert_close, check_conv2d, native, record_params, takes
from strategies import conv_cases


@pytest.mark.parametrize("record", record_params(r for r in CONV2D.records("cpu") if not r.reference))
@given(case=conv_cases())
def test_conv2d(record, case):
    """y and every gradient against the reference, finite differences and PyTorch (check_conv2d); a ValueError
    naming the record on a problem it refuses."""
    check_conv2d(record, case)


@pytest.mark.parametrize("record", record_params(r for r in CONV2D.records("cpu") if r.reference))
@settings(max_examples=10)
@given(case=conv_cases(max_batch=1, max_extra=2))
def test_conv2d_reference(record, case):
    """The reference (Python loops) on small problems: its gradients against finite differences, all of it against
    PyTorch (check_conv2d)."""
    check_conv2d(record, case)


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


@pytest.mark.parametrize("record", CONV2D.records("cpu"), ids=lambda r: r.name)
@pytest.mark.parametrize("r", [1, 3])
def test_empty_batch(record, r):
    """A batch of none: a y and grad_x of none, zero grad_weight and grad_bias (or the record's refusal)."""
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, r, r), np.float32)
    if not takes(record, conv2d_shape(x, w, 1, 0, 1, 1), lambda: fc.conv2d(x, w, algo=record.name)):
        return
    assert fc.conv2d(x, w, algo=record.name).shape == (0, 3, 6 - r, 6 - r)
    gx, gw, gb = fc.conv2d_backward(np.zeros((0, 3, 6 - r, 6 - r), np.float32), x, w, algo=record.name)
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
    ((64, 1, 28, 28), (6, 1, 5, 5), 1, 1, "direct_simd"),      # LeNet-5 conv1
    ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, "direct_simd"),    # ResNet stage
    ((8, 128, 56, 56), (128, 1, 3, 3), 1, 128, "depthwise"),   # depthwise
    ((8, 256, 28, 28), (256, 256, 3, 3), 1, 1, "winograd"),    # VGG: wide 3x3
    ((8, 128, 28, 28), (256, 128, 3, 3), 2, 1, "direct_simd"),  # strided downsample
    ((8, 256, 14, 14), (64, 256, 1, 1), 1, 1, "direct_simd"),  # pointwise
])
def test_auto_rule(x_shape, w_shape, stride, groups, expected):
    from fastconv.conv import choose_conv2d_algorithm
    x, w = np.broadcast_to(np.float32(0), x_shape), np.broadcast_to(np.float32(0), w_shape)
    p = conv2d_shape(x, w, stride, 1, 1, groups)
    assert choose_conv2d_algorithm(p, 4) == expected


def _same_nonfinite_pattern(actual: np.ndarray, expected: np.ndarray) -> bool:
    return all(np.array_equal(f(actual), f(expected)) for f in (np.isnan, np.isposinf, np.isneginf))


@pytest.mark.parametrize("record", record_params(r for r in CONV2D.records("cpu")
                                                 if not r.reference and set(r.finite_inputs) != {"x", "weight"}))
@given(case=conv_cases(max_batch=3), seed=st.integers(0, 2**32 - 1))
def test_forward_gives_pytorchs_nan_inf_pattern_on_inputs_it_does_not_check(record, case, seed):
    """The claim behind ``finite_inputs``: NaN/Inf in an input the dispatcher does not read before this record's
    forward (a few entries, each special value) come out where the reference puts them."""
    x, w = native(batched("x", np.ascontiguousarray(case.x))[0]).copy(), case.weight.copy()
    bias = None if case.bias is None else native(case.bias)
    p = conv2d_shape(x, w, case.stride, case.padding, case.dilation, case.groups)
    if record.unsupported(p) is not None:
        return
    rng = np.random.default_rng(seed)
    for name, a in (("x", x), ("weight", w)):
        if name not in record.finite_inputs:
            flat = a.reshape(-1)
            flat[rng.integers(0, flat.size, 3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
    expected = CONV2D["cpu", "naive"].forward(x, w, bias, p)
    assert _same_nonfinite_pattern(record.forward(x, w, bias, p), expected)


@pytest.mark.parametrize("x_shape,w_shape", [((33, 4, 5, 5), (7, 4, 3, 3)), ((2, 3, 20, 37), (13, 3, 3, 3))])
def test_direct_simd_forward_kernels_give_the_nan_inf_pattern(x_shape, w_shape):
    """Both direct_simd kernels (batch: 33 small planes; rows: wide planes with padding) with NaN/Inf in x and
    in the weights, against the reference: padded lanes, garbage positions and zero channel blocks are dropped."""
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x.reshape(-1)[rng.integers(0, x.size, 6)] = [np.nan, np.inf, -np.inf, np.inf, -np.inf, np.nan]
    w.reshape(-1)[rng.integers(0, w.size, 2)] = [np.inf, -np.inf]
    p = conv2d_shape(x, w, 1, 1, 1, 1)
    expected = CONV2D["cpu", "naive"].forward(x, w, None, p)
    assert _same_nonfinite_pattern(fc.conv2d(x, w, padding=1, algo="direct_simd"), expected)
    assert _same_nonfinite_pattern(fc.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1,
                                             algo="direct_simd"), expected)
