"""Winograd F(2x2, 3x3) conv2d forward (Lavin & Gray), float32 and float64.

``forward(x, weight, bias, p) -> y`` has the signature of conv2d's algorithms (``fastconv.conv``): x
(N, C, H, W) batched, C-contiguous, validated; weight (K, C/groups, 3, 3); bias (K,) or None; p the
``Conv2dShape``. ``unsupported(p)`` says why it cannot run a shape, or None: it runs 3x3 kernels, stride 1,
dilation 1, any padding (int, pair, 'same', 'valid') and any groups. ``worth_timing(p)`` is what ``auto``
knows of its speed (see "When it pays" below). Its backward is direct_simd's.

Steps (kernels and layouts in ``fastconv.kernels.conv_winograd``):
  1. U = G g G^T for every (k, c): (16, K, C/groups), once per call, then packed as the B
     operand of fastconv's GEMM micro-kernel.
  2. per batch chunk of nb images: V = B^T d B for every 4x4 input tile (stride 2; zero padding
     and ragged last tiles read zeros): (16, C, T), T = nb * ceil(OH/2) * ceil(OW/2).
  3. for the 16 points xi (and each group): M[xi] (T x K/groups) = V[xi]^T @ U[xi]^T, the
     FLOPs, by our own packed SIMD GEMM (Numba's thread pool; never BLAS): all 16 x groups
     products run in one parallel loop built from fastconv.kernels.matmul's packing routines and
     micro-kernel (16 x groups calls of gemm_packed measured 2-14% slower on a quiet machine, far
     slower on a busy one: each call is two thread-pool barriers). Grouped layers with fewer than
     GROUPED_GEMM_MIN channels per group use one plain fused loop (grouped_products).
  4. Y = A^T M A + bias, clipped to (OH, OW).

Workspace: V and M, 16 * (C + K) * ceil(OH/2) * ceil(OW/2) elements per image, checked against
``fastconv.workspace_limit()``: the batch is cut into chunks that fit it (ValueError when one
image does not) and, where possible, CHUNK_TARGET_BYTES (24 MiB: chunks that stay in L3 ran 5-10%
faster than whole-batch ones), in equal chunks. U and packed U (16 * K * C/groups elements each)
come on top. One buffer per thread and dtype is kept and reused by the next call (no page
faults on every call); ``fastconv.config.release_scratch()`` frees it.

Accuracy: float64 agrees with direct convolution to ~1e-15 relative. float32 (tests/test_winograd.py):
on typical data max |y - exact| <= 1e-5 * W, W = |bias| + sum |x|*|w| over the output's window;
measured 0.9-2.4e-7 on the real layers, below float32 direct's 3.5-6e-7 (whose channel sums are
9x longer). That is not a worst-case bound: the weight transform mixes the weights, so an input
met by zero weights still brings rounding. The worst case is |y - exact| <= (C/groups + 16) *
2^-24 * S, S the same computation on |x|, |w| with the absolute values of the transform matrices
(S is about 7 W on random data; measured errors are 0.2-0.6 * 2^-24 * S).

When it pays (2-core AVX2 machine, float32, forward): on wide 3x3 layers with many channels
(VGG 256->256 at 28x28: 1.6x PyTorch, 3.2x direct; ResNet 64->64 at 56x56: PyTorch's speed, 2x
direct); it loses to direct on few input channels (C=3) and on grouped/depthwise layers, where
the transforms' memory traffic outweighs the saved multiplications.
"""
from __future__ import annotations


import numpy as np

from ._checks import Conv2dShape
from .config import batch_chunk, scratch
from .kernels import conv_winograd, simd

POINTS = 16               # transform points of F(2x2, 3x3): 4x4 tiles
GROUPED_GEMM_MIN = 16     # channels per group below which grouped layers use grouped_products
CHUNK_TARGET_BYTES = 24 * 2**20  # preferred workspace per batch chunk: V and M stay in L3 (32 MiB)



