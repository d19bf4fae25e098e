"""Where a training step's time goes: per layer, forward and backward, for the training-step models.

    python -m benchmarks.profile_training [--steps 20] > profile_training.md

Runs each model's step as the trainer does (Adam, input gradient off, freed memory kept), times every leaf
layer's forward and backward (mean over the steps after 5 warm-up steps: autotuning and compiling happen
there), and lists the algorithm ``auto`` chose for each convolution pass. One process, fastconv only: for
ratios against PyTorch use the benchmark suite (each library in its own process).
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import fastconv as fc
from fastconv import autotune, models, nn, optim, runtime

MODELS = {"lenet5": (64, (1, 28, 28)), "cifar_cnn": (64, (3, 32, 32)), "resnet20": (128, (3, 32, 32))}


def profile(name: str, steps: int) -> str:
    n, shape = MODELS[name]
    fc.manual_seed(0)
    runtime.keep_freed_memory()
    model = models.MODELS[name]().set_input_grad(False)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    times: dict[tuple[str, str], float] = collections.defaultdict(float)
    for path, m in _leaves(model):
        for kind in ("forward", "backward"):
            timed = getattr(m, kind)

            def wrapper(*args, timed=timed, key=(f"{path} {type(m).__name__}", kind)):
                start = time.perf_counter()
                out = timed(*args)
                times[key] += time.perf_counter() - start
                return out
            setattr(m, kind, wrapper)

    def step() -> None:
        opt.zero_grad()
        loss, grad = nn.cross_entropy(model(x), y)
        model.backward(grad)
        opt.step()
    for _ in range(5):
        step()
    times.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - start) / steps
    lines = [f"### {name}, batch {n}: {total * 1e3:.2f} ms per step ({n / total:,.0f} images/s), {steps} steps", "",
             "| layer | pass | ms per step | share |", "|:---|:---|---:|---:|"]
    layers = sum(times.values()) / steps
    for (layer, kind), seconds in sorted(times.items(), key=lambda kv: -kv[1]):
        if seconds / steps >= 0.01 * total:
            lines.append(f"| {layer} | {kind} | {seconds / steps * 1e3:.2f} | {seconds / steps / total:.0%} |")
    kinds: dict[str, float] = collections.defaultdict(float)
    for (layer, kind), seconds in times.items():
        kinds[f"{layer.split()[-1]} {kind}"] += seconds / steps
    lines += ["", "By layer type: " + ", ".join(f"{what} {seconds * 1e3:.1f} ms" for what, seconds in
                                               sorted(kinds.items(), key=lambda kv: -kv[1]) if seconds >= 1e-4) + "."]
    lines += ["", f"Leaf layers: {layers * 1e3:.2f} ms of the {total * 1e3:.2f} ms step (the rest: the loss, Adam, the "
              "Python between layers; ReLU before MaxPool2d runs inside MaxPool2d).", ""]
    return "\n".join(lines)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    children = list(module.children())
    if not children:
        return [(prefix or type(module).__name__, module)]
    return [leaf for name, child in children for leaf in _leaves(child, f"{prefix}{name}.")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print("## Training step profile (fastconv alone, float32)\n")
    for name in MODELS:
        print(profile(name, args.steps))
    print("### Algorithms auto chose (per problem and pass)\n")
    for key, algo in sorted(autotune.choices().items()):
        print(f"- `{key.split('.s(')[0]}`: {algo}")


if __name__ == "__main__":
    main()
