"""im2col / col2im for NCHW convolution (float32 and float64), GIL released, OpenMP over rows/channels
with `num_threads` threads (the caller passes Numba's count, so both kinds of kernel use the same).

x, gx: (N, C, H, W) C-contiguous, unpadded; padding is implicit (zeros).
col:   (C*R*S, nb*OH*OW) C-contiguous; row (c*R + r)*S + s, column (i*OH + oh)*OW + ow, image n0 + i.
Input position of a col entry: h = oh*sh - pt + r*dh, w = ow*sw - pl + s*dw.
"""
from cython cimport floating
from cython.parallel cimport prange


cdef inline Py_ssize_t _first(Py_ssize_t off, Py_ssize_t step, Py_ssize_t n) noexcept nogil:
    """Smallest o >= 0 with o*step + off >= 0, at most n."""
    cdef Py_ssize_t o = 0
    if off < 0:
        o = (-off + step - 1) // step
    return o if o < n else n


cdef inline Py_ssize_t _end(Py_ssize_t off, Py_ssize_t step, Py_ssize_t size, Py_ssize_t n) noexcept nogil:
    """One past the largest o < n with o*step + off < size (0 if none)."""
    cdef Py_ssize_t o
    if size - 1 - off < 0:
        return 0
    o = (size - 1 - off) // step + 1
    return o if o < n else n


cdef Py_ssize_t _check(Py_ssize_t N, Py_ssize_t C, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t n0,
                      Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t R, Py_ssize_t S, Py_ssize_t OH,
                      Py_ssize_t OW) except -1:
    """Guards against out-of-bounds memory access only; returns nb (0: nothing to do)."""
    if sh < 1 or sw < 1 or R < 0 or S < 0 or OH < 0 or OW < 0:
        raise ValueError("im2col: strides must be >= 1 and R, S, OH, OW >= 0")
    if rows != C * R * S:
        raise ValueError(f"im2col: col has {rows} rows, expected C*R*S = {C * R * S}")
    if OH * OW == 0:
        return 0
    if cols % (OH * OW) != 0:
        raise ValueError(f"im2col: col has {cols} columns, not a multiple of OH*OW = {OH * OW}")
    cdef Py_ssize_t nb = cols // (OH * OW)
    if nb and (n0 < 0 or n0 + nb > N):
        raise ValueError(f"im2col: images {n0}..{n0 + nb - 1} out of range for N = {N}")
    return nb