def within_range(x_abs_max: float, w_abs_max: float, p: Conv2dShape, dtype: np.dtype) -> bool:
    """Whether no transform can overflow on inputs bounded by these maxima. Each row of B^T holds two +-1,
    so |V| <= 4 max|x|; G's rows sum to at most 1.5 in absolute value, so |U| <= 2.25 max|w|; M sums
    C/groups products, and A^T's rows sum to 3: |Y| <= 9 |M| <= 81 * C/groups * max|x| * max|w|
    (direct convolution's own bound is C/groups * 9 * max|x| * max|w|). Near the top of the float
    range the transforms would give Inf (or Inf - Inf = NaN) where the exact result is finite."""
    limit = float(np.finfo(dtype).max)
    return 4 * x_abs_max < limit and 2.25 * w_abs_max < limit and \
        81.0 * (p.c // p.groups) * x_abs_max * w_abs_max < limit


def unsupported(p: Conv2dShape) -> str | None:
    """None when Winograd F(2x2, 3x3) can run the shape (3x3 kernel, stride 1, dilation 1; any padding,
    any groups), else why not."""
    if (p.r, p.s) == (3, 3) and p.stride == (1, 1) and p.dilation == (1, 1):
        return None
    return (f"needs a 3x3 kernel, stride 1 and dilation 1, got kernel {(p.r, p.s)}, stride {p.stride}, "
            f"dilation {p.dilation}")


def worth_timing(p: Conv2dShape) -> bool:
    """Whether ``auto`` times it: with fewer than GROUPED_GEMM_MIN channels per group its products are
    plain loops (``use_grouped_products``), measured slower than direct."""
    return p.c // p.groups >= GROUPED_GEMM_MIN


def _tiles(p: Conv2dShape) -> tuple[int, int]:
    """Tile rows and columns per image: ceil(OH/2), ceil(OW/2)."""
    return (p.oh + 1) // 2, (p.ow + 1) // 2


def workspace_bytes(p: Conv2dShape, itemsize: int) -> int:
    """Winograd's workspace per image: V (16 x C x tiles) and M (16 x K x tiles)."""
    th, tw = _tiles(p)
    return POINTS * (p.c + p.k) * th * tw * itemsize


def chunk_images(p: Conv2dShape, itemsize: int) -> int:
    """Images per batch chunk: within the workspace limit and CHUNK_TARGET_BYTES (measured: V and M
    kept within L3 run 5-10% faster than whole-batch chunks)."""
    return batch_chunk("winograd", workspace_bytes(p, itemsize), p.n, CHUNK_TARGET_BYTES)


def use_grouped_products(p: Conv2dShape) -> bool:
    """Whether the 16 per-point products run as one fused Numba loop over all groups instead
    of 16 x groups GEMM calls: grouped layers with few channels per group."""
    return p.groups > 1 and min(p.c, p.k) // p.groups < GROUPED_GEMM_MIN


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x, weight, bias) by Winograd F(2x2, 3x3), for a shape where
    ``unsupported`` is None (conv2d checks it)."""
    dtype = x.dtype
    y = np.empty(p.y_shape, dtype)
    if p.n == 0:
        return y
    nb = chunk_images(p, dtype.itemsize)
    th, tw = _tiles(p)
    tiles = th * tw
    top, _, left, _ = p.padding
    groups, cg, kg = p.groups, p.c // p.groups, p.k // p.groups
    grouped = use_grouped_products(p)
    nr = 2 * (simd.VECTOR_BYTES // dtype.itemsize)  # columns of a packed B sliver
    u_size = POINTS * p.k * cg
    pack_size = 0 if grouped else POINTS * groups * cg * (-(-kg // nr) * nr)
    buf = scratch("winograd", u_size + pack_size + POINTS * (p.c + p.k) * nb * tiles, dtype)
    u = buf[:u_size].reshape(POINTS, p.k, cg)
    conv_winograd.filter_transform(weight, u)
    if not grouped:
        b_pack = buf[u_size:u_size + pack_size].reshape(POINTS, groups, -1)
        conv_winograd.pack_transformed_filters(u, b_pack)
    b = bias if bias is not None else np.zeros(p.k, dtype)
    work = buf[u_size + pack_size:]
    for n0 in range(0, p.n, nb):
        t = min(nb, p.n - n0) * tiles
        v = work[:POINTS * p.c * t].reshape(POINTS, p.c, t)
        m = work[POINTS * p.c * t:POINTS * (p.c + p.k) * t].reshape(POINTS, groups, t, kg)
        conv_winograd.input_transform(x, v, n0, top, left, th, tw)
        if grouped:
            conv_winograd.grouped_products(u, v, m)
        else:
            conv_winograd.products(v, b_pack, m)
        conv_winograd.output_transform(m, b, y, n0, th, tw)
    return y
