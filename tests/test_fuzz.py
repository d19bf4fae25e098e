"""Property-based fuzzing of every public op and algorithm (issue 7).

Each test draws random, mostly tiny arguments, valid or not: shapes with size-1 dimensions and
empty batches, strides, paddings, dilations, groups, float32/float64, memory layouts (Fortran,
step-2, negative strides, read-only, unaligned, big-endian) and occasional NaN/+Inf/-Inf entries.
The property: either the call raises the documented TypeError/ValueError, exactly when an
independent predicate written here says the arguments are invalid, or its result matches a
reference (fastconv's naive algorithms or a float64 NumPy computation) with NaN and Inf in the
same places (PyTorch's rules: sums propagate NaN, inf * 0 and inf - inf give NaN, a max-pooling
window holding NaN gives NaN). Where torch is installed, a subset is also checked against it.

The default "ci" profile runs a few dozen examples per test; the "fuzz" profile thousands:
    HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py -p no:cacheprovider -q --hypothesis-show-statistics
"""
import numpy as np
import pytest
from hypothesis import event, given, strategies as st

import fastconv as fc
from fastconv._checks import conv2d_shape, pool2d_shape
from fastconv.conv import CONV2D
from fastconv.pool import MAX_POOL2D
from op_check import assert_close, native, tensor, to_numpy, torch
from strategies import FUZZ_LAYOUTS, layout

SPECIALS = [np.nan, np.inf, -np.inf]
CONV_ALGOS = fc.algorithms("conv2d") + ["auto"]


# ---- helpers -------------------------------------------------------------------------------------

def _array(draw, rng, shape, dtype, specials=True, ties=False):
    """Standard normal values (rounded to integers with `ties`), about one array in three with
    1 to 3 NaN/+Inf/-Inf entries."""
    a = rng.standard_normal(shape)
    if ties:
        a = np.round(a)
    if specials and a.size and draw(st.integers(0, 2)) == 0:
        flat = a.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(SPECIALS))
    return a.astype(dtype)


