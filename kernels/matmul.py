"""Matrix-multiply kernels: ``c[:, :] = op(a) @ op(b)``.

Layouts
-------
``a``, ``b`` and ``c`` are C-contiguous (row-major) 2-D arrays of one dtype,
float32 or float64. ``op(x)`` is ``x.T`` when the matching ``trans_*`` flag is
true, else ``x``. ``op(a)`` is (M, K), ``op(b)`` is (K, N), ``c`` is (M, N) and is
overwritten. Any M, N, K >= 1.

- ``gemm_blas``: ``np.dot`` inside Numba, which calls the BLAS bundled with
  SciPy. A transposed operand is passed as an F-contiguous view, so BLAS sees
  it as a transpose flag and nothing is copied.
- ``gemm_streaming``: for few rows of A (a network's classifier at small batches): B is read once, in its own
  layout, as a stream (no packing): with trans_b each output is a dot product along a row of B's storage (summed
  reassociated, in vector lanes: fastmath "reassoc"), else rows of B are added into rows of C scaled by A's
  elements. Parallel over blocks of N. Memory-bound by design: for M of a few rows a
  GEMM is one pass over B.
- ``gemm_packed``: our own GEMM, no BLAS, after Goto/BLIS: ``pack_a`` then ``gemm_prepacked`` (a caller
  that multiplies by the same op(a) again keeps a_pack and calls ``gemm_prepacked`` alone). First, for every
  KC-deep slice of K (pc), pack_a copies op(a)[:, pc:pc+kc] into ``a_pack`` as slivers of MR rows, element
  (row r, depth p) at ``p * MR + r``, rows past M zero (one parallel loop). Then for each NC-wide panel of N
  (jc), two parallel loops (``prange``), hence two barriers:

    pack:    for every KC-deep slice of K (pc), pack_b copies
             op(b)[pc:pc+kc, jc:jc+nc] into ``b_pack`` as slivers of NR columns,
             element (depth p, column j) at ``p * NR + j``, columns past N zero.
    compute: C is cut into blocks of MC rows x NB columns, one per work item
             (disjoint, so no races). A block loops over the K slices; in a
             slice the micro-kernel multiplies one A sliver (of an MC x KC
             block kept in L2) by one B sliver (KC x NR, kept in L1) into an
             MR x NR tile of accumulators held in registers, then adds it into C.

  The packing routines read through the transpose flags, so a transposed
  operand costs nothing extra. The micro-kernel uses explicit SIMD vectors
  (``fastconv.kernels.simd``: Numba intrinsics over LLVM vector types): one vector holds ``LANES``
  elements (``VECTOR_BYTES`` bytes: 64 with AVX-512, else 32), a tile is
  MR = 6 rows x NR = 2 vectors, i.e. 12 vector accumulators (6x16 float32 /
  6x8 float64 with AVX2, 6x32 / 6x16 with AVX-512). Partial tiles at the
  right/bottom edges are computed in full into a small scratch tile (the packed
  panels are zero-padded) and only the valid part is copied into C.
  Workspace per call: a_pack is M x K and b_pack K x min(N, NC) elements
  (padded to MR rows / NR columns).

Nothing here compiles at import time; every kernel is compiled on first call
and cached on disk.
"""
import numba
import numpy as np

from .simd import VECTOR_BYTES, prefetch, vector_add, vector_broadcast, vector_fma, vector_load, vector_store, \
    vector_zeros


MR = 6                               # rows of a micro-tile
KC = 512                             # depth of a packed slice (measured: 512 > 256)
A_BLOCK_BYTES = 256 * 1024           # MC*KC*itemsize of an A block (half of L2)
NC = 1024                            # columns of a packed B panel (rounded to NR)
WORK_ITEMS = 32                      # blocks of C per panel to share among threads


@numba.njit(cache=True, nogil=True)
def gemm_blas(a, b, c, trans_a, trans_b):
    """c[:, :] = op(a) @ op(b) through BLAS (``np.dot`` in Numba).

    a: (M, K), or (K, M) if trans_a; b: (K, N), or (N, K) if trans_b; c: (M, N).
    All C-contiguous, one dtype (float32/float64); c is overwritten. A
    transposed operand is an F-contiguous view: BLAS reads it in place.
    """
    if trans_a:
        if trans_b:
            np.dot(a.T, b.T, c)
        else:
            np.dot(a.T, b, c)
    else:
        if trans_b:
            np.dot(a, b.T, c)
        else:
            np.dot(a, b, c)


