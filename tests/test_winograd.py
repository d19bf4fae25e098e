"""Winograd F(2x2, 3x3) and F(4x4, 3x3) forward against the naive reference (and direct on real layers).

float64: within rounding (rtol 1e-10, as every algorithm). float32, with exact = the float64
convolution of the same float32 data, two bounds:

- the worst-case bound, checked on every case: |y - exact| <= (C/groups + 16) * 2**-24 * S,
  where S is the same Winograd computation done on |x| and |w| with every transform matrix
  replaced by its absolute value (|A^T| [sum_c |G||g||G^T| * |B^T||d||B|] |A| + |bias|): the
  usual forward-error bound of a sum of products (gamma_n, n = the C/groups channel sums plus
  the additions of the transforms, the weight transform's one rounding and the bias).
  S is about 7 W (below) on random data; measured errors are 0.2-0.6 * 2**-24 * S.
- the window bound, checked on the real layers: max |y - exact| / W <= FLOAT32_WINDOW_BOUND
  = 1e-5, where W = |bias| + sum |x| * |w| over the output's window. Measured: 0.9-2.4e-7,
  below float32 direct convolution's (3.5-6e-7). It holds for windows of many terms, not for
  all: Winograd multiplies each input by mixtures of the weights (U = G g G^T), so an input
  met by a tiny or zero weight still brings the rounding of the larger ones. Hypothesis found
  a 1x1 input padded by 2 (each output one product x * w[r, s], |w[r, s]| = 0.005 among weights
  of about 1) at 2.2e-5 of W; test_window_bound_is_not_a_worst_case_bound makes W = 0 with an
  error of 6e-5.
- F(4x4, 3x3) (records "winograd_4x4"): the same worst-case bound holds (its S is larger: the transform
  matrices hold 4, 5, 8, 1/6, 1/24; measured at most 0.04 of the bound on random cases), and the window
  error on the real layers is 1.6-4.9e-6 of W, 4-11x float32 direct's (FLOAT32_WINDOW_BOUND[4] = 2e-5,
  20x direct's). float64: within 20x the rounding tolerance of the other algorithms.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import fastconv as fc
from fastconv import naive, winograd
from fastconv._checks import conv2d_shape
from op_check import assert_close

FLOAT32_WINDOW_BOUND = {2: 1e-5, 4: 2e-5}   # m -> max |y - exact| / W on the real layers
WINDOW_BOUND_VS_DIRECT = {2: 2.0, 4: 20.0}  # m -> that error over float32 direct convolution's
UNIT_ROUNDOFF = 2.0**-24
MATRICES = {  # m -> (B^T, G, A^T) of F(m x m, 3x3)
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}
ALGOS = {2: "winograd", 4: "winograd_4x4"}


def _shape(x, w, padding=0, groups=1, stride=1, dilation=1):
    return conv2d_shape(x, w, stride, padding, dilation, groups)


def _reference(x, w, b, p):
    """(exact float64 output, float64 window magnitude |b| + sum |x||w|) of the same data."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = b.astype(np.float64) if b is not None else None
    exact = naive.conv2d(x64, w64, b64, p)
    mag = naive.conv2d(np.abs(x64), np.abs(w64), None if b is None else np.abs(b64), p)
    return exact, mag


