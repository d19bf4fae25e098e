"""The GPU suite (``--fc-device cuda``): fastconv's GPU algorithms (``fc.algorithms(op, device="cuda")``)
and "auto" against PyTorch on the same GPU (cuDNN and cuBLAS, float32 with TF32 off: ``peers.torch_on``),
each library in its own worker process as on the CPU (``harness.py``).

conv2d forward and backward on the conv layers, GEMM (tiled) on square sizes up to 4096^3 and the im2col
shapes of ResNet and VGG, max/avg pooling forward and backward, and the cifar_cnn training step at batch 256
(fastconv on the GPU, its PyTorch twin on the GPU, and fastconv's CPU path on the same batch: "cpu").

Inputs are copied to the GPU outside the timing; outputs are allocated inside it, as on the CPU. Every
timed call waits for the GPU (``fastconv.device.synchronize()``, ``torch.cuda.synchronize()``) before it
returns; the first call (``first_call_s``: kernel compilation, cuDNN's autotuning) is reported apart from
the timed rounds. ``peak_memory_bytes`` is host memory only. Suites are named ``cuda_<op>`` so that the
records never mix with the CPU ones in a report.
"""
from __future__ import annotations

import pytest

import fastconv as fc

from .cases import PASSES, gpu_conv_cases, gpu_gemm_cases, gpu_pool_cases, gpu_train_cases
from .harness import Bench

OPS = ("max_pool2d", "avg_pool2d")


def impls(op: str) -> list[str]:
    return fc.algorithms(op, device="cuda") + ["auto", "pytorch"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The cases of --fc-size; none without --fc-device cuda (this module run by path on the CPU suite)."""
    size = metafunc.config.getoption("fc_size")
    name = metafunc.function.__name__
    if name == "test_cuda_conv":
        params = [pytest.param(Bench("cuda_conv2d", c, p, i, "cuda"), id=f"{c.name}-{p}-{i}")
                  for c in gpu_conv_cases(size) for p in c.passes for i in impls("conv2d")]
    elif name == "test_cuda_pool":
        params = [pytest.param(Bench("cuda_" + op, c, p, i, "cuda"), id=f"{c.name}-{op[:3]}-{p}-{i}")
                  for c in gpu_pool_cases(size) for op in OPS for p in PASSES for i in impls(op)]
    elif name == "test_cuda_gemm":
        params = [pytest.param(Bench("cuda_gemm", c, "forward", i, "cuda"), id=f"{c.name}-{i}")
                  for c in gpu_gemm_cases(size) for i in impls("gemm")]
    else:  # "cpu": fastconv's CPU path on the same batch, the reference of the GPU target
        params = [pytest.param(Bench("cuda_train_step", c, "step", i, "cpu" if i == "cpu" else "cuda"),
                               id=f"{c.name}-step-{i}")
                  for c in gpu_train_cases(size) for i in ("auto", "pytorch", "cpu")]
    on_gpu = metafunc.config.getoption("fc_device") == "cuda"
    metafunc.parametrize("bench", params if on_gpu else [])


def test_cuda_conv(fc_bench, bench: Bench) -> None:
    """One call: conv2d (forward, no bias) or conv2d_backward (grad_x, grad_w, grad_b) of the whole case."""
    fc_bench(bench)


def test_cuda_pool(fc_bench, bench: Bench) -> None:
    """One call: the pooling op (forward) or its backward given grad_y and x (max: and the forward's indices)."""
    fc_bench(bench)


def test_cuda_gemm(fc_bench, bench: Bench) -> None:
    """One call: c = a @ b of the whole case (the output allocation included)."""
    fc_bench(bench)


def test_cuda_train_step(fc_bench, bench: Bench) -> None:
    """One call: a whole training step (zero_grad, forward, loss, backward, Adam step) at the case's batch."""
    fc_bench(bench)
