"""The layers of issue 17 (Identity, Sigmoid, Tanh, LeakyReLU, BatchNorm1d, LayerNorm, AdaptiveAvgPool2d,
ConvTranspose2d) and the ops under them (conv_transpose2d, adaptive_avg_pool2d): every backward against central
finite differences in float64, the ops on generated problems against their definitions written as plain loops
(conv_transpose2d with every conv2d algorithm), PyTorch parity (marked peers, skipped without PyTorch) and one
test per argument error. The GPU's agreement with the CPU is in test_cuda.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import fastconv as fc
from fastconv import nn
from fastconv._checks import native, pair
from fastconv.conv import CONV2D, conv_transpose2d_shape
from op_check import PEERS, assert_close, record_params, takes, tensor, to_numpy, torch
from strategies import LAYOUTS, layout
from test_nn import away_from_zero, check_layer_gradients

RNG = np.random.default_rng(17)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


# ---- the definitions, as plain loops -------------------------------------------------------------------

def conv_transpose2d_definition(x, w, b, grad_y, stride, padding, output_padding, groups, dilation):
    """(y, grad_x, grad_weight) of conv_transpose2d in float64 from its definition: each input pixel x[n, :, i, j]
    scatters x @ w[:, :, ki, kj] to row i*sh + ki*dh, column j*sw + kj*dw of the uncropped output, which then
    loses `padding` rows and columns on each side (output_padding extends it at the bottom and right)."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (pair("", a, 0) for a in (stride, padding, output_padding, dilation))
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c_in, h, wd = x.shape
    _, cg_out, r, s = w.shape
    cg_in = c_in // groups
    full = (n, cg_out * groups, (h - 1) * sh + dh * (r - 1) + 1 + oph, (wd - 1) * sw + dw * (s - 1) + 1 + opw)
    oh, ow = full[2] - 2 * ph, full[3] - 2 * pw
    y_full, g_full = np.zeros(full), np.zeros(full)
    g_full[:, :, ph:ph + oh, pw:pw + ow] = grad_y
    gx, gw = np.zeros_like(x), np.zeros_like(w)
    for g in range(groups):
        ci, co = slice(g * cg_in, (g + 1) * cg_in), slice(g * cg_out, (g + 1) * cg_out)
        for i in range(h):
            for j in range(wd):
                for ki in range(r):
                    for kj in range(s):
                        row, col, wk = i * sh + ki * dh, j * sw + kj * dw, w[ci, :, ki, kj]
                        y_full[:, co, row, col] += x[:, ci, i, j] @ wk
                        gx[:, ci, i, j] += g_full[:, co, row, col] @ wk.T
                        gw[ci, :, ki, kj] += x[:, ci, i, j].T @ g_full[:, co, row, col]
    y = y_full[:, :, ph:ph + oh, pw:pw + ow] + (0 if b is None else b.astype(np.float64)[:, None, None])
    return y, gx, gw


def adaptive_avg_pool2d_definition(x, grad_y, oh, ow):
    """(y, grad_x) of adaptive average pooling in float64: output (i, j) is the mean over rows
    [floor(i*H/OH), ceil((i+1)*H/OH)) and the columns likewise."""
    x = x.astype(np.float64)
    h, w = x.shape[-2:]
    y, gx = np.zeros((*x.shape[:-2], oh, ow)), np.zeros_like(x)
    for i in range(oh):
        r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
        for j in range(ow):
            c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            y[..., i, j] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
            gx[..., r0:r1, c0:c1] += grad_y[..., i, j, None, None] / ((r1 - r0) * (c1 - c0))
    return y, gx


# ---- generated problems --------------------------------------------------------------------------------