def _direct_reference(x, w, b, padding, groups=1):
    """The same as _reference by direct convolution in float64 (for layers too big for naive)."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = b.astype(np.float64) if b is not None else None
    exact = fc.conv2d(x64, w64, b64, padding=padding, groups=groups, algo="direct")
    mag = fc.conv2d(np.abs(x64), np.abs(w64), None if b is None else np.abs(b64), padding=padding,
                    groups=groups, algo="direct")
    return exact, mag


def _winograd_magnitude(x, w, b, p, m=2):
    """S: Winograd F(m x m, 3x3) of |x| and |w| with |B^T|, |G|, |A^T|, plus |b|, in float64
    (the scale of the worst-case rounding error of every output)."""
    bt, g, at = (np.abs(a) for a in MATRICES[m])
    t = m + 2
    n, c, h, wd = x.shape
    k, groups = w.shape[0], p.groups
    cg, kg = c // groups, k // groups
    top, _, left, _ = p.padding
    th, tw = -(-p.oh // m), -(-p.ow // m)
    xp = np.zeros((n, c, m * th + 2, m * tw + 2))
    xp[:, :, top:top + h, left:left + wd] = np.abs(x)
    tiles = sliding_window_view(xp, (t, t), axis=(2, 3))[:, :, ::m, ::m]  # (n, c, th, tw, t, t)
    v = np.einsum("ia,nctuab,jb->nctuij", bt, tiles, bt)
    u = np.einsum("ir,kcrs,js->kcij", g, np.abs(w.astype(np.float64)), g)
    v = v.reshape(n, groups, cg, th * tw, t * t).transpose(1, 4, 0, 3, 2).reshape(groups, t * t, -1, cg)
    u = u.reshape(groups, kg, cg, t * t).transpose(0, 3, 2, 1)  # (groups, t*t, cg, kg)
    mm = (v @ u).reshape(groups, t, t, n, th, tw, kg).transpose(3, 0, 6, 4, 5, 1, 2)
    mm = mm.reshape(n, k, th, tw, t, t)
    s = np.einsum("ai,nktuij,bj->nktuab", at, mm, at)
    s = s.transpose(0, 1, 2, 4, 3, 5).reshape(n, k, m * th, m * tw)[:, :, :p.oh, :p.ow]
    if b is not None:
        s = s + np.abs(b.astype(np.float64))[:, None, None]
    return s


def _relative_error(y: np.ndarray, exact: np.ndarray, scale: np.ndarray) -> float:
    """max |y - exact| / scale (0/0 counts as 0)."""
    err = np.abs(y.astype(np.float64) - exact)
    return float(np.max(np.where(err == 0, 0.0, err / np.maximum(scale, np.finfo(np.float64).tiny))))


def _worst_case_ratio(y, exact, x, w, b, p, mag=None, m=2) -> float:
    """max |y - exact| / ((C/groups + 16) * u * S): at most 1 by the worst-case bound.
    With `mag` (W), also checks S >= W, as it must be (S bounds every term of W)."""
    s = _winograd_magnitude(x, w, b, p, m)
    if mag is not None:
        assert np.all(s >= mag * (1 - 1e-12)), "S must dominate the window magnitude"
    return _relative_error(y, exact, (p.c // p.groups + 16) * UNIT_ROUNDOFF * s)


def _check(y, x, w, b, p, reference=None, m=2):
    """y (by Winograd F(m x m, 3x3)) against the exact result: float64 within rounding, float32 within the
    worst-case bound. `reference` is _reference(x, w, b, p) when already computed."""
    exact, mag = reference if reference is not None else _reference(x, w, b, p)
    assert y.shape == exact.shape
    if y.dtype == np.float64:
        assert_close(y, exact, 9 * 17 if m == 2 else 9 * 17 * 20)
    else:
        assert y.dtype == np.float32
        assert _worst_case_ratio(y, exact, x, w, b, p, mag, m) <= 1


@st.composite
def winograd_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 17 // groups))
    kg = draw(st.integers(1, 17 // groups))
    padding = draw(st.sampled_from([0, 1, 2, "same", "valid", (0, 1), (2, 1)]))
    ph, pw = {"same": (1, 1), "valid": (0, 0)}.get(padding, padding if isinstance(padding, tuple)
                                                     else (padding, padding))
    min_h, min_w = max(1, 3 - 2 * ph), max(1, 3 - 2 * pw)  # the smallest inputs with an output
    h = draw(st.integers(min_h, min_h + 8))
    w = draw(st.integers(min_w, min_w + 8))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, groups * cg, h, w)).astype(dtype)
    weight = rng.standard_normal((groups * kg, cg, 3, 3)).astype(dtype)
    bias = rng.standard_normal(groups * kg).astype(dtype) if draw(st.booleans()) else None
    return x, weight, bias, padding, groups


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@given(case=winograd_cases())
def test_forward_matches_naive(m, case):
    x, w, b, padding, groups = case
    p = _shape(x, w, padding, groups)
    assert winograd.unsupported(p) is None
    y = winograd.forward(x, w, b, p, m)
    assert y.dtype == x.dtype
    _check(y, x, w, b, p, m=m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,padding", [
    ((1, 1, 3, 3), 0),      # 1x1 output: one tile, ragged in both directions
    ((1, 1, 1, 1), 1),      # a single pixel with padding 1: 1x1 output
    ((2, 3, 1, 7), 1),      # one input row
    ((1, 2, 3, 9), 0),      # 1xN output, OW odd
    ((1, 2, 9, 3), 0),      # Nx1 output, OH odd
    ((3, 2, 4, 4), 0),      # exactly one 2x2 tile per image
    ((2, 5, 6, 5), (0, 1)), # mixed padding, odd/even
    ((1, 4, 2, 2), 2),      # padding larger than half the input
])
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_small_inputs(x_shape, padding, dtype, m):
    rng = np.random.default_rng(sum(x_shape))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((3, x_shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    p = _shape(x, w, padding)
    _check(winograd.forward(x, w, b, p, m), x, w, b, p, m=m)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_depthwise_and_grouped(m):
    rng = np.random.default_rng(1)
    for groups, cg, kg in ((8, 1, 1), (4, 1, 2), (2, 20, 18), (2, 3, 16)):
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal((2, groups * cg, 7, 6)).astype(dtype)
            w = rng.standard_normal((groups * kg, cg, 3, 3)).astype(dtype)
            b = rng.standard_normal(groups * kg).astype(dtype)
            p = _shape(x, w, 1, groups)
            _check(winograd.forward(x, w, b, p, m), x, w, b, p, m=m)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deep_channels_cross_gemm_slices(dtype, m):
    """More than KC = 512 input channels: the products run over several packed K slices."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 600, 4, 5)).astype(dtype)
    w = rng.standard_normal((7, 600, 3, 3)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    p = _shape(x, w, 1)
    _check(winograd.forward(x, w, b, p, m), x, w, b, p, m=m)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_weight_transform_is_g_w_gt(m):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 4, 3, 3))
    g = MATRICES[m][1]
    points = winograd.points(m)
    expected = np.einsum("ir,kcrs,js->ijkc", g, w, g).reshape(points, 5, 4)
    for dtype, tol in ((np.float64, 1e-14), (np.float32, 1e-6)):
        u = np.empty((points, 5, 4), dtype)
        winograd.TRANSFORMS[m][0](w.astype(dtype), u)
        np.testing.assert_allclose(u, expected, rtol=tol, atol=tol)


