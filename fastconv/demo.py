"""`fastconv demo`: every conv2d algorithm on a few real layers, its agreement with the
naive reference and its time, next to PyTorch's when PyTorch is installed (timed in a process of its
own, by the benchmark suite's harness: sharing a process with another library's thread pools is not
how PyTorch runs for its users)."""
from __future__ import annotations

import time

import numpy as np

from . import runtime
from ._checks import conv2d_shape
from .conv import CONV2D, conv2d

# (name, x shape (N, C, H, W), K, kernel, padding)
LAYERS = [
    ("LeNet-5 conv1", (64, 1, 28, 28), 6, 5, 2),
    ("CIFAR conv1", (64, 3, 32, 32), 32, 3, 0),
    ("CIFAR conv2", (64, 32, 15, 15), 64, 3, 0),
    ("CIFAR conv3", (64, 64, 6, 6), 64, 3, 0),
]


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _torch_seconds(shape: tuple[int, int, int, int], k: int, r: int, pad: int, repeat: int) -> float | None:
    """PyTorch's median forward time on the layer, in a worker process of its own with fastconv's thread
    count (``fastconv.benchmarks.harness``); None where PyTorch is not installed."""
    from .benchmarks import cases, harness
    if harness.missing("pytorch"):
        return None
    case = cases.Conv("demo", "demo", *shape, k, r, padding=pad)
    timer = harness.Harness(runtime.num_threads(), harness.Plan(rounds=repeat, block_s=0.05))
    try:
        result = timer.measure([harness.Entry("demo", "pytorch", {
            "suite": "conv2d", "case": cases.case_to_dict(case), "pass": "forward", "impl": "pytorch",
            "dtype": "float32"})])["demo"]
    finally:
        timer.close()
    if result.error is not None:
        raise RuntimeError(f"timing PyTorch failed: {result.error}")
    return float(np.median(result.seconds))


def run(repeat: int = 5) -> None:
    rng = np.random.default_rng(0)
    print(f"{'layer':<15}{'algorithm':<15}{'first call s':>13}{'median ms':>11}{'GFLOP/s':>9}"
          f"{'max |err|':>11}")
    for name, shape, k, r, pad in LAYERS:
        x = rng.standard_normal(shape).astype(np.float32)
        w = (rng.standard_normal((k, shape[1], r, r)) / np.sqrt(shape[1] * r * r)).astype(np.float32)
        reference = conv2d(x[:1], w, padding=pad, algo="naive")
        n, _, h, wd = shape
        flops = 2 * n * k * (h + 2 * pad - r + 1) * (wd + 2 * pad - r + 1) * shape[1] * r * r
        p = conv2d_shape(x, w, 1, pad, 1, 1)
        for record in CONV2D.records("cpu"):
            algo = record.name
            if record.reference:
                seconds = median_seconds(lambda: conv2d(x[:1], w, padding=pad, algo=algo), 1) * n
                first, err, label = 0.0, 0.0, f"{algo}*"
            elif record.unsupported(p) is not None:
                print(f"{name:<15}{algo:<15}  ({record.unsupported(p)})")
                continue
            else:
                t0 = time.perf_counter()
                y = conv2d(x, w, padding=pad, algo=algo)
                first = time.perf_counter() - t0
                seconds = median_seconds(lambda: conv2d(x, w, padding=pad, algo=algo), repeat)
                err, label = float(np.abs(y[:1] - reference).max()), algo
            first_text = "-" if record.reference else f"{first:.3f}"
            print(f"{name:<15}{label:<15}{first_text:>13}{seconds * 1e3:>11.2f}{flops / seconds / 1e9:>9.3g}"
                  f"{err:>11.2e}")
        seconds = _torch_seconds(shape, k, r, pad, repeat)
        if seconds is not None:
            print(f"{name:<15}{'pytorch':<15}{'-':>13}{seconds * 1e3:>11.2f}{flops / seconds / 1e9:>9.3g}")
    print("naive*: plain Python loops timed on one image and scaled to the batch; max |err| is against it.")
