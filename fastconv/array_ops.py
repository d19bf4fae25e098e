"""The array operations of a training step, one method set with two implementations: ``CpuOps`` (NumPy,
the Numba kernels of ``fastconv.kernels.elementwise`` and ``fastconv.gemm(..., algo="packed")``) and
``CudaOps`` (the numba.cuda kernels of ``fastconv.kernels.cuda_elementwise`` and ``cuda_matmul``).

``ops_for(a)`` is the implementation for where `a` lives (``fastconv.device.device_of``), so the layers,
losses and optimizers (``nn.py``, ``optim.py``) are written once::

    ops = ops_for(x)
    y = ops.matmul(ops.array("x", x), weight, trans_b=True)

Arrays are (N, C, ...) where a method says "channel": C is axis 1. Per-channel statistics and scales
marked "host" are small NumPy arrays on both devices. On the GPU, results are device arrays computed
on the default stream (asynchronously: ``fastconv.device.synchronize()`` waits); methods returning a
Python float or a host array synchronize. numba.cuda is imported on the first GPU call only.
"""
from __future__ import annotations

from functools import cache
from types import ModuleType

import numpy as np

from ._checks import check_array, check_grad, contiguous
from .device import as_device, device_of, empty, is_device_array, require_cuda, to_device, to_host, zeros
from .gemm import gemm
from .kernels import elementwise

ANY_RANK = tuple(range(1, 33))


