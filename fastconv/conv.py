"""conv2d and its backward: validate, pick an algorithm, run its kernels.

Every algorithm is a (forward, backward) pair with the same signatures:
``forward(x, weight, bias, p) -> y`` and ``backward(grad_y, x, weight, p) -> (grad_x, grad_weight)``,
where arrays are batched, C-contiguous and validated, and ``p`` is the ``Conv2dShape``.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from . import autotune, cuda, direct_simd, naive, runtime, winograd
from ._checks import (Conv2dShape, batched, check_algo, check_array, check_grad, contiguous,
                      conv2d_shape)
from .config import batch_chunk, scratch, workspace_limit
from .device import is_device_array
from .kernels import direct, elementwise, gemm as gemm_kernels, im2col as im2col_kernels


def _pad(x: np.ndarray, p: Conv2dShape) -> np.ndarray:
    """x (N, C, H, W) zero-padded to (N, C, H + top + bottom, W + left + right), C-contiguous."""
    top, _, left, _ = p.padding
    if not any(p.padding):
        return x
    xp = np.zeros(p.padded_shape, x.dtype)
    xp[:, :, top:top + p.h, left:left + p.w] = x
    return xp


def _forward_direct(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape) -> np.ndarray:
    y = np.empty(p.y_shape, x.dtype)
    b = bias if bias is not None else np.zeros(p.k, x.dtype)
    direct.conv2d_forward(_pad(x, p), weight, b, y, *p.stride, *p.dilation, p.groups)
    return y


def _backward_direct(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray,
                     p: Conv2dShape) -> tuple[np.ndarray, np.ndarray]:
    top, _, left, _ = p.padding
    gxp = np.empty(p.padded_shape, x.dtype)
    direct.conv2d_backward_input(grad_y, weight, gxp, *p.stride, *p.dilation, p.groups)
    gw = np.empty(weight.shape, x.dtype)
    direct.conv2d_backward_weight(grad_y, _pad(x, p), gw, *p.stride, *p.dilation, p.groups)
    gx = gxp if not any(p.padding) else np.ascontiguousarray(gxp[:, :, top:top + p.h, left:left + p.w])
    return gx, gw


def _backward_direct_simd(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray,
                          p: Conv2dShape) -> tuple[np.ndarray, np.ndarray]:
    """grad_x as direct_simd's forward of grad_y with the weights flipped and transposed per group (the
    full correlation), for stride 1 when no padding exceeds the kernel's reach; grad_weight by direct."""
    reach_h, reach_w = p.dilation[0] * (p.r - 1), p.dilation[1] * (p.s - 1)
    top, bottom, left, right = p.padding
    pads = (reach_h - top, reach_h - bottom, reach_w - left, reach_w - right)
    if p.stride != (1, 1) or min(pads) < 0:
        return _backward_direct(grad_y, x, weight, p)
    kg, cg = p.k // p.groups, p.c // p.groups
    flipped = weight.reshape(p.groups, kg, cg, p.r, p.s)[:, :, :, ::-1, ::-1]
    wt = np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4)).reshape(p.c, kg, p.r, p.s)
    q = Conv2dShape(p.n, p.k, p.oh, p.ow, p.c, p.r, p.s, p.groups, (1, 1), p.dilation, pads, p.h, p.w)
    gx = direct_simd.forward(grad_y, wt, None, q)
    gw = np.empty(weight.shape, x.dtype)
    direct.conv2d_backward_weight(grad_y, _pad(x, p), gw, *p.stride, *p.dilation, p.groups)
    return gx, gw


