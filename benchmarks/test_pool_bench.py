"""max_pool2d and avg_pool2d, forward and backward (grad_x), on the output maps of the conv layers:
every fastconv algorithm, "auto", and the peers naive, NumPy and PyTorch. Max pooling's backward
is handed the forward's indices (computed outside the timing) by fastconv and PyTorch alike;
NumPy's recomputes the argmax."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import fastconv as fc

from . import peers
from .cases import PASSES, Pool, implementations, pool_cases, pool_inputs

OPS = ("max_pool2d", "avg_pool2d")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(op, case, pass_, impl, id=f"{case.name}-{op[:3]}-{pass_}-{impl}")
              for case in pool_cases(metafunc.config.getoption("fc_size"))
              for op in OPS for pass_ in PASSES for impl in implementations(op)]
    metafunc.parametrize("op,case,pass_,impl", params)


def pool_call(op: str, case: Pool, pass_: str, impl: str, dtype: str) -> Callable[[], object]:
    """One call of `impl` on the case's seeded inputs."""
    x, gy = pool_inputs(case, dtype)
    k, s = case.kernel, case.stride
    if impl == "pytorch":
        return peers.torch_pool2d(op, pass_, x, gy, k, s)
    if impl == "numpy":
        if pass_ == "forward":
            return lambda: getattr(peers, op)(x, k, s)
        return lambda: getattr(peers, op + "_backward")(gy, x, k, s)
    if pass_ == "forward":
        return lambda: getattr(fc, op)(x, k, s, algo=impl)
    if op == "max_pool2d":  # handed the forward's indices, as PyTorch's backward op is
        _, idx = fc.max_pool2d(x, k, s, return_indices=True)
        return lambda: fc.max_pool2d_backward(gy, x, k, s, indices=idx, algo=impl)
    return lambda: getattr(fc, op + "_backward")(gy, x, k, s, algo=impl)


def test_pool(fc_bench, fc_dtype: str, op: str, case: Pool, pass_: str, impl: str) -> None:
    """One call: the pooling op (forward) or its backward given grad_y and x, by `impl`."""
    fc_bench(lambda c: pool_call(op, c, pass_, impl, fc_dtype), suite=op, case=case, pass_=pass_, impl=impl)
