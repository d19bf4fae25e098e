"""2-D convolution kernels on the GPU (numba.cuda), NCHW.

x, gx: (N, C, H, W); w, gw: (K, C/groups, R, S); y, gy: (N, K, OH, OW); b: (K,);
col: (C*R*S, nb*OH*OW), row (c*R + r)*S + s, column (i*OH + oh)*OW + ow for image n0 + i;
out: (K, nb*OH*OW), the GEMM layout, column i*OH*OW + p for image n0 + i.
All arrays are C-contiguous device arrays of one dtype (float32 or float64); integer
arguments are host ints. Padding is implicit: the input position of output (oh, ow)
and tap (r, s) is h = oh*sh - pt + r*dh, w = ow*sw - pl + s*dw, and positions outside
[0, H) x [0, W) read as zero (pt/pl are the top/left pads; bottom/right are implied by
OH/OW). Output channel k belongs to group g = k // (K/groups), which reads input
channels g*C/groups .. (g+1)*C/groups - 1.

Launchers compute the grid, launch on the default stream asynchronously and return
None; every kernel writes each output element from one thread (no atomics), with the
fastest-varying thread index on the last (contiguous) axis. Kernels that accumulate
are built per dtype (their accumulators are of the array dtype), compile on first
launch and are cached on disk.
"""
import functools

import numba
import numpy as np
from numba import cuda

from .cuda_elementwise import launch

KPT = 4            # output channels per thread in direct_forward: each input load feeds KPT FMAs