@st.composite
def transpose_cases(draw, max_size: int = 5, dtypes=(np.float32, np.float64)) -> dict:
    """conv_transpose2d problems: up to 3 groups of 1-3 channels in and out, kernels 1-4 (one in four 3x3 at stride
    and dilation 1, which every algorithm computes), strides and dilations 1-3, paddings 0-2, output_padding below
    stride or dilation, inputs up to max_size (batches of 1 or 2, or unbatched), float32 or float64, with or
    without bias, in any memory layout."""
    groups, cg_in, cg_out = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:
        (r, s), stride, dilation = (3, 3), (1, 1), (1, 1)
    else:
        r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    output_padding = tuple(draw(st.integers(0, max(a, b) - 1)) for a, b in zip(stride, dilation))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    for size, k, st_, p, op, d in zip((h, w), (r, s), stride, padding, output_padding, dilation):
        assume((size - 1) * st_ - 2 * p + d * (k - 1) + op + 1 >= 1)
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, groups * cg_in, h, w)).astype(dtype)
    weight = rng.standard_normal((groups * cg_in, cg_out, r, s)).astype(dtype)
    bias = rng.standard_normal(groups * cg_out).astype(dtype) if draw(st.booleans()) else None
    if n == 1 and draw(st.booleans()):
        x = x[0]
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    return dict(x=layout(x, draw(st.sampled_from(LAYOUTS))), weight=weight, bias=bias, args=args)


def check_conv_transpose2d(case: dict, algo: str = "auto") -> None:
    """conv_transpose2d and its backward with `algo` on a transpose_cases problem: y, grad_x, grad_weight and
    grad_bias against the definition and, where PyTorch is installed, torch.nn.functional.conv_transpose2d."""
    x, w, b, args = case["x"], case["weight"], case["bias"], case["args"]
    y = fc.conv_transpose2d(x, w, b, **args, algo=algo)
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    out = (y, *fc.conv_transpose2d_backward(grad_y, x, w, **args, algo=algo))
    c_in, cg_out, r, s = w.shape
    xb, gyb = (x, grad_y) if x.ndim == 4 else (x[None], grad_y[None])
    y_def, gx_def, gw_def = conv_transpose2d_definition(xb, w, b, gyb, **args)
    expected = (y_def.reshape(y.shape), gx_def.reshape(x.shape), gw_def, gyb.astype(np.float64).sum(axis=(0, 2, 3)))
    terms = (c_in // args["groups"] * r * s + 1, cg_out * r * s, xb[0, 0].size * len(xb), grad_y.size)
    for what, got, want, n in zip(("y", "grad_x", "grad_weight", "grad_bias"), out, expected, terms):
        assert_close(got, want.astype(w.dtype), n, err_msg=f"{what} ({algo})")
    if torch is not None:
        xt, wt = tensor(x, True), tensor(w, True)
        bt = None if b is None else tensor(b, True)
        yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, **args)
        yt.backward(tensor(grad_y))
        for what, got, want, n in zip(("y", "grad_x", "grad_weight", "grad_bias"), out,
                                      (yt, xt.grad, wt.grad, None if bt is None else bt.grad), terms):
            if want is not None:
                assert_close(got, to_numpy(want), n, err_msg=f"{what} against PyTorch ({algo})")


@pytest.mark.parametrize("algo", [pytest.param("auto", marks=PEERS)])
@given(case=transpose_cases())
def test_conv_transpose2d_against_its_definition(algo, case):
    check_conv_transpose2d(case, algo)


@pytest.mark.parametrize("record", record_params(CONV2D.records("cpu")))
@settings(max_examples=15)
@given(case=transpose_cases(max_size=4))
def test_conv_transpose2d_with_every_conv2d_algorithm(record, case):
    """Each CPU record of conv2d runs conv_transpose2d (its backward, forward and backward_weight passes) where it
    takes the problem; where it refuses it, asking for it by name raises a ValueError naming it."""
    x, w, args = case["x"], case["weight"], case["args"]
    p = conv_transpose2d_shape(x if x.ndim == 4 else x[None], w, args["stride"], args["padding"], args["output_padding"], args["groups"],
                               args["dilation"])
    if takes(record, p, lambda: fc.conv_transpose2d(x, w, **args, algo=record.name)):
        check_conv_transpose2d(case, record.name)


