"""Matrix product c = a @ b with a choice of kernel."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import cuda, naive
from ._checks import check_algo, check_array, check_fits, contiguous, native
from .device import is_device_array
from .kernels import gemm as gemm_kernels


def _operand(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """A C-contiguous array and whether it holds the operand transposed (no copy for a.T views)."""
    if not a.flags.c_contiguous and a.flags.f_contiguous and a.flags.aligned and a.dtype.isnative:
        return a.T, True
    return contiguous(a), False


def _compiled(kernel) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(a, b) -> a @ b through a kernel ``kernel(a, b, c, trans_a, trans_b)`` of kernels/gemm.py."""
    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a_kernel, trans_a = _operand(a)
        b_kernel, trans_b = _operand(b)
        c = np.empty((a.shape[0], b.shape[1]), native(a.dtype))
        kernel(a_kernel, b_kernel, c, trans_a, trans_b)
        return c
    return run


GEMM_ALGORITHMS = {
    "naive": lambda a, b: naive.gemm(contiguous(a), contiguous(b)),
    "blas": _compiled(gemm_kernels.gemm_blas),
    "packed": _compiled(gemm_kernels.gemm_packed),
}


def gemm(a: np.ndarray, b: np.ndarray, *, algo: str = "auto") -> np.ndarray:
    """c (M, N) = a (M, K) @ b (K, N) for float32 or float64 matrices of one dtype.

    ``algo``: 'auto' (BLAS), 'blas' (NumPy's BLAS called from Numba), 'packed' (our own
    cache-blocked GEMM with packed panels, no BLAS) or 'naive' (Python loops).
    Transposed views (Fortran-ordered operands) are read in place, without a copy.
    On device arrays: 'auto' or 'tiled' (shared-memory tiled GEMM on the GPU), C-contiguous operands.
    """
    if is_device_array(a):
        return cuda.gemm(a, b, algo=algo)
    check_algo("gemm", algo, list(GEMM_ALGORITHMS))
    check_array("a", a, (2,))
    check_array("b", b, (2,), a.dtype)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions must agree: a is {a.shape}, b is {b.shape}")
    check_fits("gemm output", (a.shape[0], b.shape[1]), a.dtype)
    if min(a.shape + b.shape) == 0:
        return np.zeros((a.shape[0], b.shape[1]), native(a.dtype))
    return GEMM_ALGORITHMS["blas" if algo == "auto" else algo](a, b)
