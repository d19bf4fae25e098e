"""The measured calls of fastconv itself (every algorithm, "auto" and the naive loops), on the CPU or
the GPU, as the fastconv worker process (``worker.py``) builds them; whole ONNX networks run by
``fastconv.onnx``; and the model a PyTorch twin copies.

Imported by the fastconv worker only, as a top-level module beside ``cases`` and ``peers``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

import fastconv as fc

import cases
import peers


def _on(device: str) -> tuple[Callable[[np.ndarray], object], Callable[[Callable], Callable]]:
    """(a function moving an array to `device`, a wrapper making a call wait for the GPU on 'cuda')."""
    if device == "cpu":
        return (lambda a: a), (lambda fn: fn)
    from fastconv.device import synchronize, to_device

    def synced(fn):
        def run():
            out = fn()
            synchronize()
            return out
        return run
    return to_device, synced


def conv2d(case: cases.Conv, pass_: str, algo: str, dtype: str, device: str) -> Callable[[], object]:
    """conv2d (forward, no bias) or conv2d_backward (grad_x, grad_w, grad_b) of the whole case."""
    move, synced = _on(device)
    x, w, gy = (move(a) for a in cases.conv_inputs(case, dtype))
    if pass_ == "forward":
        return synced(lambda: fc.conv2d(x, w, None, *case.args, algo=algo))
    return synced(lambda: fc.conv2d_backward(gy, x, w, *case.args, algo=algo))


def pool2d(op: str, case: cases.Pool, pass_: str, algo: str, dtype: str, device: str) -> Callable[[], object]:
    """The pooling op, or its backward given grad_y and x; max pooling's backward is handed the forward's
    indices (computed here, outside the timing), as PyTorch's backward op is."""
    move, synced = _on(device)
    x, gy = (move(a) for a in cases.pool_inputs(case, dtype))
    k, s = case.kernel, case.stride
    if pass_ == "forward":
        return synced(lambda: getattr(fc, op)(x, k, s, algo=algo))
    if op == "max_pool2d":
        _, idx = fc.max_pool2d(x, k, s, return_indices=True)
        return synced(lambda: fc.max_pool2d_backward(gy, x, k, s, indices=idx, algo=algo))
    return synced(lambda: fc.avg_pool2d_backward(gy, x, k, s, algo=algo))


def gemm(case: cases.Gemm, algo: str, dtype: str, device: str) -> Callable[[], object]:
    """c = a @ b of the whole case (the output allocation included)."""
    move, synced = _on(device)
    a, b = (move(m) for m in cases.gemm_inputs(case, dtype))
    return synced(lambda: fc.gemm(a, b, algo=algo))


def network(case: cases.Network, onnx_file: str, dtype: str) -> Callable[[], object]:
    """One forward pass of the whole network in `onnx_file` (``fastconv.onnx.load``: checked and simplified
    here, outside the timing; the layers' default algorithms) on the case's batch."""
    import fastconv.onnx

    model = fastconv.onnx.load(onnx_file)
    feeds = {model.input_names[0]: cases.network_inputs(case, dtype)}
    return lambda: model.run(feeds)


def build_model(case: cases.Train, dtype: str) -> fc.nn.Module:
    """The case's model, its parameters drawn from ``fc.manual_seed(0)``, in `dtype`."""
    fc.manual_seed(0)
    return fc.models.MODELS[case.model](num_classes=case.classes, in_channels=case.c).to(dtype)


def train_step(case: cases.Train, dtype: str, device: str) -> Callable[[], object]:
    """A fresh model and Adam; each call is one step (zero_grad, forward, cross-entropy, backward, update)
    on the case's batch, with the layers' default algorithms, set up as the trainer runs it: the input's gradient
    is not computed (as by PyTorch for an input that does not require it) and freed memory is kept for the next
    step (``runtime.keep_freed_memory``, in this worker process only)."""
    fc.runtime.keep_freed_memory()
    move, synced = _on(device)
    x, y = (move(a) for a in cases.train_inputs(case, dtype))
    model = build_model(case, dtype).set_input_grad(False)
    if device != "cpu":
        model.to(device)
    opt = fc.optim.Adam(model.parameters(), lr=cases.TRAIN_LR)

    def step():
        opt.zero_grad()
        loss, grad = fc.nn.cross_entropy(model(x), y)
        model.backward(grad)
        opt.step()
        return loss
    return synced(step)


def export_model(case: cases.Train, dtype: str, path: str) -> dict:
    """Write the case's initial model weights to `path` (.npz) for a PyTorch twin; return its structure
    (``peers.model_spec``) and the step's FLOPs per image: 3x the forward FLOPs of the convolutions and
    linear layers (forward, grad_x, grad_w), 2 * outputs * weights per output, from one forward."""
    model = build_model(case, dtype)
    np.savez(path, **model.state_dict())
    model(np.zeros((1, case.c, case.h, case.w), dtype))
    layers = [m for m in model.modules() if isinstance(m, (fc.nn.Conv2d, fc.nn.Linear))]
    flops = 3 * sum(2 * m(m.x).size * m.weight.data[0].size for m in layers)
    return {"spec": peers.model_spec(model), "flops_per_image": int(flops)}


def make(suite: str, case: cases.Case, pass_: str, impl: str, dtype: str, device: str) -> Callable[[], object]:
    """The measured call of fastconv implementation `impl` ("auto", an algorithm, or "naive") on `case`;
    `suite` as the records name it (a "cuda_" prefix is the GPU suite: `device` says where it runs)."""
    op = suite.removeprefix("cuda_")
    if op == "conv2d":
        return conv2d(case, pass_, impl, dtype, device)
    if op in ("max_pool2d", "avg_pool2d"):
        return pool2d(op, case, pass_, impl, dtype, device)
    if op == "gemm":
        return gemm(case, impl, dtype, device)
    if op == "train_step":
        return train_step(case, dtype, device)
    raise ValueError(f"unknown suite {suite!r}")
