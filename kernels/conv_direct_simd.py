"""Direct 2-D convolution forward with explicit SIMD vectors (Numba), any stride and dilation.

Two kernels share one micro-kernel (``_chunk_6x2``: MR = 6 output channels x NV = 2 vectors,
12 vector accumulators held in registers, per tap NV vector loads, MR weight broadcasts and
MR*NV fmas; 12 ymm with AVX2, 12 zmm with AVX-512):
- ``forward_phases`` ("rows"): vectors along runs of output positions of one image;
- ``forward_interleaved`` ("batch"): vectors along a block of NB = NV*LANES images at one
  output position, for small output planes (wide vectors would be mostly padding) with N >= NB.

Layouts (all C-contiguous, one float dtype per call, float32 or float64):
- x:  (N, C, H, W) input, not padded.
- xq (rows): 1-D, the zero-padded input split into stride phases ("space to depth"):
      xq[((n*C + c)*SH*SW + ph*SW + pw)*Hq*Wq + i*Wq + j] = xpad[n, c, i*SH + ph, j*SW + pw]
      where xpad is x zero-padded by (top, left, ...) and is zero outside x; Hq = ceil(Hp/SH),
      Wq = ceil(Wp/SW). With unit strides this is the padded input with row pitch Wq = Wp, and without
      padding x itself (the host passes x's memory: no copy).
- xi (batch): 1-D workspace, the zero-padded input with blocks of NB images innermost:
      xi[(((blk*C + c)*Hp + i)*Wp + j)*NB + v] = xpad[blk*NB + v, c, i, j] (zero for images >= N).
- wp: 1-D packed weights, (groups*KBg, T, MR) flattened: wp[(kb*T + t)*MR + m] is the weight of
      output channel g*Kg + (kb % KBg)*MR + m (zero past Kg) at tap t of its group, KBg =
      ceil(Kg/MR) channel blocks per group, Kg = K/groups, T = Cg*R*S taps ordered (c, r, s).
- offs: (T,) int64: tap t = (c, r, s) reads the input at offs[t] + the chunk's own offset.
      rows: offs[t] = c*SH*SW*Hq*Wq + (a%SH*SW + e%SW)*Hq*Wq + (a//SH)*Wq + e//SW, a = r*DH,
      e = s*DW; batch: offs[t] = (c*Hp*Wp + r*DH*Wp + s*DW)*NB.
- b:  (K,) bias; y: (N, K, OH, OW) output, overwritten.

Rows kernel: in the phase-split layout every tap is a unit-stride shift: output (oh, ow) sits at
flat position q = oh*Wq + ow of its image's planes, so a run of consecutive q (which may span
output rows; positions with ow >= OW are computed and dropped) is one contiguous load per tap.
Work items (prange): (image n, segment of output rows, block of MR output channels), channel
block innermost so one thread reuses a segment's input from L2 across channel blocks. A segment
is cut into chunks of NV*LANES positions. The taps are walked in passes of BLOCK_TAPS (whole
input channels) over all chunks of the segment, so a pass's input rows and weights stay in L1;
partial sums live in a per-item scratch tile (MR rows of whole chunks), from which the valid
positions are copied to y with the bias added. A segment's last chunk loads only its valid positions
(masked loads: nothing past the last input element the outputs need is read, so xq needs no tail).

Batch kernel: the same, with a chunk = one output position x NB images (any stride: the chunk's
offset is (oh*SH*Wp + ow*SW)*NB), work items (image block, SEGMENT_POSITIONS output
positions, channel block), every vector load aligned to the image block.
"""
import numpy as np
from numba import njit, prange

from .simd import (VECTOR_BYTES, vector_broadcast, vector_fma, vector_load, vector_load_first, vector_store,
                   vector_zeros)

MR = 6            # output channels per block (broadcast weights)
NV = 2            # vectors along the output positions per chunk
SEGMENT = 256     # target output positions per work item (whole output rows)
BLOCK_TAPS = 144  # taps per pass over a segment (rounded down to whole input channels)
SEGMENT_POSITIONS = 32  # output positions per work item of the batch-vector variant


def lanes_for(itemsize):
    """Elements per SIMD vector for this itemsize."""
    return VECTOR_BYTES // itemsize


