"""Direct conv2d with explicit SIMD vectors (``fastconv.kernels.conv_direct_simd``): forward and weight gradient.

``forward(x, weight, bias, p) -> y`` and ``backward_weight(grad_y, x, p) -> grad_weight`` have the signatures
of conv2d's algorithms (``fastconv.conv``): x (N, C, H, W) batched, C-contiguous, validated; weight (K,
C/groups, R, S) C-contiguous; bias (K,) or None; p the ``Conv2dShape``. Its grad_x is this forward on the
transposed problem at stride 1 (``conv.transposed_problem``), direct's at larger strides. It runs every valid
shape (any stride, dilation, padding, groups and kernel size), float32 and float64. It is fast when K/groups is
large (blocks of MR = 6 output channels; a last partial block computes zero channels) and C/groups*R*S is not
tiny; depthwise layers waste 5/6 of the work.

``forward`` runs one of two kernels (``choose_kernel``): "rows" (vectors along output
positions; ``forward_rows``) or, for small output planes with a batch of at least a vector
block of images, "batch" (vectors along images; ``forward_batch``). Steps: (1) pack the weights
into blocks of MR output channels, tap-major; (2) copy the input, zero-padded, into a
per-thread workspace reused by later calls (rows: split into its SH*SW stride phases, and no copy
at all for stride 1 without padding; batch: images interleaved innermost); (3) one parallel Numba
kernel computes y, bias included.
``backward_weight`` reads the rows kernel's layout: x phase-split, grad_y gathered into blocks of KR = 4
channels with the same row pitch, then tiles of 4 channels x 3 taps with vectors along the positions (of
several images at once on small planes), parallel over (channel block, chunk of taps).
Workspace: about the padded input's size (batch: N rounded up to the image block; backward_weight: and
grad_y's), kept per thread and dtype (``fastconv.config.scratch``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import runtime
from ._checks import Conv2dShape
from .config import kept_for, scratch
from .kernels import conv_direct_simd

BATCH_PREFERENCE = 0.85     # the batch kernel runs when its lane use * this beats the row kernel's
WEIGHT_BATCH_PREFERENCE = 0.92  # the same for the weight gradient's kernels (measured: batch wins on 128x32x16x16,
                                # rows use 0.89 of their lanes; rows win on 128x16x32x32 and CIFAR conv1, 0.94)


def packed_weights(weight: np.ndarray, groups: int) -> np.ndarray:
    """(K, Cg, R, S) -> flat (groups*KBg, T, MR): wp[(kb*T + t)*MR + m] (see the kernel doc); packed once and kept
    for an unchanging weight (``config.kept_for``: a loaded ONNX model's)."""
    def pack() -> np.ndarray:
        k, cg, r, s = weight.shape
        kbg = -(-(k // groups) // conv_direct_simd.MR)
        wp = np.empty(groups * kbg * cg * r * s * conv_direct_simd.MR, weight.dtype)
        conv_direct_simd.pack_channel_blocks(weight, groups, wp)
        return wp
    kept = kept_for(weight, ("direct_simd", groups), pack)
    return pack() if kept is None else kept


@lru_cache(maxsize=256)
def tap_offsets(p: Conv2dShape, hq: int, wq: int) -> np.ndarray:
    """offs[t] for t = (c, r, s) of a group (see the kernel doc); one array per problem, kept (read only by
    the kernels: computing it costs more than a small layer's convolution)."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    plane = hq * wq
    cg = p.c // p.groups
    a = np.arange(p.r) * dh
    e = np.arange(p.s) * dw
    rs = ((a[:, None] % sh) * sw + e[None, :] % sw) * plane + (a[:, None] // sh) * wq + e[None, :] // sw
    offs = np.arange(cg)[:, None] * (sh * sw * plane) + rs.reshape(1, -1)
    return np.ascontiguousarray(offs.reshape(-1), dtype=np.int64)


def _padded_to_tiles(offs: np.ndarray) -> np.ndarray:
    """Tap offsets padded to a multiple of the weight-gradient tile's TR taps (repeating the last)."""
    padded = -(-offs.size // conv_direct_simd.TR) * conv_direct_simd.TR
    return np.concatenate([offs, np.full(padded - offs.size, offs[-1], np.int64)])


@lru_cache(maxsize=256)
def batch_tap_offsets(p: Conv2dShape, hp: int, wp: int, nb: int) -> np.ndarray:
    """The batch kernel's offs[t] = (c*hp*wp + r*DH*wp + s*DW)*nb for t = (c, r, s) of a group; kept per problem."""
    (dh, dw), cg = p.dilation, p.c // p.groups
    offs = ((np.arange(cg)[:, None, None] * (hp * wp) + np.arange(p.r)[None, :, None] * (dh * wp)
             + np.arange(p.s)[None, None, :] * dw) * nb)
    return np.ascontiguousarray(offs.reshape(-1), dtype=np.int64)


def forward_batch(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    """The batch-vector kernel (vectors along blocks of images, weights broadcast)."""
    top, bottom, left, right = p.padding
    hp, wp = p.h + top + bottom, p.w + left + right
    dtype = x.dtype
    nb = conv_direct_simd.NV * conv_direct_simd.lanes_for(dtype.itemsize)
    blocks = -(-p.n // nb)
    xi = scratch("direct_simd.input", blocks * p.c * hp * wp * nb, dtype)
    conv_direct_simd.interleave_batch(x, xi, top, left, hp, wp, nb)
    wpk = packed_weights(weight, p.groups)
    offs = batch_tap_offsets(p, hp, wp, nb)
    b = bias if bias is not None else np.zeros(p.k, dtype)
    block_taps = max(1, conv_direct_simd.BLOCK_TAPS // (p.r * p.s)) * p.r * p.s
    y = np.empty(p.y_shape, dtype)
    conv_direct_simd.forward_interleaved(xi, wpk, offs, b, y, p.c, hp, wp, *p.stride, p.groups,
                                         conv_direct_simd.SEGMENT_POSITIONS, block_taps)
    return y


def forward_rows(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    """The row kernel (vectors along output positions, weights broadcast)."""
    top, bottom, left, right = p.padding
    sh, sw = p.stride
    hp, wp = p.h + top + bottom, p.w + left + right
    hq, wq = -(-hp // sh), -(-wp // sw)
    dtype = x.dtype
    if (sh, sw) == (1, 1) and not any(p.padding):
        xq = x.reshape(-1)                         # nothing to pad or split: the kernel reads x
    else:
        xq = scratch("direct_simd.input", p.n * p.c * sh * sw * hq * wq, dtype)
        conv_direct_simd.phase_split(x, xq, top, left, sh, sw, hq, wq)
    wpk = packed_weights(weight, p.groups)
    offs = tap_offsets(p, hq, wq)
    b = bias if bias is not None else np.zeros(p.k, dtype)
    seg_rows = _segment_rows(p.oh, wq)
    y = np.empty(p.y_shape, dtype)
    block_taps = max(1, conv_direct_simd.BLOCK_TAPS // (p.r * p.s)) * p.r * p.s
    conv_direct_simd.forward_phases(xq, wpk, offs, b, y, p.c, sh * sw, hq, wq, p.groups, seg_rows, block_taps)
    return y


def _phase_geometry(p: Conv2dShape) -> tuple[int, int]:
    """(Hq, Wq): the rows kernel's phase planes (the padded input's rows and columns divided by the stride)."""
    top, bottom, left, right = p.padding
    return -(-(p.h + top + bottom) // p.stride[0]), -(-(p.w + left + right) // p.stride[1])


def backward_weight(grad_y: np.ndarray, x: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """grad_weight (K, C/groups, R, S) by the tiled kernels (``choose_weight_kernel``): "rows"
    (``backward_weight_phases``: x phase-split as for the rows kernel with a tail of zeros, grad_y gathered into
    blocks of KR channels with the same row pitch) or "batch" (``backward_weight_interleaved``: both with
    blocks of images innermost); then one parallel kernel over (channel block, chunk of taps)."""
    dtype, (sh, sw), kr = x.dtype, p.stride, conv_direct_simd.KR
    lanes = conv_direct_simd.lanes_for(dtype.itemsize)
    kg, cg = p.k // p.groups, p.c // p.groups
    kbg = -(-kg // kr)
    chunks_wanted = max(1, -(-4 * runtime.num_threads() // (p.groups * kbg)))  # items for every thread
    if choose_weight_kernel(p, dtype.itemsize) == "batch":
        top, bottom, left, right = p.padding
        hp, wp = p.h + top + bottom, p.w + left + right
        nb = conv_direct_simd.NV * lanes
        blocks = -(-p.n // nb)
        xi = scratch("direct_simd.input", blocks * p.c * hp * wp * nb, dtype)
        conv_direct_simd.interleave_batch(x, xi, top, left, hp, wp, nb)
        gyi = scratch("direct_simd.grad_rows", blocks * p.groups * kbg * kr * p.oh * p.ow * nb, dtype)
        conv_direct_simd.interleave_grad_blocks(grad_y, gyi, p.groups, nb)
        offs = _padded_to_tiles(batch_tap_offsets(p, hp, wp, nb))
        tap_chunk = _tap_chunk(offs.size, chunks_wanted)
        gwp = np.empty(p.groups * kbg * offs.size * kr, dtype)
        conv_direct_simd.backward_weight_interleaved(xi, gyi, offs, gwp, blocks, p.c, hp, wp, p.oh, p.ow, p.groups,
                                                     kbg, tap_chunk)
    else:
        hq, wq = _phase_geometry(p)
        size = p.n * p.c * sh * sw * hq * wq
        xq = scratch("direct_simd.input", size + lanes, dtype)
        conv_direct_simd.phase_split(x, xq, p.padding[0], p.padding[2], sh, sw, hq, wq)
        xq[size:] = 0
        lp = -(-((p.oh - 1) * wq + p.ow) // lanes) * lanes
        gyq = scratch("direct_simd.grad_rows", p.n * p.groups * kbg * kr * lp, dtype)
        conv_direct_simd.gather_grad_rows(grad_y, gyq, p.groups, wq, lp)
        offs = _padded_to_tiles(tap_offsets(p, hq, wq))
        tap_chunk = _tap_chunk(offs.size, chunks_wanted)
        gwp = np.empty(p.groups * kbg * offs.size * kr, dtype)
        conv_direct_simd.backward_weight_phases(xq, gyq, offs, gwp, p.n, p.c, sh * sw * hq * wq, p.groups, kbg, lp,
                                                tap_chunk)
    packed = gwp.reshape(p.groups, kbg, offs.size, kr).transpose(0, 1, 3, 2).reshape(p.groups, kbg * kr, offs.size)
    return np.ascontiguousarray(packed[:, :kg, :cg * p.r * p.s]).reshape(p.w_shape)


def _tap_chunk(taps: int, chunks: int) -> int:
    """Taps per work item of the weight-gradient kernels: `taps` (a multiple of TR) in about `chunks` chunks of
    whole tiles."""
    tiles = taps // conv_direct_simd.TR
    return -(-tiles // min(tiles, chunks)) * conv_direct_simd.TR


def weight_rows_efficiency(p: Conv2dShape, itemsize: int) -> float:
    """Fraction of the rows weight-gradient kernel's positions that are real outputs."""
    wq = _phase_geometry(p)[1]
    lanes = conv_direct_simd.lanes_for(itemsize)
    return p.oh * p.ow / (-(-((p.oh - 1) * wq + p.ow) // lanes) * lanes)


@lru_cache(maxsize=1024)
def choose_weight_kernel(p: Conv2dShape, itemsize: int) -> str:
    """'batch' for stride-1 problems where blocks of images fill the lanes clearly better than the rows
    kernel's positions do (small planes, batches of a vector block), else 'rows'."""
    if p.stride != (1, 1):
        return "rows"
    better = batch_efficiency(p, itemsize) * WEIGHT_BATCH_PREFERENCE > weight_rows_efficiency(p, itemsize)
    return "batch" if better else "rows"


def _segment_rows(oh: int, wq: int) -> int:
    """Output rows per work item of the row kernel: about SEGMENT positions, equal segments."""
    rows = max(1, min(oh, -(-conv_direct_simd.SEGMENT // wq)))
    segments = -(-oh // rows)
    return -(-oh // segments)


def rows_efficiency(p: Conv2dShape, itemsize: int) -> float:
    """Fraction of the row kernel's computed positions that are real outputs."""
    sw = p.stride[1]
    wq = -(-(p.w + p.padding[2] + p.padding[3]) // sw)
    vw = conv_direct_simd.NV * conv_direct_simd.lanes_for(itemsize)
    seg_rows = _segment_rows(p.oh, wq)
    computed = 0
    for oh0 in range(0, p.oh, seg_rows):
        rows = min(seg_rows, p.oh - oh0)
        computed += -(-((rows - 1) * wq + p.ow) // vw) * vw
    return p.oh * p.ow / computed


def batch_efficiency(p: Conv2dShape, itemsize: int) -> float:
    """Fraction of the batch kernel's vector lanes that hold real images."""
    nb = conv_direct_simd.NV * conv_direct_simd.lanes_for(itemsize)
    return p.n / (-(-p.n // nb) * nb)


@lru_cache(maxsize=1024)
def choose_kernel(p: Conv2dShape, itemsize: int) -> str:
    """'batch' when blocks of images fill the vector lanes clearly better than output rows do
    (small output planes, large batches: measured faster on 64x32x15x15 and 64x64x6x6 3x3,
    slower on 64x3x32x32 and LeNet 28x28), else 'rows'."""
    better = batch_efficiency(p, itemsize) * BATCH_PREFERENCE > rows_efficiency(p, itemsize)
    return "batch" if better else "rows"


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    """conv2d forward (conv.py's algorithm signature): the row or batch kernel, see choose_kernel."""
    if choose_kernel(p, x.dtype.itemsize) == "batch":
        return forward_batch(x, weight, bias, p)
    return forward_rows(x, weight, bias, p)