def _size_arg(draw, lo, hi):
    """An int, a pair or a 1-tuple as a caller would write it, and its (h, w) value."""
    kind = draw(st.sampled_from(["int", "pair", "1-tuple"]))
    if kind == "pair":
        v = (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
        return v, v
    v = draw(st.integers(lo, hi))
    return (v if kind == "int" else (v,)), (v, v)


def _raises_or_runs(error, call):
    """Run `call`: it must raise `error` when one is given (invalid arguments), else return."""
    if error is not None:
        event(f"refused with {error.__name__}")
        with pytest.raises(error):
            call()
        return None
    event("valid")
    return call()


# ---- conv2d --------------------------------------------------------------------------------------

def _conv_error(c, k, r, s, groups, h, w, stride, padding, dilation, dtypes_match):
    """The documented error for these conv2d arguments, or None when they are valid."""
    if not dtypes_match:
        return TypeError
    if c % groups or k % groups:
        return ValueError
    if padding == "same":
        if stride != (1, 1):
            return ValueError
        pads = (dilation[0] * (r - 1), dilation[1] * (s - 1))
    elif padding == "valid":
        pads = (0, 0)
    else:
        pads = (2 * padding[0], 2 * padding[1])
    if dilation[0] * (r - 1) + 1 > h + pads[0] or dilation[1] * (s - 1) + 1 > w + pads[1]:
        return ValueError
    return None


@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 2)) + (draw(st.integers(0, 1)) if draw(st.integers(0, 9)) == 0 else 0)
    k = groups * draw(st.integers(1, 3))
    cg = max(c // groups, 1)
    winograd_like = draw(st.booleans())  # half the kernels 3x3 at stride 1, dilation 1
    r, s = (3, 3) if winograd_like else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding_kind = draw(st.sampled_from(["int", "int", "valid", "same"]))
    stride, stride_hw = (1, (1, 1)) if winograd_like else _size_arg(draw, 1, 3)
    dilation, dilation_hw = (1, (1, 1)) if winograd_like else _size_arg(draw, 1, 2)
    if padding_kind == "int":
        padding, pad_hw = _size_arg(draw, 0, 2)
    else:
        padding, pad_hw = padding_kind, padding_kind
    n = draw(st.sampled_from([0, 1, 1, 2]))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    w_dtype = dtype if draw(st.integers(0, 19)) else ({np.float32: np.float64, np.float64: np.float32}[dtype])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _array(draw, rng, (n, c, h, w), dtype)
    if n == 1 and draw(st.booleans()):
        x = x[0]
    weight = _array(draw, rng, (k, cg, r, s), w_dtype)
    bias = _array(draw, rng, (k,), dtype) if draw(st.booleans()) else None
    algo = draw(st.sampled_from(CONV_ALGOS))
    error = _conv_error(c, k, r, s, groups, h, w, stride_hw, pad_hw, dilation_hw, w_dtype == dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if error is None and algo != "auto":  # the record may refuse the problem (its ``unsupported``)
        p = conv2d_shape(x if x.ndim == 4 else x[None], weight, **kwargs)
        error = ValueError if CONV2D["cpu", algo].unsupported(p) is not None else None
    return (layout(x, draw(st.sampled_from(FUZZ_LAYOUTS))), layout(weight, draw(st.sampled_from(FUZZ_LAYOUTS))),
            bias, kwargs, algo, error, draw(st.booleans()))


@given(problem=conv_problems(), data=st.data())
def test_conv2d_forward_and_backward(problem, data):
    """conv2d and conv2d_backward, every algorithm and 'auto': the naive result (NaN/Inf included)
    or the documented error; a subset also against torch."""
    x, weight, bias, kwargs, algo, error, check_torch = problem
    y = _raises_or_runs(error, lambda: fc.conv2d(x, weight, bias, **kwargs, algo=algo))
    if y is None:
        return
    xn, wn, bn = native(x), native(weight), None if bias is None else native(bias)
    cg, r, s = weight.shape[1:]
    terms = cg * r * s + 1
    y0 = fc.conv2d(xn, wn, bn, **kwargs, algo="naive")
    assert_close(y, y0, terms)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    grad_y = layout(_array(data.draw, rng, y.shape, y.dtype), data.draw(st.sampled_from(FUZZ_LAYOUTS)))
    grads = fc.conv2d_backward(grad_y, x, weight, **kwargs, algo=algo)
    grads0 = fc.conv2d_backward(native(grad_y), xn, wn, **kwargs, algo="naive")
    k = weight.shape[0]
    for got, want, n_terms in zip(grads, grads0, (k * r * s, grad_y.size // k, grad_y.size // k)):
        assert_close(got, want, n_terms)
    # Only float64 against torch: its float32 CPU convolution (oneDNN) skips the zero padding, so an
    # Inf weight meeting padding gives Inf there but NaN (inf * 0) in float64 and in fastconv.
    if torch is not None and check_torch and y.dtype == np.float64:
        xt, wt = tensor(xn, True), tensor(wn, True)
        yt = torch.nn.functional.conv2d(xt, wt, None if bn is None else tensor(bn), **kwargs)
        yt.backward(tensor(grad_y))
        assert_close(y, to_numpy(yt), terms)
        assert_close(grads[0], to_numpy(xt.grad), k * r * s)
        assert_close(grads[1], to_numpy(wt.grad), grad_y.size // k)


# ---- pooling -------------------------------------------------------------------------------------

def _pool_out(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_error(h, w, kernel, stride, padding, dilation, ceil_mode):
    """ValueError when padding exceeds half the kernel, the output would be empty or some window
    holds no input element (PyTorch allows the last, fastconv documents refusing it); else None."""
    for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation):
        if p > k // 2:
            return ValueError
        out = _pool_out(size, k, s, p, d, ceil_mode)
        if out < 1 or not all(any(0 <= o * s - p + t * d < size for t in range(k)) for o in range(out)):
            return ValueError
    return None


@st.composite
def pool_problems(draw, dilation=True):
    kernel_size, kernel = _size_arg(draw, 1, 4)
    stride, stride_hw = (None, kernel) if draw(st.booleans()) else _size_arg(draw, 1, 3)
    padding, pad_hw = _size_arg(draw, 0, 2)
    dil, dil_hw = _size_arg(draw, 1, 2) if dilation else (1, (1, 1))
    ceil_mode = draw(st.booleans())
    n, c = draw(st.sampled_from([0, 1, 1, 2])), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _array(draw, rng, (n, c, h, w), dtype, ties=draw(st.booleans()))
    if n == 1 and draw(st.booleans()):
        x = x[0]
    x = layout(x, draw(st.sampled_from(FUZZ_LAYOUTS)))
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
    if dilation:
        kwargs["dilation"] = dil
    error = _pool_error(h, w, kernel, stride_hw, pad_hw, dil_hw, ceil_mode)
    return x, kwargs, error, rng


@given(problem=pool_problems(), algo=st.sampled_from(fc.algorithms("max_pool2d") + ["auto"]),
       data=st.data())
def test_max_pool2d_forward_and_backward(problem, algo, data):
    """max_pool2d (values and indices: NaN wins, the last NaN's index; ties keep the first) and
    max_pool2d_backward with and without indices: the naive result or the documented ValueError."""
    x, kwargs, error, rng = problem
    if error is None and algo != "auto":  # the record may refuse the problem (its ``unsupported``)
        p = pool2d_shape(x if x.ndim == 4 else x[None], kwargs["kernel_size"], kwargs["stride"], kwargs["padding"],
                         kwargs["dilation"], kwargs["ceil_mode"])
        error = ValueError if MAX_POOL2D["cpu", algo].unsupported(p) is not None else None
    out = _raises_or_runs(error, lambda: fc.max_pool2d(x, **kwargs, return_indices=True, algo=algo))
    if out is None:
        return
    y, idx = out
    y0, idx0 = fc.max_pool2d(native(x), **kwargs, return_indices=True, algo="naive")
    assert_close(y, y0)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, idx0)
    assert_close(fc.max_pool2d(x, **kwargs, algo=algo), y0)
    grad_y = layout(_array(data.draw, rng, y.shape, y.dtype), data.draw(st.sampled_from(FUZZ_LAYOUTS)))
    gx0 = fc.max_pool2d_backward(native(grad_y), native(x), **kwargs, algo="naive")
    assert_close(fc.max_pool2d_backward(grad_y, x, **kwargs, algo=algo), gx0, 16)
    assert_close(fc.max_pool2d_backward(grad_y, x, **kwargs, indices=idx, algo=algo), gx0, 16)
    if torch is not None and data.draw(st.booleans()):
        yt, it = torch.nn.functional.max_pool2d(tensor(x), **kwargs, return_indices=True)
        assert_close(y, to_numpy(yt), 1)
        np.testing.assert_array_equal(idx, it.numpy())


@given(problem=pool_problems(dilation=False), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, None, 1, 3, -2]),
       algo=st.sampled_from(fc.algorithms("avg_pool2d") + ["auto"]), data=st.data())
def test_avg_pool2d_forward_and_backward(problem, count_include_pad, divisor_override, algo, data):
    """avg_pool2d and avg_pool2d_backward: the naive result (NaN/Inf spread over every window
    and gradient that holds them) or the documented ValueError."""
    x, kwargs, error, rng = problem
    kwargs = dict(kwargs, count_include_pad=count_include_pad, divisor_override=divisor_override)
    y = _raises_or_runs(error, lambda: fc.avg_pool2d(x, **kwargs, algo=algo))
    if y is None:
        return
    assert_close(y, fc.avg_pool2d(native(x), **kwargs, algo="naive"), 16)
    grad_y = layout(_array(data.draw, rng, y.shape, y.dtype), data.draw(st.sampled_from(FUZZ_LAYOUTS)))
    gx0 = fc.avg_pool2d_backward(native(grad_y), native(x), **kwargs, algo="naive")
    assert_close(fc.avg_pool2d_backward(grad_y, x, **kwargs, algo=algo), gx0, 16)
    if torch is not None and data.draw(st.booleans()):
        assert_close(y, to_numpy(torch.nn.functional.avg_pool2d(tensor(x), **kwargs)), 16)


# ---- gemm ----------------------------------------------------------------------------------------

@given(m=st.integers(0, 9), k=st.integers(0, 9), n=st.integers(0, 9), k_b=st.sampled_from([None] * 9 + [1]),
       dtypes=st.sampled_from([(np.float32,) * 2, (np.float64,) * 2, (np.float32, np.float64)]),
       layouts=st.tuples(st.sampled_from(FUZZ_LAYOUTS), st.sampled_from(FUZZ_LAYOUTS)),
       algo=st.sampled_from(fc.algorithms("gemm") + ["auto"]), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_gemm(m, k, n, k_b, dtypes, layouts, algo, seed, data):
    """gemm: the float64 sum of elementwise products (inf * 0 = NaN, inf - inf = NaN) rounded to
    the dtype, for every algorithm and layout; a ValueError for mismatched inner dimensions, a
    TypeError for mixed dtypes."""
    rng = np.random.default_rng(seed)
    kb = k if k_b is None else k + 1
    a = layout(_array(data.draw, rng, (m, k), dtypes[0]), layouts[0])
    b = layout(_array(data.draw, rng, (kb, n), dtypes[1]), layouts[1])
    error = TypeError if dtypes[0] != dtypes[1] else ValueError if kb != k else None
    c = _raises_or_runs(error, lambda: fc.gemm(a, b, algo=algo))
    if c is None:
        return
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = (a64[:, :, None] * b64[None, :, :]).sum(axis=1).astype(np.dtype(dtypes[0]))
    assert_close(c, expected, k)
    if torch is not None and data.draw(st.booleans()):
        assert_close(c, to_numpy(tensor(a) @ tensor(b)), k)


# ---- layers: ReLU, softmax, cross_entropy --------------------------------------------------------

@given(shape=st.lists(st.integers(0, 4), min_size=1, max_size=4), dtype=st.sampled_from([np.float32, np.float64]),
       layouts=st.tuples(st.sampled_from(FUZZ_LAYOUTS), st.sampled_from(FUZZ_LAYOUTS)),
       labels_ok=st.sampled_from([True] * 9 + [False]), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_relu_softmax_cross_entropy(shape, dtype, layouts, labels_ok, seed, data):
    """ReLU forward/backward (NaN propagates; the gradient passes where the output is not <= 0, positive
    or NaN, as in PyTorch), softmax and cross_entropy against float64 NumPy references with the same
    NaN/Inf, and cross_entropy's documented ValueErrors (empty batch, bad labels)."""
    rng = np.random.default_rng(seed)
    x = layout(_array(data.draw, rng, tuple(shape), dtype), layouts[0])
    g = layout(_array(data.draw, rng, tuple(shape), dtype), layouts[1])
    relu = fc.nn.ReLU()
    y = relu(x)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    assert_close(y, np.maximum(x64, 0).astype(dtype))
    assert_close(relu.backward(g), np.where(np.maximum(x64, 0) <= 0, 0, g64).astype(dtype))

    logits = x.reshape(shape[0], int(np.prod(shape[1:])))
    logits64 = logits.astype(np.float64)
    if logits.shape[1] == 0:
        return  # no classes: nothing to normalise
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(logits64 - logits64.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        assert_close(fc.nn.softmax(logits), p.astype(dtype), logits.shape[1])
        n, classes = logits.shape
        labels = rng.integers(0, classes, n) if labels_ok else np.array([classes] * n, np.int64)
        error = ValueError if n == 0 or not labels_ok else None
        out = _raises_or_runs(error, lambda: fc.nn.cross_entropy(logits, labels))
        if out is None:
            return
        loss, grad = out
        rows = np.arange(n)
        shifted = logits64 - logits64.max(axis=1, keepdims=True)
        expected_loss = np.mean(np.log(e.sum(axis=1)) - shifted[rows, labels])
        expected_grad = p.copy()
        expected_grad[rows, labels] -= 1
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-6,
                               equal_nan=True)
    assert_close(grad, (expected_grad / n).astype(dtype), classes)
