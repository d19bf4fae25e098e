"""Depthwise conv2d on the CPU (one input channel per group: groups == in_channels, any channel multiplier),
forward and backward (``fastconv.kernels.conv_depthwise``): per plane one padded copy (split into its stride
phases), then one axpy over the whole plane per tap; the backward at strides above 1 runs row axpys over
the unpadded planes. Any kernel size, stride, dilation and padding. It moves each input and output element
once per call, where direct and im2col, built for many channels per group, waste most of their vector lanes or
copies; it is not memory-bound (7.8 GB/s on 8x128x56x56 3x3 against a 32.7 GB/s copy: the per-plane padded copy
and the copy out cost more than the taps, ``benchmarks/results/2026-12-01-forward/profile.md``).

``forward(x, weight, bias, p) -> y``, ``backward_input(grad_y, weight, p) -> grad_x`` and
``backward_weight(grad_y, x, p) -> grad_weight`` have the signatures of conv2d's algorithms (``fastconv.conv``). Workspace: one padded plane per thread.
"""
from __future__ import annotations

import numpy as np

from ._checks import Conv2dShape
from .kernels import conv_depthwise


def unsupported(p: Conv2dShape) -> str | None:
    """None for depthwise problems (one input channel per group), else why not."""
    if p.c // p.groups == 1:
        return None
    return f"needs one input channel per group (groups = in_channels), got {p.c // p.groups} per group"


def _plane_geometry(p: Conv2dShape) -> tuple[int, ...]:
    """(top, left, right, bottom, dh, dw): the stride-1 kernels' padded planes."""
    top, bottom, left, right = p.padding
    return (top, left, right, bottom, *p.dilation)


def _row_geometry(p: Conv2dShape) -> tuple[int, ...]:
    """(sh, sw, top, left, dh, dw) in the row kernels' order."""
    return (*p.stride, p.padding[0], p.padding[2], *p.dilation)


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    y = np.empty(p.y_shape, x.dtype)
    b = bias if bias is not None else np.zeros(p.k, x.dtype)
    top, bottom, left, right = p.padding
    conv_depthwise.forward_plane(x, weight, b, y, top, left, right, bottom, *p.stride, *p.dilation)
    return y


def backward_input(grad_y: np.ndarray, weight: np.ndarray, p: Conv2dShape) -> np.ndarray:
    gx = np.empty(p.x_shape, grad_y.dtype)
    if p.stride == (1, 1):
        conv_depthwise.backward_input_plane(grad_y, weight, gx, *_plane_geometry(p))
    else:
        conv_depthwise.backward_input_rows(grad_y, weight, gx, *_row_geometry(p))
    return gx


def backward_weight(grad_y: np.ndarray, x: np.ndarray, p: Conv2dShape) -> np.ndarray:
    gw = np.empty(p.w_shape, x.dtype)
    if p.stride == (1, 1):
        conv_depthwise.backward_weight_plane(grad_y, x, gw, *_plane_geometry(p))
    else:
        conv_depthwise.backward_weight_rows(grad_y, x, gw, *_row_geometry(p))
    return gw
