"""conv2d and its backward: one op on every device. Its shape rule is ``Conv2dShape`` (``_checks``), its
algorithms are the records of ``CONV2D``, and ``conv2d`` / ``conv2d_backward`` validate once, pick a record
for the array's device and run it.

Every record has ``forward(x, weight, bias, p) -> y``, ``backward(grad_y, weight, p) -> grad_x`` and
``backward_weight(grad_y, x, p) -> grad_weight``: x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or
None (zero), grad_y (N, K, OH, OW), batched, C-contiguous, validated and on the record's device; p the
``Conv2dShape``. The two gradients are separate passes, timed and chosen apart by ``auto`` (and grad_x is not
computed where nobody needs it). grad_bias is the same sum for every algorithm and is computed here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, partial
from numbers import Integral

import numpy as np

from . import autotune, depthwise, direct, direct_simd, naive, runtime, winograd
from ._checks import (MAX_SIZE_ARG, Conv2dShape, as_array, batched, check_array, check_bool, check_fits, check_grad,
                      contiguous, conv2d_shape, is_device_array, pair)
from .algorithm import Algorithm, Registry
from .array_ops import ops_for
from .config import batch_chunk, conv2d_algorithm, kept_for, scratch, workspace_limit
from .device import as_device, device_of, empty, zeros
from .kernels import elementwise, im2col, matmul

CONV2D = Registry("conv2d", __doc__)


# ---- im2col + GEMM on the CPU ------------------------------------------------------------------------

CHUNK_BYTES = 16 * 2**20  # im2col workspace per chunk: whole GEMMs stay large, memory stays near the output's


def _im2col_bytes_per_image(p: Conv2dShape, itemsize: int) -> int:
    """im2col's workspace per image, OH*OW wide: the column matrix (C*R*S rows), the GEMM's K output
    rows, and the packed GEMM's copies of one group's operands in backward (K/g + C/g*R*S rows)."""
    crs_g, kg = (p.c // p.groups) * p.r * p.s, p.k // p.groups
    return (p.c * p.r * p.s + p.k + kg + crs_g) * p.oh * p.ow * itemsize


def _im2col_fixed_bytes(p: Conv2dShape, itemsize: int) -> int:
    """The packed GEMM's workspace that does not grow with the chunk: the packed weights of one group
    and one panel of at most NC columns, C/g*R*S deep."""
    crs_g, kg = (p.c // p.groups) * p.r * p.s, p.k // p.groups
    return (kg + matmul.MR + matmul.NC) * crs_g * itemsize


def im2col_workspace_bytes(p: Conv2dShape, itemsize: int) -> int:
    """im2col's workspace for a chunk of one image."""
    return _im2col_fixed_bytes(p, itemsize) + _im2col_bytes_per_image(p, itemsize)


def _im2col_chunk(p: Conv2dShape, itemsize: int) -> int:
    """Images per batch chunk: about CHUNK_BYTES of workspace each, within the workspace limit."""
    return batch_chunk("im2col", _im2col_bytes_per_image(p, itemsize), p.n, CHUNK_BYTES,
                       _im2col_fixed_bytes(p, itemsize))


def _im2col_args(p: Conv2dShape) -> tuple[int, ...]:
    top, _, left, _ = p.padding
    return (top, left, *p.stride, *p.dilation, p.r, p.s, p.oh, p.ow, runtime.num_threads())


