"""Depthwise 2-D convolution (one input channel per group), forward and backward, in Numba.

Layouts (C-contiguous, one float dtype per call; the input is NOT padded: taps outside it are skipped):
- x, gx: (N, C, H, W) input and its gradient
- w, gw: (K, 1, R, S) weights and their gradient, K = C * m (m output channels per input channel)
- b:     (K,) bias
- y, gy: (N, K, OH, OW) output and its gradient

Output channel k reads input channel k // m. Tap (r, s) of output (oh, ow) reads input
(oh*sh - pt + r*dh, ow*sw - pl + s*dw); taps outside the input are skipped (zero padding).

``*_plane`` (the forward at any stride, the backward at stride 1): one input plane is copied, zero-padded,
into a per-job buffer of pitch Wp = pl + W + (pad right), so output (oh, ow) sits at flat position oh*Wp + ow
and tap (r, s) reads flat position oh*Wp + ow + r*dh*Wp + s*dw: each tap is ONE axpy (or dot) over the whole
plane, OH*Wp long, in L1/L2 (columns ow >= OW are computed and dropped, or hold zeros). With strides the
forward's copy is split into its stride phases first (``_phase_split_into``), which makes every tap a
unit-stride axpy again. The backward at other strides (``*_rows``): one axpy per tap and output row over
the columns [lo, hi) whose tap lies inside the input. The layer is memory-bound: every
input and output element crosses memory once per call. Work items: (n, c) input planes (forward, grad_x;
all m output channels of c), k (grad_w); disjoint writes.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _columns(s, W, OW, sw, pl, dw):
    """(off, lo, hi): tap column s of output ow reads input column ow*sw + off, inside the input for ow in
    [lo, hi)."""
    off = s * dw - pl
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = min(OW, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
    return off, lo, hi


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def backward_input_rows(gy, w, gx, sh, sw, pt, pl, dh, dw):
    """gx[n, c] = sum over its m output channels k and taps of w[k, 0, r, s] * gy[n, k] scattered back."""
    N, C, H, W = gx.shape
    K, _, R, S = w.shape
    OH, OW = gy.shape[2], gy.shape[3]
    m = K // C
    for job in prange(N * C):
        n = job // C
        c = job - n * C
        plane = gx[n, c]
        for i in range(H):
            for j in range(W):
                plane[i, j] = 0
        for k in range(c * m, c * m + m):
            for oh in range(OH):
                g = gy[n, k, oh]
                for r in range(R):
                    ih = oh * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    xr = plane[ih]
                    for s in range(S):
                        off, lo, hi = _columns(s, W, OW, sw, pl, dw)
                        wv = w[k, 0, r, s]
                        if sw == 1:
                            dst = xr[lo + off:hi + off]
                            src = g[lo:hi]
                            for j in range(hi - lo):
                                dst[j] += wv * src[j]
                        else:
                            for j in range(lo, hi):
                                xr[j * sw + off] += wv * g[j]


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract", "reassoc"})
def backward_weight_rows(gy, x, gw, sh, sw, pt, pl, dh, dw):
    """gw[k, 0, r, s] = sum over n, oh, ow of gy[n, k, oh, ow] * x[n, k // m, shifted] (reassoc: vector
    partial sums, float32 error ~1e-7 relative)."""
    N, C, H, W = x.shape
    K, _, R, S = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    m = K // C
    for k in prange(K):
        c = k // m
        acc = np.zeros(R * S, gw.dtype)
        for n in range(N):
            for oh in range(OH):
                g = gy[n, k, oh]
                for r in range(R):
                    ih = oh * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    xr = x[n, c, ih]
                    for s in range(S):
                        off, lo, hi = _columns(s, W, OW, sw, pl, dw)
                        total = acc[r * S + s]
                        if sw == 1:
                            src = xr[lo + off:hi + off]
                            gs = g[lo:hi]
                            for j in range(hi - lo):
                                total += gs[j] * src[j]
                        else:
                            for j in range(lo, hi):
                                total += g[j] * xr[j * sw + off]
                        acc[r * S + s] = total
        for t in range(R * S):
            gw[k, 0, t // S, t % S] = acc[t]


PARTS = 64  # work items per call of the plane kernels: each allocates its buffers once


@njit(cache=True, nogil=True)
def _pad_into(buf, src, H, W, pt, pl, Wp):
    """buf (flat, zeroed here) <- src (H, W) with row ih at (pt + ih)*Wp + pl."""
    buf[:] = 0
    for ih in range(H):
        row = buf[(pt + ih) * Wp + pl:(pt + ih) * Wp + pl + W]
        s = src[ih]
        for j in range(W):
            row[j] = s[j]


@njit(cache=True, nogil=True)
def _phase_split_into(buf, src, H, W, pt, pl, sh, sw, hq, wq):
    """buf (flat, zeroed here) <- src (H, W) zero-padded by (pt, pl) and split into its sh*sw stride phases:
    padded element (i, j) at ((i % sh)*sw + j % sw)*hq*wq + (i // sh)*wq + j // sw (with unit strides,
    _pad_into's layout at pitch wq). Loops over the destination: no division per row or element."""
    buf[:] = 0
    plane = hq * wq
    for pw in range(sw):
        j_lo = max(0, (pl - pw + sw - 1) // sw)               # first jq with input column jq*sw + pw - pl >= 0
        j_hi = min(wq, (W - 1 + pl - pw) // sw + 1)            # past the last one < W
        shift = pw - pl
        for ph in range(sh):
            phase = (ph * sw + pw) * plane
            for iq in range(hq):
                ih = iq * sh + ph - pt
                if ih < 0 or ih >= H:
                    continue
                s = src[ih]
                base = phase + iq * wq
                if sw == 1:
                    for jq in range(j_lo, j_hi):
                        buf[base + jq] = s[jq + shift]
                else:
                    for jq in range(j_lo, j_hi):
                        buf[base + jq] = s[jq * sw + shift]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _taps_into(acc, xp, w, offs, span):
    """acc[j] += sum over taps t of w[t] * xp[offs[t] + j] for j < span, four taps per pass over acc (one
    load and store of acc per four taps); a last pass with fewer taps skips the missing ones."""
    taps = offs.size
    for t in range(0, taps - 3, 4):
        w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
        x0 = xp[offs[t]:offs[t] + span]
        x1 = xp[offs[t + 1]:offs[t + 1] + span]
        x2 = xp[offs[t + 2]:offs[t + 2] + span]
        x3 = xp[offs[t + 3]:offs[t + 3] + span]
        for j in range(span):
            acc[j] += w0 * x0[j] + w1 * x1[j] + w2 * x2[j] + w3 * x3[j]
    for t in range(taps - taps % 4, taps):
        wt = w[t]
        xt = xp[offs[t]:offs[t] + span]
        for j in range(span):
            acc[j] += wt * xt[j]


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def forward_plane(x, w, b, y, pt, pl, pr, pb, sh, sw, dh, dw):
    """Forward, any stride: per (n, c) one padded, phase-split copy of the plane (phases hq x wq, hq =
    ceil(Hp/sh), wq = ceil(Wp/sw)), so that output (oh, ow) sits at oh*wq + ow and tap (r, s) reads
    phase (r*dh % sh, s*dw % sw) at that position + (r*dh // sh)*wq + s*dw // sw; per output channel k of c
    the taps, fused four at a time, over the OH*wq positions (columns ow >= OW computed and dropped)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    OH, OW = y.shape[2], y.shape[3]
    m = K // C
    hq, wq = (pt + H + pb + sh - 1) // sh, (pl + W + pr + sw - 1) // sw
    span = OH * wq
    offs = np.empty(R * S, np.int64)
    for r in range(R):
        for s in range(S):
            a, e = r * dh, s * dw
            offs[r * S + s] = ((a % sh) * sw + e % sw) * hq * wq + (a // sh) * wq + e // sw
    wf = w.reshape(K, R * S)
    jobs = N * C
    parts = min(PARTS, jobs)
    for part in prange(parts):
        xp = np.empty(sh * sw * hq * wq + (S - 1) * dw // sw + 1, x.dtype)
        acc = np.empty(span, y.dtype)
        for job in range(part * jobs // parts, (part + 1) * jobs // parts):
            n = job // C
            c = job - n * C
            _phase_split_into(xp, x[n, c], H, W, pt, pl, sh, sw, hq, wq)
            for k in range(c * m, c * m + m):
                bias = b[k]
                for j in range(span):
                    acc[j] = bias
                _taps_into(acc, xp, wf[k], offs, span)
                for oh in range(OH):
                    dst = y[n, k, oh]
                    for j in range(OW):
                        dst[j] = acc[oh * wq + j]


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def backward_input_plane(gy, w, gx, pt, pl, pr, pb, dh, dw):
    """Stride-1 grad_x: gy placed at pitch Wp (zeros past OW), each tap one axpy into a padded gradient plane,
    whose interior is gx."""
    N, C, H, W = gx.shape
    K, _, R, S = w.shape
    OH, OW = gy.shape[2], gy.shape[3]
    m = K // C
    Hp, Wp = pt + H + pb, pl + W + pr
    span = OH * Wp
    jobs = N * C
    parts = min(PARTS, jobs)
    for part in prange(parts):
        gxp = np.empty(Hp * Wp + dw * (S - 1), gx.dtype)
        g = np.zeros(span, gx.dtype)
        for job in range(part * jobs // parts, (part + 1) * jobs // parts):
            n = job // C
            c = job - n * C
            gxp[:] = 0
            for k in range(c * m, c * m + m):
                for oh in range(OH):
                    src = gy[n, k, oh]
                    for j in range(OW):
                        g[oh * Wp + j] = src[j]
                for r in range(R):
                    for s in range(S):
                        wv = w[k, 0, r, s]
                        dst = gxp[r * dh * Wp + s * dw:r * dh * Wp + s * dw + span]
                        for j in range(span):
                            dst[j] += wv * g[j]
            for ih in range(H):
                row = gx[n, c, ih]
                for j in range(W):
                    row[j] = gxp[(pt + ih) * Wp + pl + j]


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract", "reassoc"})
def backward_weight_plane(gy, x, gw, pt, pl, pr, pb, dh, dw):
    """Stride-1 grad_w: per k and image, gy at pitch Wp (zeros past OW) dotted with the padded plane at each
    tap's offset (reassoc: vector partial sums, float32 error ~1e-7 relative)."""
    N, C, H, W = x.shape
    K, _, R, S = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    m = K // C
    Hp, Wp = pt + H + pb, pl + W + pr
    span = OH * Wp
    for k in prange(K):
        c = k // m
        acc = np.zeros(R * S, gw.dtype)
        g = np.zeros(span, gw.dtype)
        xp = np.empty(Hp * Wp + dw * (S - 1), x.dtype)
        for n in range(N):
            _pad_into(xp, x[n, c], H, W, pt, pl, Wp)
            for oh in range(OH):
                src = gy[n, k, oh]
                for j in range(OW):
                    g[oh * Wp + j] = src[j]
            for r in range(R):
                for s in range(S):
                    src = xp[r * dh * Wp + s * dw:r * dh * Wp + s * dw + span]
                    total = acc[r * S + s]
                    for j in range(span):
                        total += g[j] * src[j]
                    acc[r * S + s] = total
        for t in range(R * S):
            gw[k, 0, t // S, t % S] = acc[t]
