"""conv2d forward (no bias) and backward (grad_x, grad_w, grad_b) on the conv layer suite:
every fastconv algorithm on the layers its record says it runs, "auto", and the peers naive,
NumPy, PyTorch and ONNX Runtime (forward), each library in its own worker process (``harness.py``)."""
from __future__ import annotations

import pytest

import numpy as np

import fastconv as fc
from fastconv._checks import conv2d_shape
from fastconv.conv import CONV2D

from .cases import Conv, conv_cases, peers_for
from .harness import Bench


def takes(impl: str, case: Conv) -> bool:
    """Whether the implementation runs the case: a fastconv algorithm where its record's ``unsupported``
    says so (winograd: 3x3 stride-1 layers); "auto" and the peers run every case."""
    if impl not in CONV2D.names("cpu"):
        return True
    x = np.broadcast_to(np.float32(0), (case.n, case.c, case.h, case.w))  # zero-strided: nothing allocated
    w = np.broadcast_to(np.float32(0), (case.k, case.c // case.groups, case.r, case.r))
    return CONV2D["cpu", impl].unsupported(conv2d_shape(x, w, *case.args)) is None


def implementations(pass_: str) -> list[str]:
    """Every conv2d ``algo=`` of fastconv but naive, then "auto", then the peers of the pass."""
    return [a for a in fc.algorithms("conv2d") if a != "naive"] + ["auto"] + peers_for("conv2d", pass_)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(Bench("conv2d", case, pass_, impl), id=f"{case.name}-{pass_}-{impl}")
              for case in conv_cases(metafunc.config.getoption("fc_size"))
              for pass_ in case.passes for impl in implementations(pass_) if takes(impl, case)]
    metafunc.parametrize("bench", params)


def test_conv(fc_bench, bench: Bench) -> None:
    """One call: conv2d (forward) or conv2d_backward (backward) of the whole case by the implementation."""
    fc_bench(bench)
