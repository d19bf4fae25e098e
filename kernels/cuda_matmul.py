"""Matrix product on the GPU (numba.cuda): ``c = op(a) @ op(b) + beta * c``.

Layouts: ``a``, ``b``, ``c`` are C-contiguous 2-D device arrays of one dtype
(float32 or float64). ``op(a)`` is (M, K): ``a`` stored (M, K), or stored (K, M)
and read transposed in place when ``trans_a``; ``op(b)`` is (K, N): ``b`` stored
(K, N), or (N, K) when ``trans_b``; ``c`` is (M, N). Same convention as
``gemm_packed`` in ``kernels/matmul.py``, plus ``beta``.

Tiling: a block of 16 x 16 = 256 threads computes a BM x BN = 128 x 128 tile of C.
K is walked in slabs of BK = 8: each thread stages LOADS = 4 elements of each
operand per slab into shared memory (double-buffered; the next slab is fetched
from global memory into registers while the current one is multiplied), with
consecutive threads reading consecutive addresses whichever axis is contiguous.
Each thread keeps a TM x TN = 8 x 8 register tile of accumulators for rows
ty + 16*i and columns tx + 16*j of the block tile, so that its shared-memory
reads are broadcasts (A) or consecutive words (B): no bank conflicts. Tiles are
zero-filled past M, N, K and stores are guarded, so any M, N >= 0, K >= 0 work.
The grid is (ceil(N / BN), ceil(M / BM)): M is limited to 65535 * BM rows.

Kernels compile on first launch (one per dtype) and are cached on disk.
"""
import functools

import numba
import numpy as np
from numba import cuda

BM = BN = 128                      # block tile of C (rows, columns)
BK = 8                             # depth of a K slab
TM, TN = 8, 8                      # register tile of C per thread
THREADS_Y, THREADS_X = BM // TM, BN // TN   # 16 x 16 threads per block
THREADS = THREADS_Y * THREADS_X             # 256
LOADS = BM * BK // THREADS                  # elements of each operand a thread stages per slab
TILE_ROW = BM + 4                  # shared row of a slab, padded: conflict-free staging stores


@functools.cache
def _gemm_kernel(dtype):
    """The tiled GEMM kernel for one float dtype (shared and local arrays need it at compile time)."""
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit(cache=True)
    def gemm_kernel(a, b, c, trans_a, trans_b, beta):
        M, N = c.shape
        K = a.shape[0] if trans_a else a.shape[1]
        a_tile = cuda.shared.array((2, BK, TILE_ROW), dt)   # [buffer, k, m]
        b_tile = cuda.shared.array((2, BK, TILE_ROW), dt)   # [buffer, k, n]
        acc = cuda.local.array((TM, TN), dt)
        a_frag = cuda.local.array(TM, dt)
        b_frag = cuda.local.array(TN, dt)
        a_next = cuda.local.array(LOADS, dt)
        b_next = cuda.local.array(LOADS, dt)

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_X + tx
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN

        # Staging coordinates of load p: (k, m) = (a_k + p * a_kstep, a_m + p * a_mstep).
        # Along the contiguous axis of the stored operand consecutive threads read consecutive elements.
        if trans_a:   # a stored (K, M): m contiguous
            a_k, a_m, a_kstep, a_mstep = tid // BM, tid % BM, THREADS // BM, 0
        else:         # a stored (M, K): k contiguous
            a_k, a_m, a_kstep, a_mstep = tid % BK, tid // BK, 0, THREADS // BK
        if trans_b:   # b stored (N, K): k contiguous
            b_k, b_n, b_kstep, b_nstep = tid % BK, tid // BK, 0, THREADS // BK
        else:         # b stored (K, N): n contiguous
            b_k, b_n, b_kstep, b_nstep = tid // BN, tid % BN, THREADS // BN, 0

        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0

        # Iteration kt fetches slab kt + 1 into registers, multiplies slab kt (staged in buffer
        # kt % 2) and then stages slab kt + 1 into the other buffer; kt = -1 only stages slab 0.
        nslabs = (K + BK - 1) // BK
        for kt in range(-1, nslabs):
            buf = kt % 2
            if kt + 1 < nslabs:
                k0 = (kt + 1) * BK
                for p in range(LOADS):
                    k = k0 + a_k + p * a_kstep
                    m = m0 + a_m + p * a_mstep
                    a_next[p] = 0
                    if k < K and m < M:
                        a_next[p] = a[k, m] if trans_a else a[m, k]
                    k = k0 + b_k + p * b_kstep
                    n = n0 + b_n + p * b_nstep
                    b_next[p] = 0
                    if k < K and n < N:
                        b_next[p] = b[n, k] if trans_b else b[k, n]
            if kt >= 0:
                a_slab = a_tile[buf]
                b_slab = b_tile[buf]
                for kk in range(BK):
                    a_row = a_slab[kk, ty:]
                    b_row = b_slab[kk, tx:]
                    for i in range(TM):
                        a_frag[i] = a_row[i * THREADS_Y]
                    for j in range(TN):
                        b_frag[j] = b_row[j * THREADS_X]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] = cuda.fma(a_frag[i], b_frag[j], acc[i, j])
            # The other buffer was last read in iteration kt - 1, which ended with a barrier.
            if kt + 1 < nslabs:
                nbuf = (kt + 1) % 2
                for p in range(LOADS):
                    a_tile[nbuf, a_k + p * a_kstep, a_m + p * a_mstep] = a_next[p]
                    b_tile[nbuf, b_k + p * b_kstep, b_n + p * b_nstep] = b_next[p]
            cuda.syncthreads()

        for i in range(TM):
            m = m0 + ty + i * THREADS_Y
            if m < M:
                for j in range(TN):
                    n = n0 + tx + j * THREADS_X
                    if n < N:
                        if beta == 0:
                            c[m, n] = acc[i, j]
                        else:
                            c[m, n] = acc[i, j] + beta * c[m, n]

    return gemm_kernel


def gemm(a, b, c, trans_a, trans_b, beta=0.0):
    """c (M, N) = op(a) @ op(b) + beta * c on the default stream, asynchronously.

    op(a) = a (M, K), or a.T for a stored (K, M) when trans_a; op(b) = b (K, N), or b.T for b
    stored (N, K) when trans_b. beta is 0.0 (c is overwritten and never read: it may hold NaN)
    or 1.0 (accumulate into c). K == 0 gives beta * c.
    """
    M, N = c.shape
    if M == 0 or N == 0:
        return
    grid = ((N + BN - 1) // BN, (M + BM - 1) // BM)
    _gemm_kernel(c.dtype)[grid, (THREADS_X, THREADS_Y)](
        a, b, c, bool(trans_a), bool(trans_b), c.dtype.type(beta))
