"""GPU convolution and GEMM kernels against the CPU references (tiny shapes: the CUDA simulator is slow)."""
import os
import subprocess
import sys

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no CUDA device or simulator", allow_module_level=True)

import fastconv  # noqa: E402
from fastconv import naive  # noqa: E402
from fastconv._checks import Conv2dShape  # noqa: E402
from fastconv.kernels import cuda_conv, cuda_matmul  # noqa: E402
from fastconv.kernels import im2col as cpu_im2col  # noqa: E402
from op_check import assert_close  # noqa: E402

DTYPES = [np.float32, np.float64]


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# (N, C, H, W, K, R, S, stride, padding, dilation, groups); padding (top, bottom, left, right)
CONV_CASES = [
    (2, 2, 4, 5, 2, 3, 3, 1, (1, 1, 1, 1), 1, 1),
    (1, 4, 7, 6, 2, 3, 2, 2, (2, 0, 1, 0), 1, 2),      # asymmetric pads, stride 2, 2 groups
    (1, 3, 7, 7, 3, 3, 3, (1, 2), (2, 2, 2, 2), 2, 3),  # depthwise, dilation 2
    (1, 2, 6, 5, 5, 1, 1, 2, (0, 0, 0, 0), 1, 1),       # 1x1, K not a multiple of KPT
]


def conv_case(case, dtype, seed=0):
    n, c, h, w, k, r, s, stride, pads, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = randn(rng, (n, c, h, w), dtype)
    weight = randn(rng, (k, c // groups, r, s), dtype)
    (sh, sw), (dh, dw) = np.broadcast_to(stride, 2).tolist(), np.broadcast_to(dilation, 2).tolist()
    oh = (h + pads[0] + pads[1] - dh * (r - 1) - 1) // sh + 1
    ow = (w + pads[2] + pads[3] - dw * (s - 1) - 1) // sw + 1
    p = Conv2dShape(n=n, c=c, h=h, w=w, k=k, r=r, s=s, groups=groups, stride=(sh, sw),
                    dilation=(dh, dw), padding=pads, oh=oh, ow=ow)
    return rng, x, weight, p


def geometry(p):
    """(sh, sw, pt, pl, dh, dw, groups) of a Conv2dShape."""
    (sh, sw), (dh, dw), (pt, _, pl, _) = p.stride, p.dilation, p.padding
    return sh, sw, pt, pl, dh, dw, p.groups


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward(case, dtype):
    rng, x, weight, p = conv_case(case, dtype)
    bias = randn(rng, (p.k,), dtype)
    y = cuda.to_device(np.full(p.y_shape, np.nan, dtype))
    cuda_conv.direct_forward(cuda.to_device(x), cuda.to_device(weight), cuda.to_device(bias), y, *geometry(p))
    assert_close(y.copy_to_host(), naive.conv2d(x, weight, bias, p), terms=100)


# float32 on one case only: one simulated block per weight element is slow.
@pytest.mark.parametrize("case, dtype", [(case, np.float64) for case in CONV_CASES] + [(CONV_CASES[1], np.float32)])
def test_conv2d_backward(case, dtype):
    rng, x, weight, p = conv_case(case, dtype)
    gy = randn(rng, p.y_shape, dtype)
    gx_ref, gw_ref = naive.conv2d_backward_input(gy, weight, p), naive.conv2d_backward_weight(gy, x, p)
    d_gy, d_x, d_w = cuda.to_device(gy), cuda.to_device(x), cuda.to_device(weight)
    gx = cuda.to_device(np.full(x.shape, np.nan, dtype))
    gw = cuda.to_device(np.full(weight.shape, np.nan, dtype))
    cuda_conv.direct_backward_input(d_gy, d_w, gx, *geometry(p))
    cuda_conv.direct_backward_weight(d_gy, d_x, gw, *geometry(p))
    assert_close(gx.copy_to_host(), gx_ref, terms=100)
    assert_close(gw.copy_to_host(), gw_ref, terms=100)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES[:3])
def test_im2col_col2im_chunk(case, dtype):
    """Images n0 .. n0+nb-1 of a batch, against the CPU Cython kernels."""
    n, *rest = case
    _, x, weight, p = conv_case((3, *rest), dtype)
    sh, sw, pt, pl, dh, dw, _ = geometry(p)
    n0, nb = 1, 2
    args = (n0, pt, pl, sh, sw, dh, dw, p.r, p.s, p.oh, p.ow)
    col_ref = np.empty((p.c * p.r * p.s, nb * p.oh * p.ow), dtype)
    cpu_im2col.im2col(x, col_ref, *args)
    col = cuda.to_device(np.full(col_ref.shape, np.nan, dtype))
    cuda_conv.im2col(cuda.to_device(x), col, *args)
    np.testing.assert_array_equal(col.copy_to_host(), col_ref)

    gx_ref = np.zeros(x.shape, dtype)
    cpu_im2col.col2im(col_ref, gx_ref, *args)
    sentinel = np.full(x.shape, 7.0, dtype)
    gx = cuda.to_device(sentinel)
    cuda_conv.col2im(cuda.to_device(col_ref), gx, *args)
    got = gx.copy_to_host()
    assert_close(got[n0:n0 + nb], gx_ref[n0:n0 + nb], terms=100)
    np.testing.assert_array_equal(got[:n0], sentinel[:n0])          # other images untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_kn_nchw_round_trip(dtype):
    rng = np.random.default_rng(1)
    n, k, oh, ow, n0, nb = 4, 3, 2, 5, 1, 2
    out = randn(rng, (k, nb * oh * ow), dtype)
    bias = randn(rng, (k,), dtype)
    y_init = randn(rng, (n, k, oh, ow), dtype)
    y = cuda.to_device(y_init)
    cuda_conv.kn_to_nchw(cuda.to_device(out), cuda.to_device(bias), y, n0)
    expected = y_init.copy()
    expected[n0:n0 + nb] = out.reshape(k, nb, oh, ow).transpose(1, 0, 2, 3) + bias[:, None, None]
    assert_close(y.copy_to_host(), expected, terms=100)

    back = cuda.to_device(np.full(out.shape, np.nan, dtype))
    cuda_conv.nchw_to_kn(cuda.to_device(expected - bias[:, None, None]), back, n0)
    assert_close(back.copy_to_host(), out, terms=100)


def gemm_operands(m, n, k, trans_a, trans_b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a, b, c = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (m, n), dtype)
    stored_a = np.ascontiguousarray(a.T) if trans_a else a
    stored_b = np.ascontiguousarray(b.T) if trans_b else b
    return a, b, c, stored_a, stored_b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b, beta",
                         [(False, False, 0.0), (False, True, 1.0), (True, False, 1.0), (True, True, 0.0)])
