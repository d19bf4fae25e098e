"""conv2d forward (no bias) and backward (grad_x, grad_w, grad_b) on the conv layer suite:
every fastconv algorithm (winograd on the 3x3 stride-1 layers only), "auto", and the peers naive,
NumPy and PyTorch."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import fastconv as fc

from . import peers
from .cases import PASSES, Conv, conv_cases, conv_inputs, implementations


def takes(impl: str, case: Conv) -> bool:
    """winograd runs only 3x3 stride-1 layers; every other implementation runs every case."""
    return impl != "winograd" or (case.r == 3 and case.stride == 1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(case, pass_, impl, id=f"{case.name}-{pass_}-{impl}")
              for case in conv_cases(metafunc.config.getoption("fc_size"))
              for pass_ in PASSES for impl in implementations("conv2d") if takes(impl, case)]
    metafunc.parametrize("case,pass_,impl", params)


def conv_call(case: Conv, pass_: str, impl: str, dtype: str) -> Callable[[], object]:
    """One call of `impl` on the case's seeded inputs."""
    x, w, gy = conv_inputs(case, dtype)
    if impl == "pytorch":
        return peers.torch_conv2d(pass_, x, w, gy, *case.args)
    if impl == "numpy":
        if pass_ == "forward":
            return lambda: peers.conv2d_forward(x, w, *case.args)
        return lambda: peers.conv2d_backward(gy, x, w, *case.args)
    if pass_ == "forward":
        return lambda: fc.conv2d(x, w, None, *case.args, algo=impl)
    return lambda: fc.conv2d_backward(gy, x, w, *case.args, algo=impl)


def test_conv(fc_bench, fc_dtype: str, case: Conv, pass_: str, impl: str) -> None:
    """One call: conv2d (forward) or conv2d_backward (backward) of the whole case by `impl`."""
    fc_bench(lambda c: conv_call(c, pass_, impl, fc_dtype), suite="conv2d", case=case, pass_=pass_, impl=impl)