@st.composite
def adaptive_cases(draw) -> tuple[np.ndarray, object]:
    """x (N, C, H, W) with N from 0, or unbatched (C, H, W), H and W 1-9, and an output size of 1-10 (above H and W
    too) or None per axis, as an int or a pair; one in five the size of x or 1 (windows that tile x)."""
    h, w, c = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 3))
    size = st.one_of(st.integers(1, 10), st.none())
    output_size = draw(st.one_of(st.integers(1, 10), st.tuples(size, size), st.sampled_from([(h, w), 1])))
    shape = (c, h, w) if draw(st.booleans()) else (draw(st.integers(0, 2)), c, h, w)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape).astype(dtype)
    return layout(x, draw(st.sampled_from(LAYOUTS))), output_size


@pytest.mark.parametrize("peers", [pytest.param(None, marks=PEERS)])
@given(case=adaptive_cases())
def test_adaptive_avg_pool2d_against_its_definition(peers, case):
    """y and grad_x against the definition (windows that tile x run as avg_pool2d, the others as the adaptive
    kernel), unbatched and empty batches included; where PyTorch is installed, against it too."""
    x, output_size = case
    y = fc.adaptive_avg_pool2d(x, output_size)
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or x.shape[-2], ow or x.shape[-1]
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    gx = fc.adaptive_avg_pool2d_backward(grad_y, x, output_size)
    y_def, gx_def = adaptive_avg_pool2d_definition(x, grad_y, oh, ow)
    window = math.ceil(x.shape[-2] / oh + 1) * math.ceil(x.shape[-1] / ow + 1)
    assert_close(y, y_def.astype(native(x.dtype)), window, err_msg="y")
    assert_close(gx, gx_def.astype(native(x.dtype)), 4, err_msg="grad_x")
    if torch is not None and x.size:
        xt = tensor(x, True)
        yt = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
        yt.backward(tensor(grad_y))
        assert_close(y, to_numpy(yt), window, err_msg="y against PyTorch")
        assert_close(gx, to_numpy(xt.grad), 4, err_msg="grad_x against PyTorch")


def test_output_padding_past_the_stride_gives_zero_rows_and_the_right_gradients():
    """With dilation above the stride, output_padding may reach rows no input pixel scatters to: they hold the
    bias alone (conv2d's problem then has an output row more than x, zero in its grad_y)."""
    x, w, b = rand(1, 2, 3, 3), rand(2, 1, 2, 2), rand(1)
    y = fc.conv_transpose2d(x, w, b, stride=1, output_padding=(2, 0), dilation=3)
    assert y.shape == (1, 1, 2 + 3 + 2 + 1, 6)
    np.testing.assert_array_equal(y[0, 0, 6:], np.full((2, 6), b[0]))
    grad_y = rand(*y.shape)
    got = (y, *fc.conv_transpose2d_backward(grad_y, x, w, stride=1, output_padding=(2, 0), dilation=3)[:2])
    for a, want in zip(got, conv_transpose2d_definition(x, w, b, grad_y, 1, 0, (2, 0), 1, 3)):
        assert_close(a, want, 9)


# ---- layers: gradients against finite differences (float64) -------------------------------------------

TRANSPOSE_CASES = {
    "plain": dict(in_channels=3, out_channels=2, kernel_size=3),
    "stride2_output_padding": dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1,
                                   output_padding=1),
    "groups": dict(in_channels=4, out_channels=2, kernel_size=2, stride=2, groups=2),
    "dilation": dict(in_channels=2, out_channels=2, kernel_size=(2, 3), dilation=(2, 1), padding=(1, 0),
                     output_padding=(1, 0)),
    "no_bias": dict(in_channels=2, out_channels=3, kernel_size=(1, 2), stride=(1, 3), bias=False),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=list(TRANSPOSE_CASES))
def test_conv_transpose2d_gradients(case):
    layer = nn.ConvTranspose2d(**TRANSPOSE_CASES[case], dtype=np.float64)
    check_layer_gradients(layer, rand(2, layer.in_channels, 4, 3))


