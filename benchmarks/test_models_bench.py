"""Whole-network inference (the "models" suite): ONNX's light models with random weights at batch 1 and 16, run
by fastconv (``fastconv.onnx``, "auto": the layers' default algorithms) and by ONNX Runtime (every graph
optimization on, spinning off), each library in its own worker process (``harness.py``), float32 only."""
from __future__ import annotations

import pytest

from .cases import NETWORK_IMPLS, network_cases
from .harness import Bench


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(Bench("models", case, "forward", impl), id=f"{case.name}-{impl}")
              for case in network_cases(metafunc.config.getoption("fc_size")) for impl in NETWORK_IMPLS]
    metafunc.parametrize("bench", params)


def test_network(fc_bench, bench: Bench) -> None:
    """One call: one forward pass of the whole network on the case's batch, its logits the output."""
    fc_bench(bench)