def _forward_im2col(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape,
                    gemm) -> np.ndarray:
    """Per batch chunk: col (C*R*S, nb*OH*OW) = im2col(x); per group y_g (K/g, nb*OH*OW) = w_g @ col_g. The packed
    GEMM keeps an unchanging weight's packed groups (``config.kept_for``) and multiplies by them alone."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _im2col_chunk(p, x.dtype.itemsize)
    col_buf = scratch("im2col.col", p.groups * crs_g * nb * plane, x.dtype)
    out_buf = scratch("im2col.out", p.k * nb * plane, x.dtype)
    w2 = weight.reshape(p.k, crs_g)

    def packed_groups() -> list[np.ndarray]:
        packs = [np.empty(matmul.packed_a_size(kg, crs_g), x.dtype) for _ in range(p.groups)]
        for g, pack in enumerate(packs):
            matmul.pack_a(w2[g * kg:(g + 1) * kg], False, pack)
        return packs
    packs = kept_for(weight, ("im2col_packed", p.groups), packed_groups) if gemm is matmul.gemm_packed else None
    y = np.empty((p.n, p.k, plane), x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col = col_buf[:p.groups * crs_g * m * plane].reshape(p.groups * crs_g, m * plane)
        out = out_buf[:p.k * m * plane].reshape(p.k, m * plane)
        im2col.im2col(x, col, n0, *_im2col_args(p))
        for g in range(p.groups):
            if packs is not None:
                matmul.gemm_prepacked(packs[g], crs_g, col[g * crs_g:(g + 1) * crs_g], out[g * kg:(g + 1) * kg], False)
            else:
                gemm(w2[g * kg:(g + 1) * kg], col[g * crs_g:(g + 1) * crs_g], out[g * kg:(g + 1) * kg], False, False)
        y[n0:n0 + m] = out.reshape(p.k, m, plane).transpose(1, 0, 2)
    if bias is not None:
        y += bias[:, None]
    return y.reshape(p.y_shape)


def _backward_input_im2col(grad_y: np.ndarray, weight: np.ndarray, p: Conv2dShape, gemm) -> np.ndarray:
    """Per batch chunk and group: dcol_g = w_g.T @ gy_g; grad_x += col2im(dcol)."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _im2col_chunk(p, grad_y.dtype.itemsize)
    col_buf = scratch("im2col.col", p.groups * crs_g * nb * plane, grad_y.dtype)
    gy_buf = scratch("im2col.out", p.k * nb * plane, grad_y.dtype)
    w2 = weight.reshape(p.k, crs_g)
    gx = np.zeros(p.x_shape, grad_y.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        dcol = col_buf[:p.groups * crs_g * m * plane].reshape(p.groups * crs_g, m * plane)
        gy = _grad_rows(grad_y, gy_buf, n0, m, p)
        for g in range(p.groups):
            gemm(w2[g * kg:(g + 1) * kg], gy[g * kg:(g + 1) * kg], dcol[g * crs_g:(g + 1) * crs_g], True, False)
        im2col.col2im(dcol, gx, n0, *_im2col_args(p))
    return gx


def _backward_weight_im2col(grad_y: np.ndarray, x: np.ndarray, p: Conv2dShape, gemm) -> np.ndarray:
    """Per batch chunk and group: col = im2col(x); grad_w_g += gy_g @ col_g.T."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _im2col_chunk(p, x.dtype.itemsize)
    col_buf = scratch("im2col.col", p.groups * crs_g * nb * plane, x.dtype)
    gy_buf = scratch("im2col.out", p.k * nb * plane, x.dtype)
    gw = np.zeros((p.k, crs_g), x.dtype)
    gw_chunk = np.empty((kg, crs_g), x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col = col_buf[:p.groups * crs_g * m * plane].reshape(p.groups * crs_g, m * plane)
        gy = _grad_rows(grad_y, gy_buf, n0, m, p)
        im2col.im2col(x, col, n0, *_im2col_args(p))
        for g in range(p.groups):
            gemm(gy[g * kg:(g + 1) * kg], col[g * crs_g:(g + 1) * crs_g], gw_chunk, False, True)
            gw[g * kg:(g + 1) * kg] += gw_chunk
    return gw.reshape(p.w_shape)


def _grad_rows(grad_y: np.ndarray, buf: np.ndarray, n0: int, m: int, p: Conv2dShape) -> np.ndarray:
    """grad_y's images n0..n0+m as (K, m*OH*OW) rows, in `buf`."""
    plane = p.oh * p.ow
    gy = buf[:p.k * m * plane].reshape(p.k, m * plane)
    gy.reshape(p.k, m, plane)[...] = grad_y[n0:n0 + m].reshape(m, p.k, plane).transpose(1, 0, 2)
    return gy


# ---- direct and im2col + GEMM on the GPU (numba.cuda kernels, fastconv.kernels.cuda_*) ---------------

def _cuda_kernels():
    from .kernels import cuda_conv, cuda_matmul  # numba.cuda is imported only when a GPU is used
    return cuda_conv, cuda_matmul


def _cuda_conv_args(p: Conv2dShape) -> tuple[int, ...]:
    """stride, top/left padding and dilation in the GPU kernels' order (sh, sw, pt, pl, dh, dw)."""
    return (*p.stride, p.padding[0], p.padding[2], *p.dilation)


def _forward_direct_cuda(x, weight, bias, p: Conv2dShape):
    cuda_conv, _ = _cuda_kernels()
    y = empty(p.y_shape, x.dtype)
    b = bias if bias is not None else zeros((p.k,), x.dtype, "cuda")
    cuda_conv.direct_forward(x, weight, b, y, *_cuda_conv_args(p), p.groups)
    return y


def _backward_input_direct_cuda(grad_y, weight, p: Conv2dShape):
    cuda_conv, _ = _cuda_kernels()
    gx = empty(p.x_shape, grad_y.dtype)
    cuda_conv.direct_backward_input(grad_y, weight, gx, *_cuda_conv_args(p), p.groups)
    return gx


def _backward_weight_direct_cuda(grad_y, x, p: Conv2dShape):
    cuda_conv, _ = _cuda_kernels()
    gw = empty(p.w_shape, x.dtype)
    cuda_conv.direct_backward_weight(grad_y, x, gw, *_cuda_conv_args(p), p.groups)
    return gw


def _cuda_im2col_args(p: Conv2dShape) -> tuple[int, ...]:
    return (p.padding[0], p.padding[2], *p.stride, *p.dilation, p.r, p.s, p.oh, p.ow)


def cuda_im2col_workspace_bytes(p: Conv2dShape, itemsize: int) -> int:
    """The column matrix (C*R*S rows) and the GEMM's K output rows, OH*OW wide, per image (the tiled GPU
    GEMM reads its operands in place: no packed copies, unlike the CPU's)."""
    return (p.c * p.r * p.s + p.k) * p.oh * p.ow * itemsize


def _cuda_chunk(p: Conv2dShape, itemsize: int) -> int:
    """Images per chunk: as many as the workspace limit allows (one big GEMM keeps a GPU busy)."""
    return batch_chunk("im2col", cuda_im2col_workspace_bytes(p, itemsize), p.n, workspace_limit())


def _columns(buf, cols: int):
    """The first `cols` columns of a (rows, width) buffer as a C-contiguous (rows, cols) array (reusing it)."""
    return buf.reshape(buf.size)[:buf.shape[0] * cols].reshape(buf.shape[0], cols)


def _forward_im2col_cuda(x, weight, bias, p: Conv2dShape):
    """Per batch chunk: col (C*R*S, nb*OH*OW) = im2col(x); per group out_g = w_g @ col_g; y = out + bias."""
    cuda_conv, cuda_matmul = _cuda_kernels()
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _cuda_chunk(p, x.dtype.itemsize)
    col_all, out_all = empty((p.c * p.r * p.s, nb * plane), x.dtype), empty((p.k, nb * plane), x.dtype)
    w2 = weight.reshape(p.k, crs_g)
    b = bias if bias is not None else zeros((p.k,), x.dtype, "cuda")
    y = empty(p.y_shape, x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col, out = _columns(col_all, m * plane), _columns(out_all, m * plane)
        cuda_conv.im2col(x, col, n0, *_cuda_im2col_args(p))
        for g in range(p.groups):
            cuda_matmul.gemm(w2[g * kg:(g + 1) * kg], col[g * crs_g:(g + 1) * crs_g], out[g * kg:(g + 1) * kg],
                             False, False)
        cuda_conv.kn_to_nchw(out, b, y, n0)
    return y


def _backward_input_im2col_cuda(grad_y, weight, p: Conv2dShape):
    """Per chunk and group: dcol_g = w_g.T @ gy_g; grad_x = col2im(dcol)."""
    cuda_conv, cuda_matmul = _cuda_kernels()
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _cuda_chunk(p, grad_y.dtype.itemsize)
    col_all, gy_all = empty((p.c * p.r * p.s, nb * plane), grad_y.dtype), empty((p.k, nb * plane), grad_y.dtype)
    w2 = weight.reshape(p.k, crs_g)
    gx = empty(p.x_shape, grad_y.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        dcol, gy = _columns(col_all, m * plane), _columns(gy_all, m * plane)
        cuda_conv.nchw_to_kn(grad_y, gy, n0)
        for g in range(p.groups):
            cuda_matmul.gemm(w2[g * kg:(g + 1) * kg], gy[g * kg:(g + 1) * kg], dcol[g * crs_g:(g + 1) * crs_g],
                             True, False)
        cuda_conv.col2im(dcol, gx, n0, *_cuda_im2col_args(p))
    return gx


def _backward_weight_im2col_cuda(grad_y, x, p: Conv2dShape):
    """Per chunk and group: col = im2col(x); grad_w_g += gy_g @ col_g.T."""
    cuda_conv, cuda_matmul = _cuda_kernels()
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _cuda_chunk(p, x.dtype.itemsize)
    col_all, gy_all = empty((p.c * p.r * p.s, nb * plane), x.dtype), empty((p.k, nb * plane), x.dtype)
    gw = empty((p.k, crs_g), x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col, gy = _columns(col_all, m * plane), _columns(gy_all, m * plane)
        cuda_conv.nchw_to_kn(grad_y, gy, n0)
        cuda_conv.im2col(x, col, n0, *_cuda_im2col_args(p))
        for g in range(p.groups):
            cuda_matmul.gemm(gy[g * kg:(g + 1) * kg], col[g * crs_g:(g + 1) * crs_g], gw[g * kg:(g + 1) * kg],
                             False, True, 1.0 if n0 else 0.0)
    return gw.reshape(p.w_shape)


# ---- grad_x as a forward -----------------------------------------------------------------------------

def transposed_problem(p: Conv2dShape) -> Conv2dShape | None:
    """The forward problem whose output is grad_x of a stride-1 conv: grad_y (N, K, OH, OW) correlated, fully
    padded by the kernel's reach less p's padding, with the weights flipped and transposed per group
    (``transposed_weight``); None for strides above 1 or a padding beyond the kernel's reach."""
    reach_h, reach_w = p.dilation[0] * (p.r - 1), p.dilation[1] * (p.s - 1)
    top, bottom, left, right = p.padding
    pads = (reach_h - top, reach_h - bottom, reach_w - left, reach_w - right)
    if p.stride != (1, 1) or min(pads) < 0:
        return None
    return Conv2dShape(p.n, p.k, p.oh, p.ow, p.c, p.r, p.s, p.groups, (1, 1), p.dilation, pads, p.h, p.w)


def transposed_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """(K, C/g, R, S) -> (C, K/g, R, S): per group the weights transposed and flipped in both axes."""
    k, cg, r, s = weight.shape
    flipped = weight.reshape(groups, k // groups, cg, r, s)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4)).reshape(groups * cg, k // groups, r, s)


def _backward_input_as_forward(grad_y: np.ndarray, weight: np.ndarray, p: Conv2dShape, name: str,
                               otherwise: Callable) -> np.ndarray:
    """grad_x by the CPU record `name`'s forward on the transposed problem where it runs it (stride 1, within
    the workspace limit), else by `otherwise` (a grad_x function)."""
    q = transposed_problem(p)
    record = CONV2D["cpu", name]
    if q is None or not record.runs(q, grad_y.dtype.itemsize):
        return otherwise(grad_y, weight, p)
    return record.forward(grad_y, transposed_weight(weight, p.groups), None, q)


# ---- the records -------------------------------------------------------------------------------------

def _never(p: Conv2dShape) -> bool:
    return False


CONV2D.add(Algorithm("naive", "cpu", naive.conv2d, naive.conv2d_backward_input,
                     backward_weight=naive.conv2d_backward_weight, reference=True))
CONV2D.add(Algorithm("direct", "cpu", direct.forward, direct.backward_input, backward_weight=direct.backward_weight,
                     finite_inputs=("x", "weight"), backward_nonfinite_safe=False))
CONV2D.add(Algorithm("direct_simd", "cpu", direct_simd.forward,
                     partial(_backward_input_as_forward, name="direct_simd", otherwise=direct.backward_input),
                     backward_weight=direct_simd.backward_weight, backward_nonfinite_safe=False))
# BLAS-backed im2col is never timed: its thread pool keeps spinning after each call and slows the
# kernels that follow (timing it alone would flatter it).
CONV2D.add(Algorithm("im2col", "cpu", partial(_forward_im2col, gemm=matmul.gemm_blas),
                     partial(_backward_input_im2col, gemm=matmul.gemm_blas),
                     backward_weight=partial(_backward_weight_im2col, gemm=matmul.gemm_blas),
                     workspace_bytes=im2col_workspace_bytes, timed=_never))
CONV2D.add(Algorithm("im2col_packed", "cpu", partial(_forward_im2col, gemm=matmul.gemm_packed),
                     partial(_backward_input_im2col, gemm=matmul.gemm_packed),
                     backward_weight=partial(_backward_weight_im2col, gemm=matmul.gemm_packed),
                     workspace_bytes=im2col_workspace_bytes))
for _m, _name, _rounding in ((2, "winograd", 1.0), (4, "winograd_4x4", 20.0)):
    CONV2D.add(Algorithm(_name, "cpu", partial(winograd.forward, m=_m),
                         partial(_backward_input_as_forward, name=_name, otherwise=CONV2D["cpu", "direct_simd"].backward),
                         backward_weight=direct_simd.backward_weight,
                         unsupported=winograd.unsupported, workspace_bytes=partial(winograd.workspace_bytes, m=_m),
                         timed=winograd.worth_timing, within_range=partial(winograd.within_range, m=_m),
                         finite_inputs=("x", "weight"), backward_nonfinite_safe=False, forward_rounding=_rounding))
CONV2D.add(Algorithm("depthwise", "cpu", depthwise.forward, depthwise.backward_input,
                     backward_weight=depthwise.backward_weight, unsupported=depthwise.unsupported,
                     finite_inputs=("weight",), backward_nonfinite_safe=False))
CONV2D.add(Algorithm("direct", "cuda", _forward_direct_cuda, _backward_input_direct_cuda,
                     backward_weight=_backward_weight_direct_cuda))
CONV2D.add(Algorithm("im2col", "cuda", _forward_im2col_cuda, _backward_input_im2col_cuda,
                     backward_weight=_backward_weight_im2col_cuda, workspace_bytes=cuda_im2col_workspace_bytes))


def choose_conv2d_algorithm(p: Conv2dShape, itemsize: int) -> str:
    """The algorithm ``algo="auto"`` runs on the CPU for a problem too small to time (or with timing off).

    Measured on the benchmark layers (2-core Xeon, AVX-512, float32, 2026-12-01; ``benchmarks/results``):
    depthwise's own kernel on depthwise layers; winograd on wide 3x3 stride-1 layers (VGG 256->256 at 28x28:
    42 ms against direct_simd's 61); direct_simd everywhere else, from LeNet at batch 1 (64 us against
    direct's 69 and im2col_packed's 63; CIFAR conv3 at batch 1: 83 against 161 and 111) to the strided and
    1x1 layers (it reads an unpadded stride-1 input in place). im2col with BLAS is never picked: OpenBLAS's
    thread pool contends with the OpenMP pool of the other kernels.
    """
    cg = p.c // p.groups
    if cg == 1 and p.groups > 1:
        return "depthwise"
    if cg >= WINOGRAD_RULE_CHANNELS and CONV2D["cpu", "winograd"].runs(p, itemsize):
        return "winograd"
    return "direct_simd"


WINOGRAD_RULE_CHANNELS = 128  # input channels per group from which the rule picks winograd (ResNet's 64: direct_simd)
SMALL_FLOPS = 2**22  # below this a conv is a few microseconds of work: one direct kernel beats five launches


def _cuda_rule(p: Conv2dShape, itemsize: int) -> str:
    """``auto`` on the GPU: im2col + tiled GEMM whenever one image's workspace fits the limit (the
    GEMM reuses every input through shared memory), except for tiny problems, where direct's single
    launch wins."""
    return "im2col" if CONV2D["cuda", "im2col"].fits(p, itemsize) and p.flops >= SMALL_FLOPS else "direct"


CONV2D.rules.update(cpu=choose_conv2d_algorithm, cuda=_cuda_rule)


# ---- the dispatcher ----------------------------------------------------------------------------------

def _safe_algorithm(p: Conv2dShape, itemsize: int, pass_: str) -> str | None:
    """The first timed CPU algorithm whose `pass_` ('forward', or a backward pass) gives PyTorch's NaN/Inf
    pattern on any input (and has no numerical limit) and that runs p within the workspace limit."""
    for a in CONV2D.records("cpu"):
        safe = (not a.finite_inputs and a.within_range is None) if pass_ == "forward" else a.backward_nonfinite_safe
        if safe and not a.reference and a.timed(p) and a.runs(p, itemsize):
            return a.name
    return None


_MAGNITUDE_BITS = {np.dtype(t): (np.dtype(u), np.dtype(u).type(np.iinfo(u).max >> 1))
                   for t, u in ((np.float32, np.uint32), (np.float64, np.uint64))}  # dtype -> (bits, sign cleared)


def abs_max(a: np.ndarray) -> float:
    """max |a| of a C-contiguous float32/float64 array (0 when empty), inf when it holds NaN or Inf: one
    compiled pass over its bits (``elementwise.max_magnitude_bits``)."""
    bits, sign_cleared = _MAGNITUDE_BITS[a.dtype]
    top = float(np.array(elementwise.max_magnitude_bits(a.reshape(-1).view(bits), sign_cleared), bits).view(a.dtype))
    return top if math.isfinite(top) else math.inf


def _nonfinite(*arrays: np.ndarray) -> bool:
    """Whether any of the C-contiguous arrays holds NaN or Inf (a compiled, parallel pass over each)."""
    return not all(elementwise.all_finite(a.reshape(-1)) for a in arrays)


def _safe_forward_algorithm(algo: str, p: Conv2dShape, x: np.ndarray, w: np.ndarray) -> str:
    """`algo`, or one that needs no finite inputs (direct when none fits the workspace limit) where an input
    named in `algo`'s ``finite_inputs`` holds NaN or Inf, or where `algo`'s transforms could overflow (its
    ``within_range``). One compiled pass over each named input gives its largest magnitude and whether it
    is finite; inputs not named are not read."""
    record = CONV2D["cpu", algo]
    if not record.finite_inputs:
        return algo
    x_max = abs_max(x) if "x" in record.finite_inputs else 0.0
    w_max = 0.0
    if "weight" in record.finite_inputs:  # an unchanging weight (a loaded model's) is read once
        w_max = kept_for(w, ("abs_max",), lambda: abs_max(w))
        w_max = abs_max(w) if w_max is None else w_max
    finite = np.isfinite(x_max) and np.isfinite(w_max)
    if finite and (record.within_range is None or record.within_range(x_max, w_max, p, x.dtype)):
        return algo
    return _safe_algorithm(p, x.dtype.itemsize, "forward") or ("direct" if finite else algo)


def _redo_if_nonfinite(algo: str, pass_: str, p: Conv2dShape, itemsize: int, run: Callable[[str], np.ndarray],
                       ) -> np.ndarray:
    """run(algo), or run() of a backward_nonfinite_safe algorithm (when one fits the workspace limit) where
    the result of an unsafe one holds NaN or Inf, so that NaN and Inf come out where PyTorch puts them:
    direct, direct_simd and winograd multiply zero weights or zero-widened lanes by the operands (inf * 0 =
    NaN where PyTorch gives Inf or a number). The backward's inputs are the larger: finite inputs give
    finite results, so one pass over the result decides (the forward checks its inputs instead:
    ``_safe_forward_algorithm``)."""
    out = run(algo)
    if CONV2D["cpu", algo].backward_nonfinite_safe:
        return out
    safe = _safe_algorithm(p, itemsize, pass_)
    return run(safe) if safe is not None and _nonfinite(out) else out


def _candidates(p: Conv2dShape, itemsize: int) -> list[str]:
    """What ``auto`` times on the CPU (``Registry.candidates``)."""
    return CONV2D.candidates(p, itemsize, "cpu")


BACKWARD_PASSES = {"backward_input": "backward", "backward_weight": "backward_weight"}  # pass -> record field


def _pass_function(record: Algorithm, pass_: str) -> Callable:
    return record.forward if pass_ == "forward" else getattr(record, BACKWARD_PASSES[pass_])


@lru_cache(maxsize=1024)
def _tuning(pass_: str, p: Conv2dShape, dtype: np.dtype, version: int, limit: int) -> tuple[tuple[str, ...], str, str]:
    """(candidates, autotune key, rule's choice) of a CPU problem and pass ('forward', 'backward_input',
    'backward_weight'), computed once per problem, registry version and workspace limit (they are the same
    on every call: the per-call cost of ``auto`` is then a lookup). Records sharing a pass's function (the
    Winograds' weight gradient is direct_simd's) are timed once, under the first one's name."""
    names, seen = [], set()
    for name in _candidates(p, dtype.itemsize):
        function = _pass_function(CONV2D["cpu", name], pass_)
        if function not in seen:
            seen.add(function)
            names.append(name)
    key = (f"conv2d.{pass_}.{dtype}.x{p.n}x{p.c}x{p.h}x{p.w}.w{p.k}x{p.c // p.groups}x{p.r}x{p.s}"
           f".s{p.stride}.p{p.padding}.d{p.dilation}.g{p.groups}.{'|'.join(names)}")  # new candidates: re-time
    rule = CONV2D.rule(p, dtype.itemsize, "cpu")
    function = _pass_function(CONV2D["cpu", rule], pass_)
    rule = next((name for name in names if _pass_function(CONV2D["cpu", name], pass_) is function), rule)
    return tuple(names), key, rule


def _fixed(name: str, p: Conv2dShape, itemsize: int, device: str) -> str:
    """`name`, the algorithm ``config.set_conv2d_algorithm`` fixed, where it computes p on `device`; else ValueError."""
    fixed = f"conv2d's algorithm is fixed to {name!r} (fastconv.config.set_conv2d_algorithm, fastconv's --algo)"
    if name not in CONV2D.names(device):
        raise ValueError(f"{fixed}, which has no {device} version: fix one of {CONV2D.names(device)} or 'auto'")
    try:
        CONV2D.require(name, device, p, itemsize)
    except ValueError as error:
        raise ValueError(f"{fixed}, which cannot compute x {p.x_shape} with weight {p.w_shape}: {error}; fix "
                         "another algorithm, or 'auto'") from None
    return name


def _auto(pass_: str, p: Conv2dShape, dtype: np.dtype, device: str, run: Callable[[str], object]) -> str:
    """The algorithm ``algo="auto"`` runs for this problem and pass: the one ``config.set_conv2d_algorithm``
    fixed, if any (``_fixed``); else on the CPU measured once per process (``fastconv.autotune``) among the
    candidates, with the CPU rule for small problems or when timing is off; on the GPU the GPU rule."""
    if conv2d_algorithm() != "auto":
        return _fixed(conv2d_algorithm(), p, dtype.itemsize, device)
    if device != "cpu":
        return CONV2D.rule(p, dtype.itemsize, device)
    names, key, rule = _tuning(pass_, p, dtype, CONV2D.version, workspace_limit())
    return autotune.choose(key, p.flops, rule, {name: (lambda name=name: run(name)) for name in names})


def _prepare(x, weight, algo: str, shape_of: Callable[[np.ndarray, np.ndarray], Conv2dShape]):
    """Validate the arguments shared by forward and backward: (device, batched x, weight, unbatched, p), p the
    conv2d problem ``shape_of(batched x, weight)`` states: conv2d's own, or the one conv_transpose2d is the input
    gradient of."""
    x, weight = as_array("x", x), as_array("weight", weight)
    device = device_of(x)
    CONV2D.check(algo, device)
    if device == "cuda":
        x, weight = as_device("x", x), as_device("weight", weight)
    xb, unbatched = batched("x", x)
    p = shape_of(xb, weight)
    if algo != "auto":
        CONV2D.require(algo, device, p, xb.dtype.itemsize if p.n else None)
    if device == "cpu":
        xb, weight = contiguous(xb), contiguous(weight)
    return device, xb, weight, unbatched, p


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1, *, algo: str = "auto") -> np.ndarray:
    """2-D convolution (cross-correlation) with the semantics of ``torch.nn.functional.conv2d``.

    x: (N, C, H, W) or unbatched (C, H, W); weight: (K, C/groups, R, S); bias: (K,) or None.
    stride, dilation: int or (h, w) pair, >= 1; padding: int or pair >= 0, 'valid' or 'same'
    ('same' needs stride 1; an odd total pad puts the extra row/column at the bottom/right).
    Returns y: (N, K, OH, OW) (unbatched (K, OH, OW) for an unbatched x) in x's dtype,
    OH = (H + pad_top + pad_bottom - dilation_h*(R-1) - 1) // stride_h + 1, OW likewise.
    float32 or float64; x, weight and bias must share the dtype. ``algo`` is 'auto' or one
    of ``fastconv.algorithms('conv2d')``. On device arrays (``fastconv.device``) it runs on the GPU,
    with ``fastconv.algorithms('conv2d', device='cuda')``, and returns a device array.
    """
    device, xb, weight, unbatched, p = _prepare(x, weight, algo, lambda xb, w: conv2d_shape(xb, w, stride, padding,
                                                                                         dilation, groups))
    if bias is not None:
        bias = as_device("bias", bias) if device == "cuda" else as_array("bias", bias)
        check_array("bias", bias, (1,), xb.dtype, device=device == "cuda")
        if bias.shape != (p.k,):
            raise ValueError(f"bias must have shape ({p.k},), got {bias.shape}")
        bias = contiguous(bias) if device == "cpu" else bias
    if p.n == 0:
        y = zeros(p.y_shape, xb.dtype, device)
    else:
        w = contiguous(weight) if device == "cpu" else weight
        if algo == "auto":
            algo = _auto("forward", p, xb.dtype, device, lambda name: CONV2D[device, name].forward(xb, w, bias, p))
        if device == "cpu":
            algo = _safe_forward_algorithm(algo, p, xb, w)
        y = CONV2D[device, algo].forward(xb, w, bias, p)
    return y.reshape(p.y_shape[1:]) if unbatched else y


def conv2d_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, stride=1, padding=0,
                    dilation=1, groups: int = 1, *, algo: str = "auto", input_grad: bool = True,
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of conv2d: returns (grad_x, grad_weight, grad_bias).

    grad_y: d loss / d y, shaped like conv2d's output (unbatched when x is);
    grad_x like x (None when ``input_grad`` is False: not computed, as for a network's first layer),
    grad_weight like weight, grad_bias (K,) = grad_y summed over N, OH, OW.
    Arguments and algorithms as in ``conv2d`` (device arrays in, device arrays out). With ``algo="auto"``
    the two gradients are separate passes, each run by the algorithm measured fastest for it.
    """
    check_bool("input_grad", input_grad)
    device, xb, weight, unbatched, p = _prepare(x, weight, algo, lambda xb, w: conv2d_shape(xb, w, stride, padding,
                                                                                         dilation, groups))
    gy = as_device("grad_y", grad_y) if device == "cuda" else as_array("grad_y", grad_y)
    gy = check_grad("grad_y", gy, p.y_shape[1:] if unbatched else p.y_shape, xb.dtype, device=device == "cuda")
    gy = contiguous(gy.reshape(p.y_shape)) if device == "cpu" else gy.reshape(p.y_shape)
    w = contiguous(weight) if device == "cpu" else weight
    runs = {"backward_input": lambda name: CONV2D[device, name].backward(gy, w, p),
            "backward_weight": lambda name: CONV2D[device, name].backward_weight(gy, xb, p)}
    grads = {}
    for pass_, shape in (("backward_input", p.x_shape), ("backward_weight", p.w_shape)):
        if pass_ == "backward_input" and not input_grad:
            grads[pass_] = None
        elif p.n == 0:
            grads[pass_] = zeros(shape, xb.dtype, device)
        else:
            name = _auto(pass_, p, xb.dtype, device, runs[pass_]) if algo == "auto" else algo
            grads[pass_] = (_redo_if_nonfinite(name, pass_, p, xb.dtype.itemsize, runs[pass_]) if device == "cpu"
                            else runs[pass_](name))
    gx, gw = grads["backward_input"], grads["backward_weight"]
    gb = ops_for(gy).channel_sum(gy)
    return (gx.reshape(p.x_shape[1:]) if unbatched and gx is not None else gx), gw, gb


# ---- conv_transpose2d: conv2d's passes with the roles of input and output swapped ----------------------

def conv_transpose2d_shape(x: np.ndarray, weight: np.ndarray, stride: object, padding: object,
                           output_padding: object, groups: object, dilation: object) -> Conv2dShape:
    """Validate conv_transpose2d's arguments for a batched x (N, C_in, H, W) and weight (C_in, C_out/groups, R, S),
    and return the conv2d problem it is the input gradient of: conv2d's input is the transposed conv's output
    y (N, C_out, OH, OW), OH = (H-1)*stride_h - 2*padding_h + dilation_h*(R-1) + output_padding_h + 1 (OW
    likewise), its weight is `weight` (K = C_in) and its output x, H + output_padding_h // stride_h rows tall:
    output_padding, which must be smaller than stride or dilation, may reach a row past x where it is not
    smaller than the stride (that row is zero in grad_y)."""
    check_array("weight", weight, (4,), x.dtype, is_device_array(x))
    if isinstance(groups, bool) or not isinstance(groups, Integral) or not 1 <= groups <= MAX_SIZE_ARG:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    groups = int(groups)
    n, c_in, h, w = x.shape
    k, cg_out, r, s = weight.shape
    if min(k, cg_out, r, s) < 1:
        raise ValueError(f"weight must have non-zero sizes, got shape {weight.shape}")
    if min(c_in, h, w) < 1:
        raise ValueError(f"x must have non-zero channels, height and width, got shape {x.shape}")
    if k != c_in:
        raise ValueError(f"weight must have x's {c_in} input channels in dimension 0 (weight is (in_channels, "
                         f"out_channels/groups, kh, kw)), got shape {weight.shape}")
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    (sh, sw), (dh, dw) = pair("stride", stride, 1), pair("dilation", dilation, 1)
    (ph, pw), (oph, opw) = pair("padding", padding, 0), pair("output_padding", output_padding, 0)
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                         f"output_padding={output_padding!r}, stride={stride!r}, dilation={dilation!r}")
    oh = (h - 1) * sh - 2 * ph + dh * (r - 1) + oph + 1
    ow = (w - 1) * sw - 2 * pw + dw * (s - 1) + opw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"padding={padding!r} leaves an empty output ({oh}, {ow}) for x of size ({h}, {w}) and a "
                         f"kernel of size ({r}, {s}): choose a smaller padding")
    p = Conv2dShape(n, cg_out * groups, oh, ow, c_in, r, s, groups, (sh, sw), (dh, dw), (ph, ph, pw, pw),
                    h + oph // sh, w + opw // sw)
    check_fits("conv_transpose2d output", p.x_shape, x.dtype)
    if ph or pw:
        check_fits("zero-padded output", p.padded_shape, x.dtype)
    return p


def conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1, *, algo: str = "auto") -> np.ndarray:
    """2-D transposed convolution with the semantics of ``torch.nn.functional.conv_transpose2d``.

    x: (N, C_in, H, W) or unbatched (C_in, H, W); weight: (C_in, C_out/groups, R, S); bias: (C_out,) or None.
    stride, padding (>= 0), output_padding (>= 0, smaller than stride or dilation), dilation: int or (h, w) pair.
    Returns y: (N, C_out, OH, OW) (unbatched (C_out, OH, OW) for an unbatched x) in x's dtype,
    OH = (H-1)*stride_h - 2*padding_h + dilation_h*(R-1) + output_padding_h + 1, OW likewise.
    It is conv2d's input gradient: y is grad_x of the conv2d (stride, padding, dilation, groups) taking
    (N, C_out, OH, OW) to x, run by a conv2d algorithm's ``backward``; ``algo`` is 'auto' (timed among
    conv2d's algorithms for that pass) or one of ``fastconv.algorithms('conv2d')``. Device arrays run on the GPU.
    """
    device, xb, weight, unbatched, p = _prepare(x, weight, algo, lambda xb, w: conv_transpose2d_shape(
        xb, w, stride, padding, output_padding, groups, dilation))
    if bias is not None:
        bias = as_device("bias", bias) if device == "cuda" else as_array("bias", bias)
        check_array("bias", bias, (1,), xb.dtype, device=device == "cuda")
        if bias.shape != (p.c,):
            raise ValueError(f"bias must have shape ({p.c},), got {bias.shape}")
    if p.n == 0:
        y = zeros(p.x_shape, xb.dtype, device)
    else:
        gy = ops_for(xb).resize_planes(xb, p.oh, p.ow)  # zero rows where output_padding reaches past x

        def run(name: str) -> np.ndarray:
            return CONV2D[device, name].backward(gy, weight, p)
        name = _auto("backward_input", p, xb.dtype, device, run) if algo == "auto" else algo
        y = _redo_if_nonfinite(name, "backward_input", p, xb.dtype.itemsize, run) if device == "cpu" else run(name)
    if bias is not None:
        ops_for(y).add_channel_bias(y, contiguous(bias) if device == "cpu" else bias)
    return y.reshape(p.x_shape[1:]) if unbatched else y


def conv_transpose2d_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, stride=1, padding=0,
                              output_padding=0, groups: int = 1, dilation=1, *, algo: str = "auto",
                              input_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of conv_transpose2d: returns (grad_x, grad_weight, grad_bias).

    grad_y: d loss / d y, shaped like conv_transpose2d's output (unbatched when x is); grad_x like x (None when
    ``input_grad`` is False), grad_weight like weight, grad_bias (C_out,) = grad_y summed over N, OH, OW.
    grad_x is conv2d's forward on grad_y and grad_weight conv2d's weight gradient with the roles of x and grad_y
    swapped (grad_y the input, x the output gradient); with ``algo="auto"`` each pass is timed and chosen apart.
    Arguments and algorithms as in ``conv_transpose2d``.
    """
    check_bool("input_grad", input_grad)
    device, xb, weight, unbatched, p = _prepare(x, weight, algo, lambda xb, w: conv_transpose2d_shape(
        xb, w, stride, padding, output_padding, groups, dilation))
    gy = as_device("grad_y", grad_y) if device == "cuda" else as_array("grad_y", grad_y)
    gy = check_grad("grad_y", gy, p.x_shape[1:] if unbatched else p.x_shape, xb.dtype, device=device == "cuda")
    gy = contiguous(gy.reshape(p.x_shape)) if device == "cpu" else gy.reshape(p.x_shape)
    ops = ops_for(gy)
    gb = ops.channel_sum(gy)
    if p.n == 0:
        gx, gw = zeros(xb.shape, xb.dtype, device), zeros(p.w_shape, xb.dtype, device)
    else:
        gx = None
        if input_grad:
            name = algo
            if algo == "auto":
                name = _auto("forward", p, xb.dtype, device, lambda n: CONV2D[device, n].forward(gy, weight, None, p))
            if device == "cpu":
                name = _safe_forward_algorithm(name, p, gy, weight)
            gx = ops.resize_planes(CONV2D[device, name].forward(gy, weight, None, p), *xb.shape[2:])
        out = ops.resize_planes(xb, p.oh, p.ow)  # zero rows where output_padding reaches past x

        def run(name: str) -> np.ndarray:
            return CONV2D[device, name].backward_weight(out, gy, p)
        name = _auto("backward_weight", p, xb.dtype, device, run) if algo == "auto" else algo
        gw = _redo_if_nonfinite(name, "backward_weight", p, xb.dtype.itemsize, run) if device == "cpu" else run(name)
    if not input_grad:
        gx = None
    return (gx.reshape(xb.shape[1:]) if unbatched and gx is not None else gx), gw, gb
