"""Where conv2d's forward time goes on this machine: the ceilings and the per-step figures behind the closing
notes of the forward-speed work (issue 15). Run it alone on a quiet machine:

    python -m fastconv.benchmarks.profile_forward [--rounds N] [--out profile.md]

It prints (and writes as Markdown) the minimum over N interleaved rounds, all in this one process, of:
- the FMA peak: a register-only loop of fused multiply-adds at the SIMD width the kernels use, on every thread;
- the copy bandwidth: a parallel copy of 64 MiB (bytes read + written per second);
- direct_simd's kernel alone (``forward_phases``, its input already padded and phase-split) on the layers where
  it runs, against the whole ``fc.conv2d`` call: the kernel's share of the FMA peak and what the copies cost;
- Winograd F(4x4, 3x3)'s steps (weight transform and packing, input transform, products, output transform);
- the depthwise kernel's bytes moved per second against the copy bandwidth;
- the 1x1 layer against NumPy's sgemm at the same M, N, K (timed last, after the Numba kernels: OpenBLAS's
  threads spin after each call and would slow the kernels interleaved with it).
The harness's ratios to PyTorch and ONNX Runtime are ``fastconv bench``'s; this is the profile under them.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from numba import njit, prange

import fastconv as fc
from fastconv import direct_simd, winograd
from fastconv._checks import conv2d_shape
from fastconv.kernels import conv_direct_simd, conv_winograd
from fastconv.kernels.simd import VECTOR_BYTES, vector_fma, vector_load, vector_store

PEAK_ITERATIONS = 20_000_000
COPY_ELEMENTS = 16 * 2**20  # float32: 64 MiB


@njit(parallel=True)
def _fma_loop(a, iterations, out, threads):
    """12 independent accumulators of fma(x, y, c) per thread, `iterations` times: 12 * 2 * LANES FLOPs each."""
    lanes = VECTOR_BYTES // a.itemsize
    for t in prange(threads):
        x = vector_load(a, 0)
        y = vector_load(a, lanes)
        c0, c1, c2, c3 = vector_load(a, 0), vector_load(a, 0), vector_load(a, 0), vector_load(a, 0)
        c4, c5, c6, c7 = vector_load(a, 0), vector_load(a, 0), vector_load(a, 0), vector_load(a, 0)
        c8, c9, c10, c11 = vector_load(a, 0), vector_load(a, 0), vector_load(a, 0), vector_load(a, 0)
        for _ in range(iterations):
            c0, c1, c2, c3 = vector_fma(x, y, c0), vector_fma(x, y, c1), vector_fma(x, y, c2), vector_fma(x, y, c3)
            c4, c5, c6, c7 = vector_fma(x, y, c4), vector_fma(x, y, c5), vector_fma(x, y, c6), vector_fma(x, y, c7)
            c8, c9, c10, c11 = vector_fma(x, y, c8), vector_fma(x, y, c9), vector_fma(x, y, c10), vector_fma(x, y, c11)
        o = t * 12 * lanes
        for i, c in enumerate((c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11)):
            vector_store(out, o + i * lanes, c)


@njit(parallel=True)
def _copy(a, b):
    for i in prange(a.size):
        b[i] = a[i]


def _best(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The fastest of `rounds` interleaved calls of each (one untimed call first)."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def ceilings(rounds: int) -> tuple[float, float]:
    """(FMA peak in GFLOP/s, copy bandwidth in GB/s) with Numba's threads."""
    threads = fc.runtime.num_threads()
    lanes = VECTOR_BYTES // 4
    a = np.full(2 * lanes, 1e-8, np.float32)
    out = np.zeros(threads * 12 * lanes, np.float32)
    src = np.random.default_rng(0).random(COPY_ELEMENTS, np.float32)
    dst = np.empty_like(src)
    best = _best({"fma": lambda: _fma_loop(a, PEAK_ITERATIONS, out, threads), "copy": lambda: _copy(src, dst)},
                 rounds)
    return threads * PEAK_ITERATIONS * 12 * 2 * lanes / best["fma"] / 1e9, 2 * src.nbytes / best["copy"] / 1e9