@functools.cache
def _forward_kernel(dtype):
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit(cache=True)
    def forward(x, w, b, y, sh, sw, pt, pl, dh, dw, groups):
        N, C, H, W = x.shape
        K, CG, R, S = w.shape
        OH, OW = y.shape[2], y.shape[3]
        KG = K // groups
        kblocks = (KG + KPT - 1) // KPT    # blocks of KPT output channels per group
        P = OH * OW
        t = cuda.grid(1)                   # over (n, g, kblock, oh, ow)
        if t >= N * groups * kblocks * P:
            return
        p = t % P
        q = t // P
        n = q // (groups * kblocks)
        g = (q // kblocks) % groups
        k0 = g * KG + (q % kblocks) * KPT
        nk = min(KPT, (g + 1) * KG - k0)
        oh = p // OW
        ow = p % OW
        acc = cuda.local.array(KPT, dt)
        for j in range(KPT):
            acc[j] = 0
        for c in range(CG):
            for r in range(R):
                h = oh * sh - pt + r * dh
                if 0 <= h < H:
                    for s in range(S):
                        wi = ow * sw - pl + s * dw
                        if 0 <= wi < W:
                            xv = x[n, g * CG + c, h, wi]
                            for j in range(KPT):
                                if j < nk:
                                    acc[j] = cuda.fma(w[k0 + j, c, r, s], xv, acc[j])
        for j in range(KPT):
            if j < nk:
                y[n, k0 + j, oh, ow] = acc[j] + b[k0 + j]

    return forward


def direct_forward(x, w, b, y, sh, sw, pt, pl, dh, dw, groups):
    """y (N, K, OH, OW) = conv2d(x, w) + b[k], overwriting y; b is a (K,) device array (zeros for no bias).

    One thread per (image, KPT output channels of one group, output pixel), pixel fastest.
    """
    N, K, OH, OW = y.shape
    kg = K // groups
    total = N * groups * ((kg + KPT - 1) // KPT) * OH * OW
    if total == 0:
        return
    _forward_kernel(y.dtype)[launch(total, None)](x, w, b, y, sh, sw, pt, pl, dh, dw, groups)


@functools.cache
def _backward_input_kernel(dtype):
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit(cache=True)
    def backward_input(gy, w, gx, sh, sw, pt, pl, dh, dw, groups):
        N, C, H, W = gx.shape
        K, CG, R, S = w.shape
        OH, OW = gy.shape[2], gy.shape[3]
        KG = K // groups
        t = cuda.grid(1)                   # over (n, c, h, w)
        if t >= N * C * H * W:
            return
        wi = t % W
        h = (t // W) % H
        c = (t // (H * W)) % C
        n = t // (C * H * W)
        g = c // CG
        cg = c - g * CG
        acc = dt(0)
        for r in range(R):
            hs = h + pt - r * dh           # = oh * sh for the output row that reads h through tap r
            if hs >= 0 and hs % sh == 0 and hs // sh < OH:
                oh = hs // sh
                for s in range(S):
                    ws = wi + pl - s * dw
                    if ws >= 0 and ws % sw == 0 and ws // sw < OW:
                        ow = ws // sw
                        for k in range(g * KG, (g + 1) * KG):
                            acc = cuda.fma(gy[n, k, oh, ow], w[k, cg, r, s], acc)
        gx[n, c, h, wi] = acc

    return backward_input


def direct_backward_input(gy, w, gx, sh, sw, pt, pl, dh, dw, groups):
    """gx (N, C, H, W) = d loss / d x for gy = d loss / d y (N, K, OH, OW), overwriting gx.

    Gather form: one thread per gx element sums gy[n, k, oh, ow] * w[k, c', r, s] over the
    (k, r, s) whose output position (oh, ow) reads it (stride handled by divisibility).
    """
    total = gx.size
    if total == 0:
        return
    _backward_input_kernel(gx.dtype)[launch(total, None)](gy, w, gx, sh, sw, pt, pl, dh, dw, groups)


@cuda.jit(cache=True)
def _backward_weight(gy, x, gw, sh, sw, pt, pl, dh, dw, groups):
    N, C, H, W = x.shape
    K, CG, R, S = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    e = cuda.grid(1)                       # flat index of gw[k, c, r, s]
    if e >= K * CG * R * S:
        return
    s = e % S
    r = (e // S) % R
    c = (e // (R * S)) % CG
    k = e // (CG * R * S)
    ci = (k // (K // groups)) * CG + c
    acc = gw.dtype.type(0)
    for n in range(N):
        for oh in range(OH):
            h = oh * sh - pt + r * dh
            if 0 <= h < H:
                for ow in range(OW):
                    wi = ow * sw - pl + s * dw
                    if 0 <= wi < W:
                        acc = cuda.fma(gy[n, k, oh, ow], x[n, ci, h, wi], acc)
    gw[k, c, r, s] = acc


def direct_backward_weight(gy, x, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw (K, C/groups, R, S) = d loss / d w, overwriting gw:

    gw[k, c, r, s] = sum over n, oh, ow of gy[n, k, oh, ow] * x[n, g*C/groups + c, h, w].
    One thread per gw element looping over N*OH*OW: the simple algorithm, parallel only over the
    weights (im2col + gemm, which ``auto`` picks, is the fast one).
    """
    if gw.size:
        _backward_weight[launch(gw.size, None)](gy, x, gw, sh, sw, pt, pl, dh, dw, groups)


@cuda.jit(cache=True)
def _im2col(x, col, n0, pt, pl, sh, sw, dh, dw, R, S, OH, OW):
    H, W = x.shape[2], x.shape[3]
    rows, ncol = col.shape
    P = OH * OW
    t = cuda.grid(1)                       # over (row, column) of col
    if t >= rows * ncol:
        return
    row = t // ncol
    q = t % ncol
    i = q // P
    oh = (q % P) // OW
    ow = q % OW
    c = row // (R * S)
    r = (row // S) % R
    s = row % S
    h = oh * sh - pt + r * dh
    w = ow * sw - pl + s * dw
    if 0 <= h < H and 0 <= w < W:
        col[row, q] = x[n0 + i, c, h, w]
    else:
        col[row, q] = 0


def im2col(x, col, n0, pt, pl, sh, sw, dh, dw, R, S, OH, OW):
    """Unfold images n0 .. n0+nb-1 of x (N, C, H, W) into col (C*R*S, nb*OH*OW), overwriting col.

    nb = col.shape[1] // (OH*OW). col[(c*R + r)*S + s, (i*OH + oh)*OW + ow] =
    x[n0+i, c, oh*sh - pt + r*dh, ow*sw - pl + s*dw], or 0 outside [0, H) x [0, W).
    Same layout and arguments as the CPU ``fastconv.kernels.im2col.im2col``.
    """
    total = col.size
    if total == 0:
        return
    _im2col[launch(total, None)](x, col, n0, pt, pl, sh, sw, dh, dw, R, S, OH, OW)


@functools.cache
def _col2im_kernel(dtype):
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit(cache=True)
    def col2im_kernel(col, gx, n0, pt, pl, sh, sw, dh, dw, R, S, OH, OW):
        C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
        nb = col.shape[1] // (OH * OW)
        t = cuda.grid(1)                   # over (i, c, h, w) of images n0 .. n0+nb-1
        if t >= nb * C * H * W:
            return
        wi = t % W
        h = (t // W) % H
        c = (t // (H * W)) % C
        i = t // (C * H * W)
        acc = dt(0)
        for r in range(R):
            hs = h + pt - r * dh
            if hs >= 0 and hs % sh == 0 and hs // sh < OH:
                oh = hs // sh
                for s in range(S):
                    ws = wi + pl - s * dw
                    if ws >= 0 and ws % sw == 0 and ws // sw < OW:
                        acc += col[(c * R + r) * S + s, (i * OH + oh) * OW + ws // sw]
        gx[n0 + i, c, h, wi] = acc

    return col2im_kernel


def col2im(col, gx, n0, pt, pl, sh, sw, dh, dw, R, S, OH, OW):
    """Fold col (C*R*S, nb*OH*OW) into images n0 .. n0+nb-1 of gx (N, C, H, W), OVERWRITING them.

    The adjoint of im2col: gx[n0+i, c, h, w] = sum of the col entries that im2col reads from
    that position (entries of the padding are dropped). Unlike the CPU col2im, which adds into
    a zeroed gx, these images of gx are overwritten (gather form, no atomics); other images
    are untouched.
    """
    N, C, H, W = gx.shape
    P = OH * OW
    if P == 0:
        return
    total = (col.shape[1] // P) * C * H * W
    if total == 0:
        return
    _col2im_kernel(gx.dtype)[launch(total, None)](col, gx, n0, pt, pl, sh, sw, dh, dw, R, S, OH, OW)


@cuda.jit(cache=True)
def _kn_to_nchw(out, b, y, n0):
    K, NP = out.shape
    P = y.shape[2]
    t = cuda.grid(1)                       # over (k, i, p) = out's (row, column)
    if t >= K * NP:
        return
    k = t // NP
    q = t % NP
    y[n0 + q // P, k, q % P] = out[k, q] + b[k]


def kn_to_nchw(out, b, y, n0):
    """y[n0+i, k, p] = out[k, i*P + p] + b[k] for out (K, nb*P), y (N, K, OH, OW) or (N, K, P), P = OH*OW.

    b is a (K,) device array (zeros when there is no bias). Images outside n0 .. n0+nb-1 are untouched.
    """
    y3 = y.reshape(y.shape[0], y.shape[1], y.shape[2] * y.shape[3]) if y.ndim == 4 else y
    total = out.size
    if total == 0:
        return
    _kn_to_nchw[launch(total, None)](out, b, y3, n0)


@cuda.jit(cache=True)
def _nchw_to_kn(gy, out, n0):
    K, NP = out.shape
    P = gy.shape[2]
    t = cuda.grid(1)                       # over (k, i, p) = out's (row, column)
    if t >= K * NP:
        return
    k = t // NP
    q = t % NP
    out[k, q] = gy[n0 + q // P, k, q % P]


def nchw_to_kn(gy, out, n0):
    """out[k, i*P + p] = gy[n0+i, k, p] for gy (N, K, OH, OW) or (N, K, P), out (K, nb*P), nb = out.shape[1] // P."""
    gy3 = gy.reshape(gy.shape[0], gy.shape[1], gy.shape[2] * gy.shape[3]) if gy.ndim == 4 else gy
    total = out.size
    if total == 0:
        return
    _nchw_to_kn[launch(total, None)](gy3, out, n0)