@pytest.mark.parametrize("build, shape", [
    (lambda: nn.Identity(3, any="thing"), (2, 3, 4)),
    (nn.Sigmoid, (2, 3, 4, 5)),
    (nn.Tanh, (2, 7)),
    (lambda: nn.AdaptiveAvgPool2d((3, None)), (2, 2, 7, 4)),
    (lambda: nn.AdaptiveAvgPool2d(2), (1, 2, 6, 4)),
    (lambda: nn.AdaptiveAvgPool2d((4, 6)), (2, 1, 3, 5)),
], ids=["identity", "sigmoid", "tanh", "adaptive_overlapping", "adaptive_tiling", "adaptive_upsampling"])
def test_parameterless_layer_gradients(build, shape):
    check_layer_gradients(build(), rand(*shape))


@pytest.mark.parametrize("slope", [0.01, -0.5, 2.0])
def test_leaky_relu_gradients(slope):
    check_layer_gradients(nn.LeakyReLU(slope), away_from_zero((2, 3, 4), RNG))


def _randomized(layer: nn.Module) -> nn.Module:
    for p in layer.parameters():
        p.data[...] = RNG.uniform(0.5, 1.5, p.data.shape)
    return layer


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5)], ids=["NC", "NCL"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm1d_gradients(shape, training):
    bn = _randomized(nn.BatchNorm1d(3, dtype=np.float64))
    bn.running_mean[...], bn.running_var[...] = rand(3), RNG.uniform(0.5, 2, 3)
    check_layer_gradients(bn.train(training), 2 * rand(*shape) + 1)


@pytest.mark.parametrize("kwargs, shape", [
    (dict(normalized_shape=5), (2, 3, 5)),
    (dict(normalized_shape=(3, 4)), (2, 3, 4)),
    (dict(normalized_shape=[4], bias=False), (3, 4)),
    (dict(normalized_shape=(2, 3), elementwise_affine=False), (2, 3)),
], ids=["last_axis", "two_axes", "no_bias", "no_affine"])
def test_layernorm_gradients(kwargs, shape):
    check_layer_gradients(_randomized(nn.LayerNorm(**kwargs, dtype=np.float64)), 3 * rand(*shape) - 1)


# ---- layers: semantics and plumbing --------------------------------------------------------------------

def test_activations_follow_their_formulas_and_keep_nan():
    x = np.array([-800.0, -3.0, -0.0, 0.0, 2.5, 800.0, np.nan], np.float32)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(nn.Sigmoid()(x), (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32),
                                   rtol=1e-6)
    np.testing.assert_array_equal(nn.Tanh()(x), np.tanh(x))
    np.testing.assert_array_equal(nn.LeakyReLU(0.1)(x), np.where(x > 0, x, x * np.float32(0.1)))
    leaky = nn.LeakyReLU(0.1)
    leaky(x)
    np.testing.assert_array_equal(leaky.backward(np.ones_like(x)), np.where(x > 0, 1, np.float32(0.1)))  # 0, NaN: slope


def test_batchnorm1d_is_batchnorm2d_on_a_trailing_axis():
    """The same statistics, running buffers and gradients as BatchNorm2d on x viewed as (N, C, L, 1)."""
    x, g = 3 * rand(4, 3, 5) + 2, rand(4, 3, 5)
    one, two = (cls(3, momentum=0.3, dtype=np.float64) for cls in (nn.BatchNorm1d, nn.BatchNorm2d))
    np.testing.assert_array_equal(one(x), two(x[..., None])[..., 0])
    np.testing.assert_array_equal(one.backward(g), two.backward(g[..., None])[..., 0])
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for p, q in zip(one.parameters(), two.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    assert isinstance(one, nn._BatchNorm) and isinstance(two, nn._BatchNorm) and one.num_batches_tracked == 1


def test_layernorm_normalizes_each_position_in_training_and_eval():
    ln = _randomized(nn.LayerNorm((2, 3), eps=1e-3, dtype=np.float64))
    x = 4 * rand(5, 2, 3) + 1
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-3) * ln.weight.data + ln.bias.data
    np.testing.assert_allclose(ln(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ln.eval()(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build, shape, kept", [
    (nn.Sigmoid, (2, 3), ("y",)), (nn.Tanh, (2, 3), ("y",)), (nn.LeakyReLU, (2, 3), ("x",)),
    (lambda: nn.AdaptiveAvgPool2d(2), (2, 3, 5, 5), ("x",)), (lambda: nn.BatchNorm1d(3), (2, 3, 4), ("xhat", "invstd")),
    (lambda: nn.LayerNorm(4), (2, 4), ("xhat", "invstd")), (lambda: nn.ConvTranspose2d(3, 2, 2), (2, 3, 4, 4), ("x",)),
], ids=["sigmoid", "tanh", "leaky_relu", "adaptive", "batchnorm1d", "layernorm", "conv_transpose2d"])
def test_no_grad_keeps_nothing_for_backward(build, shape, kept):
    layer = build().eval()
    x = rand(*shape).astype(np.float32)
    y = layer(x)
    assert all(getattr(layer, name) is not None for name in kept)
    with fc.no_grad():
        np.testing.assert_array_equal(layer(x), y)
    assert all(getattr(layer, name) is None for name in kept)
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones_like(y))


@pytest.mark.parametrize("build, shape", [
    (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, dtype=np.float64), (2, 3, 4, 4)),
    (lambda: nn.LayerNorm(4, dtype=np.float64), (2, 3, 4)),
    (lambda: nn.BatchNorm1d(3, dtype=np.float64), (4, 3)),
], ids=["conv_transpose2d", "layernorm", "batchnorm1d"])
def test_input_grad_false_returns_none_and_the_same_parameter_gradients(build, shape):
    fc.manual_seed(0)
    full, skipping = build(), build()
    skipping.load_state_dict(full.state_dict())
    skipping.set_input_grad(False)
    x = rand(*shape)
    g = rand(*full(x).shape)
    assert full.backward(g).shape == x.shape
    skipping(x)
    assert skipping.backward(g) is None
    for (name, p), (_, q) in zip(full.named_parameters(), skipping.named_parameters()):
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=name)


