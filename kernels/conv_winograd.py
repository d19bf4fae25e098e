"""Winograd F(2x2, 3x3) convolution transforms (Lavin & Gray), in Numba.

For 3x3 kernels, stride 1, dilation 1. Each 4x4 patch d of the zero-padded input gives a
2x2 block of the output: Y = A^T [ sum_c (G g G^T) * (B^T d B) ] A, with * element-wise over
the 16 transform points. The sum over input channels is, for each of the 16 points, one matrix
product: ``products`` runs all of them in one parallel loop with fastconv.kernels.matmul's packing
routines and SIMD micro-kernel (the caller may instead call gemm_packed once per point), and
``grouped_products`` is a plain loop for grouped layers with few channels per group.

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Layouts (all C-contiguous, one float dtype per call; xi = 4*i + j names point (i, j)):
- x: (N, C, H, W) input, NOT padded: the kernels read zeros outside it. Padded row ih' (of
     H + top + bottom) is input row ih' - top; columns likewise with `left`.
- w: (K, Cg, 3, 3) weights, Cg = C // groups, Kg = K // groups; output channel k = g*Kg + kk
     of group g reads input channels g*Cg .. g*Cg + Cg - 1.
- u: (16, K, Cg) transformed weights, u[xi, k, c] = (G w[k, c] G^T)[i, j].
- v: (16, C, T) transformed input of a chunk of nb images starting at image n0:
     tile t = (n - n0) * TH * TW + th * TW + tw, v[xi, c, t] = (B^T d B)[i, j] where d is the
     4x4 patch of the padded plane (n, c) at rows 2*th .. 2*th+3, columns 2*tw .. 2*tw+3.
     TH = ceil(OH / 2), TW = ceil(OW / 2): the last tile row/column may be ragged (reads zeros
     past the padded input and drops the output row/column past OH/OW).
- m: (16, groups, T, Kg) per-point products, tile-major:
     m[xi, g] = v[xi, g*Cg:(g+1)*Cg].T @ u[xi, g*Kg:(g+1)*Kg].T   (T x Kg).
- b_pack: (16, groups, Cg * Kg_pad) op(b) = u[xi, g*Kg:(g+1)*Kg].T packed as fastconv.kernels.matmul's
     B panel (one panel of all Kg columns, padded to Kg_pad, a multiple of NR = 2 SIMD vectors):
     KC-deep slice pc at pc * Kg_pad, its sliver of columns j0.. at + j0 * kc, element (p, j) at
     + p * NR + j.
- b: (K,) bias (zeros for none); y: (N, K, OH, OW) output, tile t gives y[n, k, 2*th:2*th+2,
     2*tw:2*tw+2] clipped to (OH, OW).

Parallel loops run over WORK_BLOCKS contiguous blocks of work items (planes, tile rows) so
that each block allocates its scratch once. Kernels trust their inputs, compile on first
call and are cached on disk.
"""

import numpy as np
from numba import njit, prange

from .matmul import A_BLOCK_BYTES, KC, MR, VECTOR_BYTES, compute_block, pack_a_sliver, pack_b_sliver

WORK_BLOCKS = 64       # parallel work blocks per kernel call (each allocates its scratch once)
PRODUCT_TILES = 4096   # elements of grouped_products' accumulator block (Kg x tiles), L1-sized


@njit(cache=True, nogil=True)
def _store_points(blk, u, k):
    """u[xi, k, :] = blk[xi] for every point xi: one contiguous row per point (the points' K*Cg-apart rows
    written one at a time, not interleaved, which aliases in the caches)."""
    for xi in range(blk.shape[0]):
        row = u[xi, k]
        src_row = blk[xi]
        for c in range(row.shape[0]):
            row[c] = src_row[c]


@njit(cache=True, nogil=True)
def _load_plane(x, padded, item, C, n0, tiles, top, left):
    """Input transform work item `item` = (image n0 + item // C, channel item % C): its plane copied into the
    interior of the zero-bordered scratch, padded[top + ih, left + iw] = x[n, c, ih, iw]; returns (c, the
    item's first tile in v)."""
    local, c = item // C, item % C
    plane = x[n0 + local, c]
    H, W = plane.shape
    for ih in range(H):
        dst = padded[top + ih, left:left + W]
        src = plane[ih]
        for iw in range(W):
            dst[iw] = src[iw]
    return c, local * tiles


