"""Elementwise kernels of a training step (Numba), on Numba's thread pool like the convolutions.

All arrays are C-contiguous and flat-indexed; one float dtype per call; out may alias nothing.
"""
import numba as nb
import numpy as np

BLOCK = 1 << 14  # elements per parallel work item


@nb.njit(cache=True, parallel=True)
def relu_forward(x, y):
    """y = max(x, 0) elementwise; NaN stays NaN (as torch.relu)."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    n = xf.size
    zero = xf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = xf[i]
            yf[i] = v if (v > zero or v != v) else zero


@nb.njit(cache=True, parallel=True)
def relu_backward(grad_y, y, grad_x):
    """grad_x = grad_y where y > 0, else 0 (PyTorch's threshold_backward on the output)."""
    gf, yf, xf = grad_y.reshape(-1), y.reshape(-1), grad_x.reshape(-1)
    n = gf.size
    zero = gf.dtype.type(0)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            xf[i] = gf[i] if yf[i] > zero else zero