def test_conv_transpose2d_initialization_is_uniform_within_inverse_sqrt_fan_in():
    fc.manual_seed(0)
    layer = nn.ConvTranspose2d(6, 400, (3, 2), groups=2)
    assert layer.weight.data.shape == (6, 200, 3, 2) and layer.weight.data.dtype == np.float32
    bound = 1 / math.sqrt(200 * 3 * 2)  # fan_in from weight.shape[1] * kh * kw, as PyTorch
    for p in (layer.weight, layer.bias):
        assert np.abs(p.data).max() <= bound * (1 + 1e-6) and p.data.max() > 0.9 * bound
    assert layer.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_new_layers_save_and_load(tmp_path):
    fc.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1), nn.BatchNorm2d(3),
                          nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d((2, None)), nn.LayerNorm([3, 2, 10]), nn.Tanh(),
                          nn.Flatten(), nn.Identity(), nn.Linear(60, 4), nn.BatchNorm1d(4), nn.Sigmoid())
    x = rand(3, 2, 4, 4).astype(np.float32)
    assert model(x).shape == (3, 4)  # a training step: batch norm's running statistics move
    loaded = fc.load(fc.save(model, tmp_path / "model.npz"))
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


# ---- argument errors -----------------------------------------------------------------------------------

X4, W4 = np.zeros((1, 4, 5, 5)), np.zeros((4, 2, 3, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: fc.conv_transpose2d(X4, W4, stride=2, output_padding=2), ValueError,
     "output_padding must be smaller than either stride or dilation"),
    (lambda: fc.conv_transpose2d(X4, W4, output_padding=1), ValueError, "output_padding must be smaller"),
    (lambda: fc.conv_transpose2d(X4, W4, output_padding=-1), ValueError, "output_padding must be at least 0"),
    (lambda: fc.conv_transpose2d(X4, np.zeros((3, 2, 3, 3))), ValueError, "weight must have x's 4 input channels"),
    (lambda: fc.conv_transpose2d(X4, W4, groups=3), ValueError, r"input channels \(4\) must be divisible by groups"),
    (lambda: fc.conv_transpose2d(X4, W4, groups=0), ValueError, "groups must be a positive int"),
    (lambda: fc.conv_transpose2d(X4, W4, padding=4), ValueError, "padding=4 leaves an empty output"),
    (lambda: fc.conv_transpose2d(X4, W4, padding="same"), TypeError, "padding must be an int"),
    (lambda: fc.conv_transpose2d(X4, W4, stride=0), ValueError, "stride must be at least 1"),
    (lambda: fc.conv_transpose2d(X4, W4, dilation=(1, 0)), ValueError, "dilation must be at least 1"),
    (lambda: fc.conv_transpose2d(X4, W4.astype(np.float32)), TypeError, "weight must have the input's dtype"),
    (lambda: fc.conv_transpose2d(X4, W4[0]), ValueError, "weight must have 4 dimensions"),
    (lambda: fc.conv_transpose2d(X4[0, 0], W4), ValueError, "x must have 3 or 4 dimensions"),
    (lambda: fc.conv_transpose2d(X4, W4, np.zeros(4)), ValueError, r"bias must have shape \(2,\)"),
    (lambda: fc.conv_transpose2d(X4, W4, algo="fft"), ValueError, "algo for conv2d must be 'auto' or one of"),
    (lambda: fc.conv_transpose2d(X4, W4, stride=2, algo="winograd"), ValueError, "algo='winograd'"),
    (lambda: fc.conv_transpose2d_backward(np.zeros((1, 2, 7, 6)), X4, W4), ValueError,
     r"grad_y must have the output's shape \(1, 2, 7, 7\)"),
    (lambda: fc.conv_transpose2d_backward(np.zeros((1, 2, 7, 7)), X4, W4, input_grad=1), TypeError, "input_grad"),
    (lambda: fc.adaptive_avg_pool2d(X4, 0), ValueError, "output_size must be at least 1"),
    (lambda: fc.adaptive_avg_pool2d(X4, (2, 3, 4)), ValueError, "output_size must be an int or a pair"),
    (lambda: fc.adaptive_avg_pool2d(X4, 2.0), TypeError, "output_size must be an int or a pair"),
    (lambda: fc.adaptive_avg_pool2d(X4[0, 0], 2), ValueError, "x must have 3 or 4 dimensions"),
    (lambda: fc.adaptive_avg_pool2d(X4.astype(np.int32), 2), TypeError, "x must be float32 or float64"),
    (lambda: fc.adaptive_avg_pool2d_backward(np.zeros((1, 4, 2, 3)), X4, 2), ValueError,
     r"grad_y must have the output's shape \(1, 4, 2, 2\)"),
    (lambda: nn.ConvTranspose2d(4, 3, 3, groups=2), ValueError, "must be divisible by groups"),
    (lambda: nn.ConvTranspose2d(4, 4, 3, stride=2, output_padding=2), ValueError, "output_padding must be smaller"),
    (lambda: nn.ConvTranspose2d(4, 4, 0), ValueError, "kernel_size must be at least 1"),
    (lambda: nn.ConvTranspose2d(4, 4, 3, bias=None), TypeError, "bias must be True or False"),
    (lambda: nn.ConvTranspose2d(4, 2, 3, dtype=np.float64)(np.zeros((1, 3, 5, 5))), ValueError,
     r"ConvTranspose2d\(4, 2\) needs x of shape \(N, 4, H, W\)"),
    (lambda: nn.ConvTranspose2d(4, 2, 3)(X4), TypeError, "x is float64 but the layer's weights are float32"),
    (lambda: nn.LeakyReLU("0.1"), TypeError, "negative_slope must be a number"),
    (lambda: nn.LeakyReLU(math.inf), ValueError, "negative_slope must be finite"),
    (lambda: nn.AdaptiveAvgPool2d((0, 2)), ValueError, "output_size must be at least 1"),
    (lambda: nn.AdaptiveAvgPool2d(2)(np.zeros((4, 5))), ValueError, r"AdaptiveAvgPool2d needs x of shape"),
    (lambda: nn.BatchNorm1d(0), ValueError, "num_features must be at least 1"),
    (lambda: nn.BatchNorm1d(3, momentum=2), ValueError, "momentum must be in"),
    (lambda: nn.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), np.float32)), ValueError,
     r"BatchNorm1d\(3\) needs x of shape \(N, 3\) or \(N, 3, L\)"),
    (lambda: nn.BatchNorm1d(3)(np.zeros((2, 4), np.float32)), ValueError, r"BatchNorm1d\(3\) needs x of shape"),
    (lambda: nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32)), ValueError,
     "BatchNorm1d in training needs more than one value per channel"),
    (lambda: nn.BatchNorm2d(3)(np.zeros((2, 3, 4), np.float32)), ValueError,
     r"BatchNorm2d\(3\) needs x of shape \(N, 3, H, W\)"),
    (lambda: nn.LayerNorm(()), ValueError, "normalized_shape must name at least one dimension"),
    (lambda: nn.LayerNorm((3, 0)), ValueError, "normalized_shape must be at least 1"),
    (lambda: nn.LayerNorm(3, eps=0), ValueError, "eps must be positive"),
    (lambda: nn.LayerNorm(3, elementwise_affine="yes"), TypeError, "elementwise_affine must be True or False"),
    (lambda: nn.LayerNorm((3, 4))(np.zeros((2, 4, 3), np.float32)), ValueError,
     r"LayerNorm\(\(3, 4\)\) needs x of shape \(\.\.\., 3, 4\)"),
    (lambda: nn.LayerNorm(4)(np.zeros((2, 4))), TypeError, "x is float64 but the layer's weights are float32"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("build, shape, bad", [
    (nn.Sigmoid, (2, 3), (3, 2)), (nn.LeakyReLU, (2, 3), (3, 2)), (lambda: nn.LayerNorm(3), (2, 3), (3, 2)),
    (lambda: nn.BatchNorm1d(3), (2, 3), (2, 4)),
], ids=["sigmoid", "leaky_relu", "layernorm", "batchnorm1d"])
def test_backward_refuses_a_grad_of_another_shape(build, shape, bad):
    layer = build()
    layer(np.ones(shape, np.float32) + np.arange(shape[0], dtype=np.float32)[:, None])
    with pytest.raises(ValueError, match="grad_y must have the output's shape"):
        layer.backward(np.zeros(bad, np.float32))


# ---- PyTorch parity (peers) ----------------------------------------------------------------------------

pytorch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed: pip install torch==2.13.0")

PAIRS = {  # name: (fastconv layer, the same PyTorch layer, input shape)
    "identity": (lambda: nn.Identity(7), lambda: torch.nn.Identity(7), (2, 3)),
    "sigmoid": (nn.Sigmoid, lambda: torch.nn.Sigmoid(), (2, 3, 4)),
    "tanh": (nn.Tanh, lambda: torch.nn.Tanh(), (2, 3, 4)),
    "leaky_relu": (nn.LeakyReLU, lambda: torch.nn.LeakyReLU(), (2, 3, 4)),
    "leaky_relu_slope": (lambda: nn.LeakyReLU(-0.3), lambda: torch.nn.LeakyReLU(-0.3), (2, 5)),
    "adaptive": (lambda: nn.AdaptiveAvgPool2d((3, None)), lambda: torch.nn.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    "adaptive_int": (lambda: nn.AdaptiveAvgPool2d(4), lambda: torch.nn.AdaptiveAvgPool2d(4), (3, 9, 6)),
    "batchnorm1d_nc": (lambda: nn.BatchNorm1d(3, momentum=0.3, dtype=np.float64),
                       lambda: torch.nn.BatchNorm1d(3, momentum=0.3, dtype=torch.float64), (5, 3)),
    "batchnorm1d_ncl": (lambda: nn.BatchNorm1d(3, eps=1e-3, dtype=np.float64),
                        lambda: torch.nn.BatchNorm1d(3, eps=1e-3, dtype=torch.float64), (2, 3, 4)),
    "layernorm": (lambda: nn.LayerNorm((3, 4), dtype=np.float64),
                  lambda: torch.nn.LayerNorm((3, 4), dtype=torch.float64), (2, 3, 4)),
    "layernorm_no_bias": (lambda: nn.LayerNorm(4, eps=1e-2, bias=False, dtype=np.float64),
                          lambda: torch.nn.LayerNorm(4, eps=1e-2, bias=False, dtype=torch.float64), (5, 4)),
    "layernorm_no_affine": (lambda: nn.LayerNorm([4], elementwise_affine=False, dtype=np.float64),
                            lambda: torch.nn.LayerNorm([4], elementwise_affine=False, dtype=torch.float64), (3, 4)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2, True, 1, dtype=np.float64),
                         lambda: torch.nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2, True, 1, dtype=torch.float64),
                         (2, 4, 5, 4)),
    "conv_transpose2d_dilated": (lambda: nn.ConvTranspose2d(2, 3, (2, 3), (1, 2), (0, 1), (1, 0), 1, False, (2, 1),
                                                            dtype=np.float64),
                                 lambda: torch.nn.ConvTranspose2d(2, 3, (2, 3), (1, 2), (0, 1), (1, 0), 1, False,
                                                                  (2, 1), dtype=torch.float64), (2, 4, 4)),
}