def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] col, Py_ssize_t n0,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
           Py_ssize_t R, Py_ssize_t S, Py_ssize_t OH, Py_ssize_t OW, int num_threads=1):
    """Unfold images n0 .. n0+nb-1 of x (N, C, H, W) into col (C*R*S, nb*OH*OW), overwriting col.

    nb = col.shape[1] // (OH*OW). col[(c*R + r)*S + s, (i*OH + oh)*OW + ow] =
    x[n0+i, c, oh*sh - pt + r*dh, ow*sw - pl + s*dw], or 0 where that position is outside
    [0, H) x [0, W). pt/pl are the top/left pads; bottom/right pads are implied by OH/OW.
    """
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t nb = _check(x.shape[0], C, col.shape[0], col.shape[1], n0, sh, sw, R, S, OH, OW)
    cdef Py_ssize_t P = OH * OW, rows = C * R * S, ncol = col.shape[1], HW = H * W
    cdef Py_ssize_t row, c, r, s, i, oh, ow, h0, w0, oh_lo, oh_hi, ow_lo, ow_hi
    cdef const floating *xb
    cdef floating *cb
    cdef const floating *src
    cdef floating *dst
    if nb == 0 or rows == 0:
        return
    if num_threads < 1:
        raise ValueError(f"im2col: num_threads must be >= 1, got {num_threads}")
    xb = &x[0, 0, 0, 0]
    cb = &col[0, 0]
    for row in prange(rows, nogil=True, schedule='static', num_threads=num_threads):
        c = row // (R * S)
        r = (row // S) % R
        s = row % S
        h0 = r * dh - pt
        w0 = s * dw - pl
        oh_lo = _first(h0, sh, OH)
        oh_hi = _end(h0, sh, H, OH)
        if oh_hi < oh_lo:
            oh_hi = oh_lo
        ow_lo = _first(w0, sw, OW)
        ow_hi = _end(w0, sw, W, OW)
        if ow_hi < ow_lo:
            ow_hi = ow_lo
        for i in range(nb):
            dst = cb + row * ncol + i * P
            for ow in range(oh_lo * OW):
                dst[ow] = 0
            for oh in range(oh_lo, oh_hi):
                dst = cb + row * ncol + i * P + oh * OW
                for ow in range(ow_lo):
                    dst[ow] = 0
                for ow in range(ow_hi, OW):
                    dst[ow] = 0
                dst = dst + ow_lo
                src = xb + ((n0 + i) * C + c) * HW + (oh * sh + h0) * W + ow_lo * sw + w0
                if sw == 1:
                    for ow in range(ow_hi - ow_lo):
                        dst[ow] = src[ow]
                else:
                    for ow in range(ow_hi - ow_lo):
                        dst[ow] = src[ow * sw]
            dst = cb + row * ncol + i * P + oh_hi * OW
            for ow in range((OH - oh_hi) * OW):
                dst[ow] = 0


def col2im(const floating[:, ::1] col, floating[:, :, :, ::1] gx, Py_ssize_t n0,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
           Py_ssize_t R, Py_ssize_t S, Py_ssize_t OH, Py_ssize_t OW, int num_threads=1):
    """Fold col (C*R*S, nb*OH*OW) back into images n0 .. n0+nb-1 of gx (N, C, H, W), accumulating.

    The adjoint of im2col: for every col entry whose position (oh*sh - pt + r*dh, ow*sw - pl + s*dw)
    lies inside [0, H) x [0, W), gx[n0+i, c, h, w] += col[(c*R + r)*S + s, (i*OH + oh)*OW + ow].
    Entries mapping into the padding are dropped. gx is not zeroed here.
    """
    cdef Py_ssize_t C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t nb = _check(gx.shape[0], C, col.shape[0], col.shape[1], n0, sh, sw, R, S, OH, OW)
    cdef Py_ssize_t P = OH * OW, ncol = col.shape[1], HW = H * W
    cdef Py_ssize_t row, c, r, s, i, oh, ow, h0, w0, oh_lo, oh_hi, ow_lo, ow_hi
    cdef floating *gb
    cdef const floating *cb
    cdef const floating *src
    cdef floating *dst
    if nb == 0 or C * R * S == 0:
        return
    if num_threads < 1:
        raise ValueError(f"col2im: num_threads must be >= 1, got {num_threads}")
    gb = &gx[0, 0, 0, 0]
    cb = &col[0, 0]
    for c in prange(C, nogil=True, schedule='static', num_threads=num_threads):
        for r in range(R):
            h0 = r * dh - pt
            oh_lo = _first(h0, sh, OH)
            oh_hi = _end(h0, sh, H, OH)
            for s in range(S):
                row = (c * R + r) * S + s
                w0 = s * dw - pl
                ow_lo = _first(w0, sw, OW)
                ow_hi = _end(w0, sw, W, OW)
                for i in range(nb):
                    for oh in range(oh_lo, oh_hi):
                        src = cb + row * ncol + i * P + oh * OW + ow_lo
                        dst = gb + ((n0 + i) * C + c) * HW + (oh * sh + h0) * W + ow_lo * sw + w0
                        if sw == 1:
                            for ow in range(ow_hi - ow_lo):
                                dst[ow] += src[ow]
                        else:
                            for ow in range(ow_hi - ow_lo):
                                dst[ow * sw] += src[ow]
