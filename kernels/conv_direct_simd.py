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
