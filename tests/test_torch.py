"""Against PyTorch (skipped cleanly when it is not installed): random configurations and
PyTorch's own OpInfo sample inputs for conv2d, max_pool2d and avg_pool2d, forward and backward."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastconv as fc
from strategies import conv_algo_takes, conv_cases, pool_cases

pytestmark = pytest.mark.peers
torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")
F = torch.nn.functional
torch.set_num_threads(1)  # an oracle: its thread pool would only contend with ours


def _t(a, requires_grad=False):
    return torch.from_numpy(np.array(a, dtype=a.dtype.newbyteorder("="))).requires_grad_(requires_grad)


def _close(actual: np.ndarray, expected, terms: int) -> None:
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    if actual.dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-10 * terms)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * terms)


@pytest.mark.parametrize("algo", [a for a in fc.algorithms("conv2d") if a != "naive"])
@given(case=conv_cases(max_batch=3))
def test_conv2d_matches_torch(algo, case):
    if not conv_algo_takes(algo, case):
        return
    x, w = _t(case.x, True), _t(case.weight, True)
    b = _t(case.bias, True) if case.bias is not None else None
    y_ref = F.conv2d(x, w, b, **case.kwargs)
    g = np.random.default_rng(0).standard_normal(tuple(y_ref.shape)).astype(case.x.dtype)
    y_ref.backward(_t(g))
    terms = int(np.prod(case.weight.shape[1:])) + int(g.size)
    _close(fc.conv2d(case.x, case.weight, case.bias, **case.kwargs, algo=algo), y_ref, terms)
    gx, gw, gb = fc.conv2d_backward(g, case.x, case.weight, **case.kwargs, algo=algo)
    _close(gx, x.grad, terms)
    _close(gw, w.grad, terms)
    if b is not None:
        _close(gb, b.grad, terms)


@given(case=pool_cases(max_batch=3), return_indices=st.booleans())
def test_max_pool2d_matches_torch(case, return_indices):
    kw = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
              dilation=case.dilation, ceil_mode=case.ceil_mode)
    x = _t(case.x, True)
    y_ref, i_ref = F.max_pool2d(x, **kw, return_indices=True)
    y, i = fc.max_pool2d(case.x, **kw, return_indices=True)
    _close(y, y_ref, 1)
    np.testing.assert_array_equal(i, i_ref.numpy())
    g = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    y_ref.backward(_t(g))
    _close(fc.max_pool2d_backward(g, case.x, **kw), x.grad, 16)


@given(case=pool_cases(dilation=False, max_batch=3), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, 2, -3]))
def test_avg_pool2d_matches_torch(case, count_include_pad, divisor_override):
    kw = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
              ceil_mode=case.ceil_mode, count_include_pad=count_include_pad, divisor_override=divisor_override)
    x = _t(case.x, True)
    y_ref = F.avg_pool2d(x, **kw)
    _close(fc.avg_pool2d(case.x, **kw), y_ref, 16)
    g = np.random.default_rng(0).standard_normal(tuple(y_ref.shape)).astype(case.x.dtype)
    y_ref.backward(_t(g))
    _close(fc.avg_pool2d_backward(g, case.x, **kw), x.grad, 16)


@pytest.mark.parametrize("algo", [a for a in fc.algorithms("gemm") if a != "naive"])
def test_gemm_matches_torch_matmul(algo):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)).astype(np.float32), rng.standard_normal((200, 100)).astype(np.float32)
    _close(fc.gemm(a, b, algo=algo), torch.from_numpy(a) @ torch.from_numpy(b), 200)


# ---- PyTorch's own sample inputs (OpInfo database) -------------------------------------------

OPS = {"nn.functional.conv2d": "conv2d", "nn.functional.max_pool2d": "max_pool2d",
       "nn.functional.avg_pool2d": "avg_pool2d"}


@pytest.fixture(scope="module")
def op_db():
    pytest.importorskip("expecttest", reason="PyTorch's OpInfo database needs the expecttest package")
    from torch.testing._internal.common_methods_invocations import op_db
    return {op.name: op for op in op_db if op.name in OPS}


def _np(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t


def _run_sample(name, sample, algo):
    """fastconv's forward and gradient (w.r.t. every tensor input) for one OpInfo sample."""
    x = _np(sample.input)
    args, kwargs = [_np(a) for a in sample.args], dict(sample.kwargs)
    if name == "conv2d":
        weight, bias = args[0], (args[1] if len(args) > 1 else kwargs.pop("bias", None))
        y = fc.conv2d(x, weight, bias, **kwargs, algo=algo)
        return y, lambda g: fc.conv2d_backward(g, x, weight, **kwargs, algo=algo)
    if name == "max_pool2d":
        out = fc.max_pool2d(x, *args, **kwargs, algo=algo)
        kwargs.pop("return_indices", None)
        return out, lambda g: (fc.max_pool2d_backward(g, x, *args, **kwargs, algo=algo),)
    y = fc.avg_pool2d(x, *args, **kwargs, algo=algo)
    return y, lambda g: (fc.avg_pool2d_backward(g, x, *args, **kwargs, algo=algo),)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(OPS))
def test_opinfo_samples(op_db, name, dtype):
    op = op_db[name]
    short = OPS[name]
    count = 0
    for i, sample in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
        y_ref = op(sample.input, *sample.args, **sample.kwargs)
        indices_ref = None
        if isinstance(y_ref, tuple):
            y_ref, indices_ref = y_ref
        g = torch.randn_like(y_ref)
        inputs = [t for t in [sample.input, *sample.args] if isinstance(t, torch.Tensor) and t.requires_grad]
        grads_ref = torch.autograd.grad(y_ref, inputs, g)
        if short == "conv2d" and len(inputs) == 2:  # bias given through kwargs or absent
            grads_ref = grads_ref + (None,)
        for algo in fc.algorithms(short):
            if algo == "naive" and i % 8:  # Python loops: a sample of the samples is enough
                continue
            try:
                out, backward = _run_sample(short, sample, algo)
            except ValueError as error:
                if algo == "winograd" and "algo='winograd' needs" in str(error):
                    continue  # it takes 3x3 kernels at stride 1 and dilation 1 only
                raise
            y = out[0] if isinstance(out, tuple) else out
            terms = 64
            _close(y, y_ref, terms)
            if indices_ref is not None:
                np.testing.assert_array_equal(out[1], indices_ref.numpy())
            for got, want in zip(backward(g.numpy()), grads_ref):
                if want is not None:
                    _close(got, want, terms)
        count += 1
    assert count > 0, f"no OpInfo samples for {name}"