@pytest.mark.peers
@pytorch
@pytest.mark.parametrize("name", PAIRS)
def test_layers_match_pytorch(name):
    """state_dict names and shapes, extra_repr, forward, grad_x and parameter gradients in training, running
    statistics (batch norm), then forward and gradients in eval mode, against the same PyTorch layer with the
    same weights."""
    build, build_torch, shape = PAIRS[name]
    ours, theirs = build(), build_torch()
    state = theirs.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    ours.load_state_dict({k: np.asarray(RNG.uniform(0.5, 1.5, v.shape)) if v.dtype.is_floating_point
                          else v.numpy() for k, v in state.items()})
    theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    assert theirs.extra_repr().startswith(ours.extra_repr())  # batch norm: PyTorch's lists affine= and more
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        ours.zero_grad(), theirs.zero_grad()
        x = 2 * rand(*shape) + 0.5
        xt = tensor(x, True)
        y, yt = ours(x), theirs(xt)
        assert_close(y, to_numpy(yt), 50, err_msg=f"y, training={mode}")
        g = rand(*y.shape)
        yt.backward(tensor(g))
        assert_close(ours.backward(g), to_numpy(xt.grad), 50, err_msg=f"grad_x, training={mode}")
        for (n, p), (tn, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert n == tn
            assert_close(p.grad, to_numpy(tp.grad), 50, err_msg=f"{n}.grad, training={mode}")
        for k, v in theirs.state_dict().items():
            assert_close(np.asarray(ours.state_dict()[k]), v.numpy(), 50, err_msg=f"{k}, training={mode}")


@pytest.mark.peers
@pytorch
def test_conv_transpose2d_initialization_follows_pytorch():
    """PyTorch's fan_in for a transposed convolution's weight (in, out/groups, kh, kw) is out/groups*kh*kw, and its
    weight and bias bounds are 1/sqrt(fan_in): ours are within the same bounds and reach them."""
    fc.manual_seed(1)
    ours, theirs = nn.ConvTranspose2d(8, 300, (2, 3), groups=4), torch.nn.ConvTranspose2d(8, 300, (2, 3), groups=4)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)
    for p, tp in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
        bound = 1 / math.sqrt(fan_in)
        assert abs(tp.detach()).max() <= bound * (1 + 1e-6)
        assert np.abs(p.data).max() <= bound * (1 + 1e-6) and np.abs(p.data).max() > 0.9 * bound
