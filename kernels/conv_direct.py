"""Direct 2-D convolution (cross-correlation), forward and backward, in Numba.

Layouts (all C-contiguous, one float dtype per call, the input already zero-padded by the caller):
- xp, gxp: (N, C, Hp, Wp) padded input and its gradient
- w, gw:   (K, C // groups, R, S) weights and their gradient
- b:       (K,) bias
- y, gy:   (N, K, OH, OW) output and its gradient, OH = (Hp - dh*(R-1) - 1)//sh + 1, OW likewise

Output channel k belongs to group g = k // (K // groups) and reads input channels
g*Cg .. g*Cg + Cg - 1, Cg = C // groups. Kernels trust their inputs and compile on first call.

Unit strides (the fast path): the Cg padded planes of a group are one flat row, output
(oh, ow) sits at flat position p = oh*Wp + ow and tap (c, r, s) reads flat position
p + c*Hp*Wp + r*dh*Wp + s*dw, so each tap is one contiguous axpy along the row, cut into
chunks of CHUNK elements (an L1-resident accumulator), four taps fused per pass. Positions with
ow >= OW are computed and dropped (forward) or hold zeros (gy widened to pitch Wp, backward).
When a plane's row is shorter than SHORT_ROW the batch is interleaved innermost (element
(p, n) at p*N + n, offsets times N) so the rows are N times longer. Other strides: row loops.
"""

import numpy as np
from numba import njit, prange

CHUNK = 2048  # flat elements (positions x interleaved images) per work item; stays in L1
SHORT_ROW = 512  # flat rows shorter than this are interleaved across the batch
WEIGHT_PARTS = 8  # weight-gradient work items (ranges of k): fewer items re-read xp fewer times


@njit(cache=True, nogil=True, fastmath={"contract"})
def _accumulate_taps(acc, src, weights, offsets, length):
    """acc[j] += sum_t weights[t] * src[offsets[t] + j] for j < length, four taps per pass.

    A last pass with fewer than four taps repeats the last tap with weight zero."""
    last = weights.shape[0] - 1
    zero = acc.dtype.type(0)
    for t in range(0, last + 1, 4):
        i1, i2, i3 = min(t + 1, last), min(t + 2, last), min(t + 3, last)
        w0 = weights[t]
        w1 = weights[i1] if t + 1 <= last else zero
        w2 = weights[i2] if t + 2 <= last else zero
        w3 = weights[i3] if t + 3 <= last else zero
        x0 = src[offsets[t]:offsets[t] + length]
        x1 = src[offsets[i1]:offsets[i1] + length]
        x2 = src[offsets[i2]:offsets[i2] + length]
        x3 = src[offsets[i3]:offsets[i3] + length]
        for j in range(length):
            total = acc[j] + w0 * x0[j]
            total += w1 * x1[j]
            total += w2 * x2[j]
            acc[j] = total + w3 * x3[j]


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _accumulate_dots(out, row, src, offsets, length):
    """out[t] += sum_j row[j] * src[offsets[t] + j] for j < length, four taps per pass.

    reassoc lets LLVM keep vector partial sums (float32 error stays ~1e-7 relative).
    A last pass with fewer than four taps repeats the last tap and drops its sums."""
    last = out.shape[0] - 1
    for t in range(0, last + 1, 4):
        i1, i2, i3 = min(t + 1, last), min(t + 2, last), min(t + 3, last)
        x0 = src[offsets[t]:offsets[t] + length]
        x1 = src[offsets[i1]:offsets[i1] + length]
        x2 = src[offsets[i2]:offsets[i2] + length]
        x3 = src[offsets[i3]:offsets[i3] + length]
        sum0, sum1, sum2, sum3 = out[t], out[i1], out[i2], out[i3]
        for j in range(length):
            g = row[j]
            sum0 += g * x0[j]
            sum1 += g * x1[j]
            sum2 += g * x2[j]
            sum3 += g * x3[j]
        out[t] = sum0
        if t + 1 <= last:
            out[i1] = sum1
        if t + 2 <= last:
            out[i2] = sum2
        if t + 3 <= last:
            out[i3] = sum3


@njit(cache=True, nogil=True)
def _tap_offsets(channels, channel_pitch, R, S, row_pitch, dh, dw, scale):
    """Flat offsets (c*channel_pitch + r*dh*row_pitch + s*dw) * scale in (c, r, s) order."""
    offsets = np.empty(channels * R * S, dtype=np.int64)
    for c in range(channels):
        for r in range(R):
            for s in range(S):
                offset = c * channel_pitch + r * dh * row_pitch + s * dw
                offsets[(c * R + r) * S + s] = offset * scale
    return offsets


@njit(cache=True, nogil=True)
def _images_per_block(N, positions):
    """Interleave the whole batch when a plane's flat row is too short to vectorise well."""
    return N if positions < SHORT_ROW else 1


