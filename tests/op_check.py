"""One call checks one algorithm of one op on one problem, in the spirit of tinygrad's ``helper_test_op``:
the forward against the op's reference record (``naive``), every gradient against the reference's
backward, the gradients against central finite differences in float64, and everything against PyTorch
where it is installed. All comparisons go through ``assert_close``, the tests' one tolerance policy.

    check_conv2d(record, case)                                          # a CONV2D record, a strategies.ConvCase
    check_max_pool2d(record, case)                                      # a MAX_POOL2D record, a strategies.PoolCase
    check_avg_pool2d(record, case, count_include_pad, divisor_override)  # an AVG_POOL2D record
    check_gemm(record, a, b)                                            # a GEMM record

A record that refuses the problem (its ``unsupported(p)`` is not None) is checked to raise a ValueError
naming it when asked for by name, and nothing else. ``record_params`` turns a registry's records into
pytest parameters, so that the tests parametrized with it follow the registry.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import currently_in_test_context, event

import fastconv as fc
from fastconv._checks import conv2d_shape, pool2d_shape
from fastconv.algorithm import Algorithm, Registry
from fastconv.conv import CONV2D
from fastconv.pool import AVG_POOL2D, MAX_POOL2D

try:
    import torch
except ImportError:  # the PyTorch part of each check is left out
    torch = None
else:
    torch.set_num_threads(1)  # an oracle: its thread pool would only contend with ours

# Where PyTorch is installed the checks also compare against it, so the tests running them carry the marker
# "peers" there: CI's second stage (PyTorch installed, ``pytest -m peers``) runs them with PyTorch.
PEERS = [pytest.mark.peers] if torch is not None else []

FD_STEP = 1e-6  # central differences: f is linear in each element (conv2d, pooling), or smooth at this scale
FD_POSITIONS = 12  # elements of each array the generated checks differentiate numerically


def assert_close(actual: np.ndarray, expected: np.ndarray, terms: int = 1, *, finite_differences: bool = False,
                 err_msg: str = "") -> None:
    """The tests' one tolerance policy: same dtype and shape, NaN and +-Inf at the same places, finite values
    within float rounding of sums of `terms` products (the length of the sums behind each element):
    float64 rtol 1e-10, atol 1e-12 * terms; float32 rtol 2e-5, atol 2e-6 * terms.
    ``finite_differences``: `expected` holds float64 central differences with step FD_STEP, whose error is
    the cancellation in f(a + h) - f(a - h), not rounding: rtol 1e-5, atol 1e-7."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if finite_differences:
        assert actual.dtype == np.float64, "finite differences are taken in float64"
        rtol, atol = 1e-5, 1e-7
    elif actual.dtype == np.float64:
        rtol, atol = 1e-10, 1e-12 * max(terms, 1)
    else:
        rtol, atol = 2e-5, 2e-6 * max(terms, 1)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)


def sample(array: np.ndarray, rng: np.random.Generator, count: int | None) -> tuple[np.ndarray, ...] | None:
    """`count` distinct positions of `array` (all when it has fewer) as index arrays, as np.nonzero gives;
    None (every element) when count is None."""
    if count is None:
        return None
    return np.unravel_index(rng.choice(array.size, size=min(count, array.size), replace=False), array.shape)


def assert_gradient(grad: np.ndarray, f, array: np.ndarray, positions: tuple[np.ndarray, ...] | None = None,
                    err_msg: str = "") -> None:
    """grad, the gradient of the scalar f() with respect to the float64 `array`, against central differences
    (f(a + h) - f(a - h)) / 2h at `positions` (index arrays; every element when None), perturbing `array` in
    place and restoring it."""
    assert grad.shape == array.shape, (grad.shape, array.shape)
    if positions is None:
        positions = np.nonzero(np.ones(array.shape, bool))
    numeric = np.empty(len(positions[0]))
    for j, i in enumerate(zip(*positions)):
        old = array[i]
        array[i] = old + FD_STEP
        up = f()
        array[i] = old - FD_STEP
        down = f()
        array[i] = old
        numeric[j] = (up - down) / (2 * FD_STEP)
    assert_close(grad[positions], numeric, finite_differences=True, err_msg=err_msg)


