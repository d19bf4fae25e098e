"""GEMM c = a @ b on square sizes and on the im2col GEMM shapes of the conv layers: every fastconv
algorithm, "auto", and the peers naive, NumPy (a @ b) and PyTorch (torch.mm). NumPy at the largest
square size run is the suite's practical peak (``is_peak``)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import fastconv as fc

from . import peers
from .cases import Gemm, gemm_cases, gemm_inputs, implementations, peak_gemm


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(case, impl, id=f"{case.name}-{impl}")
              for case in gemm_cases(metafunc.config.getoption("fc_size")) for impl in implementations("gemm")]
    metafunc.parametrize("case,impl", params)


def gemm_call(case: Gemm, impl: str, dtype: str) -> Callable[[], object]:
    """One call of `impl` on the case's seeded inputs."""
    a, b = gemm_inputs(case, dtype)
    if impl == "pytorch":
        return peers.torch_gemm(a, b)
    if impl == "numpy":
        return lambda: a @ b
    return lambda: fc.gemm(a, b, algo=impl)


def test_gemm(fc_bench, fc_dtype: str, pytestconfig: pytest.Config, case: Gemm, impl: str) -> None:
    """One call: c = a @ b of the whole case by `impl` (the output allocation included)."""
    is_peak = impl == "numpy" and case == peak_gemm(pytestconfig.getoption("fc_size"))
    fc_bench(lambda c: gemm_call(c, impl, fc_dtype), suite="gemm", case=case, pass_="forward", impl=impl,
             is_peak=is_peak)
