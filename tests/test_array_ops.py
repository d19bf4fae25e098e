"""fastconv.array_ops: both implementations have the whole method set and give the same results. The GPU runs
under Numba's CUDA simulator where there is no GPU (tests/conftest.py), on tiny arrays."""
import inspect

import numpy as np
import pytest

from fastconv import device
from fastconv.array_ops import OPS, ArrayOps, CpuOps, CudaOps, ops_for

from op_check import assert_close

RNG = np.random.default_rng(11)
CPU, GPU = OPS["cpu"], OPS["cuda"]


def rand(*shape):
    return RNG.standard_normal(shape)


X, W, LOGITS, GY = rand(2, 3, 2, 2), rand(3), rand(4, 5), rand(2, 3, 2, 2)
MEAN, INVSTD, LABELS = rand(3), np.abs(rand(3)) + 0.5, np.array([0, 4, 2, 1])
A_T, B_T = rand(4, 3), rand(5, 4)  # stored transposed: op(a) (3, 4), op(b) (4, 5)


def test_both_implement_every_method():
    methods = [name for name, _ in inspect.getmembers(ArrayOps, inspect.isfunction) if not name.startswith("_")]
    for cls in (CpuOps, CudaOps):
        missing = [m for m in methods if m not in cls.__dict__]
        assert not missing, f"{cls.__name__} lacks {missing}"


def test_ops_for_follows_the_array():
    assert ops_for(np.zeros(2)) is CPU and CPU.device == "cpu"
    if device.cuda_available():
        assert ops_for(device.to_device(np.zeros(2))) is GPU and GPU.device == "cuda"


def accumulated(ops):
    a = ops.from_host(np.ones((2, 3)))
    ops.matmul(ops.from_host(np.ones((4, 2))), ops.from_host(np.ones((4, 3))), trans_a=True, out=a)
    ops.add_channel_bias(a, ops.from_host(np.arange(3.0)))
    ops.add(a, a, out=a)
    sums = ops.channel_sum(a, out=ops.from_host(np.ones(3)))
    ops.assign(a, ops.to_host(a) * 2)
    return np.concatenate([ops.to_host(a).ravel(), ops.to_host(sums)])


def flat(ops, arrays):
    """Several results of one op as one host vector."""
    return np.concatenate([ops.to_host(a).ravel() for a in arrays])


CASES = {  # what each implementation computes: the same calls on host arrays moved with ops.from_host
    "add": lambda ops, h: ops.add(h(X), h(X * 2)),
    "mul": lambda ops, h: ops.mul(h(X), h(X - 1)),
    "matmul": lambda ops, h: ops.matmul(h(A_T), h(B_T), trans_a=True, trans_b=True),
    "relu": lambda ops, h: ops.relu(h(X)),
    "relu_backward": lambda ops, h: ops.relu_backward(h(GY), h(X)),
    "channel_sum": lambda ops, h: ops.channel_sum(h(X)),
    "channel_affine": lambda ops, h: ops.channel_affine(h(X), h(W), h(W * 3)),
    "batch_statistics": lambda ops, h: np.stack(ops.batch_statistics(h(X))),
    "batch_norm": lambda ops, h: flat(ops, ops.batch_norm(h(X), MEAN, INVSTD, h(W), h(W * 3))),
    "batch_norm_backward": lambda ops, h: flat(ops, ops.batch_norm_backward(h(GY), h(X), W, True)),
    "batch_norm_backward_eval": lambda ops, h: flat(ops, ops.batch_norm_backward(h(GY), h(X), W, False)),
    "softmax": lambda ops, h: ops.softmax(h(LOGITS)),
    "cross_entropy": lambda ops, h: ops.cross_entropy(h(LOGITS), LABELS),
    "mse_loss": lambda ops, h: ops.mse_loss(h(X), h(X * 0.5)),
    "in_place": lambda ops, h: accumulated(ops),
}


@pytest.mark.skipif(not device.cuda_available(), reason="no CUDA device and no simulator")
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_and_gpu_agree(case):
    want, got = (CASES[case](ops, ops.from_host) for ops in (CPU, GPU))
    if isinstance(want, tuple):  # (loss, grad)
        assert got[0] == pytest.approx(want[0], rel=1e-12)
        want, got = want[1], got[1]
    assert_close(GPU.to_host(got), want, terms=100)


@pytest.mark.skipif(not device.cuda_available(), reason="no CUDA device and no simulator")
def test_holds_and_fill():
    host, dev = np.ones((2, 3)), GPU.from_host(np.ones((2, 3)))
    assert CPU.holds(host, writeable=True) and GPU.holds(dev, writeable=True)
    assert not GPU.holds(host) and not CPU.holds(dev) and not CPU.holds(host.T)
    host.flags.writeable = False
    assert CPU.holds(host) and not CPU.holds(host, writeable=True)
    for ops in (CPU, GPU):
        a = ops.zeros((2, 3), np.float32)
        ops.fill(a, 3.0)
        np.testing.assert_array_equal(ops.to_host(a), np.full((2, 3), 3.0, np.float32))
