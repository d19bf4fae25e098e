"""Against PyTorch's own OpInfo sample inputs for conv2d, max_pool2d and avg_pool2d, forward and backward, with
every CPU algorithm (skipped cleanly when PyTorch is not installed). Generated problems are checked against
PyTorch by the tests built on op_check (tests/test_conv.py, test_pool.py, test_gemm.py)."""
from types import SimpleNamespace

import numpy as np
import pytest

import fastconv as fc
from fastconv._checks import pool2d_shape
from fastconv.algorithm import REGISTRIES
from op_check import assert_close, conv_shape, takes, to_numpy

pytestmark = pytest.mark.peers
torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")


# ---- PyTorch's own sample inputs (OpInfo database) -------------------------------------------

OPS = {"nn.functional.conv2d": "conv2d", "nn.functional.max_pool2d": "max_pool2d",
       "nn.functional.avg_pool2d": "avg_pool2d"}


@pytest.fixture(scope="module")
def op_db():
    pytest.importorskip("expecttest", reason="PyTorch's OpInfo database needs the expecttest package")
    from torch.testing._internal.common_methods_invocations import op_db
    return {op.name: op for op in op_db if op.name in OPS}


def _np(t):
    return to_numpy(t) if isinstance(t, torch.Tensor) else t


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


def _takes(name, record, sample) -> bool:
    """Whether the record computes the sample (conv2d's records may refuse a problem: then asking for one by
    name must raise a ValueError naming it)."""
    if name == "max_pool2d":
        x = _np(sample.input)

        def shape(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
            return pool2d_shape(x if x.ndim == 4 else x[None], kernel_size, stride, padding, dilation, ceil_mode)
        return takes(record, shape(x, *[_np(a) for a in sample.args], **sample.kwargs),
                     lambda: _run_sample(name, sample, record.name))
    if name != "conv2d":
        return True
    kwargs = sample.kwargs
    case = SimpleNamespace(x=_np(sample.input), weight=_np(sample.args[0]), stride=kwargs.get("stride", 1),
                           padding=kwargs.get("padding", 0), dilation=kwargs.get("dilation", 1),
                           groups=kwargs.get("groups", 1))
    return takes(record, conv_shape(case), lambda: _run_sample(name, sample, record.name))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(OPS))
def test_opinfo_samples(op_db, name, dtype):
    """y (and max_pool2d's indices) and the gradient of every input of each sample, with every CPU record of the
    op, against PyTorch's."""
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
        for record in REGISTRIES[short].records("cpu"):
            if record.reference and i % 8:  # Python loops: a sample of the samples is enough
                continue
            if not _takes(short, record, sample):
                continue
            out, backward = _run_sample(short, sample, record.name)
            y = out[0] if isinstance(out, tuple) else out
            terms = round(64 * getattr(record, "forward_rounding", 1.0))  # grad_x may be the record's forward
            assert_close(y, to_numpy(y_ref), terms)
            if indices_ref is not None:
                np.testing.assert_array_equal(out[1], indices_ref.numpy())
            for got, want in zip(backward(g.numpy()), grads_ref):
                if want is not None:
                    assert_close(got, to_numpy(want), terms)
        count += 1
    assert count > 0, f"no OpInfo samples for {name}"