@njit(cache=True, nogil=True)
def filter_transform(w, u):
    """u[xi, k, c] = (G w[k, c] G^T)[i, j], computed in float64 and rounded once to u's dtype.

    Serial (weights are small: 0.8 ms for 256 x 256 x 3 x 3; a parallel version compiled 3 s
    longer for 0.4 ms). Per k, the 16 values of each c go to a (16, Cg) scratch first, then to
    u one contiguous row per point (16 interleaved streams K*Cg apart alias in the caches)."""
    K, Cg = w.shape[0], w.shape[1]
    rows = w.reshape(K, Cg * 9)
    blk = np.empty((16, Cg), dtype=u.dtype)
    gg = np.empty((4, 3), dtype=np.float64)  # G g
    for k in range(K):
        src = rows[k]
        for c in range(Cg):
            o = 9 * c
            for col in range(3):
                g0 = np.float64(src[o + col])
                g1 = np.float64(src[o + 3 + col])
                g2 = np.float64(src[o + 6 + col])
                gg[0, col] = g0
                gg[1, col] = 0.5 * (g0 + g1 + g2)
                gg[2, col] = 0.5 * (g0 - g1 + g2)
                gg[3, col] = g2
            for i in range(4):  # row i of (G g) G^T
                t0, t1, t2 = gg[i, 0], gg[i, 1], gg[i, 2]
                blk[4 * i, c] = t0
                blk[4 * i + 1, c] = 0.5 * (t0 + t1 + t2)
                blk[4 * i + 2, c] = 0.5 * (t0 - t1 + t2)
                blk[4 * i + 3, c] = t2
        _store_points(blk, u, k)


@njit(cache=True, nogil=True)
def _input_geometry(x, v, TH, TW):
    """(C, tiles per image, input planes of the chunk, parallel work blocks) of an input transform: its work
    items are the chunk's (image, channel) planes."""
    C, tiles = x.shape[1], TH * TW
    items = v.shape[2] // tiles * C
    return C, tiles, items, min(items, WORK_BLOCKS)