def distinct(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """float64 values in [-2, 2) at least 4/size apart, shuffled: no max-pooling ties within FD_STEP."""
    size = math.prod(shape)
    return (rng.permutation(size) * (4 / size) - 2).reshape(shape)


def native(a: np.ndarray) -> np.ndarray:
    """A C-contiguous native-byte-order copy of a."""
    return np.array(a, dtype=a.dtype.newbyteorder("="), order="C")


def tensor(a: np.ndarray, requires_grad: bool = False):
    """A torch tensor holding a copy of a."""
    return torch.from_numpy(native(a)).requires_grad_(requires_grad)


def to_numpy(t) -> np.ndarray:
    """A torch tensor's values as an array."""
    return t.detach().numpy()


def record_params(records) -> list:
    """Records as pytest parameters named after them (marked "peers" where PyTorch is installed)."""
    return [pytest.param(r, id=r.name, marks=PEERS) for r in records]


def reference(registry: Registry) -> Algorithm:
    """The registry's reference record on the CPU (the plain-Python oracle)."""
    return next(r for r in registry.records("cpu") if r.reference)


def _event(what: str) -> None:
    """A Hypothesis event (--hypothesis-show-statistics counts them), when a Hypothesis test is running."""
    if currently_in_test_context():
        event(what)


def takes(record: Algorithm, p, call) -> bool:
    """Whether `record` computes the problem p, as its ``unsupported(p)`` says; where it does not, this checks
    that `call` (which asks for it by name) raises a ValueError naming it."""
    if record.unsupported(p) is None:
        _event(f"{record.name} computes")
        return True
    _event(f"{record.name} refuses")
    with pytest.raises(ValueError, match=re.escape(f"algo={record.name!r}")):
        call()
    return False


# ---- conv2d --------------------------------------------------------------------------------------------

def conv_shape(case):
    """The Conv2dShape of a ConvCase."""
    x = case.x if case.x.ndim == 4 else case.x[None]
    return conv2d_shape(x, case.weight, case.stride, case.padding, case.dilation, case.groups)


def check_conv2d(record: Algorithm, case, fd_positions: int | None = FD_POSITIONS) -> None:
    """conv2d and conv2d_backward with the CPU record `record` on the ConvCase `case`: y, grad_x, grad_weight and
    grad_bias against the reference record's; in float64, the three gradients against central differences of
    sum(conv2d(x, w, b) * g) at `fd_positions` random elements of x, weight and bias (all when None); where
    PyTorch is installed, y and the gradients against torch.nn.functional.conv2d's. A problem its
    ``unsupported`` refuses: a ValueError naming it."""
    x, w, b, kw, name = case.x, case.weight, case.bias, case.kwargs, record.name
    if not takes(record, conv_shape(case), lambda: fc.conv2d(x, w, b, **kw, algo=name)):
        return
    y = fc.conv2d(x, w, b, **kw, algo=name)
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    out = (y, *fc.conv2d_backward(grad_y, x, w, **kw, algo=name))
    k, cg, r, s = w.shape
    per_k = grad_y.size // k
    rounding = record.forward_rounding  # grad_x of a stride-1 layer may be the record's forward (transposed)
    terms = (round((cg * r * s + 1) * rounding), round((k // case.groups) * r * s * rounding), per_k, per_k)
    ref = reference(CONV2D)
    if record is not ref:
        expected = (fc.conv2d(x, w, b, **kw, algo=ref.name), *fc.conv2d_backward(grad_y, x, w, **kw, algo=ref.name))
        for what, got, want, n in zip(("y", "grad_x", "grad_weight", "grad_bias"), out, expected, terms):
            assert_close(got, want, n, err_msg=what)
    _conv_finite_differences(name, case, fd_positions)
    if torch is not None:
        _conv_torch(case, grad_y, out, terms)


def _conv_finite_differences(name: str, case, fd_positions: int | None) -> None:
    rng = np.random.default_rng(1)
    x, w = np.array(case.x, np.float64), case.weight.astype(np.float64)
    b = rng.standard_normal(w.shape[0]) if case.bias is None else case.bias.astype(np.float64)
    g = rng.standard_normal(fc.conv2d(x, w, b, **case.kwargs, algo=name).shape)

    def loss() -> float:
        return float(np.sum(fc.conv2d(x, w, b, **case.kwargs, algo=name) * g))

    grads = fc.conv2d_backward(g, x, w, **case.kwargs, algo=name)
    for what, array, grad in zip(("grad_x", "grad_weight", "grad_bias"), (x, w, b), grads):
        assert_gradient(grad, loss, array, sample(array, rng, fd_positions), err_msg=what)


def _conv_torch(case, grad_y: np.ndarray, out: tuple, terms: tuple) -> None:
    x, w = tensor(case.x, True), tensor(case.weight, True)
    b = None if case.bias is None else tensor(case.bias, True)
    y = torch.nn.functional.conv2d(x, w, b, **case.kwargs)
    y.backward(tensor(grad_y))
    expected = (y, x.grad, w.grad, b.grad if b is not None else None)
    for what, got, want, n in zip(("y", "grad_x", "grad_weight", "grad_bias"), out, expected, terms):
        if want is not None:
            assert_close(got, to_numpy(want), n, err_msg=f"{what} against PyTorch")


# ---- pooling -------------------------------------------------------------------------------------------

def pool_shape(case):
    """The Pool2dShape of a PoolCase."""
    x = case.x if case.x.ndim == 4 else case.x[None]
    return pool2d_shape(x, case.kernel_size, case.stride, case.padding, case.dilation, case.ceil_mode)


def check_max_pool2d(record: Algorithm, case, fd_positions: int | None = FD_POSITIONS) -> None:
    """max_pool2d and max_pool2d_backward (with and without the forward's indices) with the CPU record `record`
    on the PoolCase `case`: y without indices (the values-only kernels) equal to y with them, NaN included; y, the
    int64 indices and grad_x against the reference record's; grad_x against
    central differences in float64 on distinct values (no ties) at `fd_positions` random elements (all when
    None); where PyTorch is installed, y, indices and grad_x against torch.nn.functional.max_pool2d's."""
    kw = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding, dilation=case.dilation,
              ceil_mode=case.ceil_mode)
    x, name, p = case.x, record.name, pool_shape(case)
    if not takes(record, p, lambda: fc.max_pool2d(x, **kw, algo=name)):
        return
    rng = np.random.default_rng(0)
    y, idx = fc.max_pool2d(x, **kw, return_indices=True, algo=name)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(fc.max_pool2d(x, **kw, algo=name), y, err_msg="y without indices")
    x_nan = np.array(x)
    x_nan.reshape(-1)[rng.integers(x_nan.size)] = np.nan
    np.testing.assert_array_equal(fc.max_pool2d(x_nan, **kw, algo=name),
                                  fc.max_pool2d(x_nan, **kw, return_indices=True, algo=name)[0],
                                  err_msg="y without indices, a NaN in x")
    grad_y = rng.standard_normal(y.shape).astype(y.dtype)
    gx = fc.max_pool2d_backward(grad_y, x, **kw, algo=name)
    terms = p.kernel[0] * p.kernel[1]  # the windows one input element can win
    assert_close(fc.max_pool2d_backward(grad_y, x, **kw, indices=idx, algo=name), gx, terms, err_msg="indices given")
    ref = reference(MAX_POOL2D)
    if record is not ref:
        y0, idx0 = fc.max_pool2d(x, **kw, return_indices=True, algo=ref.name)
        assert_close(y, y0, err_msg="y")
        np.testing.assert_array_equal(idx, idx0, err_msg="indices")
        assert_close(gx, fc.max_pool2d_backward(grad_y, x, **kw, algo=ref.name), terms, err_msg="grad_x")
    x64, g = distinct(x.shape, rng), rng.standard_normal(y.shape)
    assert_gradient(fc.max_pool2d_backward(g, x64, **kw, algo=name),
                    lambda: float(np.sum(fc.max_pool2d(x64, **kw, algo=name) * g)), x64, sample(x64, rng, fd_positions))
    if torch is not None:
        xt = tensor(x, True)
        yt, it = torch.nn.functional.max_pool2d(xt, **kw, return_indices=True)
        yt.backward(tensor(grad_y))
        assert_close(y, to_numpy(yt), err_msg="y against PyTorch")
        np.testing.assert_array_equal(idx, it.numpy(), err_msg="indices against PyTorch")
        assert_close(gx, to_numpy(xt.grad), terms, err_msg="grad_x against PyTorch")


def check_avg_pool2d(record: Algorithm, case, count_include_pad: bool, divisor_override: int | None,
                     fd_positions: int | None = FD_POSITIONS) -> None:
    """avg_pool2d and avg_pool2d_backward with the CPU record `record` on the PoolCase `case` (dilation 1):
    y and grad_x against the reference record's; grad_x against central differences in float64 at
    `fd_positions` random elements (all when None); where PyTorch is installed, y and grad_x against
    torch.nn.functional.avg_pool2d's."""
    assert case.dilation == 1, "avg_pool2d has no dilation"
    kw = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding, ceil_mode=case.ceil_mode,
              count_include_pad=count_include_pad, divisor_override=divisor_override)
    x, name, p = case.x, record.name, pool_shape(case)
    if not takes(record, p, lambda: fc.avg_pool2d(x, **kw, algo=name)):
        return
    rng = np.random.default_rng(0)
    y = fc.avg_pool2d(x, **kw, algo=name)
    grad_y = rng.standard_normal(y.shape).astype(y.dtype)
    gx = fc.avg_pool2d_backward(grad_y, x, **kw, algo=name)
    terms = p.kernel[0] * p.kernel[1]  # a window's sum; the windows one input element is in
    ref = reference(AVG_POOL2D)
    if record is not ref:
        assert_close(y, fc.avg_pool2d(x, **kw, algo=ref.name), terms, err_msg="y")
        assert_close(gx, fc.avg_pool2d_backward(grad_y, x, **kw, algo=ref.name), terms, err_msg="grad_x")
    x64, g = np.array(x, np.float64), rng.standard_normal(y.shape)
    assert_gradient(fc.avg_pool2d_backward(g, x64, **kw, algo=name),
                    lambda: float(np.sum(fc.avg_pool2d(x64, **kw, algo=name) * g)), x64, sample(x64, rng, fd_positions))
    if torch is not None:
        xt = tensor(x, True)
        yt = torch.nn.functional.avg_pool2d(xt, **kw)
        yt.backward(tensor(grad_y))
        assert_close(y, to_numpy(yt), terms, err_msg="y against PyTorch")
        assert_close(gx, to_numpy(xt.grad), terms, err_msg="grad_x against PyTorch")


# ---- gemm ----------------------------------------------------------------------------------------------

def check_gemm(record: Algorithm, a: np.ndarray, b: np.ndarray) -> None:
    """gemm with the CPU record `record`: c = a @ b against the float64 NumPy product rounded to the dtype (what
    naive's double-precision Python sums give, at any size) and, where PyTorch is installed, torch.matmul."""
    c = fc.gemm(a, b, algo=record.name)
    k = a.shape[1]
    assert_close(c, (a.astype(np.float64) @ b.astype(np.float64)).astype(c.dtype), k)
    if torch is not None:
        assert_close(c, to_numpy(tensor(a) @ tensor(b)), k, err_msg="against PyTorch")