def _im2col_bytes_per_image(p: Conv2dShape, itemsize: int) -> int:
    """im2col's workspace per image, OH*OW wide: the column matrix (C*R*S rows), the GEMM's K output
    rows, and the packed GEMM's copies of one group's operands in backward (K/g + C/g*R*S rows)."""
    crs_g, kg = (p.c // p.groups) * p.r * p.s, p.k // p.groups
    return (p.c * p.r * p.s + p.k + kg + crs_g) * p.oh * p.ow * itemsize


def _im2col_fixed_bytes(p: Conv2dShape, itemsize: int) -> int:
    """The packed GEMM's workspace that does not grow with the chunk: the packed weights of one group
    and one panel of at most NC columns, C/g*R*S deep."""
    crs_g, kg = (p.c // p.groups) * p.r * p.s, p.k // p.groups
    return (kg + gemm_kernels.MR + gemm_kernels.NC) * crs_g * itemsize


def _im2col_fits(p: Conv2dShape, itemsize: int) -> bool:
    return _im2col_fixed_bytes(p, itemsize) + _im2col_bytes_per_image(p, itemsize) <= workspace_limit()


def _im2col_chunk(p: Conv2dShape, itemsize: int) -> int:
    """Images per batch chunk: about CHUNK_BYTES of workspace each, within the workspace limit."""
    return batch_chunk("im2col", _im2col_bytes_per_image(p, itemsize), p.n, CHUNK_BYTES,
                       _im2col_fixed_bytes(p, itemsize))


CHUNK_BYTES = 16 * 2**20  # im2col workspace per chunk: whole GEMMs stay large, memory stays near the output's

def _im2col_args(p: Conv2dShape) -> tuple[int, ...]:
    top, _, left, _ = p.padding
    return (top, left, *p.stride, *p.dilation, p.r, p.s, p.oh, p.ow, runtime.num_threads())


def _forward_im2col(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dShape,
                    gemm) -> np.ndarray:
    """Per batch chunk: col (C*R*S, nb*OH*OW) = im2col(x); per group y_g (K/g, nb*OH*OW) = w_g @ col_g."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _im2col_chunk(p, x.dtype.itemsize)
    col_buf = scratch("im2col.col", p.groups * crs_g * nb * plane, x.dtype)
    out_buf = scratch("im2col.out", p.k * nb * plane, x.dtype)
    w2 = weight.reshape(p.k, crs_g)
    y = np.empty((p.n, p.k, plane), x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col = col_buf[:p.groups * crs_g * m * plane].reshape(p.groups * crs_g, m * plane)
        out = out_buf[:p.k * m * plane].reshape(p.k, m * plane)
        im2col_kernels.im2col(x, col, n0, *_im2col_args(p))
        for g in range(p.groups):
            gemm(w2[g * kg:(g + 1) * kg], col[g * crs_g:(g + 1) * crs_g], out[g * kg:(g + 1) * kg], False, False)
        y[n0:n0 + m] = out.reshape(p.k, m, plane).transpose(1, 0, 2)
    if bias is not None:
        y += bias[:, None]
    return y.reshape(p.y_shape)


def _backward_im2col(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, p: Conv2dShape,
                     gemm) -> tuple[np.ndarray, np.ndarray]:
    """Per batch chunk and group: grad_w_g += gy_g @ col_g.T; dcol_g = w_g.T @ gy_g; grad_x += col2im(dcol)."""
    crs_g, kg, plane = (p.c // p.groups) * p.r * p.s, p.k // p.groups, p.oh * p.ow
    nb = _im2col_chunk(p, x.dtype.itemsize)
    col_buf = scratch("im2col.col", p.groups * crs_g * nb * plane, x.dtype)
    gy_buf = scratch("im2col.out", p.k * nb * plane, x.dtype)
    w2 = weight.reshape(p.k, crs_g)
    gw = np.zeros((p.k, crs_g), x.dtype)
    gw_chunk = np.empty((kg, crs_g), x.dtype)
    gx = np.zeros(p.x_shape, x.dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col = col_buf[:p.groups * crs_g * m * plane].reshape(p.groups * crs_g, m * plane)
        gy = gy_buf[:p.k * m * plane].reshape(p.k, m * plane)
        gy.reshape(p.k, m, plane)[...] = grad_y[n0:n0 + m].reshape(m, p.k, plane).transpose(1, 0, 2)
        im2col_kernels.im2col(x, col, n0, *_im2col_args(p))
        for g in range(p.groups):
            col_g, gy_g = col[g * crs_g:(g + 1) * crs_g], gy[g * kg:(g + 1) * kg]
            gemm(gy_g, col_g, gw_chunk, False, True)
            gw[g * kg:(g + 1) * kg] += gw_chunk
            gemm(w2[g * kg:(g + 1) * kg], gy_g, col_g, True, False)  # col_g is consumed: reuse it for dcol_g
        im2col_kernels.col2im(col, gx, n0, *_im2col_args(p))
    return gx, gw.reshape(weight.shape)


CONV2D_ALGORITHMS = {
    "naive": (naive.conv2d, naive.conv2d_backward),
    "direct": (_forward_direct, _backward_direct),
    "direct_simd": (direct_simd.forward, _backward_direct_simd),
    "im2col": (partial(_forward_im2col, gemm=gemm_kernels.gemm_blas),
               partial(_backward_im2col, gemm=gemm_kernels.gemm_blas)),
    "im2col_packed": (partial(_forward_im2col, gemm=gemm_kernels.gemm_packed),
                      partial(_backward_im2col, gemm=gemm_kernels.gemm_packed)),
    "winograd": (winograd.forward, _backward_direct_simd),
}


def choose_conv2d_algorithm(p: Conv2dShape, itemsize: int) -> str:
    """The algorithm ``algo="auto"`` runs for a problem too small to time (or with timing off).

    Measured on the benchmark layers (2-core AVX2 machine, float32, see the README): direct wins
    on depthwise and on small stride-1 layers (LeNet, the CIFAR CNN, ResNet 3x3 at 64 channels);
    im2col with our own GEMM wins on strided layers (direct's strided path is row loops), on 1x1
    layers and once the GEMM is deep (C/groups*R*S >= 1024, VGG). im2col with BLAS is never
    picked: OpenBLAS's thread pool contends with the OpenMP pool of the other kernels.
    """
    cg = p.c // p.groups
    if cg == 1 and p.groups > 1:
        return "direct"
    deep_or_strided = p.stride != (1, 1) or p.r * p.s == 1 or cg * p.r * p.s >= 1024
    fits = _im2col_fits(p, itemsize)
    return "im2col_packed" if deep_or_strided and fits else "direct"


def _prepare(x: np.ndarray, weight: np.ndarray, stride, padding, dilation, groups, algo: str,
             ) -> tuple[np.ndarray, bool, Conv2dShape]:
    check_algo("conv2d", algo, list(CONV2D_ALGORITHMS))
    xb, unbatched = batched("x", x)
    p = conv2d_shape(xb, weight, stride, padding, dilation, groups)
    if algo.startswith("im2col") and p.n:
        _im2col_chunk(p, x.dtype.itemsize)
    if algo == "winograd":
        if not winograd.winograd_applies(p):
            raise ValueError(f"algo='winograd' needs a 3x3 kernel, stride 1 and dilation 1, got kernel "
                             f"{(p.r, p.s)}, stride {p.stride}, dilation {p.dilation}")
        if p.n:
            winograd.chunk_images(p, x.dtype.itemsize)
    return contiguous(xb), unbatched, p


NONFINITE_SAFE = ("naive", "im2col", "im2col_packed")


def _nonfinite(*arrays: np.ndarray) -> bool:
    """Whether any of the C-contiguous arrays holds NaN or Inf (a compiled, parallel pass over each)."""
    return not all(elementwise.all_finite(a.reshape(-1)) for a in arrays)


def _safe_forward_algorithm(algo: str, p: Conv2dShape, x: np.ndarray, w: np.ndarray) -> str:
    """`algo`, or im2col_packed (direct when its workspace does not fit) where x or w hold NaN or Inf and
    `algo` is not NONFINITE_SAFE, or where Winograd's transforms could overflow (``winograd.within_range``).
    One compiled pass over each input gives both its largest magnitude and whether it is finite."""
    if algo in NONFINITE_SAFE:
        return algo
    x_max, w_max = elementwise.abs_max(x.reshape(-1)), elementwise.abs_max(w.reshape(-1))
    finite = np.isfinite(x_max) and np.isfinite(w_max)
    if finite and (algo != "winograd" or winograd.within_range(x_max, w_max, p, x.dtype)):
        return algo
    return "im2col_packed" if _im2col_fits(p, x.dtype.itemsize) else ("direct" if finite else algo)


def _redo_if_nonfinite(algo: str, p: Conv2dShape, itemsize: int, run: Callable[[str], tuple]) -> tuple:
    """run(algo), or run('im2col_packed') (when it fits the workspace limit) where the results of direct,
    direct_simd or winograd hold NaN or Inf, so that NaN and Inf come out where PyTorch puts them: those
    kernels multiply zero weights or zero-widened lanes by the operands (inf * 0 = NaN where PyTorch
    gives Inf or a number). Used by backward, whose inputs are the larger: finite inputs give finite
    results, so one pass over the results decides (the forward checks its inputs instead:
    ``_safe_forward_algorithm``)."""
    out = run(algo)
    redo = algo not in NONFINITE_SAFE and _im2col_fits(p, itemsize)
    return run("im2col_packed") if redo and _nonfinite(*out) else out


def _candidates(p: Conv2dShape, itemsize: int) -> list[str]:
    """What ``auto`` times: every compiled algorithm that handles the shape within the workspace limit.
    BLAS-backed im2col is left out: its thread pool keeps spinning after each call and slows the
    kernels that follow (timing it alone would flatter it)."""
    names = ["direct", "direct_simd"]
    if _im2col_fits(p, itemsize):
        names.append("im2col_packed")
    if (winograd.winograd_applies(p) and p.c // p.groups >= winograd.GROUPED_GEMM_MIN
            and winograd.workspace_bytes_per_image(p, itemsize) <= workspace_limit()):
        names.append("winograd")  # (with fewer channels per group its products are plain loops: measured slow)
    return names


def _auto(pass_: str, p: Conv2dShape, dtype: np.dtype, run: Callable[[str], object]) -> str:
    """The algorithm ``algo="auto"`` runs for this problem: measured once per process (``fastconv.autotune``),
    with ``choose_conv2d_algorithm`` as the rule for small problems or when timing is off."""
    names = _candidates(p, dtype.itemsize)
    key = (f"conv2d.{pass_}.{dtype}.x{p.n}x{p.c}x{p.h}x{p.w}.w{p.k}x{p.c // p.groups}x{p.r}x{p.s}"
           f".s{p.stride}.p{p.padding}.d{p.dilation}.g{p.groups}.{'|'.join(names)}")  # new candidates: re-time
    flops = p.flops * (2 if pass_ == "backward" else 1)
    return autotune.choose(key, flops, choose_conv2d_algorithm(p, dtype.itemsize),
                           {name: (lambda name=name: run(name)) for name in names})


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
    if is_device_array(x):
        return cuda.conv2d(x, weight, bias, stride, padding, dilation, groups, algo=algo)
    xb, unbatched, p = _prepare(x, weight, stride, padding, dilation, groups, algo)
    if bias is not None:
        check_array("bias", bias, (1,), xb.dtype)
        if bias.shape != (p.k,):
            raise ValueError(f"bias must have shape ({p.k},), got {bias.shape}")
        bias = contiguous(bias)
    if p.n == 0:
        return np.zeros(p.y_shape[1:] if unbatched else p.y_shape, xb.dtype)
    w = contiguous(weight)
    if algo == "auto":
        algo = _auto("forward", p, xb.dtype, lambda name: CONV2D_ALGORITHMS[name][0](xb, w, bias, p))
    y = CONV2D_ALGORITHMS[_safe_forward_algorithm(algo, p, xb, w)][0](xb, w, bias, p)
    return y[0] if unbatched else y


def conv2d_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, stride=1, padding=0,
                    dilation=1, groups: int = 1, *, algo: str = "auto",
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of conv2d: returns (grad_x, grad_weight, grad_bias).

    grad_y: d loss / d y, shaped like conv2d's output (unbatched when x is);
    grad_x like x, grad_weight like weight, grad_bias (K,) = grad_y summed over N, OH, OW.
    Arguments and algorithms as in ``conv2d`` (device arrays in, device arrays out).
    """
    if is_device_array(x):
        return cuda.conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, algo=algo)
    xb, unbatched, p = _prepare(x, weight, stride, padding, dilation, groups, algo)
    gy = check_grad("grad_y", grad_y, p.y_shape[1:] if unbatched else p.y_shape, xb.dtype)
    gy = contiguous(gy[None] if unbatched else gy)
    if p.n == 0:
        gx, gw = np.zeros(p.x_shape, xb.dtype), np.zeros(weight.shape, xb.dtype)
    else:
        w = contiguous(weight)
        if algo == "auto":
            algo = _auto("backward", p, xb.dtype, lambda name: CONV2D_ALGORITHMS[name][1](gy, xb, w, p))
        gx, gw = _redo_if_nonfinite(algo, p, xb.dtype.itemsize, lambda name: CONV2D_ALGORITHMS[name][1](gy, xb, w, p))
    gb = gy.sum(axis=(0, 2, 3), dtype=np.float64).astype(xb.dtype)
    return (gx[0] if unbatched else gx), gw, gb