@njit(cache=True, nogil=True, parallel=True)
def input_transform(x, v, n0, top, left, TH, TW):
    """v[:, :, :] = B^T d B for every tile of images n0 .. n0 + nb - 1, nb = v.shape[2] // (TH*TW).

    Parallel over the nb*C input planes. Each plane is copied into a zero-bordered scratch of
    (2*TH + 2) x (2*TW + 2) (the padding, and the extra row/column that ragged last tiles read,
    stay zero: only the interior is ever written); per tile row its four rows are combined
    down the columns (B^T d, vectorised along the row), then across each tile's four columns
    (d' B, vectorised along the tiles: stride-2 loads).
    """
    C, tiles, items, blocks = _input_geometry(x, v, TH, TW)
    rows_p, cols_p = 2 * TH + 2, 2 * TW + 2  # >= the padded input's H + top + bottom, W + left + right
    for block in prange(blocks):
        padded = np.zeros((rows_p, cols_p), dtype=v.dtype)
        comb = np.empty((4, cols_p), dtype=v.dtype)
        c0, c1, c2, c3 = comb[0], comb[1], comb[2], comb[3]
        for item in range(block * items // blocks, (block + 1) * items // blocks):
            c, base = _load_plane(x, padded, item, C, n0, tiles, top, left)
            for th in range(TH):
                d0, d1, d2, d3 = padded[2 * th], padded[2 * th + 1], padded[2 * th + 2], padded[2 * th + 3]
                for j in range(cols_p):
                    x1 = d1[j]
                    x2 = d2[j]
                    c0[j] = d0[j] - x2
                    c1[j] = x1 + x2
                    c2[j] = x2 - x1
                    c3[j] = x1 - d3[j]
                t0 = base + th * TW
                for i in range(4):
                    e = comb[i]
                    out0 = v[4 * i, c, t0:t0 + TW]
                    out1 = v[4 * i + 1, c, t0:t0 + TW]
                    out2 = v[4 * i + 2, c, t0:t0 + TW]
                    out3 = v[4 * i + 3, c, t0:t0 + TW]
                    for tw in range(TW):
                        a0 = e[2 * tw]
                        a1 = e[2 * tw + 1]
                        a2 = e[2 * tw + 2]
                        a3 = e[2 * tw + 3]
                        out0[tw] = a0 - a2
                        out1[tw] = a1 + a2
                        out2[tw] = a2 - a1
                        out3[tw] = a1 - a3


@njit(cache=True, nogil=True, parallel=True)
def pack_transformed_filters(u, b_pack):
    """b_pack[xi, g] = u[xi, g*Kg:(g+1)*Kg].T (Cg x Kg) in gemm's packed-B layout, for every point xi.

    groups = b_pack.shape[1]; parallel over the (xi, g, KC slice, NR sliver) slivers."""
    groups = b_pack.shape[1]
    K, Cg = u.shape[1], u.shape[2]
    Kg = K // groups
    nr = 2 * (VECTOR_BYTES // u.itemsize)
    slivers = (Kg + nr - 1) // nr
    kg_pad = slivers * nr
    slices = (Cg + KC - 1) // KC
    for item in prange(u.shape[0] * groups * slices * slivers):
        s = item % slivers
        pc = item // slivers % slices * KC
        g = item // (slivers * slices) % groups
        xi = item // (slivers * slices * groups)
        kc = min(KC, Cg - pc)
        pack_b_sliver(u[xi, g * Kg:(g + 1) * Kg], True, pc, kc, s * nr, min(nr, Kg - s * nr),
                      b_pack[xi, g], pc * kg_pad + s * nr * kc)


@njit(cache=True, nogil=True, parallel=True)
def products(v, b_pack, m):
    """m[xi, g] = v[xi, g*Cg:(g+1)*Cg].T @ u[xi, g*Kg:(g+1)*Kg].T for all points (16 or 36) and groups,
    in ONE parallel loop, with fastconv's packed SIMD GEMM kernels (gemm.pack_a_sliver,
    gemm.compute_block and its micro-kernel): 16 x groups gemm_packed calls would cost two
    parallel regions (thread-pool barriers) each.

    Work items are (xi, g, block of mc tile rows); an item packs its block of op(a) (mc x Cg,
    about A_BLOCK_BYTES per KC slice, kept in L2) and multiplies it by the packed weights.
    """
    G, T, Kg = m.shape[1], m.shape[2], m.shape[3]
    Cg = v.shape[1] // G
    nr = 2 * (VECTOR_BYTES // v.itemsize)
    kg_pad = (Kg + nr - 1) // nr * nr
    mc = max(MR, A_BLOCK_BYTES // (min(Cg, KC) * v.itemsize) // MR * MR)
    row_blocks = (T + mc - 1) // mc
    mc = ((T + row_blocks - 1) // row_blocks + MR - 1) // MR * MR  # equal blocks, multiples of MR
    row_blocks = (T + mc - 1) // mc
    items = v.shape[0] * G * row_blocks
    blocks = min(items, WORK_BLOCKS)
    for block in prange(blocks):
        a_pack = np.empty(mc * Cg, dtype=v.dtype)
        for item in range(block * items // blocks, (block + 1) * items // blocks):
            rb = item % row_blocks
            g = item // row_blocks % G
            xi = item // (row_blocks * G)
            r0 = rb * mc
            rows = min(mc, T - r0)
            slivers = (rows + MR - 1) // MR
            m_pad = slivers * MR
            a = v[xi, g * Cg:(g + 1) * Cg]
            for pc in range(0, Cg, KC):
                kc = min(KC, Cg - pc)
                for s in range(slivers):
                    pack_a_sliver(a, True, r0 + s * MR, min(MR, rows - s * MR), pc, kc, a_pack,
                                  pc * m_pad + s * MR * kc)
            compute_block(a_pack, b_pack[xi, g], m[xi, g, r0:r0 + rows], Cg, m_pad, kg_pad,
                          0, rows, 0, 0, Kg)


@njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def grouped_products(u, v, m):
    """m[xi, g, t, kk] = sum_c u[xi, g*Kg + kk, c] * v[xi, g*Cg + c, t], all points (16 or 36) and all
    groups in one parallel loop: for layers with few channels per group, where 16*groups
    separate GEMM calls would cost more than they compute. Parallel over (xi, g, tile chunk);
    a chunk accumulates Kg x tc sums (axpy along the tiles), then stores them tile-major.
    """
    G, T, Kg = m.shape[1], m.shape[2], m.shape[3]
    Cg = u.shape[2]
    tc = max(1, min(T, PRODUCT_TILES // Kg))
    chunks = (T + tc - 1) // tc
    items = u.shape[0] * G * chunks
    blocks = min(items, WORK_BLOCKS)
    for block in prange(blocks):
        acc = np.empty((Kg, tc), dtype=m.dtype)
        for item in range(block * items // blocks, (block + 1) * items // blocks):
            xi = item // (G * chunks)
            g = item // chunks % G
            t0 = item % chunks * tc
            n = min(tc, T - t0)
            for kk in range(Kg):
                a = acc[kk]
                for t in range(n):
                    a[t] = 0
                for c in range(Cg):
                    weight = u[xi, g * Kg + kk, c]
                    src = v[xi, g * Cg + c, t0:t0 + n]
                    for t in range(n):
                        a[t] += weight * src[t]
            out = m[xi, g, t0:t0 + n]
            for t in range(n):
                for kk in range(Kg):
                    out[t, kk] = acc[kk, t]


@njit(cache=True, nogil=True)
def _output_geometry(m, y, TH, TW):
    """(groups, Kg, OH, OW, tiles per image, tile rows of the chunk, parallel work blocks) of an output
    transform: its work items are the chunk's tile rows."""
    G, T, Kg = m.shape[1], m.shape[2], m.shape[3]
    tiles = TH * TW
    items = T // tiles * TH
    return G, Kg, y.shape[2], y.shape[3], tiles, items, min(items, WORK_BLOCKS)


@njit(cache=True, nogil=True, parallel=True)
def output_transform(m, b, y, n0, TH, TW):
    """y[n0:n0+nb] = A^T m A + b for every tile of the chunk, clipped to (OH, OW).

    Parallel over the nb*TH tile rows. Per tile, the 16 point rows of m (contiguous over kk)
    are combined element-wise (vectorised along kk) into the tile's four outputs, which are
    then written into the K output planes.
    """
    G, Kg, OH, OW, tiles, items, blocks = _output_geometry(m, y, TH, TW)
    for block in prange(blocks):
        blk = np.empty((4, Kg), dtype=y.dtype)
        y00, y01, y10, y11 = blk[0], blk[1], blk[2], blk[3]
        for item in range(block * items // blocks, (block + 1) * items // blocks):
            local = item // TH
            th = item % TH
            oh = 2 * th
            two_rows = oh + 1 < OH
            for g in range(G):
                bias = b[g * Kg:(g + 1) * Kg]
                planes = y[n0 + local, g * Kg:(g + 1) * Kg]
                for tw in range(TW):
                    t = local * tiles + th * TW + tw
                    m0, m1, m2, m3 = m[0, g, t], m[1, g, t], m[2, g, t], m[3, g, t]
                    m4, m5, m6, m7 = m[4, g, t], m[5, g, t], m[6, g, t], m[7, g, t]
                    m8, m9, m10, m11 = m[8, g, t], m[9, g, t], m[10, g, t], m[11, g, t]
                    m12, m13, m14, m15 = m[12, g, t], m[13, g, t], m[14, g, t], m[15, g, t]
                    for kk in range(Kg):
                        s00 = m0[kk] + m4[kk] + m8[kk]
                        s01 = m1[kk] + m5[kk] + m9[kk]
                        s02 = m2[kk] + m6[kk] + m10[kk]
                        s03 = m3[kk] + m7[kk] + m11[kk]
                        s10 = m4[kk] - m8[kk] - m12[kk]
                        s11 = m5[kk] - m9[kk] - m13[kk]
                        s12 = m6[kk] - m10[kk] - m14[kk]
                        s13 = m7[kk] - m11[kk] - m15[kk]
                        y00[kk] = s00 + s01 + s02 + bias[kk]
                        y01[kk] = s01 - s02 - s03 + bias[kk]
                        y10[kk] = s10 + s11 + s12 + bias[kk]
                        y11[kk] = s11 - s12 - s13 + bias[kk]
                    ow = 2 * tw
                    if ow + 1 < OW:
                        for kk in range(Kg):
                            planes[kk, oh, ow] = y00[kk]
                            planes[kk, oh, ow + 1] = y01[kk]
                        if two_rows:
                            for kk in range(Kg):
                                planes[kk, oh + 1, ow] = y10[kk]
                                planes[kk, oh + 1, ow + 1] = y11[kk]
                    else:
                        for kk in range(Kg):
                            planes[kk, oh, ow] = y00[kk]
                        if two_rows:
                            for kk in range(Kg):
                                planes[kk, oh + 1, ow] = y10[kk]


# ---------------------------------------------------------------------------
# F(4x4, 3x3): 6x6 input tiles at stride 4, 36 points, 16 outputs per tile (xi = 6*i + j).
#     B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
#            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
#     G   = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6],
#            [1/24, -1/12, 1/6], [0, 0, 1]]
#     A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
# Layouts as above with 36 points: u (36, K, Cg), v (36, C, T), m (36, groups, T, Kg); tile t covers
# padded rows 4*th .. 4*th+5 and columns 4*tw .. 4*tw+5 and gives y rows 4*th .. 4*th+3 (clipped),
# TH = ceil(OH / 4), TW = ceil(OW / 4).
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _g_rows(g0, g1, g2, out, i):
    """out[0..5, i] = G @ (g0, g1, g2)."""
    out[0, i] = g0 / 4
    out[1, i] = -(g0 + g1 + g2) / 6
    out[2, i] = -(g0 - g1 + g2) / 6
    out[3, i] = g0 / 24 + g1 / 12 + g2 / 6
    out[4, i] = g0 / 24 - g1 / 12 + g2 / 6
    out[5, i] = g2


@njit(cache=True, nogil=True, parallel=True)
def filter_transform_4x4(w, u):
    """u[xi, k, c] = (G w[k, c] G^T)[i, j], computed in float64 and rounded once to u's dtype; parallel over k."""
    K, Cg = w.shape[0], w.shape[1]
    rows = w.reshape(K, Cg * 9)
    for k in prange(K):
        src = rows[k]
        gg = np.empty((6, 3), dtype=np.float64)   # G g
        ggt = np.empty((6, 6), dtype=np.float64)  # (G g) G^T, transposed: ggt[j, i]
        blk = np.empty((36, Cg), dtype=u.dtype)
        for c in range(Cg):
            o = 9 * c
            for col in range(3):
                _g_rows(np.float64(src[o + col]), np.float64(src[o + 3 + col]), np.float64(src[o + 6 + col]), gg, col)
            for i in range(6):
                _g_rows(gg[i, 0], gg[i, 1], gg[i, 2], ggt, i)
            for i in range(6):
                for j in range(6):
                    blk[6 * i + j, c] = ggt[j, i]
        _store_points(blk, u, k)


@njit(cache=True, nogil=True, inline="always")
def _bt6(a0, a1, a2, a3, a4, a5):
    """B^T @ (a0, ..., a5) of F(4x4, 3x3)."""
    return (4 * a0 - 5 * a2 + a4, a3 + a4 - 4 * (a1 + a2), a4 - a3 + 4 * (a1 - a2), a4 - a2 + 2 * (a3 - a1),
            a4 - a2 + 2 * (a1 - a3), 4 * a1 - 5 * a3 + a5)


@njit(cache=True, nogil=True, parallel=True)
def input_transform_4x4(x, v, n0, top, left, TH, TW):
    """v[:, :, :] = B^T d B for every 6x6 tile of images n0 .. n0 + nb - 1, nb = v.shape[2] // (TH*TW).

    Parallel over the nb*C input planes. Each plane is copied into a zero-bordered scratch of
    (4*TH + 2) x (4*TW + 2); per tile row its six rows are combined down the columns (B^T d, vectorised
    along the row), then across each tile's six columns (d' B, along the tiles)."""
    C, tiles, items, blocks = _input_geometry(x, v, TH, TW)
    rows_p, cols_p = 4 * TH + 2, 4 * TW + 2
    for block in prange(blocks):
        padded = np.zeros((rows_p, cols_p), dtype=v.dtype)
        comb = np.empty((6, cols_p), dtype=v.dtype)
        for item in range(block * items // blocks, (block + 1) * items // blocks):
            c, base = _load_plane(x, padded, item, C, n0, tiles, top, left)
            for th in range(TH):
                r = 4 * th
                for j in range(cols_p):  # indexed through the two arrays, not row views: LLVM then vectorises
                    comb[0, j], comb[1, j], comb[2, j], comb[3, j], comb[4, j], comb[5, j] = _bt6(
                        padded[r, j], padded[r + 1, j], padded[r + 2, j], padded[r + 3, j], padded[r + 4, j],
                        padded[r + 5, j])
                t0 = base + th * TW
                for i in range(6):
                    e = comb[i]
                    for tw in range(TW):
                        q = 4 * tw
                        points = _bt6(e[q], e[q + 1], e[q + 2], e[q + 3], e[q + 4], e[q + 5])
                        for j in range(6):
                            v[6 * i + j, c, t0 + tw] = points[j]


@njit(cache=True, nogil=True, inline="always")
def _at4(a0, a1, a2, a3, a4, a5):
    """A^T @ (a0, ..., a5) of F(4x4, 3x3)."""
    s12, d12, s34, d34 = a1 + a2, a1 - a2, a3 + a4, a3 - a4
    return a0 + s12 + s34, d12 + 2 * d34, s12 + 4 * s34, d12 + 8 * d34 + a5


@njit(cache=True, nogil=True, parallel=True)
def output_transform_4x4(m, b, y, n0, TH, TW):
    """y[n0:n0+nb] = A^T m A + b for every tile of the chunk, clipped to (OH, OW).

    Parallel over the nb*TH tile rows. Per tile the 36 point rows of m (contiguous over kk) are combined
    element-wise (vectorised along kk): first down the tile's rows into 24, then across into its 16 outputs,
    which are written into the K output planes."""
    G, Kg, OH, OW, tiles, items, blocks = _output_geometry(m, y, TH, TW)
    for block in prange(blocks):
        half = np.empty((24, Kg), dtype=y.dtype)   # half[6*r + j] = sum_i A^T[r, i] m[6*i + j]
        out = np.empty((16, Kg), dtype=y.dtype)    # out[4*r + q]: output (r, q) of the tile
        for item in range(block * items // blocks, (block + 1) * items // blocks):
            local = item // TH
            th = item % TH
            oh = 4 * th
            rows = min(4, OH - oh)
            for g in range(G):
                bias = b[g * Kg:(g + 1) * Kg]
                planes = y[n0 + local, g * Kg:(g + 1) * Kg]
                for tw in range(TW):
                    t = local * tiles + th * TW + tw
                    # indexed through the arrays, not row views (which LLVM cannot tell apart): vectorised along kk
                    for j in range(6):
                        for kk in range(Kg):
                            half[j, kk], half[6 + j, kk], half[12 + j, kk], half[18 + j, kk] = _at4(
                                m[j, g, t, kk], m[6 + j, g, t, kk], m[12 + j, g, t, kk], m[18 + j, g, t, kk],
                                m[24 + j, g, t, kk], m[30 + j, g, t, kk])
                    for r in range(rows):
                        for kk in range(Kg):
                            out[4 * r, kk], out[4 * r + 1, kk], out[4 * r + 2, kk], out[4 * r + 3, kk] = _at4(
                                half[6 * r, kk], half[6 * r + 1, kk], half[6 * r + 2, kk], half[6 * r + 3, kk],
                                half[6 * r + 4, kk], half[6 * r + 5, kk])
                    ow = 4 * tw
                    cols = min(4, OW - ow)
                    for r in range(rows):
                        for q in range(cols):
                            o = out[4 * r + q]
                            for kk in range(Kg):
                                planes[kk, oh + r, ow + q] = o[kk] + bias[kk]
