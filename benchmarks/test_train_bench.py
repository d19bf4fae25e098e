"""One training step of a whole model on a fixed batch: forward, cross-entropy loss, backward and an
Adam update (lr 1e-3), by fastconv ("auto": the layers' default algorithms) and by the model's PyTorch
twin (``peers.torch_model``: same layers and weights) with the same thread count. No naive or NumPy peer."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import fastconv as fc

from . import peers
from .cases import TRAIN_IMPLS, TRAIN_LR, Train, train_cases, train_inputs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = [pytest.param(case, impl, id=f"{case.name}-step-{impl}")
              for case in train_cases(metafunc.config.getoption("fc_size")) for impl in TRAIN_IMPLS]
    metafunc.parametrize("case,impl", params)


def fastconv_step(case: Train, dtype: str) -> Callable[[], float]:
    """A fresh model and Adam; each call is one step on the case's batch and returns the loss."""
    x, y = train_inputs(case, dtype)
    model = case.build().to(dtype)
    opt = fc.optim.Adam(model.parameters(), lr=TRAIN_LR)

    def step() -> float:
        opt.zero_grad()
        loss, grad = fc.nn.cross_entropy(model(x), y)
        model.backward(grad)
        opt.step()
        return loss
    return step


def torch_step(case: Train, dtype: str) -> Callable[[], object]:
    """The same with the PyTorch twin of the fastconv model (same initial weights) and torch.optim.Adam."""
    torch = peers.torch()
    x, y = train_inputs(case, dtype)
    model = peers.torch_model(case.build().to(dtype))
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss
    return step


def test_train_step(fc_bench, fc_dtype: str, case: Train, impl: str) -> None:
    """One call: a whole training step (zero_grad, forward, loss, backward, Adam step) at the case's batch."""
    make = torch_step if impl == "pytorch" else fastconv_step
    fc_bench(lambda c: make(c, fc_dtype), suite="train_step", case=case, pass_="step", impl=impl,
             extra={"images": case.n})
