"""The GPU suite (``--fc-device cuda``): fastconv's GPU algorithms (``fc.algorithms(op, device="cuda")``)
and "auto" against PyTorch on the same GPU (cuDNN and cuBLAS, float32 with TF32 off: ``peers.torch_cuda``).

conv2d forward and backward on the conv layers, GEMM (tiled) on square sizes up to 4096^3 and the im2col
shapes of ResNet and VGG, max/avg pooling forward and backward, and the cifar_cnn training step at batch 256
(fastconv on the GPU, its PyTorch twin on the GPU, and fastconv's CPU path on the same batch: "cpu").

Inputs are copied to the GPU outside the timing; outputs are allocated inside it, as on the CPU. Every
timed call waits for the GPU (``fastconv.device.synchronize()``, ``torch.cuda.synchronize()``) before it
returns; the harness's first call (``first_call_s``: kernel compilation, cuDNN's autotuning) is reported
apart from the warmed-up rounds. ``peak_memory_bytes`` is host memory only. Suites are named
``cuda_<op>`` so that the records never mix with the CPU ones in a report.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

import fastconv as fc
from fastconv.device import synchronize, to_device

from . import peers
from .cases import (PASSES, TRAIN_LR, Train, conv_inputs, gemm_inputs, gpu_conv_cases, gpu_gemm_cases,
                    gpu_pool_cases, gpu_train_cases, pool_inputs, train_inputs)
from .test_train_bench import fastconv_step

GPU = {"device": "cuda", "threads": None}  # extra_info of every record
OPS = ("max_pool2d", "avg_pool2d")


def impls(op: str) -> list[str]:
    return fc.algorithms(op, device="cuda") + ["auto", "pytorch"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The cases of --fc-size; none without --fc-device cuda (this module run by path on the CPU suite)."""
    size = metafunc.config.getoption("fc_size")
    on_gpu = metafunc.config.getoption("fc_device") == "cuda"
    name = metafunc.function.__name__
    if name == "test_cuda_conv":
        params = [pytest.param(c, p, i, id=f"{c.name}-{p}-{i}")
                  for c in gpu_conv_cases(size) for p in PASSES for i in impls("conv2d")]
        argnames = "case,pass_,impl"
    elif name == "test_cuda_pool":
        params = [pytest.param(op, c, p, i, id=f"{c.name}-{op[:3]}-{p}-{i}")
                  for c in gpu_pool_cases(size) for op in OPS for p in PASSES for i in impls(op)]
        argnames = "op,case,pass_,impl"
    elif name == "test_cuda_gemm":
        params = [pytest.param(c, i, id=f"{c.name}-{i}") for c in gpu_gemm_cases(size) for i in impls("gemm")]
        argnames = "case,impl"
    else:
        params = [pytest.param(c, i, id=f"{c.name}-step-{i}")
                  for c in gpu_train_cases(size) for i in ("auto", "pytorch", "cpu")]
        argnames = "case,impl"
    metafunc.parametrize(argnames, params if on_gpu else [])


def synced(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` followed by a wait for every kernel it launched."""
    def run():
        out = fn()
        synchronize()
        return out
    return run


def test_cuda_conv(fc_bench, fc_dtype: str, case, pass_: str, impl: str) -> None:
    """One call: conv2d (forward, no bias) or conv2d_backward (grad_x, grad_w, grad_b) of the whole case."""
    def make(c):
        x, w, gy = conv_inputs(c, fc_dtype)
        if impl == "pytorch":
            return peers.torch_conv2d(pass_, x, w, gy, *c.args, device="cuda")
        x, w, gy = to_device(x), to_device(w), to_device(gy)
        if pass_ == "forward":
            return synced(lambda: fc.conv2d(x, w, None, *c.args, algo=impl))
        return synced(lambda: fc.conv2d_backward(gy, x, w, *c.args, algo=impl))
    fc_bench(make, suite="cuda_conv2d", case=case, pass_=pass_, impl=impl, extra=GPU)


def test_cuda_pool(fc_bench, fc_dtype: str, op: str, case, pass_: str, impl: str) -> None:
    """One call: the pooling op (forward) or its backward given grad_y and x (max: and the forward's indices)."""
    def make(c):
        x, gy = pool_inputs(c, fc_dtype)
        k, s = c.kernel, c.stride
        if impl == "pytorch":
            return peers.torch_pool2d(op, pass_, x, gy, k, s, device="cuda")
        x, gy = to_device(x), to_device(gy)
        if pass_ == "forward":
            return synced(lambda: getattr(fc, op)(x, k, s, algo=impl))
        if op == "max_pool2d":
            _, idx = fc.max_pool2d(x, k, s, return_indices=True)
            return synced(lambda: fc.max_pool2d_backward(gy, x, k, s, indices=idx, algo=impl))
        return synced(lambda: fc.avg_pool2d_backward(gy, x, k, s, algo=impl))
    fc_bench(make, suite="cuda_" + op, case=case, pass_=pass_, impl=impl, extra=GPU)


def test_cuda_gemm(fc_bench, fc_dtype: str, case, impl: str) -> None:
    """One call: c = a @ b of the whole case (the output allocation included)."""
    def make(c):
        a, b = gemm_inputs(c, fc_dtype)
        if impl == "pytorch":
            return peers.torch_gemm(a, b, device="cuda")
        a, b = to_device(a), to_device(b)
        return synced(lambda: fc.gemm(a, b, algo=impl))
    fc_bench(make, suite="cuda_gemm", case=case, pass_="forward", impl=impl, extra=GPU)


def gpu_step(case: Train, dtype: str) -> Callable[[], float]:
    """A fresh model on the GPU and Adam; each call is one step on the case's batch (already on the GPU)."""
    x, y = train_inputs(case, dtype)
    model = case.build().to(dtype).to("cuda")
    opt = fc.optim.Adam(model.parameters(), lr=TRAIN_LR)
    x, y = to_device(x), to_device(y)

    def step() -> float:
        opt.zero_grad()
        loss, grad = fc.nn.cross_entropy(model(x), y)
        model.backward(grad)
        opt.step()
        synchronize()
        return loss
    return step


def torch_gpu_step(case: Train, dtype: str) -> Callable[[], object]:
    """The same with the PyTorch twin of the fastconv model (same initial weights) on the GPU."""
    torch = peers.torch_cuda()
    x, y = train_inputs(case, dtype)
    model = peers.torch_model(case.build().to(dtype)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        return loss
    return step


def test_cuda_train_step(fc_bench, fc_dtype: str, case: Train, impl: str) -> None:
    """One call: a whole training step (zero_grad, forward, loss, backward, Adam step) at the case's batch;
    "cpu" is fastconv's CPU path on the same batch, the reference of the GPU target."""
    make = {"auto": gpu_step, "pytorch": torch_gpu_step, "cpu": fastconv_step}[impl]
    extra = {"images": case.n, **(GPU if impl != "cpu" else {"device": "cpu"})}
    fc_bench(lambda c: make(c, fc_dtype), suite="cuda_train_step", case=case, pass_="step", impl=impl, extra=extra)
