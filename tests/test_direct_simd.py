"""fastconv.direct_simd (forward and both of its kernels) against direct and naive."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from fastconv import direct_simd
from fastconv._checks import contiguous, conv2d_shape
from op_check import assert_close
from strategies import DTYPES, conv_cases


KERNELS = {"auto": direct_simd.forward, "rows": direct_simd.forward_rows,
           "batch": direct_simd.forward_batch}


def _run(x, weight, bias, stride=1, padding=0, dilation=1, groups=1, kernel="auto"):
    """direct_simd.forward called as conv.py calls an algorithm: batched, contiguous, validated."""
    xb = x[None] if x.ndim == 3 else x
    p = conv2d_shape(xb, weight, stride, padding, dilation, groups)
    xb = contiguous(xb)
    y = KERNELS[kernel](xb, contiguous(weight),
                        None if bias is None else contiguous(bias), p)
    assert y.shape == p.y_shape and y.dtype == xb.dtype and y.flags.c_contiguous
    return y[0] if x.ndim == 3 else y


@st.composite
def simd_cases(draw):
    """N 1-3 (and 17, 33: partial blocks of images), C 1-9, K 1-13, H/W 1-20, R/S 1-5,
    stride 1-2, padding 0-2, groups 1, dilation 1."""
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, r - 2 * ph), 20))
    w = draw(st.integers(max(1, s - 2 * pw), 20))
    n, c, k = draw(st.sampled_from([1, 2, 3, 17, 33])), draw(st.integers(1, 9)), draw(st.integers(1, 13))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, r, s)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype) if draw(st.booleans()) else None
    return x, weight, bias, stride, (ph, pw)


@pytest.mark.parametrize("kernel", list(KERNELS))
@settings(max_examples=40)
@given(case=simd_cases())
def test_matches_direct_and_naive(kernel, case):
    x, weight, bias, stride, padding = case
    actual = _run(x, weight, bias, stride, padding, kernel=kernel)
    terms = int(np.prod(weight.shape[1:]))
    for algo in ("direct", "naive"):
        expected = fc.conv2d(x, weight, bias, stride=stride, padding=padding, algo=algo)
        assert_close(actual, expected, terms)


@pytest.mark.parametrize("kernel", ["rows", "batch"])
@settings(max_examples=25)
@given(case=conv_cases(max_batch=3))
def test_general_shapes_match_naive(kernel, case):
    """Shapes of the shared strategy: groups, dilation, strides up to 3, 'same'/'valid', layouts."""
    expected = fc.conv2d(case.x, case.weight, case.bias, **case.kwargs, algo="naive")
    actual = _run(case.x, case.weight, case.bias, **case.kwargs, kernel=kernel)
    assert_close(actual, expected, int(np.prod(case.weight.shape[1:])))


@pytest.mark.parametrize("kernel", ["rows", "batch"])
@settings(max_examples=25)
@given(case=conv_cases(max_batch=3), batch=st.sampled_from([1, 17, 40]))
def test_both_weight_gradient_kernels_match_naive(kernel, case, batch):
    """backward_weight by each kernel (the batch kernel runs stride 1 only) on the shared strategy's shapes,
    the batch repeated to 17 or 40 images (partial and whole blocks of images), against naive (one image's
    worth: direct beyond)."""
    x = case.x if case.x.ndim == 4 else case.x[None]
    x = contiguous(np.concatenate([x] * batch)[:batch] if batch > 1 else x)
    reference = "naive" if x.shape[0] < 4 else "direct"
    y = fc.conv2d(x, case.weight, **case.kwargs, algo=reference)
    gy = np.random.default_rng(x.shape[0]).standard_normal(y.shape).astype(y.dtype)
    expected = fc.conv2d_backward(gy, x, case.weight, **case.kwargs, algo=reference, input_grad=False)[1]
    chosen = direct_simd.choose_weight_kernel
    direct_simd.choose_weight_kernel = lambda p, itemsize: kernel if p.stride == (1, 1) else "rows"
    try:
        actual = fc.conv2d_backward(gy, x, case.weight, **case.kwargs, algo="direct_simd", input_grad=False)[1]
    finally:
        direct_simd.choose_weight_kernel = chosen
    assert_close(actual, expected, gy.size // gy.shape[1])


REAL_LAYERS = [  # (x shape, K, R, stride, padding)
    ((64, 3, 32, 32), 32, 3, 1, 0),
    ((64, 32, 15, 15), 64, 3, 1, 0),
    ((64, 64, 6, 6), 64, 3, 1, 0),
    ((64, 1, 28, 28), 6, 5, 1, 2),
    ((8, 64, 56, 56), 64, 3, 1, 1),
    ((8, 64, 56, 56), 128, 3, 2, 1),
]


@pytest.mark.parametrize("shape,k,r,stride,padding", REAL_LAYERS)
def test_real_layers_match_direct(shape, k, r, stride, padding):
    """Through forward, which picks the batch kernel for the two small CIFAR planes."""
    rng = np.random.default_rng(sum(shape) + k)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((k, shape[1], r, r)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    actual = _run(x, weight, bias, stride, padding)
    expected = fc.conv2d(x, weight, bias, stride=stride, padding=padding, algo="direct")
    assert_close(actual, expected, shape[1] * r * r)


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeated_calls_reuse_the_workspace(dtype):
    """A smaller call after a bigger one reuses (part of) the cached workspace: no stale data."""
    rng = np.random.default_rng(5)
    for shape in ((2, 5, 17, 19), (1, 3, 4, 5), (3, 2, 9, 4)):
        x = rng.standard_normal(shape).astype(dtype)
        weight = rng.standard_normal((7, shape[1], 3, 2)).astype(dtype)
        for stride, padding in ((1, 1), (2, 0), (2, 2), (1, 0)):
            expected = fc.conv2d(x, weight, None, stride=stride, padding=padding, algo="naive")
            for kernel in ("rows", "batch"):
                actual = _run(x, weight, None, stride, padding, kernel=kernel)
                assert_close(actual, expected, shape[1] * 6)
    fc.config.release_scratch()


def test_choose_kernel():
    """Batch kernel for small output planes with a large batch, row kernel otherwise."""
    def shape(n, c, hw, k, r, stride=1, padding=0):
        x, w = np.empty((n, c, hw, hw), np.float32), np.empty((k, c, r, r), np.float32)
        return conv2d_shape(x, w, stride, padding, 1, 1)
    assert direct_simd.choose_kernel(shape(64, 64, 6, 64, 3), 4) == "batch"
    assert direct_simd.choose_kernel(shape(64, 32, 15, 64, 3), 4) == "batch"
    assert direct_simd.choose_kernel(shape(64, 3, 32, 32, 3), 4) == "rows"
    assert direct_simd.choose_kernel(shape(8, 64, 56, 64, 3, 1, 1), 4) == "rows"
    assert direct_simd.choose_kernel(shape(2, 64, 6, 64, 3), 4) == "rows"


GUARD_PAGE_SCRIPT = r"""
import ctypes, mmap, sys
import numpy as np
import fastconv as fc

libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
for dtype in (np.float32, np.float64):
    for n, c, h, w, k, r in ((1, 3, 7, 5, 7, 1), (2, 5, 9, 11, 13, 3), (3, 2, 6, 6, 6, 2)):
        count = n * c * h * w
        pages = -(-count * np.dtype(dtype).itemsize // page) + 1
        area = mmap.mmap(-1, pages * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(area))
        assert libc.mprotect(base + (pages - 1) * page, page, 0) == 0   # the last page: no access
        flat = np.frombuffer(area, dtype, (pages - 1) * page // np.dtype(dtype).itemsize)
        x = flat[flat.size - count:].reshape(n, c, h, w)                # x ends where the guard page starts
        x[...] = np.random.default_rng(0).standard_normal(x.shape)
        wt = np.ones((k, c, r, r), dtype)
        y = fc.conv2d(x, wt, algo="direct_simd")
        assert np.allclose(y, fc.conv2d(x.copy(), wt, algo="naive"), rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_rows_kernel_reads_nothing_past_an_unpadded_input(tmp_path):
    """Stride 1 without padding: the row kernel reads the caller's x in place, its last chunks with masked
    loads. x is placed right before a page that may not be read (a read past x would kill the process)."""
    import subprocess
    import sys
    script = tmp_path / "guard.py"
    script.write_text(GUARD_PAGE_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
