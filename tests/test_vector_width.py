"""The other SIMD width's code path, run on this CPU: kernels pick their vector width (and so their register
tiles and image blocks) from the CPU, 64 bytes with AVX-512 and 32 without. A subprocess forces the width this
CPU does not pick (``FASTCONV_VECTOR_BYTES``, kernels compiled into a cache of their own) and checks every
algorithm built on ``kernels.simd`` against the naive reference: direct_simd's row kernel (masked tails,
strides, padding, groups), batch kernel (blocks of 16 or 32 images) and weight gradient, winograd (its GEMM)
and the packed GEMM."""
import os
import subprocess
import sys

from fastconv.kernels import simd

CHECK_SCRIPT = r"""
import numpy as np
import fastconv as fc
from fastconv.kernels import simd
assert simd.VECTOR_BYTES == int(__import__("os").environ["FASTCONV_VECTOR_BYTES"])
rng = np.random.default_rng(3)
for dtype, tol in [(d, t) for d, t in ((np.float32, 2e-4), (np.float64, 1e-11))
                   if np.dtype(d).name == __import__("os").environ["CHECK_DTYPE"]]:
    for n, c, h, w, k, r, stride, padding, groups, algo in (
            (2, 5, 9, 11, 13, 3, 1, 0, 1, "direct_simd"), (1, 4, 8, 8, 6, 1, 1, 0, 1, "direct_simd"),
            (2, 6, 13, 10, 8, 3, 2, 1, 2, "direct_simd"), (40, 3, 5, 5, 7, 3, 1, 1, 1, "direct_simd"),
            (1, 3, 12, 12, 5, 5, 3, 2, 1, "direct_simd"), (2, 4, 9, 10, 5, 3, 1, 1, 1, "winograd"),
            (2, 16, 14, 14, 9, 3, 1, 1, 1, "winograd"), (2, 7, 6, 9, 11, 2, 1, 1, 1, "im2col_packed")):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((k, c // groups, r, r)).astype(dtype)
        b = rng.standard_normal(k).astype(dtype)
        kw = dict(stride=stride, padding=padding, groups=groups)
        y = fc.conv2d(x, wt, b, algo=algo, **kw)
        ref = fc.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), algo="naive", **kw)
        scale = np.abs(x).max() * np.abs(wt).sum(axis=(1, 2, 3)).max() + 1
        assert np.abs(y - ref).max() <= tol * scale, (algo, dtype, n, c, h, w, k, r)
        if algo == "direct_simd":  # its tiled weight gradient (vectors along positions, several images a pass)
            gy = rng.standard_normal(y.shape).astype(dtype)
            gw = fc.conv2d_backward(gy, x, wt, algo=algo, input_grad=False, **kw)[1]
            gw_ref = fc.conv2d_backward(gy.astype(np.float64), x.astype(np.float64), wt.astype(np.float64),
                                        algo="naive", **kw)[1]
            g_scale = np.abs(gy).max() * np.abs(x).max() * n * y.shape[2] * y.shape[3] + 1
            assert np.abs(gw - gw_ref).max() <= tol * g_scale, ("grad_weight", dtype, n, c, h, w, k, r)
    for m, kk, nn in ((37, 29, 45), (8, 64, 33), (70, 5, 100)):
        a, bm = rng.standard_normal((m, kk)).astype(dtype), rng.standard_normal((kk, nn)).astype(dtype)
        got = fc.gemm(a, bm, algo="packed")
        assert np.abs(got - a.astype(np.float64) @ bm).max() <= tol * kk * 10, (m, kk, nn)
print("ok", simd.VECTOR_BYTES)
"""


def test_the_other_vector_width_computes_the_same(tmp_path):
    other = 32 if simd.VECTOR_BYTES == 64 else 64
    env = {**os.environ, "FASTCONV_VECTOR_BYTES": str(other), "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "FASTCONV_AUTOTUNE_CACHE": str(tmp_path / "autotune.json"), "FASTCONV_COMPILE_NOTICE": "0"}
    script = tmp_path / "other_width.py"
    script.write_text(CHECK_SCRIPT)
    # one process per dtype, side by side: the time is Numba compiling each dtype's kernels
    checks = {dtype: subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**env, "CHECK_DTYPE": dtype})
              for dtype in ("float32", "float64")}
    for dtype, check in checks.items():
        out, err = check.communicate(timeout=600)
        assert check.returncode == 0 and out.split() == ["ok", str(other)], (dtype, err[-3000:])