DIRECT_LAYERS = {  # name: (x shape, weight shape, stride, padding)
    "ResNet stage 8x64x56x56 -> 64 3x3": ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    "ResNet downsample 8x128x28x28 -> 256 3x3 s2": ((8, 128, 28, 28), (256, 128, 3, 3), 2, 1),
    "AlexNet conv1 8x3x224x224 -> 64 11x11 s4": ((8, 3, 224, 224), (64, 3, 11, 11), 4, 2),
    "MobileNet stem 8x3x224x224 -> 32 3x3 s2": ((8, 3, 224, 224), (32, 3, 3, 3), 2, 1),
    "pointwise 8x256x14x14 -> 64 1x1": ((8, 256, 14, 14), (64, 256, 1, 1), 1, 0),
}


def direct_simd_rows(rounds: int, peak: float) -> list[str]:
    """Per layer: the row kernel alone and the whole call, GFLOP/s and the share of the FMA peak."""
    lines = ["| layer | kernel alone | GFLOP/s | % FMA peak | whole fc.conv2d | copies and the rest |",
             "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(1)
    for label, (xs, ws, stride, pad) in DIRECT_LAYERS.items():
        x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
        p = conv2d_shape(x, w, stride, pad, 1, 1)
        hq, wq = -(-(p.h + 2 * pad) // stride), -(-(p.w + 2 * pad) // stride)
        xq = np.zeros(p.n * p.c * stride * stride * hq * wq, np.float32)
        conv_direct_simd.phase_split(x, xq, pad, pad, stride, stride, hq, wq)
        wpk, offs = direct_simd.packed_weights(w, 1), direct_simd.tap_offsets(p, hq, wq)
        b, y = np.zeros(p.k, np.float32), np.empty(p.y_shape, np.float32)
        block_taps = max(1, conv_direct_simd.BLOCK_TAPS // (p.r * p.s)) * p.r * p.s
        seg = direct_simd._segment_rows(p.oh, wq)
        best = _best({"kernel": lambda: conv_direct_simd.forward_phases(xq, wpk, offs, b, y, p.c, stride * stride, hq,
                                                                        wq, 1, seg, block_taps),
                      "call": lambda: fc.conv2d(x, w, stride=stride, padding=pad, algo="direct_simd")}, rounds)
        gflops = p.flops / best["kernel"] / 1e9
        lines.append(f"| {label} | {best['kernel'] * 1e3:.2f} ms | {gflops:.0f} | {100 * gflops / peak:.0f}% | "
                     f"{best['call'] * 1e3:.2f} ms | {(best['call'] - best['kernel']) * 1e3:.2f} ms |")
    return lines


WINOGRAD_LAYERS = {"ResNet stage 8x64x56x56 -> 64": ((8, 64, 56, 56), (64, 64, 3, 3)),
                   "VGG 8x256x28x28 -> 256": ((8, 256, 28, 28), (256, 256, 3, 3))}


def winograd_steps(rounds: int) -> list[str]:
    """F(4x4, 3x3)'s steps on one batch chunk (the whole batch), and direct_simd's whole call."""
    lines = ["| layer | weights (transform + pack) | input transform | products (GFLOP/s) | output transform | "
             "winograd_4x4 call | direct_simd call |", "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(2)
    for label, (xs, ws) in WINOGRAD_LAYERS.items():
        x = rng.standard_normal(xs).astype(np.float32)
        w = (rng.standard_normal(ws) / np.sqrt(9 * ws[1])).astype(np.float32)
        p = conv2d_shape(x, w, 1, 1, 1, 1)
        th, tw = -(-p.oh // 4), -(-p.ow // 4)
        t = p.n * th * tw
        nr = 2 * (VECTOR_BYTES // 4)
        u = np.empty((36, p.k, p.c), np.float32)
        b_pack = np.empty((36, 1, p.c * (-(-p.k // nr) * nr)), np.float32)
        v, m = np.empty((36, p.c, t), np.float32), np.empty((36, 1, t, p.k), np.float32)
        b, y = np.zeros(p.k, np.float32), np.empty(p.y_shape, np.float32)
        best = _best({
            "weights": lambda: (conv_winograd.filter_transform_4x4(w, u), conv_winograd.pack_transformed_filters(u, b_pack)),
            "input": lambda: conv_winograd.input_transform_4x4(x, v, 0, 1, 1, th, tw),
            "products": lambda: conv_winograd.products(v, b_pack, m),
            "output": lambda: conv_winograd.output_transform_4x4(m, b, y, 0, th, tw),
            "call": lambda: winograd.forward(x, w, None, p, 4),
            "direct": lambda: fc.conv2d(x, w, padding=1, algo="direct_simd")}, rounds)
        products = 2 * 36 * t * p.c * p.k / best["products"] / 1e9
        lines.append(f"| {label} | {best['weights'] * 1e3:.2f} ms | {best['input'] * 1e3:.2f} ms | "
                     f"{best['products'] * 1e3:.2f} ms ({products:.0f}) | {best['output'] * 1e3:.2f} ms | "
                     f"{best['call'] * 1e3:.2f} ms | {best['direct'] * 1e3:.2f} ms |")
    return lines


def depthwise_and_pointwise(rounds: int, bandwidth: float) -> list[str]:
    """The depthwise kernel's bytes moved per second; the 1x1 layer against NumPy's sgemm at the same M, N, K."""
    rng = np.random.default_rng(3)
    lines = []
    for label, xs, ws, stride, pad in (("depthwise 8x128x56x56 3x3", (8, 128, 56, 56), (128, 1, 3, 3), 1, 1),
                                       ("depthwise 8x240x28x28 5x5 s2", (8, 240, 28, 28), (240, 1, 5, 5), 2, 2)):
        x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
        y = fc.conv2d(x, w, stride=stride, padding=pad, groups=xs[1], algo="depthwise")
        best = _best({"call": lambda: fc.conv2d(x, w, stride=stride, padding=pad, groups=xs[1], algo="depthwise")},
                     rounds)
        rate = (x.nbytes + y.nbytes) / best["call"] / 1e9
        lines.append(f"- {label}: {best['call'] * 1e3:.2f} ms, {(x.nbytes + y.nbytes) / 1e6:.1f} MB moved: "
                     f"{rate:.1f} GB/s, {100 * rate / bandwidth:.0f}% of the copy bandwidth")
    x = rng.standard_normal((8, 256, 14, 14)).astype(np.float32)
    w = rng.standard_normal((64, 256, 1, 1)).astype(np.float32)
    a, bm = w.reshape(64, 256), rng.standard_normal((256, 8 * 196)).astype(np.float32)
    conv_s = _best({"conv": lambda: fc.conv2d(x, w, algo="direct_simd")}, rounds)["conv"]
    sgemm_s = _best({"sgemm": lambda: a @ bm}, rounds)["sgemm"]  # after, not interleaved: OpenBLAS's pool spins
    flops = 2 * 64 * 256 * 8 * 196
    conv, sgemm = flops / conv_s / 1e9, flops / sgemm_s / 1e9
    lines.append(f"- pointwise 8x256x14x14 -> 64 1x1: direct_simd {conv:.0f} GFLOP/s, NumPy's sgemm 64x256 @ "
                 f"256x1568 {sgemm:.0f} GFLOP/s: {conv / sgemm:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastconv.benchmarks.profile_forward", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per figure (the fastest counts)")
    parser.add_argument("--out", help="also write the profile as Markdown to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    peak, bandwidth = ceilings(args.rounds)
    lines = [f"# conv2d forward profile ({fc.runtime.num_threads()} threads, {VECTOR_BYTES * 8}-bit vectors, float32, "
             f"fastest of {args.rounds} interleaved rounds)", "",
             f"- FMA peak: {peak:.0f} GFLOP/s; copy bandwidth: {bandwidth:.1f} GB/s (read + write)", "",
             "## direct_simd: the row kernel alone and the whole call", "", *direct_simd_rows(args.rounds, peak), "",
             "## Winograd F(4x4, 3x3): its steps", "", *winograd_steps(args.rounds), "",
             "## Depthwise and 1x1", "", *depthwise_and_pointwise(args.rounds, bandwidth), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
