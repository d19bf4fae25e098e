"""Models and optimizers against PyTorch: same weights, same batches -> same outputs, loss, gradients and
parameter updates, step for step. Skipped when PyTorch is not installed."""
from __future__ import annotations

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn
from fastconv.benchmarks.peers import torch_twin

pytestmark = pytest.mark.peers
torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")
torch.set_num_threads(1)


def twin(model: nn.Module, dtype) -> torch.nn.Module:
    return torch_twin(model.to(dtype))


def optimizers(kind: str, model: nn.Module, tm: torch.nn.Module):
    if kind == "sgd":
        args = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
        return fc.optim.SGD(model.parameters(), **args), torch.optim.SGD(tm.parameters(), **args)
    if kind == "nesterov":
        args = dict(lr=0.05, momentum=0.9, nesterov=True)
        return fc.optim.SGD(model.parameters(), **args), torch.optim.SGD(tm.parameters(), **args)
    args = dict(lr=2e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    return fc.optim.Adam(model.parameters(), **args), torch.optim.Adam(tm.parameters(), **args)


def batches(shape: tuple[int, ...], steps: int, dtype, classes: int = 10):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal(shape).astype(dtype), rng.integers(0, classes, shape[0])) for _ in range(steps)]


def assert_same_training(model: nn.Module, kind: str, shape: tuple[int, ...], dtype, steps: int, rtol: float,
                         atol: float, param_atol: float | None = None) -> None:
    """param_atol: absolute tolerance on parameters after updates (Adam divides by sqrt(v), so a gradient
    near zero moves its weight by up to lr whatever its rounding; float32 needs a fraction of lr here)."""
    tm = twin(model, dtype)
    opt, topt = optimizers(kind, model, tm)
    names = [n for n, _ in model.named_parameters()]
    for step, (x, y) in enumerate(batches(shape, steps, dtype)):
        opt.zero_grad()
        logits = model(x)
        loss, grad = fc.nn.cross_entropy(logits, y)
        model.backward(grad)
        opt.step()

        topt.zero_grad()
        tlogits = tm(torch.from_numpy(x))
        tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y))
        tloss.backward()
        topt.step()

        where = f"step {step}"
        np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"logits, {where}")
        assert loss == pytest.approx(tloss.item(), rel=rtol, abs=atol), where
        for name, p, tp in zip(names, model.parameters(), tm.parameters()):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=rtol, atol=atol, err_msg=f"grad {name}, {where}")
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=param_atol or atol,
                                       err_msg=f"{name} after the update, {where}")
    for name, value in tm.state_dict().items():  # running statistics of batch norm (parameters: checked above)
        if name not in names:
            np.testing.assert_allclose(model.state_dict()[name], value.numpy(), rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("name,shape", [("lenet5", (16, 1, 28, 28)), ("cifar_cnn", (16, 3, 32, 32))])
def test_models_train_like_pytorch_float64(name, shape, kind):
    fc.manual_seed(0)
    assert_same_training(fc.models.MODELS[name](), kind, shape, np.float64, steps=4, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name,shape", [("lenet5", (64, 1, 28, 28)), ("cifar_cnn", (64, 3, 32, 32))])
def test_models_train_like_pytorch_float32(name, shape, kind):
    fc.manual_seed(1)
    assert_same_training(fc.models.MODELS[name](), kind, shape, np.float32, steps=3, rtol=2e-3, atol=2e-5,
                         param_atol=2e-4)


@pytest.mark.parametrize("name", ["resnet20", "resnext_cifar"])
def test_residual_models_train_like_pytorch(name):
    fc.manual_seed(2)
    assert_same_training(fc.models.MODELS[name](), "sgd", (4, 3, 16, 16), np.float64, steps=2, rtol=1e-8, atol=1e-10)


def test_eval_mode_matches_pytorch():
    fc.manual_seed(3)
    model = fc.models.resnet20()
    tm = twin(model, np.float64)
    x = batches((4, 3, 16, 16), 1, np.float64)[0][0]
    model(x), tm(torch.from_numpy(x))  # one training pass moves the running statistics
    model.eval(), tm.eval()
    np.testing.assert_allclose(model(x), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-9, atol=1e-11)


def test_default_initialization_matches_pytorch_bounds():
    fc.manual_seed(4)
    conv, torch_conv = fc.nn.Conv2d(16, 32, 3), torch.nn.Conv2d(16, 32, 3)
    bound = 1 / np.sqrt(16 * 9)
    for ours, theirs in [(conv.weight.data, torch_conv.weight), (conv.bias.data, torch_conv.bias)]:
        assert np.abs(ours).max() <= bound and np.abs(theirs.detach().numpy()).max() <= bound
        assert np.abs(ours).max() > 0.9 * bound
        assert ours.std() == pytest.approx(theirs.detach().numpy().std(), rel=0.25)


def test_schedules_match_pytorch():
    p = fc.nn.Parameter(np.zeros(3))
    tp = torch.nn.Parameter(torch.zeros(3))
    for ours, theirs in [
        (lambda o: fc.optim.StepLR(o, step_size=3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
        (lambda o: fc.optim.CosineAnnealingLR(o, T_max=7, eta_min=0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=0.01)),
    ]:
        opt, topt = fc.optim.SGD([p], lr=0.1), torch.optim.SGD([tp], lr=0.1)
        s, ts = ours(opt), theirs(topt)
        for _ in range(10):
            topt.step()
            s.step(), ts.step()
            assert opt.lr == pytest.approx(ts.get_last_lr()[0], rel=1e-12)
