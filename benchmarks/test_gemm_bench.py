"""GEMM c = a @ b on square sizes and on the im2col GEMM shapes of the conv layers: every fastconv
algorithm, "auto", and the peers naive, NumPy (a @ b), PyTorch (torch.mm) and ONNX Runtime (MatMul),
each library in its own worker process. NumPy at the largest square size run is the suite's practical
peak (``is_peak``)."""
from __future__ import annotations

import pytest

import fastconv as fc

from .cases import gemm_cases, peak_gemm, peers_for
from .harness import Bench


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    size = metafunc.config.getoption("fc_size")
    impls = [a for a in fc.algorithms("gemm") if a != "naive"] + ["auto"] + peers_for("gemm", "forward")
    params = [pytest.param(Bench("gemm", case, "forward", impl, is_peak=impl == "numpy" and case == peak_gemm(size)),
                           id=f"{case.name}-{impl}")
              for case in gemm_cases(size) for impl in impls]
    metafunc.parametrize("bench", params)


def test_gemm(fc_bench, bench: Bench) -> None:
    """One call: c = a @ b of the whole case by the implementation (the output allocation included)."""
    fc_bench(bench)