def test_window_bound_is_not_a_worst_case_bound():
    """The window bound holds for typical data, not for all: here every output is exactly 0
    (the only nonzero input meets zero weights), yet y[0, 0, 0, 0] carries the rounding of
    products of that input with mixtures of the other weights. The worst-case bound holds."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.float32(1e4) / 3
    w = np.full((1, 1, 3, 3), np.float32(1) / 3)
    w[0, 0, :2, :2] = 0  # the weights that meet x[1, 1] in each of the four outputs
    p = _shape(x, w)
    y = winograd.forward(x, w, None, p)
    exact, mag = _reference(x, w, None, p)
    assert not exact.any() and not mag.any()
    assert y[0, 0, 0, 0] != 0  # about 6e-5: no bound relative to the window can hold
    assert _worst_case_ratio(y, exact, x, w, None, p) <= 1


@pytest.mark.parametrize("kernel,stride,dilation,padding,groups,applies", [
    ((3, 3), 1, 1, 0, 1, True),
    ((3, 3), 1, 1, "same", 4, True),
    ((3, 3), 1, 1, (2, 0), 2, True),
    ((5, 5), 1, 1, 0, 1, False),
    ((3, 1), 1, 1, 0, 1, False),
    ((3, 3), 2, 1, 1, 1, False),
    ((3, 3), (1, 2), 1, 1, 1, False),
    ((3, 3), 1, 2, 2, 1, False),
])
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_applies(kernel, stride, dilation, padding, groups, applies, m):
    x = np.zeros((1, 4, 9, 9), np.float32)
    w = np.zeros((4, 4 // groups) + kernel, np.float32)
    p = _shape(x, w, padding, groups, stride, dilation)
    assert (winograd.unsupported(p) is None) is applies
    if not applies:
        with pytest.raises(ValueError, match="3x3 kernel, stride 1 and dilation 1"):
            fc.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups, algo=ALGOS[m])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_chunks_under_the_workspace_limit(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, 9, 8)).astype(dtype)
    w = rng.standard_normal((5, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    p = _shape(x, w, 1)
    per_image = 16 * (3 + 5) * 5 * 4 * np.dtype(dtype).itemsize  # 16 x (C + K) x tiles
    assert winograd.workspace_bytes(p, np.dtype(dtype).itemsize) == per_image
    expected = winograd.forward(x, w, b, p)
    reference = _reference(x, w, b, p)
    _check(expected, x, w, b, p, reference)
    old = fc.workspace_limit()
    try:
        for limit, chunk in ((per_image, 1), (2 * per_image + 1, 2), (3 * per_image, 3), (10**9, 7)):
            fc.set_workspace_limit(limit)
            assert winograd.chunk_images(p, np.dtype(dtype).itemsize) == chunk
            y = winograd.forward(x, w, b, p)
            _check(y, x, w, b, p, reference)
            np.testing.assert_array_equal(y, expected)  # chunking changes no rounding
        fc.set_workspace_limit(10**9)
        target = winograd.CHUNK_TARGET_BYTES
        try:  # the cache-sized target: the fewest chunks that fit it, then equal chunk sizes
            for most, chunk in ((3, 3), (4, 4), (6, 4), (7, 7)):  # 7 images: 3+3+1, 4+3, 4+3, 7
                winograd.CHUNK_TARGET_BYTES = most * per_image
                assert winograd.chunk_images(p, np.dtype(dtype).itemsize) == chunk
            np.testing.assert_array_equal(winograd.forward(x, w, b, p), expected)
        finally:
            winograd.CHUNK_TARGET_BYTES = target
        fc.set_workspace_limit(per_image - 1)
        with pytest.raises(ValueError, match=r"winograd needs .* MiB of workspace for one image"):
            winograd.forward(x, w, b, p)
    finally:
        fc.set_workspace_limit(old)


def test_workspace_reuse_keeps_results_apart():
    """The cached workspace is shared by calls of any shape and dtype; outputs never alias it."""
    rng = np.random.default_rng(4)
    cases = []
    for shape, k, dtype in (((2, 6, 11, 10), 7, np.float32), ((1, 2, 4, 5), 3, np.float64),
                            ((3, 9, 6, 6), 4, np.float32), ((2, 6, 11, 10), 7, np.float64)):
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((k, shape[1], 3, 3)).astype(dtype)
        cases.append((x, w, _shape(x, w, 1)))
    first = [winograd.forward(x, w, None, p) for x, w, p in cases]
    kept = [y.copy() for y in first]
    for (x, w, p), y in zip(cases, kept):
        np.testing.assert_array_equal(winograd.forward(x, w, None, p), y)
        _check(y, x, w, None, p)
    for y, y0 in zip(first, kept):
        np.testing.assert_array_equal(y, y0)
    fc.config.release_scratch()
    x, w, p = cases[0]
    np.testing.assert_array_equal(winograd.forward(x, w, None, p), kept[0])


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_empty_batch(m):
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    assert winograd.forward(x, w, None, _shape(x, w), m).shape == (0, 3, 3, 3)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("x_shape,k,padding", [
    ((64, 32, 15, 15), 64, 0),   # CIFAR CNN conv2
    ((64, 64, 6, 6), 64, 0),     # CIFAR CNN conv3
    ((8, 64, 56, 56), 64, 1),    # ResNet stage 1 3x3
    ((8, 256, 28, 28), 256, 1),  # VGG 3x3
])
def test_real_layers_against_direct(x_shape, k, padding, m):
    """float32 Winograd on real layers (Kaiming-scaled weights) against float64 direct: within
    both bounds, and within a small multiple of float32 direct's error relative to the window
    magnitude (F(2x2): 0.2-0.7 of it; F(4x4): WINDOW_BOUND_VS_DIRECT[4])."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal((k, x_shape[1], 3, 3)) / np.sqrt(9 * x_shape[1])).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    p = _shape(x, w, padding)
    y = winograd.forward(x, w, b, p, m)
    exact, mag = _direct_reference(x, w, b, padding)
    _check(y, x, w, b, p, (exact, mag), m)
    err = _relative_error(y, exact, mag)
    err_direct = _relative_error(fc.conv2d(x, w, b, padding=padding, algo="direct"), exact, mag)
    print(f"m={m} {x_shape}: window error {err:.2e}, direct's {err_direct:.2e}")
    assert err <= FLOAT32_WINDOW_BOUND[m]
    assert err <= WINDOW_BOUND_VS_DIRECT[m] * err_direct