class ArrayOps:
    """The method set; ``CpuOps`` and ``CudaOps`` implement every method. `device`: 'cpu' or 'cuda'."""

    device = ""

    def array(self, name: str, a: object) -> object:
        """`a` as a C-contiguous array of this device (CPU: copied if not; GPU: float, shared); errors name `name`."""
        raise NotImplementedError

    def holds(self, a: object, writeable: bool = False) -> bool:
        """Whether `a` is a C-contiguous array on this device (and writeable, if asked)."""
        raise NotImplementedError

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> object:
        """A zero-filled array of `shape`."""
        raise NotImplementedError

    def from_host(self, a: np.ndarray) -> object:
        """The host array `a` on this device, C-contiguous (copied to the GPU; on the CPU only if needed)."""
        raise NotImplementedError

    def to_host(self, a: object) -> np.ndarray:
        """`a` as a host array (a copy of a device array; a NumPy array as it is)."""
        raise NotImplementedError

    def assign(self, dst: object, src: np.ndarray) -> None:
        """dst[...] = src in place, for a host `src` of dst's shape (converted to dst's dtype)."""
        raise NotImplementedError

    def fill(self, a: object, value: float) -> None:
        """a[...] = value in place."""
        raise NotImplementedError

    def add(self, a: object, b: object, out: object = None) -> object:
        """a + b for arrays of one shape; into `out` (which may be a) when given."""
        raise NotImplementedError

    def mul(self, a: object, b: object) -> object:
        """a * b for arrays of one shape."""
        raise NotImplementedError

    def matmul(self, a: object, b: object, trans_a: bool = False, trans_b: bool = False, out: object = None) -> object:
        """op(a) (M, K) @ op(b) (K, N) -> (M, N), op(a) = a.T if trans_a (b likewise); added into `out` if given."""
        raise NotImplementedError

    def relu(self, x: object) -> object:
        """max(x, 0) elementwise (NaN stays NaN) for a float x of any shape, validated as "x"."""
        raise NotImplementedError

    def relu_backward(self, grad_y: object, y: object) -> object:
        """grad_x = grad_y where y > 0 (or NaN), else 0; grad_y must have y's shape and dtype (validated)."""
        raise NotImplementedError

    def sigmoid(self, x: object) -> object:
        """1 / (1 + exp(-x)) elementwise (NaN stays NaN) for a float x of any shape, validated as "x"."""
        raise NotImplementedError

    def sigmoid_backward(self, grad_y: object, y: object) -> object:
        """grad_x = grad_y * y * (1 - y) for y = sigmoid(x); grad_y must have y's shape and dtype (validated)."""
        raise NotImplementedError

    def tanh(self, x: object) -> object:
        """tanh(x) elementwise for a float x of any shape, validated as "x"."""
        raise NotImplementedError

    def tanh_backward(self, grad_y: object, y: object) -> object:
        """grad_x = grad_y * (1 - y * y) for y = tanh(x); grad_y must have y's shape and dtype (validated)."""
        raise NotImplementedError

    def leaky_relu(self, x: object, negative_slope: float) -> object:
        """x where x > 0, else x * negative_slope (NaN stays NaN), for a float x of any shape, validated as "x"."""
        raise NotImplementedError

    def leaky_relu_backward(self, grad_y: object, x: object, negative_slope: float) -> object:
        """grad_x = grad_y where x > 0, else grad_y * negative_slope (PyTorch's rule: on the input x, C-contiguous);
        grad_y must have x's shape and dtype (validated)."""
        raise NotImplementedError

    def resize_planes(self, a: object, h: int, w: int) -> object:
        """a (N, C, H, W) with each plane cut or zero-extended at the bottom and right to (h, w) (a itself when it is
        that size)."""
        raise NotImplementedError

    def channel_sum(self, a: object, out: object = None) -> object:
        """(C,) sums of a (N, C, ...) over every axis but 1; added into `out` (C,) when given."""
        raise NotImplementedError

    def add_channel_bias(self, y: object, b: object) -> None:
        """y (N, C, ...) += b[c] in place, b (C,)."""
        raise NotImplementedError

    def channel_affine(self, x: object, scale: object, shift: object) -> object:
        """x (N, C, ...) * scale[c] + shift[c], scale and shift (C,) on this device."""
        raise NotImplementedError

    def batch_statistics(self, x: object) -> tuple[np.ndarray, np.ndarray]:
        """(mean, biased variance) of x (N, C, ...) per channel: two float64 host arrays (C,)."""
        raise NotImplementedError

    def batch_norm(self, x: object, mean: np.ndarray, invstd: np.ndarray, weight: object, bias: object,
                   ) -> tuple[object, object]:
        """(xhat, y) for x (N, C, ...): xhat = (x - mean[c]) * invstd[c], y = xhat * weight[c] + bias[c]; mean
        and invstd host (C,), weight and bias (C,) on this device, all in x's dtype."""
        raise NotImplementedError

    def batch_norm_backward(self, grad_y: object, xhat: object, scale: np.ndarray, batch_stats: bool,
                            ) -> tuple[object, object, object]:
        """(grad_x, sum of grad_y, sum of grad_y * xhat) for grad_y and xhat (N, C, ...), the sums (C,) over
        every axis but 1 (the bias's and the weight's gradients); with g = grad_y * scale[c], grad_x is
        g - mean(g) - xhat * mean(g * xhat) if batch_stats, else g."""
        raise NotImplementedError

    def mse_loss(self, prediction: object, target: object) -> tuple[float, object]:
        """(mean((prediction - target)**2), its gradient) for non-empty arrays of one shape (GPU: one dtype)."""
        raise NotImplementedError

    def softmax(self, logits: object) -> object:
        """Row-wise softmax of logits (N, classes), the row maximum subtracted."""
        raise NotImplementedError

    def cross_entropy(self, logits: object, labels: object) -> tuple[float, object]:
        """(mean loss, grad (N, classes)) for logits (N, classes), N > 0, and labels (N,) in range (GPU: int64)."""
        raise NotImplementedError

    def sgd_update(self, p: object, g: object, buf: object, *args: object) -> None:
        """One SGD step in place on p, buf (C-contiguous, p's shape): ``kernels.elementwise.sgd_update``'s args."""
        raise NotImplementedError

    def adam_update(self, p: object, g: object, m: object, v: object, *args: object) -> None:
        """One Adam step in place on p, m, v (C-contiguous, p's shape): ``kernels.elementwise.adam_update``'s args."""
        raise NotImplementedError


def _other_axes(a: np.ndarray) -> tuple[int, ...]:
    return (0, *range(2, a.ndim))


def _channel_shape(a: np.ndarray) -> tuple[int, ...]:
    return (1, -1) + (1,) * (a.ndim - 2)