@njit(cache=True, nogil=True, parallel=True)
def _interleave(a, nb, Wp, lead, pitch):
    """a (N, CH, rows, cols) -> zeros (N // nb, CH * pitch * nb), images interleaved innermost:
    [block, (ch*pitch + lead + i*Wp + j)*nb + image] = a[block*nb + image, ch, i, j]."""
    N, CH, rows, cols = a.shape
    out = np.zeros((N // nb, CH * pitch * nb), dtype=a.dtype)
    for item in prange(N // nb * CH * rows):
        block = item // (CH * rows)
        ch = (item // rows) % CH
        i = item % rows
        row_start = (ch * pitch + lead + i * Wp) * nb
        if nb == 1:
            for j in range(cols):
                out[block, row_start + j] = a[block, ch, i, j]
            continue
        for image in range(nb):
            for j in range(cols):
                out[block, row_start + j * nb + image] = a[block * nb + image, ch, i, j]
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def forward_padded(xp, w, b, y, sh, sw, dh, dw, groups):
    """y[n,k,oh,ow] = b[k] + sum_{c,r,s} w[k,c,r,s] * xp[n, g*Cg+c, oh*sh+r*dh, ow*sw+s*dw].

    xp (N, C, Hp, Wp) padded input, w (K, Cg, R, S), b (K,), y (N, K, OH, OW) overwritten.
    Unit strides: parallel over (image block, chunk of flat positions, k); otherwise parallel
    over the N*K output planes, row by row.
    """
    N, C, Hp, Wp = xp.shape
    K, Cg, R, S = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Kg = K // groups
    plane = Hp * Wp
    w_rows = w.reshape(K, Cg * R * S)
    if sh == 1 and sw == 1:
        positions = (OH - 1) * Wp + OW
        nb = _images_per_block(N, positions)
        x_blocks = xp.reshape(N, C * plane) if nb == 1 else _interleave(xp, nb, Wp, 0, plane)
        offsets = _tap_offsets(Cg, plane, R, S, Wp, dh, dw, nb)
        chunks = (positions * nb + CHUNK - 1) // CHUNK
        span = (positions + chunks - 1) // chunks  # positions per work item, equal shares
        for item in prange(N // nb * chunks * K):
            block = item // (chunks * K)
            p_start = (item // K) % chunks * span
            p_stop = min(p_start + span, positions)
            k = item % K
            acc = np.empty((p_stop - p_start) * nb, dtype=y.dtype)
            for q in range(acc.shape[0]):
                acc[q] = b[k]
            src = x_blocks[block, ((k // Kg) * Cg * plane + p_start) * nb:]
            _accumulate_taps(acc, src, w_rows[k], offsets, acc.shape[0])
            for oh in range(p_start // Wp, (p_stop - 1) // Wp + 1):
                ow_start = max(p_start - oh * Wp, 0)
                ow_stop = min(p_stop - oh * Wp, OW)
                for image in range(nb):
                    for ow in range(ow_start, ow_stop):
                        n = block * nb + image
                        y[n, k, oh, ow] = acc[(oh * Wp + ow - p_start) * nb + image]
        return
    x_rows = xp.reshape(N, C * plane)
    offsets = _tap_offsets(Cg, plane, R, S, Wp, dh, dw, 1)
    for item in prange(N * K):
        n = item // K
        k = item % K
        for oh in range(OH):
            y_row = y[n, k, oh]
            for ow in range(OW):
                y_row[ow] = b[k]
            src = x_rows[n, (k // Kg) * Cg * plane + oh * sh * Wp:]
            if sw == 1:
                _accumulate_taps(y_row, src, w_rows[k], offsets, OW)
                continue
            for t in range(Cg * R * S):
                weight = w_rows[k, t]
                for ow in range(OW):
                    y_row[ow] += weight * src[offsets[t] + ow * sw]


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def backward_input_padded(gy, w, gxp, sh, sw, dh, dw, groups):
    """gxp[n, g*Cg+c, ih, iw] = sum of w[k,c,r,s] * gy[n,k,oh,ow] over k in group g and all
    (oh, ow, r, s) with ih = oh*sh + r*dh, iw = ow*sw + s*dw.

    gy (N, K, OH, OW), w (K, Cg, R, S), gxp (N, C, Hp, Wp) overwritten: the gradient with
    respect to the padded input. Unit strides: gather from gy widened to pitch Wp after `lead`
    zeros, with flipped weights, parallel over (image block, chunk of positions, c).
    Otherwise scatter, parallel over the N*C input planes (one writer each).
    """
    N, C, Hp, Wp = gxp.shape
    K, Cg, R, S = w.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Kg = K // groups
    plane = Hp * Wp
    gx_planes = gxp.reshape(N, C, plane)
    if sh == 1 and sw == 1:
        # w_flipped[g*Cg + c, (kk, r, s)] = w[g*Kg + kk, c, R-1-r, S-1-s]
        w_flipped = np.empty((C, Kg * R * S), dtype=w.dtype)
        for channel in range(C):
            g = channel // Cg
            for kk in range(Kg):
                for r in range(R):
                    for s in range(S):
                        weight = w[g * Kg + kk, channel - g * Cg, R - 1 - r, S - 1 - s]
                        w_flipped[channel, (kk * R + r) * S + s] = weight
        lead = (R - 1) * dh * Wp + (S - 1) * dw
        nb = _images_per_block(N, plane)
        gy_blocks = _interleave(gy, nb, Wp, lead, plane + lead)
        offsets = _tap_offsets(Kg, plane + lead, R, S, Wp, dh, dw, nb)
        chunks = (plane * nb + CHUNK - 1) // CHUNK
        span = (plane + chunks - 1) // chunks  # positions per work item, equal shares
        for item in prange(N // nb * chunks * C):
            block = item // (chunks * C)
            p_start = (item // C) % chunks * span
            p_stop = min(p_start + span, plane)
            channel = item % C
            acc = np.empty((p_stop - p_start) * nb, dtype=gxp.dtype)
            for q in range(acc.shape[0]):
                acc[q] = 0.0
            src = gy_blocks[block, ((channel // Cg) * Kg * (plane + lead) + p_start) * nb:]
            _accumulate_taps(acc, src, w_flipped[channel], offsets, acc.shape[0])
            for image in range(nb):
                for p in range(p_start, p_stop):
                    n = block * nb + image
                    gx_planes[n, channel, p] = acc[(p - p_start) * nb + image]
        return
    for item in prange(N * C):
        n = item // C
        channel = item % C
        g = channel // Cg
        gx = gx_planes[n, channel]
        for i in range(plane):
            gx[i] = 0.0
        for kk in range(Kg):
            k = g * Kg + kk
            for r in range(R):
                for s in range(S):
                    weight = w[k, channel - g * Cg, r, s]
                    for oh in range(OH):
                        base = (oh * sh + r * dh) * Wp + s * dw
                        for ow in range(OW):
                            gx[base + ow * sw] += weight * gy[n, k, oh, ow]


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def backward_weight_padded(gy, xp, gw, sh, sw, dh, dw, groups):
    """gw[k,c,r,s] = sum_{n,oh,ow} gy[n,k,oh,ow] * xp[n, g*Cg+c, oh*sh+r*dh, ow*sw+s*dw].

    gy (N, K, OH, OW), xp (N, C, Hp, Wp) padded input, gw (K, Cg, R, S) overwritten.
    Parallel over WEIGHT_PARTS contiguous ranges of output channels k; each range sums over the
    whole batch itself (no races), chunk by chunk so the input chunk stays in cache across k.
    """
    N, C, Hp, Wp = xp.shape
    K, Cg, R, S = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Kg = K // groups
    plane = Hp * Wp
    gw_rows = gw.reshape(K, Cg * R * S)
    for k in range(K):
        for t in range(Cg * R * S):
            gw_rows[k, t] = 0.0
    unit_stride = sh == 1 and sw == 1
    positions = (OH - 1) * Wp + OW
    nb = _images_per_block(N, positions) if unit_stride else 1
    if unit_stride:
        x_blocks = xp.reshape(N, C * plane) if nb == 1 else _interleave(xp, nb, Wp, 0, plane)
        gy_blocks = _interleave(gy, nb, Wp, 0, positions)
        offsets = _tap_offsets(Cg, plane, R, S, Wp, dh, dw, nb)
    else:
        x_blocks = xp.reshape(N, C * plane)
        gy_blocks = gy.reshape(N, K * OH * OW)
        offsets = _tap_offsets(Cg, plane, R, S, Wp, dh, dw, 1)
    parts = min(K, WEIGHT_PARTS)
    for part in prange(parts):
        k_start = part * K // parts
        k_stop = (part + 1) * K // parts
        for block in range(N // nb):
            if unit_stride:
                for q_start in range(0, positions * nb, CHUNK):
                    length = min(CHUNK, positions * nb - q_start)
                    for k in range(k_start, k_stop):
                        gy_row = gy_blocks[block, k * positions * nb + q_start:]
                        src = x_blocks[block, (k // Kg) * Cg * plane * nb + q_start:]
                        _accumulate_dots(gw_rows[k], gy_row, src, offsets, length)
                continue
            for k in range(k_start, k_stop):
                out = gw_rows[k]
                for oh in range(OH):
                    gy_row = gy_blocks[block, (k * OH + oh) * OW:]
                    src = x_blocks[block, (k // Kg) * Cg * plane + oh * sh * Wp:]
                    if sw == 1:
                        _accumulate_dots(out, gy_row, src, offsets, OW)
                        continue
                    for t in range(Cg * R * S):
                        total = out[t]
                        for ow in range(OW):
                            total += gy_row[ow] * src[offsets[t] + ow * sw]
                        out[t] = total
