"""The GPU path through the public API: ops, layers, optimizers and the trainer on device arrays agree
with the CPU path. On a machine without a GPU these run under Numba's CUDA simulator (tests/conftest.py
turns it on), on tiny shapes; with a GPU they run on it."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import device, nn, optim

from op_check import assert_close

pytestmark = pytest.mark.skipif(not device.cuda_available(), reason="no CUDA device and no simulator")

RNG = np.random.default_rng(7)


def rand(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def d(a):
    return device.to_device(a)


def h(a):
    return device.to_host(a)


CONV_CASES = [  # x shape, weight shape, stride, padding, dilation, groups (tiny: the simulator is slow)
    ((2, 3, 4, 5), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 5, 4), (4, 2, 2, 3), 2, (1, 0), 1, 2),
    ((2, 2, 5, 5), (2, 1, 3, 3), 1, "same", 2, 2),
    ((3, 4, 4), (2, 3, 3, 1), (1, 2), 0, 1, 1),  # unbatched, 1-wide kernel
]


@pytest.mark.parametrize("algo, dtype", [("direct", np.float64), ("im2col", np.float64), ("auto", np.float32)])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_forward_and_backward_match_cpu(case, algo, dtype):
    xs, ws, stride, padding, dilation, groups = case
    x, w, b = rand(*xs, dtype=dtype), rand(*ws, dtype=dtype), rand(ws[0], dtype=dtype)
    args = (stride, padding, dilation, groups)
    y = fc.conv2d(x, w, b, *args, algo="direct")
    gy = rand(*y.shape, dtype=dtype)
    gx, gw, gb = fc.conv2d_backward(gy, x, w, *args, algo="direct")
    yd = fc.conv2d(d(x), d(w), d(b), *args, algo=algo)
    assert device.is_device_array(yd) and yd.shape == y.shape
    assert_close(h(yd), y, terms=100)
    gxd, gwd, gbd = fc.conv2d_backward(d(gy), d(x), d(w), *args, algo=algo)
    for got, want in ((gxd, gx), (gwd, gw), (gbd, gb)):
        assert device.is_device_array(got)
        assert_close(h(got), want, terms=100)


def test_conv2d_without_bias_and_empty_batch():
    x, w = rand(2, 2, 5, 5), rand(3, 2, 3, 3)
    assert_close(h(fc.conv2d(d(x), d(w))), fc.conv2d(x, w), terms=100)
    empty = fc.conv2d(d(np.zeros((0, 2, 5, 5))), d(w))
    assert empty.shape == (0, 3, 3, 3)


def test_im2col_chunks_the_batch_within_the_workspace_limit():
    x, w, gy = rand(3, 2, 4, 4), rand(3, 2, 3, 3), rand(3, 3, 2, 2)
    limit = fc.workspace_limit()
    try:
        fc.set_workspace_limit((2 * 9 + 3) * 4 * 8 * 2)  # two images per chunk
        y = fc.conv2d(d(x), d(w), algo="im2col")
        gx, gw, _ = fc.conv2d_backward(d(gy), d(x), d(w), algo="im2col")
    finally:
        fc.set_workspace_limit(limit)
    want_gx, want_gw, _ = fc.conv2d_backward(gy, x, w)
    assert_close(h(y), fc.conv2d(x, w), terms=100)
    assert_close(h(gx), want_gx, terms=100)
    assert_close(h(gw), want_gw, terms=100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_matches_cpu(dtype):
    x = rand(2, 3, 7, 6, dtype=dtype)
    x[0, 0, 0, :2] = 5.0  # a tie
    for args in [(2,), (3, 2, 1), ((3, 2), 1, (1, 0), 1, True)]:
        y, idx = fc.max_pool2d(x, *args, return_indices=True)
        yd, idxd = fc.max_pool2d(d(x), *args, return_indices=True)
        np.testing.assert_array_equal(h(yd), y)
        np.testing.assert_array_equal(h(idxd), idx)
        gy = rand(*y.shape, dtype=dtype)
        want = fc.max_pool2d_backward(gy, x, *args)
        np.testing.assert_array_equal(h(fc.max_pool2d_backward(d(gy), d(x), *args)), want)
        np.testing.assert_array_equal(h(fc.max_pool2d_backward(d(gy), d(x), *args, indices=idxd)), want)
    for args in [(2,), (3, 2, 1, True, False), (3, 1, 1, False, True, 4)]:
        y = fc.avg_pool2d(x, *args)
        assert_close(h(fc.avg_pool2d(d(x), *args)), y, terms=100)
        gy = rand(*y.shape, dtype=dtype)
        assert_close(h(fc.avg_pool2d_backward(d(gy), d(x), *args)), fc.avg_pool2d_backward(gy, x, *args), terms=100)


def test_unbatched_pooling():
    x = rand(2, 5, 5)
    assert h(fc.max_pool2d(d(x), 2)).shape == (2, 2, 2)
    assert_close(h(fc.avg_pool2d(d(x), 2)), fc.avg_pool2d(x, 2), terms=100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy(dtype):
    a, b = rand(19, 7, dtype=dtype), rand(7, 23, dtype=dtype)
    assert_close(h(fc.gemm(d(a), d(b))), a @ b, terms=100)
    assert_close(h(fc.gemm(d(a), d(b), algo="tiled")), a @ b, terms=100)


def test_algorithms_by_device():
    assert fc.algorithms("conv2d", device="cuda") == ["direct", "im2col"]
    assert fc.algorithms("gemm", device="cuda") == ["tiled"]
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        fc.algorithms("conv2d", device="tpu")


@pytest.mark.parametrize("call, error, message", [
    (lambda: fc.conv2d(d(rand(1, 2, 5, 5)), rand(3, 2, 3, 3)), TypeError, "weight must be a CUDA device array"),
    (lambda: fc.conv2d(d(rand(1, 2, 5, 5)), d(rand(3, 2, 3, 3)), algo="winograd"), ValueError,
     r"algo for conv2d must be 'auto' or one of \['direct', 'im2col'\]"),
    (lambda: fc.conv2d(d(rand(1, 2, 5, 5)), d(rand(3, 2, 3, 3).astype(np.float32))), TypeError, "input's dtype"),
    (lambda: fc.conv2d(d(rand(1, 2, 5, 5).astype(np.int32)), d(rand(3, 2, 3, 3))), TypeError, "float32 or float64"),
    (lambda: fc.conv2d(d(rand(1, 2, 5, 5)), d(rand(3, 2, 9, 9))), ValueError, "larger than the padded input"),
    (lambda: fc.conv2d(d(rand(1, 2, 5, 5)), d(rand(3, 2, 3, 3)), d(rand(4))), ValueError, r"bias must have shape"),
    (lambda: fc.max_pool2d(d(rand(1, 2, 5, 5)), 2, algo="naive"), ValueError, "algo for max_pool2d"),
    (lambda: fc.gemm(d(rand(2, 3)), d(rand(4, 2))), ValueError, "inner dimensions"),
    (lambda: fc.max_pool2d_backward(d(rand(1, 2, 2, 2)), d(rand(1, 2, 5, 5)), 2, indices=d(np.zeros((1, 2, 2, 2)))),
     TypeError, "indices must be an integer array"),
])
def test_device_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_non_contiguous_device_array_is_refused():
    x = d(rand(2, 2, 6, 6))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fc.conv2d(x[:, :, ::2], d(rand(3, 2, 3, 3)))


def _tiny_model(seed: int) -> nn.Sequential:
    fc.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, dtype=np.float32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())),
        nn.Dropout(0.25), nn.AvgPool2d(1), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(4, 3))


def test_training_steps_on_the_device_match_the_cpu():
    cpu, gpu = _tiny_model(3).to(np.float64), _tiny_model(3).to(np.float64).to("cuda")
    assert gpu.device == "cuda" and cpu.device == "cpu"
    o_cpu, o_gpu = (optim.Adam(m.parameters(), lr=0.01, weight_decay=1e-3) for m in (cpu, gpu))
    x, labels = rand(2, 2, 4, 4), np.array([0, 2])
    for step in range(2):
        for model, o, inp in ((cpu, o_cpu, x), (gpu, o_gpu, d(x))):
            fc.manual_seed(100 + step)  # the same dropout masks on both
            o.zero_grad()
            logits = model(inp)
            loss, grad = nn.cross_entropy(logits, labels)
            model.backward(grad)
            o.step()
            model.last = (loss, h(logits))
        assert cpu.last[0] == pytest.approx(gpu.last[0], rel=1e-9)
        assert_close(gpu.last[1], cpu.last[1], terms=100)
    for a, b in zip(cpu.state_dict().values(), gpu.state_dict().values()):
        assert_close(h(b), a, terms=100)
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        assert_close(h(q.grad), p.grad, terms=100)


def test_sgd_on_the_device_matches_the_cpu():
    fc.manual_seed(1)
    cpu = nn.Sequential(nn.Linear(5, 3, dtype=np.float64))
    gpu = nn.Sequential(nn.Linear(5, 3, dtype=np.float64))
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    opts = [optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2) for m in (cpu, gpu)]
    x, target = rand(4, 5), rand(4, 3)
    for _ in range(2):
        for model, o, inp, t in ((cpu, opts[0], x, target), (gpu, opts[1], d(x), d(target))):
            o.zero_grad()
            _, grad = nn.mse_loss(model(inp), t)
            model.backward(grad)
            o.step()
    for a, b in zip(cpu.state_dict().values(), gpu.state_dict().values()):
        assert_close(h(b), a, terms=100)
    assert_close(h(opts[1].state[0]["momentum_buffer"]), opts[0].state[0]["momentum_buffer"], terms=100)


def test_eval_mode_losses_and_moving_back_to_the_cpu():
    cpu, gpu = _tiny_model(5), _tiny_model(5).to("cuda")
    cpu.eval(), gpu.eval()
    x = rand(2, 2, 4, 4, dtype=np.float32)
    assert_close(h(gpu(d(x))), cpu(x), terms=100)
    logits = rand(3, 4)
    assert_close(h(nn.softmax(d(logits))), nn.softmax(logits), terms=100)
    target = rand(3, 4)
    loss, grad = nn.mse_loss(d(logits), d(target))
    want_loss, want_grad = nn.mse_loss(logits, target)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_close(h(grad), want_grad, terms=100)
    loss, grad = nn.cross_entropy(d(logits), d(np.array([0, 3, 1])))
    want_loss, want_grad = nn.cross_entropy(logits, np.array([0, 3, 1]))
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_close(h(grad), want_grad, terms=100)
    back = gpu.to("cpu")
    assert back.device == "cpu"
    for (_, a), (_, b) in zip(cpu.state_dict().items(), back.state_dict().items()):
        assert isinstance(b, np.ndarray)
        np.testing.assert_array_equal(a, b)


def test_fit_and_checkpoint_on_the_device(tmp_path):
    from fastconv import data, train
    images = RNG.integers(0, 256, (8, 1, 6, 6), dtype=np.uint8)
    labels = RNG.integers(0, 3, 8)
    loader = data.DataLoader(images, labels, 4, shuffle=True, seed=0, mean=(100.0,), std=(50.0,))
    fc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).to("cuda")
    opt = optim.Adam(model.parameters(), lr=0.01)
    history = train.fit(model, opt, loader, loader, 1, num_classes=3, out_dir=tmp_path, progress=False,
                        log=lambda *_: None)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    meta, parts = train.load_checkpoint(tmp_path / "checkpoint.npz")
    assert all(isinstance(v, np.ndarray) for v in parts["model"].values())
    assert set(parts["optimizer"]) >= {"0.exp_avg", "0.exp_avg_sq"}


def test_importing_fastconv_needs_no_cuda():
    code = ("import sys, fastconv, numpy as np; x = np.ones((1, 1, 3, 3), np.float32); fastconv.conv2d(x, x); "
            "assert 'numba.cuda' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(not device.simulated(), reason="a real GPU is present")
def test_without_a_gpu_the_error_says_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("import fastconv as fc\ntry:\n    fc.device.require_cuda()\nexcept fc.device.CudaUnavailableError as e:\n"
            "    print(e)\nprint(fc.device.cuda_available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "CUDA is not available: no usable CUDA driver" in out.stdout and out.stdout.strip().endswith("False")
    cli = subprocess.run([sys.executable, "-m", "fastconv", "train", "--device", "cuda", "--epochs", "1",
                          "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, env=env)
    assert cli.returncode == 2
    assert "fastconv train: CUDA is not available" in cli.stderr


def test_the_trainer_builds_its_run_on_the_device():
    from fastconv import cli, train
    run = train.build_run({"device": "cuda", "train_size": 8, "test_size": 8, "epochs": 1})
    assert run.model.device == "cuda" and run.settings["device"] == "cuda"
    assert all(device.is_device_array(p.data) and device.is_device_array(p.grad) for p in run.model.parameters())
    args = cli.build_parser().parse_args(["train", "--device", "cuda"])
    assert args.device == "cuda"
    with pytest.raises(ValueError, match="'device' must be 'cpu' or 'cuda'"):
        train.build_run({"device": "gpu", "train_size": 8, "test_size": 8})


# ---- the layers of issue 17 and their ops ----------------------------------------------------------------

NEW_LAYERS = {  # name: (a float64 layer, its input's shape); tiny: the simulator runs a thread per element
    "identity": (lambda: nn.Identity(), (2, 3)),
    "sigmoid": (nn.Sigmoid, (2, 3, 2)),
    "tanh": (nn.Tanh, (2, 5)),
    "leaky_relu": (lambda: nn.LeakyReLU(-0.2), (2, 3, 2)),
    "adaptive_tiling": (lambda: nn.AdaptiveAvgPool2d((2, 1)), (1, 2, 4, 3)),
    "adaptive": (lambda: nn.AdaptiveAvgPool2d((3, None)), (2, 2, 5, 3)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(3, dtype=np.float64), (4, 3)),
    "batchnorm1d_ncl": (lambda: nn.BatchNorm1d(2, dtype=np.float64), (2, 2, 3)),
    "layernorm": (lambda: nn.LayerNorm((2, 3), dtype=np.float64), (3, 2, 3)),
    "layernorm_without_affine": (lambda: nn.LayerNorm(3, elementwise_affine=False, dtype=np.float64), (2, 3)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2,
                                                    dtype=np.float64), (1, 4, 3, 2)),
    "conv_transpose2d_past_the_stride": (lambda: nn.ConvTranspose2d(2, 2, 2, output_padding=(1, 0), dilation=2,
                                                                    bias=False, dtype=np.float64), (1, 2, 3, 3)),
}


@pytest.mark.parametrize("name", NEW_LAYERS)
def test_new_layers_on_the_device_match_the_cpu(name):
    """y, grad_x, parameter gradients and buffers of each new layer on the device, in training then in eval."""
    build, shape = NEW_LAYERS[name]
    cpu, gpu = build(), build()
    for p in cpu.parameters():
        p.data[...] = RNG.uniform(0.5, 1.5, p.data.shape)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    for training in (True, False):
        cpu.train(training), gpu.train(training)
        x = 2 * rand(*shape) + 0.5
        y, yd = cpu(x), gpu(d(x))
        assert device.is_device_array(yd)
        assert_close(h(yd), y, terms=100)
        g = rand(*y.shape)
        gx, gxd = cpu.backward(g), gpu.backward(d(g))
        assert device.is_device_array(gxd)
        assert_close(h(gxd), gx, terms=100)
        for (n, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
            assert_close(h(q.grad), p.grad, terms=100, err_msg=n)
        for (n, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
            assert_close(np.asarray(h(b)), np.asarray(a), terms=100, err_msg=n)


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("args", [dict(stride=2, padding=1, output_padding=1, groups=2),
                                  dict(stride=(1, 2), output_padding=(1, 0), dilation=2)], ids=["groups", "dilated"])
def test_conv_transpose2d_matches_cpu(algo, args):
    x, w, b = rand(1, 2, 3, 2), rand(2, 1, 2, 2), rand(args.get("groups", 1))
    y = fc.conv_transpose2d(x, w, b, **args)
    assert_close(h(fc.conv_transpose2d(d(x), d(w), d(b), **args, algo=algo)), y, terms=100)
    g = rand(*y.shape)
    for got, want in zip(fc.conv_transpose2d_backward(d(g), d(x), d(w), **args, algo=algo),
                         fc.conv_transpose2d_backward(g, x, w, **args)):
        assert_close(h(got), want, terms=100)


@pytest.mark.parametrize("output_size", [(2, 3), (3, 2), 1, (4, None)])
def test_adaptive_avg_pool2d_matches_cpu(output_size):
    x = rand(2, 2, 4, 3)
    y = fc.adaptive_avg_pool2d(x, output_size)
    assert_close(h(fc.adaptive_avg_pool2d(d(x), output_size)), y, terms=100)
    g = rand(*y.shape)
    assert_close(h(fc.adaptive_avg_pool2d_backward(d(g), d(x), output_size)),
                 fc.adaptive_avg_pool2d_backward(g, x, output_size), terms=100)
    assert h(fc.adaptive_avg_pool2d(d(x[0]), output_size)).shape == y.shape[1:]