def test_gemm_edges(trans_a, trans_b, beta, dtype):
    """M, N, K not multiples of the tile; beta 0 must ignore NaN in c."""
    a, b, c, sa, sb = gemm_operands(70, 65, 19, trans_a, trans_b, dtype)
    d_c = cuda.to_device(c if beta else np.full(c.shape, np.nan, dtype))
    cuda_matmul.gemm(cuda.to_device(sa), cuda.to_device(sb), d_c, trans_a, trans_b, beta)
    assert_close(d_c.copy_to_host(), a @ b + beta * c, terms=100)


def test_gemm_several_blocks():
    """More than one block tile along M and N (block offsets), several K slabs."""
    a, b, c, sa, sb = gemm_operands(cuda_matmul.BM + 3, cuda_matmul.BN + 2, cuda_matmul.BK + 1,
                                    True, False, np.float64)
    d_c = cuda.to_device(c)
    cuda_matmul.gemm(cuda.to_device(sa), cuda.to_device(sb), d_c, True, False, 1.0)
    np.testing.assert_allclose(d_c.copy_to_host(), a @ b + c, rtol=1e-10)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_empty_k(beta):
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    d_c = cuda.to_device(c if beta else np.full(c.shape, np.nan, np.float32))
    a, b = cuda.to_device(np.zeros((2, 0), np.float32)), cuda.to_device(np.zeros((0, 3), np.float32))
    cuda_matmul.gemm(a, b, d_c, False, False, beta)
    np.testing.assert_array_equal(d_c.copy_to_host(), beta * c)


def test_import_compiles_nothing():
    """Importing the modules builds no kernel for any dtype and compiles no launcher."""
    code = (
        "import functools, sys\n"
        "from numba import cuda\n"
        "from fastconv.kernels import cuda_conv, cuda_matmul\n"
        "for mod in (cuda_conv, cuda_matmul):\n"
        "    for name, obj in vars(mod).items():\n"
        "        if isinstance(obj, functools._lru_cache_wrapper):\n"
        "            assert obj.cache_info().currsize == 0, name\n"
        "        assert not getattr(obj, 'overloads', None), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_matches_api_direct():
    """One end-to-end check against the public CPU API (algo='direct')."""
    rng, x, weight, p = conv_case(CONV_CASES[0], np.float64, seed=3)
    y = cuda.to_device(np.empty(p.y_shape))
    cuda_conv.direct_forward(cuda.to_device(x), cuda.to_device(weight), cuda.to_device(np.zeros(p.k)), y,
                             *geometry(p))
    ref = fastconv.conv2d(x, weight, None, stride=p.stride, padding=(p.padding[0], p.padding[2]),
                          dilation=p.dilation, groups=p.groups, algo="direct")
    np.testing.assert_allclose(y.copy_to_host(), ref, rtol=1e-10)
