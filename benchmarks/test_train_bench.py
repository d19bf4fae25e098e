"""One training step of a whole model on a fixed batch: forward, cross-entropy loss, backward and an
Adam update (lr 1e-3), by fastconv ("auto": the layers' default algorithms) and by the model's PyTorch
twin (``peers.torch_model``: same layers and initial weights) with the same thread count, each in its
own worker process. No naive, NumPy or ONNX Runtime peer."""
from __future__ import annotations

import pytest

from .cases import TRAIN_IMPLS, train_cases
from .harness import Bench


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(Bench("train_step", case, "step", impl), id=f"{case.name}-step-{impl}")
              for case in train_cases(metafunc.config.getoption("fc_size")) for impl in TRAIN_IMPLS]
    metafunc.parametrize("bench", params)


def test_train_step(fc_bench, bench: Bench) -> None:
    """One call: a whole training step (zero_grad, forward, loss, backward, Adam step) at the case's batch."""
    fc_bench(bench)
