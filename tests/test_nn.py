"""fastconv.nn, fastconv.optim and fastconv.models without PyTorch: every backward against central finite
differences in float64, losses against naive formulas, module plumbing, optimizer updates against hand-written
rules and schedules against their closed forms."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest

import fastconv as fc
from fastconv import models, nn, optim
from op_check import assert_gradient, distinct, sample


def check_layer_gradients(layer: nn.Module, x: np.ndarray, seed: int = 0) -> None:
    """backward(u) and every parameter's .grad against central differences of f = sum(layer(x) * u) at every
    element (op_check.assert_gradient). fc.manual_seed runs before each forward so that dropout draws the
    same mask every time."""
    def forward() -> np.ndarray:
        fc.manual_seed(seed)
        return layer(x)

    u = np.random.default_rng(seed + 1).standard_normal(forward().shape)
    layer.zero_grad()
    forward()
    gx = layer.backward(u)
    grads = {name: p.grad.copy() for name, p in layer.named_parameters()}

    def f() -> float:
        return float(np.sum(forward() * u))

    assert gx.shape == x.shape and gx.dtype == np.float64
    assert_gradient(gx, f, x, err_msg="input")
    for name, p in layer.named_parameters():
        assert_gradient(grads[name], f, p.data, err_msg=name)


def check_model_gradients(model: nn.Module, x: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
    """Gradients of cross_entropy(model(x), labels) against central differences at 20 elements of x and 10
    of each parameter."""
    rng = np.random.default_rng(seed)
    model.zero_grad()
    _, g = nn.cross_entropy(model(x), labels)
    gx = model.backward(g)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}

    def f() -> float:
        return nn.cross_entropy(model(x), labels)[0]

    assert_gradient(gx, f, x, sample(x, rng, 20), err_msg="input")
    for name, p in model.named_parameters():
        assert_gradient(grads[name], f, p.data, sample(p.data, rng, 10), err_msg=name)


def away_from_zero(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)


def randomize_batchnorm(bn: nn.BatchNorm2d, rng: np.random.Generator) -> nn.BatchNorm2d:
    bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
    bn.bias.data[...] = rng.standard_normal(bn.num_features)
    return bn


def run_optimizer(opt: optim.Optimizer, params: list[nn.Parameter], grads: list[list[np.ndarray]]):
    """Step `opt` once per entry of `grads` (one array per parameter); the parameters' values after each step."""
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        opt.step()
        history.append([p.data.copy() for p in params])
    return history


def sgd_reference(values, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    values, bufs, history = [v.copy() for v in values], [None] * len(values), []
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            d = g + weight_decay * values[i]
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            values[i] = values[i] - lr * d
        history.append([v.copy() for v in values])
    return history


def adam_reference(values, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    values = [v.copy() for v in values]
    m, v2, history = [np.zeros_like(v) for v in values], [np.zeros_like(v) for v in values], []
    for t, step_grads in enumerate(grads, 1):
        for i, g in enumerate(step_grads):
            g = g + weight_decay * values[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v2[i] = b2 * v2[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t), v2[i] / (1 - b2 ** t)
            values[i] = values[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append([v.copy() for v in values])
    return history


def optimizer_problem(seed: int = 0, steps: int = 5):
    """Two float64 parameters and `steps` gradients for each."""
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(v.shape) for v in values] for _ in range(steps)]
    return values, grads


def assert_histories_close(actual, expected, rtol=1e-12, atol=1e-14):
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected)):
        for i, (ai, ei) in enumerate(zip(a, e)):
            np.testing.assert_allclose(ai, ei, rtol=rtol, atol=atol, err_msg=f"step {step}, parameter {i}")