class CpuOps(ArrayOps):
    """NumPy arrays: NumPy, the Numba kernels of ``kernels/elementwise.py`` and ``gemm(algo="packed")``."""

    device = "cpu"

    def array(self, name, a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        return contiguous(a)

    def holds(self, a, writeable=False):
        return isinstance(a, np.ndarray) and a.flags.c_contiguous and (a.flags.writeable or not writeable)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def from_host(self, a):
        return contiguous(np.asarray(a))

    def to_host(self, a):
        return np.asarray(a)

    def assign(self, dst, src):
        dst[...] = src

    def fill(self, a, value):
        a.fill(value)

    def add(self, a, b, out=None):
        return np.add(a, b, out=out)

    def mul(self, a, b):
        return a * b

    def matmul(self, a, b, trans_a=False, trans_b=False, out=None):
        c = gemm(a.T if trans_a else a, b.T if trans_b else b, algo="packed")
        if out is None:
            return c
        out += c
        return out

    def relu(self, x):
        x = contiguous(check_array("x", x, ANY_RANK))
        y = np.empty_like(x)
        elementwise.relu_forward(x, y)
        return y

    def relu_backward(self, grad_y, y):
        grad_y = contiguous(check_grad("grad_y", grad_y, y.shape, y.dtype))
        grad_x = np.empty_like(grad_y)
        elementwise.relu_backward(grad_y, y, grad_x)
        return grad_x

    def _map(self, kernel, x, *args):
        """kernel(x, y, *args) into a new y, for a float x of any shape."""
        x = contiguous(check_array("x", x, ANY_RANK))
        y = np.empty_like(x)
        kernel(x, y, *args)
        return y

    def _map_backward(self, kernel, grad_y, kept, *args):
        """kernel(grad_y, kept, grad_x, *args) into a new grad_x; grad_y validated against kept (forward's y or x)."""
        grad_y = contiguous(check_grad("grad_y", grad_y, kept.shape, kept.dtype))
        grad_x = np.empty_like(grad_y)
        kernel(grad_y, kept, grad_x, *args)
        return grad_x

    def sigmoid(self, x):
        return self._map(elementwise.sigmoid_forward, x)

    def sigmoid_backward(self, grad_y, y):
        return self._map_backward(elementwise.sigmoid_backward, grad_y, y)

    def tanh(self, x):
        return self._map(lambda x, y: np.tanh(x, out=y), x)

    def tanh_backward(self, grad_y, y):
        return self._map_backward(elementwise.tanh_backward, grad_y, y)

    def leaky_relu(self, x, negative_slope):
        x = check_array("x", x, ANY_RANK)
        return self._map(elementwise.leaky_relu_forward, x, x.dtype.type(negative_slope))

    def leaky_relu_backward(self, grad_y, x, negative_slope):
        return self._map_backward(elementwise.leaky_relu_backward, grad_y, x, x.dtype.type(negative_slope))

    def resize_planes(self, a, h, w):
        if a.shape[2:] == (h, w):
            return a
        out = np.zeros((*a.shape[:2], h, w), a.dtype)
        rows, cols = min(h, a.shape[2]), min(w, a.shape[3])
        out[:, :, :rows, :cols] = a[:, :, :rows, :cols]
        return out

    def channel_sum(self, a, out=None):
        sums = np.empty(a.shape[1], np.float64)  # float64 sums: long reductions
        elementwise.channel_sums(_nc3(contiguous(a)), sums)
        if out is None:
            return sums.astype(a.dtype)
        out += sums.astype(out.dtype)
        return out

    def add_channel_bias(self, y, b):
        y += b.reshape(_channel_shape(y))

    def channel_affine(self, x, scale, shift):
        shape = _channel_shape(x)
        return x * scale.reshape(shape) + shift.reshape(shape)

    def batch_statistics(self, x):
        mean, var = np.empty(x.shape[1], np.float64), np.empty(x.shape[1], np.float64)
        elementwise.channel_moments(_nc3(contiguous(x)), mean, var)
        return mean, var

    def batch_norm(self, x, mean, invstd, weight, bias):
        xhat, y = np.empty_like(x), np.empty_like(x)
        d = x.dtype
        elementwise.batch_norm_forward(_nc3(x), mean.astype(d), invstd.astype(d), weight.astype(d, copy=False),
                                       bias.astype(d, copy=False), _nc3(xhat), _nc3(y))
        return xhat, y

    def batch_norm_backward(self, grad_y, xhat, scale, batch_stats):
        grad_y = contiguous(grad_y)
        c, d = grad_y.shape[1], grad_y.dtype
        sum_g, sum_gx = np.empty(c, np.float64), np.empty(c, np.float64)
        elementwise.batch_norm_backward_sums(_nc3(grad_y), _nc3(xhat), sum_g, sum_gx)
        count = max(1, grad_y.size // c)
        means = (sum_g / count, sum_gx / count) if batch_stats else (np.zeros(c), np.zeros(c))
        grad_x = np.empty_like(grad_y)
        elementwise.batch_norm_backward_input(_nc3(grad_y), _nc3(xhat), scale.astype(d), means[0].astype(d),
                                              means[1].astype(d), _nc3(grad_x))
        return grad_x, sum_g.astype(d), sum_gx.astype(d)

    def mse_loss(self, prediction, target):
        diff = prediction - target
        return float(np.mean(diff * diff)), (2 / diff.size) * diff

    def softmax(self, logits):
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def cross_entropy(self, logits, labels):
        n = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, labels]))
        grad = e / total
        grad[rows, labels] -= 1
        grad /= n
        return loss, grad

    def sgd_update(self, p, g, buf, *args):
        elementwise.sgd_update(p.reshape(-1), g.reshape(-1), buf.reshape(-1), *args)

    def adam_update(self, p, g, m, v, *args):
        elementwise.adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *args)


