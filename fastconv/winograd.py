"""Winograd F(2x2, 3x3) and F(4x4, 3x3) conv2d forward (Lavin & Gray), float32 and float64: conv2d's records
"winograd" (m = 2: 4x4 tiles, 16 points) and "winograd_4x4" (m = 4: 6x6 tiles, 36 points, 4x fewer
multiplications than direct against 2.25x; the transforms' matrices hold larger entries, so float32 errors
are 4-11x direct's on real layers, see tests/test_winograd.py). Below, F(2x2)'s figures; F(4x4)'s steps are
the same with 36 points, tiles at stride 4 and ceil(OH/4) * ceil(OW/4) tiles per image.

``forward(x, weight, bias, p, m=2) -> y`` has the signature of conv2d's algorithms (``fastconv.conv``): x
(N, C, H, W) batched, C-contiguous, validated; weight (K, C/groups, 3, 3); bias (K,) or None; p the
``Conv2dShape``. ``unsupported(p)`` says why it cannot run a shape, or None: it runs 3x3 kernels, stride 1,
dilation 1, any padding (int, pair, 'same', 'valid') and any groups. ``worth_timing(p)`` is what ``auto``
knows of its speed (see "When it pays" below). Its grad_x is this forward on the transposed problem (a
stride-1 3x3 layer's grad_x is a 3x3 stride-1 correlation of grad_y: ``conv.transposed_problem``); its
grad_weight is direct_simd's.

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
from .config import batch_chunk, kept_for, scratch
from .kernels import conv_winograd, simd

TILE_SIZES = (2, 4)        # m of F(m x m, 3x3): records "winograd" (m = 2) and "winograd_4x4" (m = 4)
GROUPED_GEMM_MIN = 16     # channels per group below which grouped layers use grouped_products
CHUNK_TARGET_BYTES = 24 * 2**20  # preferred workspace per batch chunk: V and M stay in L3 (32 MiB)
# max row sums of |B^T|, |G|, |A^T| per m: |V| <= b^2 max|x|, |U| <= g^2 max|w|, |Y| <= a^2 C/groups |U| |V|
TRANSFORM_NORMS = {2: (2.0, 1.5, 3.0), 4: (10.0, 1.0, 19.0)}
TRANSFORMS = {2: (conv_winograd.filter_transform, conv_winograd.input_transform, conv_winograd.output_transform),
              4: (conv_winograd.filter_transform_4x4, conv_winograd.input_transform_4x4,
                  conv_winograd.output_transform_4x4)}


def points(m: int) -> int:
    """Transform points of F(m x m, 3x3): one (m + 2) x (m + 2) input tile."""
    return (m + 2) ** 2


def within_range(x_abs_max: float, w_abs_max: float, p: Conv2dShape, dtype: np.dtype, m: int = 2) -> bool:
    """Whether no transform of F(m x m, 3x3) can overflow on inputs bounded by these maxima. With b, g, a the
    largest row sums of |B^T|, |G|, |A^T| (F(2x2): 2, 1.5, 3; F(4x4): 10, 1, 19): |V| <= b^2 max|x|,
    |U| <= g^2 max|w|, M sums C/groups products, |Y| <= a^2 |M| (F(2x2): 81 * C/groups * max|x| * max|w|,
    F(4x4): 36100 *; direct convolution's own bound is C/groups * 9 * max|x| * max|w|). Near the top of the
    float range the transforms would give Inf (or Inf - Inf = NaN) where the exact result is finite."""
    b, g, a = TRANSFORM_NORMS[m]
    limit = float(np.finfo(dtype).max)
    return b * b * x_abs_max < limit and g * g * w_abs_max < limit and \
        a * a * b * b * g * g * (p.c // p.groups) * x_abs_max * w_abs_max < limit


def unsupported(p: Conv2dShape) -> str | None:
    """None when Winograd F(m x m, 3x3) can run the shape (3x3 kernel, stride 1, dilation 1; any padding,
    any groups), else why not."""
    if (p.r, p.s) == (3, 3) and p.stride == (1, 1) and p.dilation == (1, 1):
        return None
    return (f"needs a 3x3 kernel, stride 1 and dilation 1, got kernel {(p.r, p.s)}, stride {p.stride}, "
            f"dilation {p.dilation}")


def worth_timing(p: Conv2dShape) -> bool:
    """Whether ``auto`` times it: with fewer than GROUPED_GEMM_MIN channels per group its products are
    plain loops (``use_grouped_products``), measured slower than direct."""
    return p.c // p.groups >= GROUPED_GEMM_MIN


def _tiles(p: Conv2dShape, m: int) -> tuple[int, int]:
    """Tile rows and columns per image: ceil(OH/m), ceil(OW/m)."""
    return -(-p.oh // m), -(-p.ow // m)


def workspace_bytes(p: Conv2dShape, itemsize: int, m: int = 2) -> int:
    """Winograd's workspace per image: V (points x C x tiles) and M (points x K x tiles)."""
    th, tw = _tiles(p, m)
    return points(m) * (p.c + p.k) * th * tw * itemsize


def chunk_images(p: Conv2dShape, itemsize: int, m: int = 2) -> int:
    """Images per batch chunk: within the workspace limit and CHUNK_TARGET_BYTES (measured: V and M
    kept within L3 run 5-10% faster than whole-batch chunks)."""
    return batch_chunk("winograd", workspace_bytes(p, itemsize, m), p.n, CHUNK_TARGET_BYTES)


def use_grouped_products(p: Conv2dShape) -> bool:
    """Whether the per-point products run as one fused Numba loop over all groups instead
    of points x groups GEMM calls: grouped layers with few channels per group."""
    return p.groups > 1 and min(p.c, p.k) // p.groups < GROUPED_GEMM_MIN


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape, m: int = 2) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x, weight, bias) by Winograd F(m x m, 3x3), m = 2 or 4, for a shape where
    ``unsupported`` is None (conv2d checks it)."""
    dtype = x.dtype
    y = np.empty(p.y_shape, dtype)
    if p.n == 0:
        return y
    filter_transform, input_transform, output_transform = TRANSFORMS[m]
    npoints = points(m)
    nb = chunk_images(p, dtype.itemsize, m)
    th, tw = _tiles(p, m)
    tiles = th * tw
    top, _, left, _ = p.padding
    groups, cg, kg = p.groups, p.c // p.groups, p.k // p.groups
    grouped = use_grouped_products(p)
    nr = 2 * (simd.VECTOR_BYTES // dtype.itemsize)  # columns of a packed B sliver
    u_size = npoints * p.k * cg
    pack_size = 0 if grouped else npoints * groups * cg * (-(-kg // nr) * nr)
    def transformed_filters(buf: np.ndarray) -> np.ndarray:
        """buf[:u_size] = U (points, K, C/g), and unless grouped buf[u_size:] its packed slivers."""
        filter_transform(weight, buf[:u_size].reshape(npoints, p.k, cg))
        if not grouped:
            conv_winograd.pack_transformed_filters(buf[:u_size].reshape(npoints, p.k, cg),
                                                   buf[u_size:].reshape(npoints, groups, -1))
        return buf
    kept = kept_for(weight, ("winograd", m, groups, grouped, dtype),
                    lambda: transformed_filters(np.empty(u_size + pack_size, dtype)))
    work_size = npoints * (p.c + p.k) * nb * tiles
    if kept is None:  # a weight that may change: transformed again, in the scratch buffer
        buf = scratch("winograd", u_size + pack_size + work_size, dtype)
        filters, work = transformed_filters(buf[:u_size + pack_size]), buf[u_size + pack_size:]
    else:
        filters, work = kept, scratch("winograd", work_size, dtype)
    u = filters[:u_size].reshape(npoints, p.k, cg)
    b_pack = None if grouped else filters[u_size:].reshape(npoints, groups, -1)
    b = bias if bias is not None else np.zeros(p.k, dtype)
    for n0 in range(0, p.n, nb):
        t = min(nb, p.n - n0) * tiles
        v = work[:npoints * p.c * t].reshape(npoints, p.c, t)
        mm = work[npoints * p.c * t:npoints * (p.c + p.k) * t].reshape(npoints, groups, t, kg)
        input_transform(x, v, n0, top, left, th, tw)
        if grouped:
            conv_winograd.grouped_products(u, v, mm)
        else:
            conv_winograd.products(v, b_pack, mm)
        output_transform(mm, b, y, n0, th, tw)
    return y