def checkpoint(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A save to and load from ``.npz``, as a training checkpoint does."""
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer) as data:
        return {k: data[k] for k in data.files}


def tiny_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, dtype=np.float64), nn.BatchNorm2d(2, dtype=np.float64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, dtype=np.float64), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3, 4, dtype=np.float64),
    )


def tiny_residual_model() -> nn.Sequential:
    return nn.Sequential(models.basic_block(3, 4, stride=2), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(4, 2))


# Layer gradients against finite differences

CONV_CASES = {
    "plain": dict(in_channels=3, out_channels=4, kernel_size=3),
    "stride2": dict(in_channels=3, out_channels=4, kernel_size=3, stride=2),
    "padding1": dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
    "dilation2": dict(in_channels=3, out_channels=2, kernel_size=2, dilation=2),
    "groups2": dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1),
    "depthwise": dict(in_channels=4, out_channels=4, kernel_size=3, groups=4),
    "no_bias": dict(in_channels=3, out_channels=4, kernel_size=3, bias=False),
    "rectangular": dict(in_channels=3, out_channels=2, kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
    "same_even_kernel": dict(in_channels=3, out_channels=2, kernel_size=(2, 4), padding="same"),
    "all": dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1, dilation=2, groups=2),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv2d_gradients(case):
    rng = np.random.default_rng(0)
    fc.manual_seed(1)
    layer = nn.Conv2d(**CONV_CASES[case], dtype=np.float64)
    check_layer_gradients(layer, rng.standard_normal((2, layer.in_channels, 7, 6)))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias):
    fc.manual_seed(2)
    check_layer_gradients(nn.Linear(5, 4, bias=bias, dtype=np.float64),
                          np.random.default_rng(0).standard_normal((3, 5)))


def test_relu_gradients():
    check_layer_gradients(nn.ReLU(), away_from_zero((2, 3, 6, 6), np.random.default_rng(0)))


MAX_POOL_CASES = {
    "k2": dict(kernel_size=2),
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "overlapping": dict(kernel_size=3, stride=1),
    "dilation2": dict(kernel_size=2, stride=1, dilation=2),
    "ceil_mode": dict(kernel_size=2, ceil_mode=True),
}


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=list(MAX_POOL_CASES))
def test_max_pool2d_gradients(case):
    check_layer_gradients(nn.MaxPool2d(**MAX_POOL_CASES[case]), distinct((2, 3, 7, 7), np.random.default_rng(0)))


AVG_POOL_CASES = {
    "k2": dict(kernel_size=2),
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "exclude_pad": dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "ceil_mode": dict(kernel_size=2, padding=1, ceil_mode=True),
    "divisor_override": dict(kernel_size=2, stride=1, divisor_override=3),
}


@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=list(AVG_POOL_CASES))
def test_avg_pool2d_gradients(case):
    check_layer_gradients(nn.AvgPool2d(**AVG_POOL_CASES[case]),
                          np.random.default_rng(0).standard_normal((2, 3, 7, 7)))


def test_global_avg_pool2d_gradients():
    check_layer_gradients(nn.GlobalAvgPool2d(), np.random.default_rng(0).standard_normal((2, 3, 6, 5)))


def test_flatten_gradients():
    check_layer_gradients(nn.Flatten(), np.random.default_rng(0).standard_normal((2, 3, 4, 5)))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_gradients(p):
    check_layer_gradients(nn.Dropout(p), np.random.default_rng(0).standard_normal((2, 3, 6, 6)))


def test_batchnorm2d_gradients_in_training():
    rng = np.random.default_rng(0)
    bn = randomize_batchnorm(nn.BatchNorm2d(3, dtype=np.float64), rng)
    check_layer_gradients(bn, 3 * rng.standard_normal((2, 3, 6, 6)) + 1)


def test_batchnorm2d_gradients_in_eval():
    rng = np.random.default_rng(0)
    bn = randomize_batchnorm(nn.BatchNorm2d(3, dtype=np.float64), rng)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 3)
    check_layer_gradients(bn.eval(), rng.standard_normal((2, 3, 6, 6)))


def test_residual_identity_gradients():
    rng = np.random.default_rng(0)
    fc.manual_seed(3)
    body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, dtype=np.float64),
                         randomize_batchnorm(nn.BatchNorm2d(3, dtype=np.float64), rng), nn.ReLU(),
                         nn.Conv2d(3, 3, 3, padding=1, dtype=np.float64))
    check_layer_gradients(nn.Residual(body), rng.standard_normal((2, 3, 6, 6)))


def test_residual_projection_gradients():
    rng = np.random.default_rng(0)
    fc.manual_seed(4)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, dtype=np.float64))
    shortcut = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2, bias=False, dtype=np.float64),
                             randomize_batchnorm(nn.BatchNorm2d(4, dtype=np.float64), rng))
    check_layer_gradients(nn.Residual(body, shortcut), rng.standard_normal((2, 3, 7, 7)))


def test_sequential_gradients():
    rng = np.random.default_rng(0)
    fc.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, dtype=np.float64), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3, dtype=np.float64))
    check_layer_gradients(model, rng.standard_normal((2, 3, 6, 6)))


def test_backward_accumulates_parameter_gradients():
    rng = np.random.default_rng(0)
    fc.manual_seed(6)
    layer = nn.Conv2d(3, 4, 3, dtype=np.float64)
    x = rng.standard_normal((2, 3, 6, 6))
    u = rng.standard_normal(layer(x).shape)
    layer.backward(u)
    once = [p.grad.copy() for p in layer.parameters()]
    layer.backward(u)
    for p, g in zip(layer.parameters(), once):
        assert np.abs(g).max() > 0
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-14)


# Dropout and batch norm behaviour

def test_dropout_mask_is_scaled_bernoulli():
    x = np.ones((100, 100))
    layer = nn.Dropout(0.3)
    fc.manual_seed(0)
    y = layer(x)
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}
    assert abs((y == 0).mean() - 0.3) < 0.02
    u = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(u), u * y)


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = np.random.default_rng(0).standard_normal((4, 5))
    np.testing.assert_array_equal(nn.Dropout(0.5).eval()(x), x)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    assert not nn.Dropout(1.0)(x).any()


def test_dropout_mask_follows_manual_seed():
    x = np.ones((8, 8))
    layer = nn.Dropout(0.5)
    fc.manual_seed(1)
    a = layer(x)
    fc.manual_seed(1)
    b = layer(x)
    c = layer(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_batchnorm2d_training_normalizes_and_updates_running_stats():
    rng = np.random.default_rng(0)
    bn = randomize_batchnorm(nn.BatchNorm2d(3, momentum=0.2, dtype=np.float64), rng)
    x = 3 * rng.standard_normal((4, 3, 5, 5)) + rng.standard_normal((1, 3, 1, 1))
    y = bn(x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    c = (slice(None), None, None)
    expected = (x - mean[c]) / np.sqrt(var[c] + 1e-5) * bn.weight.data[c] + bn.bias.data[c]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    count = 4 * 5 * 5
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var * count / (count - 1), rtol=1e-12)
    assert bn.num_batches_tracked == 1
    bn(x)
    np.testing.assert_allclose(bn.running_mean, 0.8 * 0.2 * mean + 0.2 * mean, rtol=1e-12)
    assert bn.num_batches_tracked == 2


def test_batchnorm2d_eval_uses_running_stats():
    rng = np.random.default_rng(0)
    bn = randomize_batchnorm(nn.BatchNorm2d(3, eps=1e-3, dtype=np.float64), rng)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 3)
    before = {k: np.copy(v) for k, v in bn.state_dict().items()}
    x = rng.standard_normal((2, 3, 4, 4))
    y = bn.eval()(x)
    c = (slice(None), None, None)
    expected = (x - bn.running_mean[c]) / np.sqrt(bn.running_var[c] + 1e-3) * bn.weight.data[c] + bn.bias.data[c]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


# Whole models

def test_tiny_model_gradients():
    rng = np.random.default_rng(0)
    fc.manual_seed(7)
    model = tiny_model()
    randomize_batchnorm(model[1], rng)
    check_model_gradients(model, rng.standard_normal((3, 1, 6, 6)), np.array([0, 3, 1]))


def test_tiny_residual_model_gradients():
    rng = np.random.default_rng(1)
    fc.manual_seed(8)
    model = nn.Sequential(models.basic_block(2, 4, stride=2), models.resnext_block(4, 4, cardinality=2, group_width=2),
                          nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(4, 3)).to(np.float64)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_batchnorm(m, rng)
    check_model_gradients(model, rng.standard_normal((3, 2, 6, 6)), np.array([2, 0, 1]), seed=1)


def test_tiny_model_gradients_in_eval():
    rng = np.random.default_rng(2)
    fc.manual_seed(9)
    model = tiny_model()
    model(rng.standard_normal((4, 1, 6, 6)))
    model.eval()
    check_model_gradients(model, rng.standard_normal((2, 1, 6, 6)), np.array([1, 2]), seed=2)


# Losses

def test_cross_entropy_matches_naive_formula():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    loss, grad = nn.cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert isinstance(loss, float)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])), rel=1e-13)
    assert grad.shape == logits.shape and grad.dtype == np.float64


def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((4, 3)), np.array([2, 0, 0, 1], dtype=np.uint8)
    _, grad = nn.cross_entropy(logits, labels)
    assert_gradient(grad, lambda: nn.cross_entropy(logits, labels)[0], logits)


def test_cross_entropy_float32_keeps_dtype():
    logits = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    loss, grad = nn.cross_entropy(logits, np.array([0, 1, 2]))
    assert grad.dtype == np.float32
    assert loss == pytest.approx(nn.cross_entropy(logits.astype(np.float64), np.array([0, 1, 2]))[0], rel=1e-6)


def test_cross_entropy_is_stable_for_huge_logits():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 4))
    labels = np.array([0, 1, 3])
    offsets = np.array([[1e4, 0, 0, 0], [0, -1e4, 0, 0], [5e3, 1e4, -1e4, 0]])
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        loss, grad = nn.cross_entropy(base + offsets, labels)
        shifted, _ = nn.cross_entropy(base + 1e4, labels)
        probs = nn.softmax(base + offsets)
    z = base + offsets
    m = z.max(axis=1)
    expected = np.mean(m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - z[np.arange(3), labels])
    assert math.isfinite(loss) and loss > 1e3
    assert loss == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(grad).all() and np.isfinite(probs).all()
    assert shifted == pytest.approx(nn.cross_entropy(base, labels)[0], rel=1e-9)


@pytest.mark.parametrize("logits,labels", [
    (np.zeros((3, 4)), np.array([0, 4, 1])),
    (np.zeros((3, 4)), np.array([0, -1, 1])),
    (np.zeros((3, 4)), np.array([[0], [1], [2]])),
    (np.zeros((3, 4)), np.array([0, 1])),
    (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0])),
    (np.zeros((3, 4)), np.array([True, False, True])),
    (np.zeros(4), np.array([0])),
    (np.zeros((1, 3, 4)), np.array([0])),
    (np.zeros((3, 4), np.int64), np.array([0, 1, 2])),
    ([[0.0, 1.0]], np.array([0])),
], ids=["label_too_big", "label_negative", "labels_2d", "labels_short", "labels_float", "labels_bool",
        "logits_1d", "logits_3d", "logits_int", "logits_list"])
def test_cross_entropy_rejects_bad_input(logits, labels):
    wrong_type = not isinstance(logits, np.ndarray) or logits.dtype.kind != "f"
    with pytest.raises(TypeError if wrong_type else ValueError):
        nn.cross_entropy(logits, labels)


def test_cross_entropy_rejects_empty_batch():
    with pytest.raises(ValueError, match="at least one"):
        nn.cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64))


def test_softmax_rows_are_distributions():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 5)) * 3
    p = nn.softmax(logits)
    assert p.shape == logits.shape and (p > 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-14)
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(nn.softmax(logits + 1e4), p, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError):
        nn.softmax(np.zeros(3))


def test_mse_loss_value_and_gradient():
    rng = np.random.default_rng(5)
    prediction, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss, grad = nn.mse_loss(prediction, target)
    assert loss == pytest.approx(np.mean((prediction - target) ** 2), rel=1e-14)
    assert_gradient(grad, lambda: nn.mse_loss(prediction, target)[0], prediction)


@pytest.mark.parametrize("prediction,target", [
    (np.zeros((2, 3)), np.zeros((3, 2))),
    (np.zeros(0), np.zeros(0)),
    ([1.0, 2.0], np.zeros(2)),
])
def test_mse_loss_rejects_bad_input(prediction, target):
    with pytest.raises(ValueError):
        nn.mse_loss(prediction, target)


# Module plumbing

LENET5_NAMES = ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias",
                "11.weight", "11.bias"]


def test_lenet5_parameter_names_and_order():
    model = models.lenet5()
    named = list(model.named_parameters())
    assert [name for name, _ in named] == LENET5_NAMES
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in named]
    assert [p.data.shape for p in model.parameters()] == [
        (6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,), (10, 84), (10,)]
    assert list(model.state_dict()) == LENET5_NAMES


def test_state_dict_names_of_residual_blocks_follow_pytorch():
    model = nn.Sequential(models.basic_block(2, 4, stride=2))
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (["0.0.body.0.weight"] + [f"0.0.body.1.{k}" for k in bn] + ["0.0.body.3.weight"]
                + [f"0.0.body.4.{k}" for k in bn] + ["0.0.shortcut.0.weight"] + [f"0.0.shortcut.1.{k}" for k in bn])
    assert list(model.state_dict()) == expected
    assert [name for name, _ in model.named_parameters()] == [k for k in expected if k.endswith(("weight", "bias"))]


@pytest.mark.parametrize("build,count", [(models.lenet5, 61706), (models.cifar_cnn, 122570),
                                         (models.resnet20, 272474)])
def test_num_parameters(build, count):
    model = build()
    assert model.num_parameters() == count == sum(p.data.size for p in model.parameters())


def test_state_dict_round_trip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    fc.manual_seed(0)
    source = tiny_residual_model().to(np.float64)
    source(x)
    fc.manual_seed(1)
    target = tiny_residual_model().to(np.float64)
    saved = checkpoint(source.state_dict())
    target.load_state_dict(saved)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
        assert v.dtype == saved[k].dtype
    source.eval()
    target.eval()
    np.testing.assert_allclose(target(x), source(x), rtol=1e-13, atol=1e-15)
    loaded = {k: np.copy(v) for k, v in target.state_dict().items()}
    for v in saved.values():
        v[...] = 0
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, loaded[k], err_msg=k)


def test_load_state_dict_converts_dtype():
    model = nn.Linear(3, 2)
    state = {k: np.full(v.shape, 0.5) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert model.weight.data.dtype == np.float32
    np.testing.assert_array_equal(model.weight.data, 0.5)


@pytest.mark.parametrize("change", ["missing", "unexpected", "renamed", "shape", "buffer_shape"])
def test_load_state_dict_rejects_mismatch(change):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    state = {k: np.copy(v) for k, v in model.state_dict().items()}
    if change == "missing":
        del state["0.bias"]
    elif change == "unexpected":
        state["2.weight"] = np.zeros(3)
    elif change == "renamed":
        state["0.kernel"] = state.pop("0.weight")
    elif change == "shape":
        state["0.weight"] = np.zeros((1, 2, 3, 3))
    else:
        state["1.running_var"] = np.ones(1)
    before = {k: np.copy(v) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        model.load_state_dict(state)
    if change in ("missing", "unexpected", "renamed"):
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_zero_grad_clears_every_gradient():
    rng = np.random.default_rng(0)
    model = tiny_model()
    _, g = nn.cross_entropy(model(rng.standard_normal((2, 1, 6, 6))), np.array([1, 2]))
    model.backward(g)
    assert all(np.abs(p.grad).max() > 0 for p in model.parameters())
    model.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_train_and_eval_reach_every_module():
    model = nn.Sequential(models.basic_block(2, 4, stride=2), nn.Dropout(0.5), nn.Flatten())
    assert model.eval() is model
    assert all(not m.training for m in model.modules())
    assert model.train() is model
    assert all(m.training for m in model.modules())
    model.train(False)
    assert all(not m.training for m in model.modules())
    assert len(list(model.modules())) == 15


def test_to_float64_converts_parameters_gradients_and_buffers():
    model = tiny_residual_model()
    before = {k: np.copy(v) for k, v in model.state_dict().items()}
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert model.to(np.float64) is model
    for p in model.parameters():
        assert p.data.dtype == p.grad.dtype == np.float64
    for k, v in model.state_dict().items():
        assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64), k
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert model(np.zeros((2, 3, 6, 6))).dtype == np.float64
    model.to("float32")
    assert all(v.dtype != np.float64 for v in model.state_dict().values())
    with pytest.raises(TypeError):
        model.to(np.int32)


def test_manual_seed_makes_initialization_reproducible():
    fc.manual_seed(123)
    a = models.lenet5().state_dict()
    fc.manual_seed(123)
    b = models.lenet5().state_dict()
    c = models.lenet5().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(b["0.weight"], c["0.weight"])


@pytest.mark.parametrize("build,fan_in", [
    (lambda: nn.Linear(100, 300), 100),
    (lambda: nn.Conv2d(6, 400, 3), 54),
    (lambda: nn.Conv2d(8, 400, (3, 2), groups=4), 12),
])
def test_initialization_is_uniform_within_inverse_sqrt_fan_in(build, fan_in):
    fc.manual_seed(0)
    layer = build()
    bound = 1 / math.sqrt(fan_in)
    for p in (layer.weight, layer.bias):
        values = p.data.astype(np.float64)
        assert p.data.dtype == np.float32
        assert np.abs(values).max() <= bound * (1 + 1e-6)
        assert values.max() > 0.95 * bound and values.min() < -0.95 * bound
    assert layer.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


# Optimizers

SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "dampening": dict(lr=0.1, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.1, momentum=0.8, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.05),
    "everything": dict(lr=0.05, momentum=0.7, weight_decay=0.01, nesterov=True),
}


@pytest.mark.parametrize("case", SGD_CASES, ids=list(SGD_CASES))
def test_sgd_matches_update_rule(case):
    values, grads = optimizer_problem()
    params = [nn.Parameter(v.copy()) for v in values]
    history = run_optimizer(optim.SGD(params, **SGD_CASES[case]), params, grads)
    assert_histories_close(history, sgd_reference(values, grads, **SGD_CASES[case]))


def test_sgd_first_steps_by_hand():
    p = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.5, momentum=0.9, dampening=0.5)
    for g, expected in ((2.0, 0.0), (2.0, -1.4)):
        p.grad[...] = g
        opt.step()
        assert p.data[0] == pytest.approx(expected, abs=1e-15)


ADAM_CASES = {
    "default": dict(lr=1e-2),
    "betas": dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6),
    "weight_decay": dict(lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("case", ADAM_CASES, ids=list(ADAM_CASES))
def test_adam_matches_update_rule(case):
    values, grads = optimizer_problem()
    params = [nn.Parameter(v.copy()) for v in values]
    history = run_optimizer(optim.Adam(params, **ADAM_CASES[case]), params, grads)
    assert_histories_close(history, adam_reference(values, grads, **ADAM_CASES[case]))


def test_adam_first_step_is_lr_times_sign_of_gradient():
    values, grads = optimizer_problem()
    params = [nn.Parameter(v.copy()) for v in values]
    run_optimizer(optim.Adam(params, lr=1e-3), params, grads[:1])
    for p, v, g in zip(params, values, grads[0]):
        np.testing.assert_allclose(v - p.data, 1e-3 * np.sign(g), rtol=1e-6)


def test_optimizer_keeps_parameter_dtype():
    p = nn.Parameter(np.ones(3, np.float32))
    opt = optim.Adam([p], lr=0.1)
    p.grad[...] = 1
    opt.step()
    assert p.data.dtype == np.float32 and all(v.dtype == np.float32 for v in opt.state[0].values())


def test_optimizer_load_state_dict_converts_state_to_parameter_dtype():
    source = nn.Parameter(np.ones(3))
    opt = optim.Adam([source], lr=0.1)
    source.grad[...] = 1
    opt.step()
    target = optim.Adam([nn.Parameter(np.ones(3, np.float32))], lr=0.1)
    target.load_state_dict(checkpoint(opt.state_dict()))
    assert set(target.state[0]) == {"exp_avg", "exp_avg_sq"}
    assert all(v.dtype == np.float32 for v in target.state[0].values())


def test_optimizer_zero_grad():
    params = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones((2, 2)))]
    for p in params:
        p.grad[...] = 3
    optim.SGD(params, lr=0.1).zero_grad()
    assert not any(p.grad.any() for p in params)


@pytest.mark.parametrize("build", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.01),
], ids=["sgd_momentum", "sgd_nesterov", "adam"])
def test_optimizer_state_dict_resumes_identically(build):
    values, grads = optimizer_problem(steps=6)
    params = [nn.Parameter(v.copy()) for v in values]
    opt = build(params)
    run_optimizer(opt, params, grads[:3])
    saved_state, saved_values = checkpoint(opt.state_dict()), [p.data.copy() for p in params]
    uninterrupted = run_optimizer(opt, params, grads[3:])

    resumed_params = [nn.Parameter(v) for v in saved_values]
    resumed_opt = build(resumed_params)
    resumed_opt.load_state_dict(saved_state)
    assert resumed_opt.steps == 3
    resumed = run_optimizer(resumed_opt, resumed_params, grads[3:])
    for a, b in zip(resumed, uninterrupted):
        for ai, bi in zip(a, b):
            np.testing.assert_array_equal(ai, bi)


def test_optimizer_load_state_dict_rejects_mismatch():
    params = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))]
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    run_optimizer(opt, params, [[np.ones(3), np.ones(2)]])
    state = opt.state_dict()
    with pytest.raises(ValueError):
        optim.SGD([nn.Parameter(np.ones(3)), nn.Parameter(np.ones(4))], lr=0.1, momentum=0.9).load_state_dict(state)
    with pytest.raises(ValueError):
        optim.SGD([nn.Parameter(np.ones(3))], lr=0.1, momentum=0.9).load_state_dict(state)


@pytest.mark.parametrize("build", [
    lambda ps: optim.SGD(ps, lr=-0.1),
    lambda ps: optim.SGD(ps, lr=float("nan")),
    lambda ps: optim.SGD(ps, lr=float("inf")),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.9),
    lambda ps: optim.SGD(ps, lr=0.1, dampening=-0.1),
    lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1e-4),
    lambda ps: optim.SGD(ps, lr=0.1, nesterov=True),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    lambda ps: optim.Adam(ps, lr=-1e-3),
    lambda ps: optim.Adam(ps, betas=(1.0, 0.999)),
    lambda ps: optim.Adam(ps, betas=(0.9, -0.1)),
    lambda ps: optim.Adam(ps, betas=(0.9, 0.99, 0.9)),
    lambda ps: optim.Adam(ps, eps=-1e-8),
    lambda ps: optim.Adam(ps, weight_decay=-0.1),
    lambda ps: optim.SGD([], lr=0.1),
    lambda ps: optim.Adam([], lr=0.1),
    lambda ps: optim.SGD([np.ones(3)], lr=0.1),
], ids=["sgd_lr_negative", "sgd_lr_nan", "sgd_lr_inf", "momentum_negative", "dampening_negative",
        "weight_decay_negative", "nesterov_no_momentum", "nesterov_dampening", "adam_lr_negative", "beta1_one",
        "beta2_negative", "three_betas", "eps_negative", "adam_weight_decay_negative", "sgd_empty", "adam_empty",
        "not_parameters"])
def test_optimizer_rejects_bad_arguments(build):
    with pytest.raises(ValueError):
        build([nn.Parameter(np.ones(3))])


# Learning-rate schedules

def test_step_lr_sequence():
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)
    sched = optim.StepLR(opt, step_size=3, gamma=0.5)
    assert sched.get_last_lr() == 0.1
    lrs = []
    for _ in range(10):
        sched.step()
        lrs.append(sched.get_last_lr())
    np.testing.assert_allclose(lrs, [0.1 * 0.5 ** (e // 3) for e in range(1, 11)], rtol=1e-15)
    assert opt.lr == lrs[-1]


def test_cosine_annealing_lr_sequence():
    opt = optim.Adam([nn.Parameter(np.ones(1))], lr=0.2)
    sched = optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    lrs = [sched.get_last_lr()]
    for _ in range(10):
        sched.step()
        lrs.append(opt.lr)
    expected = [0.01 + 0.19 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(11)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-14)
    assert lrs[0] == pytest.approx(0.2) and lrs[5] == pytest.approx(0.105) and lrs[10] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_scheduled_lr_drives_the_update():
    p = nn.Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad[...] = 1
        opt.step()
        sched.step()
    assert p.data[0] == pytest.approx(-(1 + 0.5 + 0.25))


@pytest.mark.parametrize("build", [lambda o: optim.StepLR(o, step_size=2, gamma=0.3),
                                   lambda o: optim.CosineAnnealingLR(o, T_max=7, eta_min=1e-3)],
                         ids=["step", "cosine"])
def test_scheduler_state_dict_resumes_identically(build):
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1, momentum=0.9)
    sched = build(opt)
    for _ in range(4):
        sched.step()
    saved_sched, saved_opt = checkpoint(sched.state_dict()), checkpoint(opt.state_dict())
    uninterrupted = []
    for _ in range(4):
        sched.step()
        uninterrupted.append(opt.lr)

    resumed_opt = optim.SGD([nn.Parameter(np.ones(1))], lr=1.0, momentum=0.9)
    resumed_opt.load_state_dict(saved_opt)
    assert resumed_opt.initial_lr == 0.1
    resumed = build(resumed_opt)
    resumed.load_state_dict(saved_sched)
    assert resumed.last_epoch == 4
    lrs = []
    for _ in range(4):
        resumed.step()
        lrs.append(resumed_opt.lr)
    assert lrs == uninterrupted


def test_scheduler_load_state_dict_sets_the_lr():
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)
    sched = optim.CosineAnnealingLR(opt, T_max=8)
    resumed = optim.CosineAnnealingLR(optim.SGD([nn.Parameter(np.ones(1))], lr=0.1), T_max=8)
    for _ in range(3):
        sched.step()
    resumed.load_state_dict(checkpoint(sched.state_dict()))
    assert resumed.get_last_lr() == pytest.approx(0.05 * (1 + math.cos(3 * math.pi / 8)), rel=1e-14)
    assert resumed.get_last_lr() == opt.lr


@pytest.mark.parametrize("build,error", [
    (lambda o: optim.StepLR(o, step_size=0), ValueError),
    (lambda o: optim.StepLR(o, step_size=1.5), TypeError),
    (lambda o: optim.StepLR(o, step_size=2, gamma=-0.1), ValueError),
    (lambda o: optim.CosineAnnealingLR(o, T_max=0), ValueError),
    (lambda o: optim.CosineAnnealingLR(o, T_max=5, eta_min=-1.0), ValueError),
    (lambda o: optim.StepLR("sgd", step_size=2), TypeError),
], ids=["step_size_zero", "step_size_float", "gamma_negative", "t_max_zero", "eta_min_negative", "not_optimizer"])
def test_scheduler_rejects_bad_arguments(build, error):
    with pytest.raises(error):
        build(optim.SGD([nn.Parameter(np.ones(1))], lr=0.1))


# Constructor and input validation

@pytest.mark.parametrize("kwargs,error", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), ValueError),
    (dict(in_channels=4, out_channels=3, kernel_size=3, groups=2), ValueError),
    (dict(in_channels=0, out_channels=4, kernel_size=3), ValueError),
    (dict(in_channels=3, out_channels=-1, kernel_size=3), ValueError),
    (dict(in_channels=3.0, out_channels=4, kernel_size=3), TypeError),
    (dict(in_channels=True, out_channels=4, kernel_size=3), TypeError),
    (dict(in_channels=3, out_channels=4, kernel_size=0), ValueError),
    (dict(in_channels=3, out_channels=4, kernel_size=(3, -1)), ValueError),
    (dict(in_channels=3, out_channels=4, kernel_size=2.5), TypeError),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=0), ValueError),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=-1), ValueError),
    (dict(in_channels=3, out_channels=4, kernel_size=3, dilation=0), ValueError),
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=0), ValueError),
    (dict(in_channels=3, out_channels=4, kernel_size=3, dtype=np.int32), TypeError),
], ids=["in_not_divisible", "out_not_divisible", "in_zero", "out_negative", "in_float", "in_bool", "kernel_zero",
        "kernel_negative", "kernel_float", "stride_zero", "padding_negative", "dilation_zero", "groups_zero",
        "int_dtype"])
def test_conv2d_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        nn.Conv2d(**kwargs)


def test_conv2d_rejects_wrong_channel_count():
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3)(np.zeros((1, 2, 5, 5), np.float32))


@pytest.mark.parametrize("kwargs", [dict(padding="full"), dict(padding="same", stride=2)])
def test_conv2d_rejects_bad_padding_when_built(kwargs):
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2d(3, 4, 3, **kwargs)


@pytest.mark.parametrize("layer,kwargs", [(nn.MaxPool2d, dict(kernel_size=0)), (nn.AvgPool2d, dict(kernel_size=0)),
                                          (nn.MaxPool2d, dict(kernel_size=2, padding=2)),
                                          (nn.AvgPool2d, dict(kernel_size=2, stride=-1))])
def test_pooling_layers_reject_bad_arguments_when_built(layer, kwargs):
    with pytest.raises(ValueError):
        layer(**kwargs)


def test_a_layer_instance_cannot_appear_twice_in_a_model():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="appears twice"):
        nn.Sequential(relu, nn.Linear(3, 3), relu)
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="appears twice"):
        nn.Residual(nn.Sequential(lin), nn.Sequential(lin))


@pytest.mark.parametrize("args,error", [((0, 3), ValueError), ((3, -1), ValueError), ((2.0, 3), TypeError),
                                        ((3, True), TypeError)])
def test_linear_rejects_bad_sizes(args, error):
    with pytest.raises(error):
        nn.Linear(*args)


@pytest.mark.parametrize("shape", [(2, 4), (2, 5, 1), (5,)])
def test_linear_rejects_wrong_input_shape(shape):
    with pytest.raises(ValueError):
        nn.Linear(5, 3)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError):
        nn.Dropout(p)


@pytest.mark.parametrize("kwargs", [dict(num_features=0), dict(num_features=3, momentum=1.5),
                                    dict(num_features=3, momentum=-0.1), dict(num_features=3, eps=0.0)])
def test_batchnorm2d_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        nn.BatchNorm2d(**kwargs)


@pytest.mark.parametrize("shape,training", [((2, 4, 3, 3), True), ((2, 4, 3, 3), False), ((2, 3), True),
                                            ((1, 3, 1, 1), True)],
                         ids=["channels_train", "channels_eval", "not_4d", "one_value_per_channel"])
def test_batchnorm2d_rejects_bad_input(shape, training):
    bn = nn.BatchNorm2d(3).train(training)
    with pytest.raises(ValueError):
        bn(np.zeros(shape, np.float32))
    assert bn.num_batches_tracked == 0


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 3, 4, 4, 1)])
def test_global_avg_pool2d_rejects_non_4d_input(shape):
    with pytest.raises(ValueError):
        nn.GlobalAvgPool2d()(np.zeros(shape))


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_parameter_gradient_starts_at_zero_with_data_shape_and_dtype():
    p = nn.Parameter(np.arange(6, dtype=">f8").reshape(2, 3))
    assert p.data.dtype == np.float64 and p.data.dtype.isnative
    assert p.grad.shape == (2, 3) and p.grad.dtype == np.float64 and not p.grad.any()


def test_optimizer_step_refuses_parameters_it_could_not_update_in_place():
    p = nn.Parameter(np.zeros((4, 4)))
    opt = fc.optim.SGD([p], lr=0.1)
    p.data = np.zeros((4, 4)).T[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.step()
    p.data, p.grad = np.zeros(3), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="dtype"):
        opt.step()


@pytest.mark.parametrize("build", [lambda: models.lenet5(), lambda: models.resnet20()], ids=["lenet5", "resnet20"])
def test_set_input_grad_false_skips_the_input_gradient_and_keeps_every_parameter_gradient(build):
    """set_input_grad(False): backward returns None and the parameters' gradients are those of a model that
    computes the input's; the setting reaches exactly the layers that see the input."""
    rng = np.random.default_rng(0)
    fc.manual_seed(0)
    full, skipping = build().to(np.float64), build().to(np.float64)
    skipping.load_state_dict(full.state_dict())
    assert skipping.set_input_grad(False) is skipping
    x = rng.standard_normal((3, *((1, 28, 28) if isinstance(full[0], nn.Conv2d) and full[0].in_channels == 1
                                  else (3, 32, 32)))).astype(np.float64)
    labels = rng.integers(0, 10, 3)
    grads = []
    for model in (full, skipping):
        model.zero_grad()
        _, g = nn.cross_entropy(model(x), labels)
        grads.append((model.backward(g), {n: p.grad.copy() for n, p in model.named_parameters()}))
    assert grads[0][0].shape == x.shape and grads[1][0] is None
    for name, g in grads[0][1].items():
        np.testing.assert_allclose(grads[1][1][name], g, rtol=1e-12, atol=1e-14, err_msg=name)
    off = [m for m in skipping.modules() if not m.input_grad]
    assert off[:2] == [skipping, skipping[0]] and all(not isinstance(m, nn.Linear) for m in off)
    assert all(m.input_grad for m in skipping.layers[1:])
    with pytest.raises(TypeError, match="enabled"):
        skipping.set_input_grad("no")


def test_a_residual_without_input_grad_still_fills_both_branches_gradients():
    rng = np.random.default_rng(1)
    fc.manual_seed(1)
    block = models.basic_block(4, 8, stride=2).to(np.float64)
    x = rng.standard_normal((2, 4, 6, 6))
    u = rng.standard_normal(block(x).shape)
    block.zero_grad()
    block.backward(u)
    expected = {n: p.grad.copy() for n, p in block.named_parameters()}
    block.set_input_grad(False).zero_grad()
    block(x)
    assert block.backward(u) is None
    for name, g in expected.items():
        np.testing.assert_allclose(dict(block.named_parameters())[name].grad, g, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
def test_relu_then_max_pool_run_as_one_give_the_separate_layers_results(pool):
    """Sequential runs ReLU, MaxPool2d as max pooling then ReLU: the same output and grad_x as the two layers
    run apart, on windows all negative, with ties, zeros and NaN."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 8))
    x[0, 0, :4, :4] = -1.0  # windows of negatives only
    x[0, 1, :2, :2] = 0.5   # ties
    x[1, 2, 3, 3] = np.nan
    u = rng.standard_normal(nn.Sequential(nn.ReLU(), nn.MaxPool2d(**pool))(x).shape)
    fused = nn.Sequential(nn.Conv2d(3, 3, 1).to(np.float64), nn.ReLU(), nn.MaxPool2d(**pool))
    relu, max_pool = nn.ReLU(), nn.MaxPool2d(**pool)
    conv = fused[0]
    y_apart = max_pool(relu(conv(x)))
    gx_apart = conv.backward(relu.backward(max_pool.backward(u)))
    gw_apart = conv.weight.grad.copy()
    conv.zero_grad()
    y = fused(x)
    np.testing.assert_array_equal(y, y_apart)
    np.testing.assert_array_equal(fused.backward(u), gx_apart)
    np.testing.assert_array_equal(conv.weight.grad, gw_apart)
    assert fused[1].__dict__.get("y") is None  # ReLU's own forward did not run: it ran on the pooled values


def test_relu_then_max_pool_gradients_against_finite_differences():
    rng = np.random.default_rng(4)
    check_layer_gradients(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), away_from_zero((2, 2, 6, 6), rng))