@cache
def _cuda_kernels() -> tuple[ModuleType, ModuleType]:
    """(cuda_elementwise, cuda_matmul), imported on first use (numba.cuda is imported only then)."""
    require_cuda()
    from .kernels import cuda_elementwise, cuda_matmul
    return cuda_elementwise, cuda_matmul


def _k() -> ModuleType:
    return _cuda_kernels()[0]


def _flat(a: object) -> object:
    return a.reshape(a.size)


def _nc3(a: object) -> object:
    """a (N, C, ...) viewed as (N, C, P), the shape of the per-channel kernels."""
    n, c = a.shape[0], a.shape[1]
    return a.reshape(n, c, a.size // max(1, n * c))


class CudaOps(ArrayOps):
    """Device arrays: the numba.cuda kernels of ``kernels/cuda_elementwise.py`` and ``kernels/cuda_matmul.py``."""

    device = "cuda"

    def array(self, name, a):
        return as_device(name, a)

    def holds(self, a, writeable=False):
        return is_device_array(a) and a.is_c_contiguous()

    def zeros(self, shape, dtype):
        return zeros(shape, dtype, "cuda")

    def from_host(self, a):
        return to_device(a)

    def to_host(self, a):
        return to_host(a)

    def assign(self, dst, src):
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))

    def fill(self, a, value):
        if a.size:
            _k().fill(_flat(a), value)

    def add(self, a, b, out=None):
        out = empty(a.shape, a.dtype) if out is None else out
        if a.size:
            _k().add(_flat(a), _flat(b), _flat(out))
        return out

    def mul(self, a, b):
        out = empty(a.shape, a.dtype)
        if a.size:
            _k().mul(_flat(a), _flat(b), _flat(out))
        return out

    def _scaled_difference(self, a, b, scale: float):
        """scale * (a - b) for arrays of one shape and dtype."""
        out = empty(a.shape, a.dtype)
        if a.size:
            _k().scaled_difference(_flat(a), _flat(b), scale, _flat(out))
        return out

    def _total(self, a) -> float:
        """The sum of all elements, as a Python float (synchronizes)."""
        return _k().total(_flat(a)) if a.size else 0.0

    def matmul(self, a, b, trans_a=False, trans_b=False, out=None):
        m = a.shape[1] if trans_a else a.shape[0]
        n = b.shape[0] if trans_b else b.shape[1]
        c = empty((m, n), a.dtype) if out is None else out
        _cuda_kernels()[1].gemm(a, b, c, trans_a, trans_b, 0.0 if out is None else 1.0)
        return c

    def relu(self, x):
        x = as_device("x", x)
        y = empty(x.shape, x.dtype)
        if x.size:
            _k().relu_forward(_flat(x), _flat(y))
        return y

    def relu_backward(self, grad_y, y):
        grad_y = check_grad("grad_y", as_device("grad_y", grad_y), y.shape, y.dtype, device=True)
        grad_x = empty(y.shape, y.dtype)
        if y.size:
            _k().relu_backward(_flat(grad_y), _flat(y), _flat(grad_x))
        return grad_x

    def _map(self, kernel, x, *args):
        """kernel(flat x, flat y, *args) into a new y."""
        x = as_device("x", x)
        y = empty(x.shape, x.dtype)
        if x.size:
            kernel(_flat(x), _flat(y), *args)
        return y

    def _map_backward(self, kernel, grad_y, kept, *args):
        """kernel(flat grad_y, flat kept, flat grad_x, *args), grad_y validated against kept (the forward's y or x)."""
        grad_y = check_grad("grad_y", as_device("grad_y", grad_y), kept.shape, kept.dtype, device=True)
        grad_x = empty(kept.shape, kept.dtype)
        if kept.size:
            kernel(_flat(grad_y), _flat(kept), _flat(grad_x), *args)
        return grad_x

    def sigmoid(self, x):
        return self._map(_k().sigmoid_forward, x)

    def sigmoid_backward(self, grad_y, y):
        return self._map_backward(_k().sigmoid_backward, grad_y, y)

    def tanh(self, x):
        return self._map(_k().tanh_forward, x)

    def tanh_backward(self, grad_y, y):
        return self._map_backward(_k().tanh_backward, grad_y, y)

    def leaky_relu(self, x, negative_slope):
        return self._map(_k().leaky_relu_forward, x, negative_slope)

    def leaky_relu_backward(self, grad_y, x, negative_slope):
        return self._map_backward(_k().leaky_relu_backward, grad_y, x, negative_slope)

    def resize_planes(self, a, h, w):
        if a.shape[2:] == (h, w):
            return a
        out = zeros((*a.shape[:2], h, w), a.dtype, "cuda")
        if a.size and out.size:
            _k().copy_corner(a, out)
        return out

    def channel_sum(self, a, out=None):
        if out is None:
            out = zeros((a.shape[1],), a.dtype, "cuda") if a.size == 0 else empty((a.shape[1],), a.dtype)
            beta = 0.0
        else:
            beta = 1.0
        if a.size:
            _k().channel_sum(_nc3(a), out, beta)
        return out

    def add_channel_bias(self, y, b):
        if y.size:
            _k().add_channel_bias(_nc3(y), b)

    def channel_affine(self, x, scale, shift):
        y = empty(x.shape, x.dtype)
        if x.size:
            _k().channel_affine(_nc3(x), scale, shift, _nc3(y))
        return y

    def batch_statistics(self, x):
        count = x.size // x.shape[1]
        mean = to_host(self.channel_sum(x)).astype(np.float64) / count
        centered = self.channel_affine(x, to_device(np.ones(x.shape[1], x.dtype)), to_device(-mean.astype(x.dtype)))
        var = to_host(self.channel_sum(self.mul(centered, centered))).astype(np.float64) / count
        return mean, var

    def batch_norm(self, x, mean, invstd, weight, bias):
        xhat = self.channel_affine(x, to_device(invstd.astype(x.dtype)), to_device((-mean * invstd).astype(x.dtype)))
        return xhat, self.channel_affine(xhat, weight, bias)

    def batch_norm_backward(self, grad_y, xhat, scale, batch_stats):
        sum_g, sum_gx = self.channel_sum(grad_y), self.channel_sum(self.mul(grad_y, xhat))
        g = self.channel_affine(grad_y, to_device(scale), to_device(np.zeros_like(scale)))
        if not batch_stats:
            return g, sum_g, sum_gx
        count = g.size // g.shape[1]
        mean_g = to_host(sum_g).astype(np.float64) * scale / count
        mean_gxhat = to_host(sum_gx).astype(np.float64) * scale / count
        grad_x = empty(g.shape, g.dtype)
        _k().batch_norm_backward_input(_nc3(g), _nc3(xhat), to_device(mean_g.astype(g.dtype)),
                                       to_device(mean_gxhat.astype(g.dtype)), _nc3(grad_x))
        return grad_x, sum_g, sum_gx

    def mse_loss(self, prediction, target):
        check_array("target", target, (prediction.ndim,), prediction.dtype, device=True)
        diff = self._scaled_difference(prediction, target, 1.0)
        grad = self._scaled_difference(prediction, target, 2 / diff.size)
        return self._total(self.mul(diff, diff)) / diff.size, grad

    def softmax(self, logits):
        out = empty(logits.shape, logits.dtype)
        _k().softmax(logits, out)
        return out

    def cross_entropy(self, logits, labels):
        n = logits.shape[0]
        if isinstance(labels, np.ndarray):
            labels = to_device(labels.astype(np.int64))
        else:
            labels = as_device("labels", labels, kinds="i")
            if labels.dtype != np.int64 or labels.shape != (n,):
                raise ValueError(f"labels must be an int64 array of shape ({n},), got {labels.dtype} {labels.shape}")
        grad, losses = empty(logits.shape, logits.dtype), empty((n,), logits.dtype)
        _k().cross_entropy(logits, labels, grad, losses)
        return self._total(losses) / n, grad

    def sgd_update(self, p, g, buf, *args):
        _k().sgd_update(_flat(p), _flat(g), _flat(buf), *args)

    def adam_update(self, p, g, m, v, *args):
        _k().adam_update(_flat(p), _flat(g), _flat(m), _flat(v), *args)


OPS: dict[str, ArrayOps] = {"cpu": CpuOps(), "cuda": CudaOps()}


def ops_for(a: object) -> ArrayOps:
    """The operations of the device `a` lives on (``fastconv.device.device_of``)."""
    return OPS[device_of(a)]