STREAM_ROWS = 64        # gemm_streaming with trans_b: rows of b's storage (columns of C) per work item
STREAM_COLUMNS = 512    # without: columns of b and C per work item (2 KiB runs of a row of b in float32)


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _dot(x, y):
    acc = x.dtype.type(0)
    for i in range(x.size):
        acc += x[i] * y[i]
    return acc


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _add_scaled_row(alpha, row, out):
    for j in range(out.size):
        out[j] += alpha * row[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def gemm_streaming(a, b, c, trans_a, trans_b):
    """c[:, :] = op(a) @ op(b) with one pass over b (module docstring); a read through trans_a in place."""
    M, N = c.shape
    K = b.shape[1] if trans_b else b.shape[0]
    a_rows = np.ascontiguousarray(a.T) if trans_a else a  # op(a): M rows of K, a few rows only
    zero = c.dtype.type(0)
    width = STREAM_ROWS if trans_b else STREAM_COLUMNS
    for blk in numba.prange((N + width - 1) // width):
        j0, j1 = blk * width, min(N, (blk + 1) * width)
        if trans_b:
            for j in range(j0, j1):
                b_row = b[j]
                for m in range(M):
                    c[m, j] = _dot(a_rows[m], b_row)
        else:
            for m in range(M):
                c[m, j0:j1] = zero
            for k in range(K):
                b_row = b[k, j0:j1]
                for m in range(M):
                    _add_scaled_row(a_rows[m, k], b_row, c[m, j0:j1])


# ---------------------------------------------------------------------------
# Packed GEMM
# ---------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def pack_a_sliver(a, trans_a, row0, rows, col0, kc, a_pack, offset):
    """Pack op(a)[row0:row0+rows, col0:col0+kc] (rows <= MR) into one sliver.

    a_pack[offset + p * MR + r] = op(a)[row0 + r, col0 + p]; rows r >= ``rows``
    are zero-filled so the micro-kernel can always compute MR full rows.
    """
    if rows < MR:                 # bottom edge: zero-fill, copy what exists
        a_pack[offset:offset + kc * MR] = 0
        for p in range(kc):
            for r in range(rows):
                if trans_a:
                    a_pack[offset + p * MR + r] = a[col0 + p, row0 + r]
                else:
                    a_pack[offset + p * MR + r] = a[row0 + r, col0 + p]
    elif trans_a:                 # op(a)[i, p] = a[p, i]: MR contiguous values
        for p in range(kc):
            for r in range(MR):
                a_pack[offset + p * MR + r] = a[col0 + p, row0 + r]
    else:                         # op(a)[i, p] = a[i, p]: MR rows read in step
        for p in range(kc):
            for r in range(MR):
                a_pack[offset + p * MR + r] = a[row0 + r, col0 + p]


@numba.njit(cache=True, nogil=True)
def pack_b_sliver(b, trans_b, row0, kc, col0, cols, b_pack, offset):
    """Pack op(b)[row0:row0+kc, col0:col0+cols] (cols <= NR) into one sliver.

    NR = 2 * LANES. b_pack[offset + p * NR + j] = op(b)[row0 + p, col0 + j];
    columns j >= ``cols`` are zero-filled.
    """
    lanes = VECTOR_BYTES // b.itemsize
    nr = 2 * lanes
    if cols < nr:                 # right edge: zero-fill, copy what exists
        b_pack[offset:offset + kc * nr] = 0
        for p in range(kc):
            for j in range(cols):
                if trans_b:
                    b_pack[offset + p * nr + j] = b[col0 + j, row0 + p]
                else:
                    b_pack[offset + p * nr + j] = b[row0 + p, col0 + j]
    elif trans_b:                 # op(b)[p, j] = b[j, p]: depth p is contiguous
        for j in range(nr):
            for p in range(kc):
                b_pack[offset + p * nr + j] = b[col0 + j, row0 + p]
    else:                         # op(b)[p, j] = b[p, j]: two vectors per row
        ldb = b.shape[1]
        for p in range(kc):
            source = (row0 + p) * ldb + col0
            target = offset + p * nr
            vector_store(b_pack, target, vector_load(b, source))
            vector_store(b_pack, target + lanes, vector_load(b, source + lanes))


@numba.njit(cache=True, nogil=True)
def _store_row(c, offset, lanes, low, high, accumulate):
    """c.flat[offset:offset + 2*lanes] (+)= [low, high]."""
    if accumulate:
        low = vector_add(low, vector_load(c, offset))
        high = vector_add(high, vector_load(c, offset + lanes))
    vector_store(c, offset, low)
    vector_store(c, offset + lanes, high)


@numba.njit(cache=True, nogil=True)
def micro_kernel(kc, a_pack, a_offset, b_pack, b_offset, c, c_offset, ldc, accumulate):
    """MR x NR tile: C_tile (+)= A_sliver @ B_sliver, accumulators in registers.

    A sliver: a_pack[a_offset + p * MR + r]; B sliver: b_pack[b_offset + p * NR + j]
    for p < kc. The tile is written to c.flat[c_offset + r * ldc + j]
    (r < MR, j < NR = 2 * LANES), added to what is there if ``accumulate``,
    else overwriting it. All MR x NR entries must be valid memory.
    """
    lanes = VECTOR_BYTES // a_pack.itemsize
    c00 = vector_zeros(a_pack)
    c01 = vector_zeros(a_pack)
    c10 = vector_zeros(a_pack)
    c11 = vector_zeros(a_pack)
    c20 = vector_zeros(a_pack)
    c21 = vector_zeros(a_pack)
    c30 = vector_zeros(a_pack)
    c31 = vector_zeros(a_pack)
    c40 = vector_zeros(a_pack)
    c41 = vector_zeros(a_pack)
    c50 = vector_zeros(a_pack)
    c51 = vector_zeros(a_pack)
    for r in range(MR):           # C rows are needed after the loop: fetch now
        prefetch(c, c_offset + r * ldc)
        prefetch(c, c_offset + r * ldc + 2 * lanes - 1)
    a_index = a_offset
    b_index = b_offset
    for _ in range(kc):
        b0 = vector_load(b_pack, b_index)
        b1 = vector_load(b_pack, b_index + lanes)
        a_r = vector_broadcast(a_pack, a_index)
        c00 = vector_fma(a_r, b0, c00)
        c01 = vector_fma(a_r, b1, c01)
        a_r = vector_broadcast(a_pack, a_index + 1)
        c10 = vector_fma(a_r, b0, c10)
        c11 = vector_fma(a_r, b1, c11)
        a_r = vector_broadcast(a_pack, a_index + 2)
        c20 = vector_fma(a_r, b0, c20)
        c21 = vector_fma(a_r, b1, c21)
        a_r = vector_broadcast(a_pack, a_index + 3)
        c30 = vector_fma(a_r, b0, c30)
        c31 = vector_fma(a_r, b1, c31)
        a_r = vector_broadcast(a_pack, a_index + 4)
        c40 = vector_fma(a_r, b0, c40)
        c41 = vector_fma(a_r, b1, c41)
        a_r = vector_broadcast(a_pack, a_index + 5)
        c50 = vector_fma(a_r, b0, c50)
        c51 = vector_fma(a_r, b1, c51)
        a_index += MR
        b_index += 2 * lanes
    _store_row(c, c_offset, lanes, c00, c01, accumulate)
    _store_row(c, c_offset + ldc, lanes, c10, c11, accumulate)
    _store_row(c, c_offset + 2 * ldc, lanes, c20, c21, accumulate)
    _store_row(c, c_offset + 3 * ldc, lanes, c30, c31, accumulate)
    _store_row(c, c_offset + 4 * ldc, lanes, c40, c41, accumulate)
    _store_row(c, c_offset + 5 * ldc, lanes, c50, c51, accumulate)


@numba.njit(cache=True, nogil=True)
def compute_block(a_pack, b_pack, c, k, m_pad, nc_pad, row0, rows, panel_col0,
                  col0, cols):
    """c[row0:row0+rows, col0:col0+cols] = packed op(a) rows @ packed op(b) columns.

    Loops over the KC slices of K; slice pc of a_pack starts at pc * m_pad and
    holds the A slivers of all M rows (sliver of rows i0.. at + i0 * kc); slice
    pc of b_pack starts at pc * nc_pad and holds the B slivers of the panel
    starting at column ``panel_col0`` (sliver of columns j0.. at
    + (j0 - panel_col0) * kc). row0 is a multiple of MR, col0 - panel_col0 a
    multiple of NR. Full tiles are written straight into c; partial edge tiles
    go through a scratch tile.
    """
    n = c.shape[1]
    nr = 2 * (VECTOR_BYTES // c.itemsize)
    tile = np.empty((MR, nr), dtype=c.dtype)     # same type as c: one compile
    for pc in range(0, k, KC):
        kc = min(KC, k - pc)
        accumulate = pc > 0                      # first slice overwrites c
        for j0 in range(col0, col0 + cols, nr):  # one B sliver (stays in L1)
            tile_cols = min(nr, col0 + cols - j0)
            b_offset = pc * nc_pad + (j0 - panel_col0) * kc
            for i0 in range(row0, row0 + rows, MR):  # A slivers of the block (L2)
                tile_rows = min(MR, row0 + rows - i0)
                a_offset = pc * m_pad + i0 * kc
                if tile_rows == MR and tile_cols == nr:
                    micro_kernel(kc, a_pack, a_offset, b_pack, b_offset,
                                 c, i0 * n + j0, n, accumulate)
                else:
                    micro_kernel(kc, a_pack, a_offset, b_pack, b_offset,
                                 tile, 0, nr, False)
                    for r in range(tile_rows):
                        for j in range(tile_cols):
                            if accumulate:
                                c[i0 + r, j0 + j] += tile[r, j]
                            else:
                                c[i0 + r, j0 + j] = tile[r, j]


@numba.njit(cache=True, nogil=True)
def packed_a_size(m, k):
    """Elements of op(a) (M x K) packed by pack_a: M rounded up to MR rows, times K."""
    return (m + MR - 1) // MR * MR * k


@numba.njit(cache=True, nogil=True, parallel=True)
def pack_a(a, trans_a, a_pack):
    """a_pack = op(a) packed for gemm_prepacked: for every KC slice pc of K, the slivers of MR rows at
    pc * m_pad + s * MR * kc (``pack_a_sliver``), m_pad = M rounded up to MR. a_pack holds packed_a_size(M, K)."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    a_slivers = (m + MR - 1) // MR
    m_pad = a_slivers * MR
    for item in numba.prange(((k + KC - 1) // KC) * a_slivers):
        pc = item // a_slivers * KC
        s = item % a_slivers
        pack_a_sliver(a, trans_a, s * MR, min(MR, m - s * MR), pc, min(KC, k - pc), a_pack, pc * m_pad + s * MR *
                      min(KC, k - pc))


@numba.njit(cache=True, nogil=True, parallel=True)
def gemm_packed(a, b, c, trans_a, trans_b):
    """c[:, :] = op(a) @ op(b) with our cache-blocked, packed, SIMD GEMM: pack_a, then gemm_prepacked.

    a: (M, K), or (K, M) if trans_a; b: (K, N), or (N, K) if trans_b; c: (M, N).
    All C-contiguous, one dtype (float32/float64); c is overwritten. Parallel
    over disjoint blocks of c (prange). Workspace: M x K (packed op(a)) plus
    K x min(N, NC) (one packed panel of op(b)) elements, padded.
    """
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if ((a.shape[1] if trans_a else a.shape[0]) != m
            or (b.shape[1] if trans_b else b.shape[0]) != k
            or (b.shape[0] if trans_b else b.shape[1]) != n):
        raise ValueError("gemm_packed: shapes of a, b and c do not match")
    if k == 0:
        c[:, :] = 0
        return
    a_pack = np.empty(packed_a_size(m, k), dtype=c.dtype)
    pack_a(a, trans_a, a_pack)
    gemm_prepacked(a_pack, k, b, c, trans_b)


@numba.njit(cache=True, nogil=True, parallel=True)
def gemm_prepacked(a_pack, k, b, c, trans_b):
    """c[:, :] = op(a) @ op(b) for op(a) (M x K, M = c's rows, K >= 1) packed by pack_a into a_pack; b and c as
    for gemm_packed. Per NC-wide panel of op(b): pack the panel, then the blocks of c in parallel."""
    m, n = c.shape
    nr = 2 * (VECTOR_BYTES // c.itemsize)            # columns of a micro-tile
    m_pad = (m + MR - 1) // MR * MR
    k_slices = (k + KC - 1) // KC
    nc_max = max(nr, NC // nr * nr)                  # columns of a B panel
    b_pack = np.empty(min(nc_max, (n + nr - 1) // nr * nr) * k, dtype=c.dtype)
    # Row blocks of at most A_BLOCK_BYTES per KC slice, all about the same size.
    mc_max = max(MR, A_BLOCK_BYTES // (KC * c.itemsize) // MR * MR)
    row_blocks = (m + mc_max - 1) // mc_max
    mc = ((m + row_blocks - 1) // row_blocks + MR - 1) // MR * MR
    row_blocks = (m + mc - 1) // mc
    for jc in range(0, n, nc_max):
        nc = min(nc_max, n - jc)
        b_slivers = (nc + nr - 1) // nr
        nc_pad = b_slivers * nr
        # Enough column blocks (each a multiple of nr) to keep threads busy.
        col_blocks = min(b_slivers, max(1, (WORK_ITEMS + row_blocks - 1) // row_blocks))
        nb = (b_slivers + col_blocks - 1) // col_blocks * nr  # columns of a block
        col_blocks = (nc + nb - 1) // nb
        for item in numba.prange(k_slices * b_slivers):  # pack this panel of op(b), every KC slice
            pc = item // b_slivers * KC
            j = item % b_slivers * nr
            pack_b_sliver(b, trans_b, pc, min(KC, k - pc), jc + j, min(nr, nc - j), b_pack, pc * nc_pad + j *
                          min(KC, k - pc))
        # Each work item computes one block of c over all of K.
        for item in numba.prange(row_blocks * col_blocks):
            row0 = item // col_blocks * mc
            col0 = jc + item % col_blocks * nb
            compute_block(a_pack, b_pack, c, k, m_pad, nc_pad, row0, min(mc, m - row0),
                          jc, col0, min(nb, jc + nc - col0))
