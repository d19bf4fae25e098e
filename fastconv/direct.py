"""Direct conv2d on the CPU, forward and backward: the window loops of ``fastconv.kernels.conv_direct``
over a zero-padded copy of x. Runs every shape (any kernel, stride, dilation, padding, groups).

``forward(x, weight, bias, p) -> y``, ``backward_input(grad_y, weight, p) -> grad_x`` and
``backward_weight(grad_y, x, p) -> grad_weight`` have the signatures of conv2d's algorithms (``fastconv.conv``);
``backward_input`` serves direct_simd's strided layers too.
"""
from __future__ import annotations

import numpy as np

from ._checks import Conv2dShape
from .kernels import conv_direct


def pad_input(x: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """x (N, C, H, W) zero-padded to (N, C, H + top + bottom, W + left + right), C-contiguous."""
    top, _, left, _ = p.padding
    if not any(p.padding):
        return x
    xp = np.zeros(p.padded_shape, x.dtype)
    xp[:, :, top:top + p.h, left:left + p.w] = x
    return xp


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    y = np.empty(p.y_shape, x.dtype)
    b = bias if bias is not None else np.zeros(p.k, x.dtype)
    conv_direct.forward_padded(pad_input(x, p), weight, b, y, *p.stride, *p.dilation, p.groups)
    return y


def backward_weight(grad_y: np.ndarray, x: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """grad_weight (K, C/groups, R, S)."""
    gw = np.empty(p.w_shape, x.dtype)
    conv_direct.backward_weight_padded(grad_y, pad_input(x, p), gw, *p.stride, *p.dilation, p.groups)
    return gw


def backward_input(grad_y: np.ndarray, weight: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """grad_x (N, C, H, W): grad_y scattered through the windows into a padded buffer, cut to x's planes."""
    top, _, left, _ = p.padding
    gxp = np.empty(p.padded_shape, grad_y.dtype)
    conv_direct.backward_input_padded(grad_y, weight, gxp, *p.stride, *p.dilation, p.groups)
    return gxp if not any(p.padding) else np.ascontiguousarray(gxp[:, :, top:top + p.h, left:left + p.w])
