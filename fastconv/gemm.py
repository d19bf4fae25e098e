"""Matrix product c = a @ b on every device: the records of ``GEMM`` have ``forward(a, b) -> c`` for
validated 2-D operands of one dtype on the record's device, a (M, K), b (K, N), c (M, N) new; ``backward``
is None (the products of a backward pass are GEMMs themselves: ``fastconv.nn.Linear``). The problem a
record's ``unsupported`` and ``workspace_bytes`` see is the tuple (M, K, N)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import naive
from ._checks import as_array, check_array, check_fits, contiguous, native
from .algorithm import Algorithm, Registry
from .device import as_device, device_of, empty
from .kernels import matmul

GEMM = Registry("gemm", __doc__)


def _operand(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """A C-contiguous array and whether it holds the operand transposed (no copy for a.T views)."""
    if not a.flags.c_contiguous and a.flags.f_contiguous and a.flags.aligned and a.dtype.isnative:
        return a.T, True
    return contiguous(a), False


def _compiled(kernel) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(a, b) -> a @ b through a kernel ``kernel(a, b, c, trans_a, trans_b)`` of kernels/matmul.py."""
    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a_kernel, trans_a = _operand(a)
        b_kernel, trans_b = _operand(b)
        c = np.empty((a.shape[0], b.shape[1]), native(a.dtype))
        kernel(a_kernel, b_kernel, c, trans_a, trans_b)
        return c
    return run


def _tiled_cuda(a, b):
    """The shared-memory tiled GEMM of ``fastconv.kernels.cuda_matmul`` on C-contiguous device operands."""
    from .kernels import cuda_matmul  # numba.cuda is imported only when a GPU is used
    c = empty((a.shape[0], b.shape[1]), a.dtype)
    cuda_matmul.gemm(a, b, c, False, False)
    return c


GEMM.add(Algorithm("naive", "cpu", lambda a, b: naive.gemm(contiguous(a), contiguous(b)), None, reference=True))
GEMM.add(Algorithm("blas", "cpu", _compiled(matmul.gemm_blas), None))
GEMM.add(Algorithm("packed", "cpu", _compiled(matmul.gemm_packed), None))
GEMM.add(Algorithm("streaming", "cpu", _compiled(matmul.gemm_streaming), None))
GEMM.add(Algorithm("tiled", "cuda", _tiled_cuda, None))
GEMM.rules.update(cpu=lambda shape, itemsize: "blas", cuda=lambda shape, itemsize: "tiled")


def gemm(a: np.ndarray, b: np.ndarray, *, algo: str = "auto") -> np.ndarray:
    """c (M, N) = a (M, K) @ b (K, N) for float32 or float64 matrices of one dtype.

    ``algo``: 'auto' (BLAS), 'blas' (NumPy's BLAS called from Numba), 'packed' (our own
    cache-blocked GEMM with packed panels, no BLAS), 'streaming' (one pass over b, no packing: for a
    few rows of a, as a classifier at small batches) or 'naive' (Python loops).
    Transposed views (Fortran-ordered operands) are read in place, without a copy.
    On device arrays: 'auto' or 'tiled' (shared-memory tiled GEMM on the GPU), C-contiguous operands.
    """
    a, b = as_array("a", a), as_array("b", b)
    device = device_of(a)
    GEMM.check(algo, device)
    if device == "cuda":
        a, b = as_device("a", a), as_device("b", b)
    check_array("a", a, (2,), device=device == "cuda")
    check_array("b", b, (2,), a.dtype, device=device == "cuda")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions must agree: a is {a.shape}, b is {b.shape}")
    check_fits("gemm output", (a.shape[0], b.shape[1]), a.dtype)
    shape = (a.shape[0], a.shape[1], b.shape[1])
    if device == "cpu" and min(shape) == 0:
        return np.zeros((a.shape[0], b.shape[1]), native(a.dtype))
    name = GEMM.rule(shape, a.dtype.itemsize, device) if algo == "auto" else algo
    GEMM.require(name, device, shape, a.dtype.itemsize)
    return GEMM[device, name].forward(a, b)