@njit(cache=True, nogil=True, parallel=True)
def phase_split(x, xq, top, left, sh, sw, hq, wq):
    """Fill xq[: N*C*sh*sw*hq*wq] with the zero-padded, phase-split input (see module doc). Plain element
    loops (slice assignments cost more than the copy on planes this small)."""
    N, C, H, W = x.shape
    plane = hq * wq
    zero = xq.dtype.type(0)
    for item in prange(N * C * sh):
        n = item // (C * sh)
        c = (item // sh) % C
        ph = item % sh
        for pw in range(sw):
            base = ((n * C + c) * sh * sw + ph * sw + pw) * plane
            j_lo = min(wq, max(0, -((pw - left) // sw)))      # first j with col >= 0
            j_hi = max(j_lo, min(wq, (W - 1 + left - pw) // sw + 1))  # past last col < W
            shift = pw - left
            for i in range(hq):
                row = i * sh + ph - top
                o = base + i * wq
                if row < 0 or row >= H:
                    for j in range(wq):
                        xq[o + j] = zero
                    continue
                for j in range(j_lo):
                    xq[o + j] = zero
                if sw == 1:
                    for j in range(j_lo, j_hi):
                        xq[o + j] = x[n, c, row, j + shift]
                else:
                    for j in range(j_lo, j_hi):
                        xq[o + j] = x[n, c, row, j * sw + shift]
                for j in range(j_hi, wq):
                    xq[o + j] = zero


@njit(cache=True, nogil=True, parallel=True)
def pack_channel_blocks(w, groups, wp):
    """wp[(kb*T + t)*MR + m] = w[g*Kg + (kb % KBg)*MR + m] at tap t = (c, r, s), zero past Kg
    (the wp layout above); wp has groups*KBg*T*MR elements."""
    K, Cg, R, S = w.shape
    Kg = K // groups
    taps = Cg * R * S
    kb_per_group = (Kg + MR - 1) // MR
    w_rows = w.reshape(K, taps)
    for kb in prange(groups * kb_per_group):
        g = kb // kb_per_group
        k0 = g * Kg + (kb % kb_per_group) * MR
        mr = min(MR, (g + 1) * Kg - k0)
        base = kb * taps * MR
        for t in range(taps):
            for m in range(MR):
                wp[base + t * MR + m] = w_rows[k0 + m, t] if m < mr else 0


@njit(cache=True, nogil=True)
def _chunk_6x2(xq, x_off, wp, w_off, offs, t0, t1, tile, t_off, ld, accumulate, valid):
    """tile[t_off + m*ld + j] (+)= sum_{t0 <= t < t1} wp[w_off + t*MR + m] * xq[x_off + offs[t] + j]
    for m < 6, j < 2*LANES (added to the tile's values if ``accumulate``, else overwriting
    them); 12 vector accumulators held in registers. Only positions j < ``valid`` are read (the
    others compute zeros); valid >= 2*LANES is a full chunk."""
    lanes = VECTOR_BYTES // xq.itemsize
    if accumulate:
        c00 = vector_load(tile, t_off)
        c01 = vector_load(tile, t_off + lanes)
        c10 = vector_load(tile, t_off + ld)
        c11 = vector_load(tile, t_off + ld + lanes)
        c20 = vector_load(tile, t_off + 2 * ld)
        c21 = vector_load(tile, t_off + 2 * ld + lanes)
        c30 = vector_load(tile, t_off + 3 * ld)
        c31 = vector_load(tile, t_off + 3 * ld + lanes)
        c40 = vector_load(tile, t_off + 4 * ld)
        c41 = vector_load(tile, t_off + 4 * ld + lanes)
        c50 = vector_load(tile, t_off + 5 * ld)
        c51 = vector_load(tile, t_off + 5 * ld + lanes)
    else:
        c00 = vector_zeros(xq)
        c01 = vector_zeros(xq)
        c10 = vector_zeros(xq)
        c11 = vector_zeros(xq)
        c20 = vector_zeros(xq)
        c21 = vector_zeros(xq)
        c30 = vector_zeros(xq)
        c31 = vector_zeros(xq)
        c40 = vector_zeros(xq)
        c41 = vector_zeros(xq)
        c50 = vector_zeros(xq)
        c51 = vector_zeros(xq)
    wi = w_off + t0 * MR
    offs_block = offs[t0:t1]                 # indices from 0: no wraparound fix-ups
    full = valid >= 2 * lanes
    for t in range(offs_block.shape[0]):
        xi = x_off + offs_block[t]
        if full:
            x0 = vector_load(xq, xi)
            x1 = vector_load(xq, xi + lanes)
        else:
            x0 = vector_load_first(xq, xi, valid)
            x1 = vector_load_first(xq, xi + lanes, valid - lanes)
        w = vector_broadcast(wp, wi)
        c00 = vector_fma(w, x0, c00)
        c01 = vector_fma(w, x1, c01)
        w = vector_broadcast(wp, wi + 1)
        c10 = vector_fma(w, x0, c10)
        c11 = vector_fma(w, x1, c11)
        w = vector_broadcast(wp, wi + 2)
        c20 = vector_fma(w, x0, c20)
        c21 = vector_fma(w, x1, c21)
        w = vector_broadcast(wp, wi + 3)
        c30 = vector_fma(w, x0, c30)
        c31 = vector_fma(w, x1, c31)
        w = vector_broadcast(wp, wi + 4)
        c40 = vector_fma(w, x0, c40)
        c41 = vector_fma(w, x1, c41)
        w = vector_broadcast(wp, wi + 5)
        c50 = vector_fma(w, x0, c50)
        c51 = vector_fma(w, x1, c51)
        wi += MR
    vector_store(tile, t_off, c00)
    vector_store(tile, t_off + lanes, c01)
    vector_store(tile, t_off + ld, c10)
    vector_store(tile, t_off + ld + lanes, c11)
    vector_store(tile, t_off + 2 * ld, c20)
    vector_store(tile, t_off + 2 * ld + lanes, c21)
    vector_store(tile, t_off + 3 * ld, c30)
    vector_store(tile, t_off + 3 * ld + lanes, c31)
    vector_store(tile, t_off + 4 * ld, c40)
    vector_store(tile, t_off + 4 * ld + lanes, c41)
    vector_store(tile, t_off + 5 * ld, c50)
    vector_store(tile, t_off + 5 * ld + lanes, c51)


@njit(cache=True, nogil=True, parallel=True)
def forward_phases(xq, wp, offs, b, y, channels, phases, hq, wq, groups, seg_rows, block_taps):
    """y[n, k, oh, ow] = b[k] + sum over taps of w * xpad (layouts in the module docstring).

    channels = C, phases = SH*SW, seg_rows output rows per work item, block_taps taps (a
    multiple of R*S: whole input channels) per pass over a segment's chunks, so the input
    rows and weights of a pass stay in L1. Parallel over (n, row segment, channel block)."""
    N, K, OH, OW = y.shape
    Kg = K // groups
    Cg = channels // groups
    kb_per_group = (Kg + MR - 1) // MR
    KB = groups * kb_per_group
    taps = offs.shape[0]
    lanes = VECTOR_BYTES // y.itemsize
    vw = NV * lanes
    chan_stride = phases * hq * wq
    segs = (OH + seg_rows - 1) // seg_rows
    for item in prange(N * segs * KB):
        n = item // (segs * KB)
        seg = (item // KB) % segs
        kb = item % KB
        g = kb // kb_per_group
        k0 = g * Kg + (kb % kb_per_group) * MR
        mr = min(MR, (g + 1) * Kg - k0)
        oh0 = seg * seg_rows
        oh1 = min(OH, oh0 + seg_rows)
        length = (oh1 - 1 - oh0) * wq + OW
        chunks = (length + vw - 1) // vw
        ld = chunks * vw
        tile = np.empty(MR * ld, dtype=y.dtype)
        x_base = (n * channels + g * Cg) * chan_stride + oh0 * wq
        w_base = kb * taps * MR
        for t0 in range(0, taps, block_taps):
            t1 = min(taps, t0 + block_taps)
            for ch in range(chunks):
                _chunk_6x2(xq, x_base + ch * vw, wp, w_base, offs, t0, t1, tile, ch * vw, ld,
                           t0 > 0, length - ch * vw)
        for m in range(mr):
            k = k0 + m
            bk = b[k]
            for oh in range(oh0, oh1):
                src = m * ld + (oh - oh0) * wq
                y_row = y[n, k, oh]
                for ow in range(OW):
                    y_row[ow] = tile[src + ow] + bk


# ---------------------------------------------------------------------------
# Batch-vector variant: vectors along a block of NB images, for small output planes.
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True, parallel=True)
def interleave_batch(x, xi, top, left, hp, wp, nb):
    """xi[(((blk*C + c)*hp + i)*wp + j)*nb + v] = xpad[blk*nb + v, c, i, j]: the zero-padded
    input with blocks of nb images innermost (images past N are zero)."""
    N, C, H, W = x.shape
    blocks = (N + nb - 1) // nb
    zero = xi.dtype.type(0)
    for item in prange(blocks * C * hp):
        blk = item // (C * hp)
        c = (item // hp) % C
        i = item % hp
        o = item * wp * nb
        row = i - top
        if row < 0 or row >= H:
            xi[o:o + wp * nb] = zero
            continue
        images = min(nb, N - blk * nb)
        if images < nb or wp > W:                # lanes or columns that stay zero
            xi[o:o + wp * nb] = zero
        for v in range(images):                  # read rows contiguously, write with stride nb
            x_row = x[blk * nb + v, c, row]
            q = o + left * nb + v
            for col in range(W):
                xi[q + col * nb] = x_row[col]


@njit(cache=True, nogil=True, parallel=True)
def forward_interleaved(xi, wp, offs, b, y, channels, hp, wpitch, sh, sw, groups, seg_len,
                         block_taps):
    """Same result as forward_phases, vectorised along blocks of NB = NV*LANES images.

    xi: interleave_batch's layout with nb = NB; wp, b, y as for forward_phases; offs[t] =
    (c*hp*wpitch + r*DH*wpitch + s*DW)*NB for t = (c, r, s) of a group. A chunk is one output
    position (oh, ow) x NB images: the micro-kernel of forward_phases with x_off =
    ((blk*C + g*Cg)*hp*wpitch + oh*SH*wpitch + ow*SW)*NB, every load aligned to the block.
    Parallel over (image block, segment of seg_len output positions, channel block), channel
    block innermost; block_taps taps per pass over a segment's chunks."""
    N, K, OH, OW = y.shape
    Kg = K // groups
    Cg = channels // groups
    kb_per_group = (Kg + MR - 1) // MR
    KB = groups * kb_per_group
    taps = offs.shape[0]
    lanes = VECTOR_BYTES // y.itemsize
    nb = NV * lanes
    blocks = (N + nb - 1) // nb
    positions = OH * OW
    segs = (positions + seg_len - 1) // seg_len
    plane = hp * wpitch
    y_flat = y.reshape(N * K * positions)
    for item in prange(blocks * segs * KB):
        blk = item // (segs * KB)
        seg = (item // KB) % segs
        kb = item % KB
        g = kb // kb_per_group
        k0 = g * Kg + (kb % kb_per_group) * MR
        mr = min(MR, (g + 1) * Kg - k0)
        q0 = seg * seg_len
        q1 = min(positions, q0 + seg_len)
        ld = (q1 - q0) * nb
        tile = np.empty(MR * ld, dtype=y.dtype)
        x_base = (blk * channels + g * Cg) * plane
        w_base = kb * taps * MR
        for t0 in range(0, taps, block_taps):
            t1 = min(taps, t0 + block_taps)
            for q in range(q0, q1):
                oh = q // OW
                ow = q - oh * OW
                x_off = (x_base + oh * sh * wpitch + ow * sw) * nb
                _chunk_6x2(xi, x_off, wp, w_base, offs, t0, t1, tile, (q - q0) * nb, ld,
                           t0 > 0, nb)
        images = min(nb, N - blk * nb)
        for m in range(mr):
            k = k0 + m
            bk = b[k]
            for v in range(images):
                out = ((blk * nb + v) * K + k) * positions
                src = m * ld + v
                for q in range(q0, q1):
                    y_flat[out + q] = tile[src + (q - q0) * nb] + bk


# ---------------------------------------------------------------------------
# Weight gradient: vectors along output positions, a KR x TR tile of (channel, tap) sums per register set.
# ---------------------------------------------------------------------------
# gw[k, t] = sum_n sum_q gyq[n, k, q] * xq[n-th image's group planes + offs[t] + q], q over the rows kernel's
# positions (q = oh*Wq + ow, grad_y zero at ow >= OW): the forward's layout and tap offsets, read as a GEMM
# whose long dimension is the positions. Layouts:
# - xq: the rows kernel's phase-split input followed by at least LANES zeros (a tile's last vector may
#   read past the last position).
# - gyq: 1-D, grad_y gathered into channel blocks with the input's row pitch:
#       gyq[((n*KB + kb)*KR + m)*Lp + oh*Wq + ow] = grad_y[n, g*Kg + (kb % KBg)*KR + m, oh, ow], KBg =
#       ceil(Kg/KR) blocks per group, zero at ow >= OW, at Lp > q >= L = (OH-1)*Wq + OW and past Kg;
#       Lp = L rounded up to LANES.
# - offs: (Tp,) the forward's tap offsets of one group, padded to a multiple of TR by repeating the last.
# - gwp: (KB, Tp, KR) flat, the packed weight gradient, overwritten.

KR = 4             # output channels per weight-gradient tile (grad_y rows)
TR = 3             # taps per weight-gradient tile (input runs)
GRAD_BLOCK = 1024  # positions (of one or more images) per pass of a tile: its grad_y rows and input runs stay in L1


@njit(cache=True, nogil=True)
def _grad_blocks(K, groups):
    """(KBg, KB): blocks of KR channels per group and in all."""
    kb_per_group = (K // groups + KR - 1) // KR
    return kb_per_group, groups * kb_per_group


@njit(cache=True, nogil=True)
def _grad_row(item, K, groups):
    """Row `item` of the gathered grad_y layouts, ((outer*KB + kb)*KR + m): (outer, group g, channel kk within
    the group (>= Kg: a zero row), Kg)."""
    kb_per_group, KB = _grad_blocks(K, groups)
    kb = (item // KR) % KB
    g = kb // kb_per_group
    return item // (KB * KR), g, (kb % kb_per_group) * KR + item % KR, K // groups


@njit(cache=True, nogil=True, parallel=True)
def gather_grad_rows(gy, gyq, groups, wq, lp):
    """Fill gyq (see the weight gradient's layouts) from grad_y (N, K, OH, OW)."""
    N, K, OH, OW = gy.shape
    KB = _grad_blocks(K, groups)[1]
    zero = gyq.dtype.type(0)
    for item in prange(N * KB * KR):
        n, g, kk, Kg = _grad_row(item, K, groups)
        o = item * lp
        if kk >= Kg:
            for q in range(lp):
                gyq[o + q] = zero
            continue
        row = gy[n, g * Kg + kk]
        for oh in range(OH):
            for ow in range(OW):
                gyq[o + oh * wq + ow] = row[oh, ow]
            if oh < OH - 1:
                for ow in range(OW, wq):
                    gyq[o + oh * wq + ow] = zero
        for q in range((OH - 1) * wq + OW, lp):
            gyq[o + q] = zero


@njit(cache=True, nogil=True)
def _grad_tile_4x3(gyq, g_off, g_step, ld, xq, x_off, x_step, offs, t, acc, a_off, images, vectors):
    """acc[a_off + (j*KR + m)*LANES + lane] += sum over images i < `images` and vectors v < `vectors` of
    gyq[g_off + i*g_step + m*ld + v*LANES + lane] * xq[x_off + i*x_step + offs[t + j] + v*LANES + lane],
    m < 4, j < 3: 12 vector accumulators in registers."""
    lanes = VECTOR_BYTES // xq.itemsize
    c00 = vector_load(acc, a_off)
    c01 = vector_load(acc, a_off + lanes)
    c02 = vector_load(acc, a_off + 2 * lanes)
    c03 = vector_load(acc, a_off + 3 * lanes)
    c10 = vector_load(acc, a_off + 4 * lanes)
    c11 = vector_load(acc, a_off + 5 * lanes)
    c12 = vector_load(acc, a_off + 6 * lanes)
    c13 = vector_load(acc, a_off + 7 * lanes)
    c20 = vector_load(acc, a_off + 8 * lanes)
    c21 = vector_load(acc, a_off + 9 * lanes)
    c22 = vector_load(acc, a_off + 10 * lanes)
    c23 = vector_load(acc, a_off + 11 * lanes)
    for i in range(images):
        g0i = g_off + i * g_step
        x0i = x_off + i * x_step + offs[t]
        x1i = x_off + i * x_step + offs[t + 1]
        x2i = x_off + i * x_step + offs[t + 2]
        for v in range(vectors):
            q = v * lanes
            g0 = vector_load(gyq, g0i + q)
            g1 = vector_load(gyq, g0i + ld + q)
            g2 = vector_load(gyq, g0i + 2 * ld + q)
            g3 = vector_load(gyq, g0i + 3 * ld + q)
            x = vector_load(xq, x0i + q)
            c00 = vector_fma(g0, x, c00)
            c01 = vector_fma(g1, x, c01)
            c02 = vector_fma(g2, x, c02)
            c03 = vector_fma(g3, x, c03)
            x = vector_load(xq, x1i + q)
            c10 = vector_fma(g0, x, c10)
            c11 = vector_fma(g1, x, c11)
            c12 = vector_fma(g2, x, c12)
            c13 = vector_fma(g3, x, c13)
            x = vector_load(xq, x2i + q)
            c20 = vector_fma(g0, x, c20)
            c21 = vector_fma(g1, x, c21)
            c22 = vector_fma(g2, x, c22)
            c23 = vector_fma(g3, x, c23)
    vector_store(acc, a_off, c00)
    vector_store(acc, a_off + lanes, c01)
    vector_store(acc, a_off + 2 * lanes, c02)
    vector_store(acc, a_off + 3 * lanes, c03)
    vector_store(acc, a_off + 4 * lanes, c10)
    vector_store(acc, a_off + 5 * lanes, c11)
    vector_store(acc, a_off + 6 * lanes, c12)
    vector_store(acc, a_off + 7 * lanes, c13)
    vector_store(acc, a_off + 8 * lanes, c20)
    vector_store(acc, a_off + 9 * lanes, c21)
    vector_store(acc, a_off + 10 * lanes, c22)
    vector_store(acc, a_off + 11 * lanes, c23)


@njit(cache=True, nogil=True)
def _sum_lanes(acc, gwp, kb, t0, t1, taps):
    """gwp[(kb*taps + t)*KR + m] = the sum of the LANES lanes of tile sums acc for taps t0 <= t < t1."""
    lanes = VECTOR_BYTES // acc.itemsize
    tile = TR * KR * lanes
    for t in range(t0, t1):
        a = (t - t0) // TR * tile + (t - t0) % TR * KR * lanes
        for m in range(KR):
            s = acc[a + m * lanes]
            for lane in range(1, lanes):
                s += acc[a + m * lanes + lane]
            gwp[(kb * taps + t) * KR + m] = s


@njit(cache=True, nogil=True, parallel=True)
def backward_weight_phases(xq, gyq, offs, gwp, n_images, channels, chan_stride, groups, kb_per_group, lp,
                           tap_chunk):
    """gwp[(kb*Tp + t)*KR + m] = sum_n sum_q gyq[...] * xq[...] (layouts above): the weight gradient.

    Parallel over (channel block kb, chunk of tap_chunk taps, a multiple of TR): each item owns its part of
    gwp (no reduction between threads). Per block of about GRAD_BLOCK positions (part of an image's, or the
    whole planes of several images), every tile of the chunk sweeps the block with its sums in vector
    registers, kept between blocks as vectors (one horizontal sum per item at the end)."""
    taps = offs.shape[0]
    KB = gwp.shape[0] // (taps * KR)
    Cg = channels // groups
    lanes = VECTOR_BYTES // xq.itemsize
    tile = TR * KR * lanes
    chunks = (taps + tap_chunk - 1) // tap_chunk
    total_vectors = lp // lanes
    block_vectors = min(total_vectors, GRAD_BLOCK // lanes)
    block_images = max(1, GRAD_BLOCK // lp)  # small planes: a pass sweeps several images
    for item in prange(KB * chunks):
        kb = item // chunks
        t0 = (item % chunks) * tap_chunk
        t1 = min(taps, t0 + tap_chunk)
        g = kb // kb_per_group
        acc = np.zeros((t1 - t0) // TR * tile, dtype=xq.dtype)
        for n0 in range(0, n_images, block_images):
            images = min(block_images, n_images - n0)
            g_base = (n0 * KB + kb) * KR * lp
            x_base = (n0 * channels + g * Cg) * chan_stride
            for v0 in range(0, total_vectors, block_vectors):
                vectors = min(block_vectors, total_vectors - v0)
                q0 = v0 * lanes
                for t in range(t0, t1, TR):
                    _grad_tile_4x3(gyq, g_base + q0, KB * KR * lp, lp, xq, x_base + q0, channels * chan_stride,
                                   offs, t, acc, (t - t0) // TR * tile, images, vectors)
        _sum_lanes(acc, gwp, kb, t0, t1, taps)


# Weight gradient for stride 1, vectors along blocks of NB = NV*LANES images (small planes, large batches):
# - xi: interleave_batch's layout (nb = NB).
# - gyi: grad_y with blocks of NB images innermost, channels in blocks of KR:
#       gyi[((((blk*KB + kb)*KR + m)*OH + oh)*OW + ow)*NB + v] = grad_y[blk*NB + v, g*Kg + (kb % KBg)*KR + m, oh, ow]
#       (zero for images >= N and channels past Kg).
# - offs: batch_tap_offsets ((c*Hp*Wp + r*DH*Wp + s*DW)*NB), padded to a multiple of TR.
# At stride 1 a row of OW outputs of a block is OW*NB consecutive elements in gyi, and the inputs a tap meets for
# it are OW*NB consecutive elements of xi: the same tile as the rows variant, its passes over output rows.

@njit(cache=True, nogil=True, parallel=True)
def interleave_grad_blocks(gy, gyi, groups, nb):
    """Fill gyi (layout above) from grad_y (N, K, OH, OW)."""
    N, K, OH, OW = gy.shape
    KB = _grad_blocks(K, groups)[1]
    P = OH * OW
    blocks = (N + nb - 1) // nb
    gyf = gy.reshape(N, K, P)
    zero = gyi.dtype.type(0)
    for item in prange(blocks * KB * KR):
        blk, g, kk, Kg = _grad_row(item, K, groups)
        o = item * P * nb
        images = min(nb, N - blk * nb)
        if kk >= Kg or images < nb:
            gyi[o:o + P * nb] = zero
        if kk >= Kg:
            continue
        for v in range(images):
            row = gyf[blk * nb + v, g * Kg + kk]
            for q in range(P):
                gyi[o + q * nb + v] = row[q]


@njit(cache=True, nogil=True, parallel=True)
def backward_weight_interleaved(xi, gyi, offs, gwp, blocks, channels, hp, wpitch, OH, OW, groups, kb_per_group,
                                tap_chunk):
    """backward_weight_phases's gwp for a stride-1 problem from the image-block layouts above. Parallel over
    (channel block, chunk of taps); per image block and pass of whole output rows (about GRAD_BLOCK
    positions x images), every tile of the chunk sweeps the pass's rows."""
    taps = offs.shape[0]
    KB = gwp.shape[0] // (taps * KR)
    Cg = channels // groups
    lanes = VECTOR_BYTES // xi.itemsize
    nb = NV * lanes
    tile = TR * KR * lanes
    chunks = (taps + tap_chunk - 1) // tap_chunk
    plane = OH * OW * nb
    row_vectors = OW * NV
    pass_rows = max(1, min(OH, GRAD_BLOCK // (OW * nb)))
    for item in prange(KB * chunks):
        kb = item // chunks
        t0 = (item % chunks) * tap_chunk
        t1 = min(taps, t0 + tap_chunk)
        g = kb // kb_per_group
        acc = np.zeros((t1 - t0) // TR * tile, dtype=xi.dtype)
        for blk in range(blocks):
            g_base = (blk * KB + kb) * KR * plane
            x_base = (blk * channels + g * Cg) * hp * wpitch * nb
            for oh0 in range(0, OH, pass_rows):
                rows = min(pass_rows, OH - oh0)
                for t in range(t0, t1, TR):
                    _grad_tile_4x3(gyi, g_base + oh0 * OW * nb, OW * nb, plane, xi, x_base + oh0 * wpitch * nb,
                                   wpitch * nb, offs, t, acc, (t - t0) // TR * tile, rows, row_vectors)
        _sum_lanes(acc, gwp, kb, t0, t1, taps)
