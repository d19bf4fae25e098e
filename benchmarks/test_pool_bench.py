"""max_pool2d and avg_pool2d, forward and backward (grad_x), on the output maps of the conv layers:
every fastconv algorithm, "auto", and the peers naive, NumPy, PyTorch and ONNX Runtime (forward), each
library in its own worker process. Max pooling's backward is handed the forward's indices (computed
outside the timing) by fastconv and PyTorch alike; NumPy's recomputes the argmax."""
from __future__ import annotations

import numpy as np
import pytest

import fastconv as fc
from fastconv._checks import pool2d_shape
from fastconv.algorithm import REGISTRIES

from .cases import PASSES, Pool, peers_for, pool_cases
from .harness import Bench

OPS = ("max_pool2d", "avg_pool2d")


def takes(op: str, impl: str, case: Pool) -> bool:
    """Whether the implementation runs the case: a fastconv algorithm where its record's ``unsupported`` says
    so (window_2x2: 2x2 windows at stride 2); "auto" and the peers run every case."""
    registry = REGISTRIES[op]
    if impl not in registry.names("cpu"):
        return True
    x = np.broadcast_to(np.float32(0), (case.n, case.c, case.h, case.w))  # zero-strided: nothing allocated
    return registry["cpu", impl].unsupported(pool2d_shape(x, case.kernel, case.stride, 0, 1, False)) is None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(Bench(op, case, pass_, impl), id=f"{case.name}-{op[:3]}-{pass_}-{impl}")
              for case in pool_cases(metafunc.config.getoption("fc_size"))
              for op in OPS for pass_ in PASSES
              for impl in [a for a in fc.algorithms(op) if a != "naive"] + ["auto"] + peers_for(op, pass_)
              if takes(op, impl, case)]
    metafunc.parametrize("bench", params)


def test_pool(fc_bench, bench: Bench) -> None:
    """One call: the pooling op (forward) or its backward given grad_y and x, by the implementation."""
    fc_bench(bench)
