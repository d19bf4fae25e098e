"""The package surface: algorithm names, lazy compilation, dtypes and unbatched inputs."""
import re
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc


def test_algorithms_lists_every_algorithm():
    assert fc.algorithms("conv2d") == ["naive", "direct", "direct_simd", "im2col", "im2col_packed", "winograd", "winograd_4x4",
                                        "depthwise"]
    assert fc.algorithms("max_pool2d") == ["naive", "direct", "window_2x2"]
    assert fc.algorithms("avg_pool2d") == ["naive", "direct"]
    assert fc.algorithms("gemm") == ["naive", "blas", "packed", "streaming"]


def test_import_compiles_nothing():
    """Importing fastconv (winograd's host code too) compiles no Numba kernel: each compiles on its first call."""
    code = (
        "import numba, fastconv, fastconv.winograd\n"
        "from fastconv.kernels import conv_direct, conv_winograd, matmul, pooling\n"
        "found = [[f for f in vars(m).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]\n"
        "         for m in (conv_direct, conv_winograd, matmul, pooling)]\n"
        "assert all(found) and not [f.signatures for fs in found for f in fs if f.signatures], found\n"
        "print(sum(map(len, found)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 13


def test_kernels_live_inside_the_package():
    import fastconv.kernels
    assert fastconv.kernels.__name__ == "fastconv.kernels"
    assert fastconv.kernels.im2col.__name__ == "fastconv.kernels.im2col"


def test_output_dtype_follows_input():
    for dtype in (np.float32, np.float64):
        x = np.ones((1, 2, 5, 5), dtype)
        assert fc.conv2d(x, np.ones((3, 2, 3, 3), dtype)).dtype == dtype
        assert fc.max_pool2d(x, 2).dtype == dtype
        assert fc.avg_pool2d(x, 2).dtype == dtype
        assert fc.gemm(x[0, 0], x[0, 0]).dtype == dtype


def test_unbatched_input_gives_unbatched_results():
    x = np.random.default_rng(0).standard_normal((2, 6, 6))
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3))
    y = fc.conv2d(x, w, padding="same")
    assert y.shape == (3, 6, 6)
    np.testing.assert_allclose(y, fc.conv2d(x[None], w, padding="same")[0])
    gx, gw, gb = fc.conv2d_backward(np.ones_like(y), x, w, padding="same")
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (3,)
    y, idx = fc.max_pool2d(x, 2, return_indices=True)
    assert y.shape == idx.shape == (2, 3, 3)
    assert fc.max_pool2d_backward(np.ones_like(y), x, 2).shape == x.shape


def test_demo_runs_every_algorithm(monkeypatch, capsys):
    from fastconv import demo
    monkeypatch.setattr(demo, "LAYERS", [("tiny 5x5", (2, 2, 8, 8), 3, 5, 2), ("tiny 3x3", (2, 2, 8, 8), 3, 3, 1)])
    demo.run(repeat=1)
    out = capsys.readouterr().out
    for layer in ("tiny 5x5", "tiny 3x3"):
        for algo in fc.algorithms("conv2d"):
            assert re.search(rf"^{layer}\s+{algo}\*?\s", out, re.M), (layer, algo)
    assert re.search(r"^tiny 5x5\s+winograd\s+\(needs a 3x3 kernel, stride 1 and dilation 1", out, re.M)


def test_data_and_train_are_attributes_of_the_package():
    """`import fastconv as fc; fc.data, fc.train` as the README writes them (in a fresh process: here other tests
    have imported the submodules already)."""
    code = "import fastconv as fc; print(fc.data.load_mnist.__name__, fc.train.fit.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["load_mnist", "fit"], done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fc.nothing


def test_version_option(capsys):
    from fastconv import cli
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"fastconv {fc.__version__}"


def test_set_num_threads():
    before = fc.get_num_threads()
    try:
        fc.set_num_threads(1)
        assert fc.get_num_threads() == 1
    finally:
        fc.set_num_threads(before)
    with pytest.raises(ValueError, match="count must be between 1"):
        fc.set_num_threads(0)
    with pytest.raises(TypeError, match="count must be an int"):
        fc.set_num_threads(True)
