"""Matrix product c = a @ b with a choice of kernel."""
from __future__ import annotations

import numpy as np

from . import naive
from ._checks import check_algo, check_array, check_fits, contiguous, native
from .kernels import gemm as gemm_kernels

GEMM_ALGORITHMS = {
    "naive": None,
    "blas": gemm_kernels.gemm_blas,
    "packed": gemm_kernels.gemm_packed,
}


def _operand(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """A C-contiguous array and whether it holds the operand transposed (no copy for a.T views)."""
    if not a.flags.c_contiguous and a.flags.f_contiguous and a.flags.aligned and a.dtype.isnative:
        return a.T, True
    return contiguous(a), False


def gemm(a: np.ndarray, b: np.ndarray, *, algo: str = "auto") -> np.ndarray:
    """c (M, N) = a (M, K) @ b (K, N) for float32 or float64 matrices of one dtype.

    ``algo``: 'auto' (BLAS), 'blas' (NumPy's BLAS called from Numba), 'packed' (our own
    cache-blocked GEMM with packed panels, no BLAS) or 'naive' (Python loops).
    Transposed views (Fortran-ordered operands) are read in place, without a copy.
    """
    check_algo("gemm", algo, list(GEMM_ALGORITHMS))
    check_array("a", a, (2,))
    check_array("b", b, (2,), a.dtype)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions must agree: a is {a.shape}, b is {b.shape}")
    m, n = a.shape[0], b.shape[1]
    check_fits("gemm output", (m, n), a.dtype)
    if min(a.shape + b.shape) == 0:
        return np.zeros((m, n), native(a.dtype))
    if algo == "naive":
        return naive.gemm(contiguous(a), contiguous(b))
    a_kernel, trans_a = _operand(a)
    b_kernel, trans_b = _operand(b)
    c = np.empty((m, n), native(a.dtype))
    GEMM_ALGORITHMS["blas" if algo == "auto" else algo](a_kernel, b_kernel, c, trans_a, trans_b)
    return c
