"""``fastconv warmup``: compile (or load from Numba's cache) every CPU kernel ahead of use.

Numba compiles a kernel on its first call, for the types of that call (dtype, rank, layout,
read-only or not), and caches the machine code on disk. Warming up makes one tiny call through
fastconv's public API per kernel path and dtype, so it compiles exactly the specializations that
real calls of the same kind use, and a user's first real call only loads them from the cache.

Every conv2d call names its algorithm: ``algo="auto"`` would time candidates and record its choice
in the autotuning cache, which warmup never touches. The GPU kernels (``kernels/cuda_*.py``) are
left out: they compile per device, and only where one is present.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable

import numpy as np
from numba import types
from numba.core.registry import CPUDispatcher
from tqdm import tqdm

from . import kernels as kernel_package, nn, optim
from .kernels import elementwise
from .onnx.fused import Affine, AddRelu, ScaleShift
from ._checks import conv2d_shape, float_dtype
from .conv import CONV2D, conv2d, conv2d_backward
from .gemm import GEMM, gemm
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward

def kernel_modules() -> list[str]:
    """The CPU kernel modules of fastconv.kernels (every module but the GPU's cuda_*)."""
    return [m.name for m in pkgutil.iter_modules(kernel_package.__path__) if not m.name.startswith("cuda_")]


def _conv(algo: str, x: np.ndarray, w: np.ndarray, padding: int = 0, groups: int = 1, stride: int = 1,
          ) -> tuple[Callable[[], object], Callable[[], object]]:
    """The forward and the backward call of a conv2d with `algo` on x, w (with a bias)."""
    bias = np.ones(w.shape[0], x.dtype)
    grad_y = np.ones(conv2d_shape(x, w, stride, padding, 1, groups).y_shape, x.dtype)
    return (lambda: conv2d(x, w, bias, stride, padding, groups=groups, algo=algo),
            lambda: conv2d_backward(grad_y, x, w, stride, padding, groups=groups, algo=algo))


def _layers(dtype: np.dtype) -> list[tuple[str, Callable[[], object]]]:
    """A forward and backward of each layer with kernels of its own, on the ranks models give it (Numba compiles
    per rank: ReLU 4-D after a convolution, 2-D after Linear), BatchNorm2d in training and eval, and one SGD
    (momentum, Nesterov) and Adam step."""
    def layer(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> Callable[[], object]:
        def call() -> object:
            module = make()
            x = np.linspace(-1, 1, int(np.prod(shape)), dtype=dtype).reshape(shape)
            return module.backward(np.ones_like(module(x)))
        return call

    def step(make: Callable[[list[nn.Parameter]], optim.Optimizer]) -> Callable[[], object]:
        def call() -> object:
            p = nn.Parameter(np.ones(4, dtype))
            p.grad[...] = 0.5
            make([p]).step()
            return p.data
        return call

    layers = [("relu 4-D", nn.ReLU, (2, 3, 4, 4)), ("relu 2-D", nn.ReLU, (2, 5)),
              ("linear", lambda: nn.Linear(5, 3, dtype=dtype), (2, 5)),
              ("batch norm", lambda: nn.BatchNorm2d(3, dtype=dtype), (2, 3, 4, 4)),
              ("batch norm eval", lambda: nn.BatchNorm2d(3, dtype=dtype).eval(), (2, 3, 4, 4)),
              ("batch norm 1-D", lambda: nn.BatchNorm1d(3, dtype=dtype), (4, 3)),
              ("layer norm", lambda: nn.LayerNorm(4, dtype=dtype), (2, 3, 4)),
              ("sigmoid", nn.Sigmoid, (2, 3, 4, 4)), ("tanh", nn.Tanh, (2, 3, 4, 4)),
              ("leaky relu", nn.LeakyReLU, (2, 3, 4, 4)),
              ("adaptive avg pool", lambda: nn.AdaptiveAvgPool2d(3), (2, 3, 5, 5)),
              ("conv transpose", lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, output_padding=1, dtype=dtype),
               (2, 3, 4, 4))]
    return [(label, layer(make, shape)) for label, make, shape in layers] + [
        ("sgd", step(lambda params: optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True))),
        ("adam", step(lambda params: optim.Adam(params)))]


def _onnx_fused(x: np.ndarray) -> list[tuple[str, Callable[[], object]]]:
    """The kernels an ONNX model's fused nodes run (``fastconv.onnx.fused``) on x (N, C, H, W): scale and shift
    per channel and a sum, each with ReLU, into a new array and in place, and the in-place ReLU after a Conv
    (4-D) or a Gemm (2-D)."""
    c = x.shape[1]
    affine = Affine(np.linspace(0.5, 1.5, c), np.linspace(-1, 1, c), None, 2, x.dtype)

    def fused(node: object, reusable: list[bool]) -> Callable[[], object]:
        return lambda: node.run([x.copy() for _ in reusable], reusable)
    return [("onnx scale-shift relu", fused(ScaleShift(affine, relu=True), [False])),
            ("onnx scale-shift relu in place", fused(ScaleShift(affine, relu=True), [True])),
            ("onnx add relu", fused(AddRelu(relu=True), [False, False])),
            ("onnx add relu in place", fused(AddRelu(relu=True), [True, False])),
            ("onnx relu in place 4-D", lambda: elementwise.relu_into(x.copy())),
            ("onnx relu in place 2-D", lambda: elementwise.relu_into(x.reshape(x.shape[0], -1).copy()))]


def tasks(dtype: object) -> list[tuple[str, Callable[[], object]]]:
    """The warm-up calls for one dtype (float32 or float64): (label, call) pairs, each a tiny call
    through the public API that reaches one kernel path."""
    d = float_dtype(dtype)
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(d)

    x, w = normal(2, 3, 6, 6), normal(4, 3, 3, 3)
    out = []
    x_dw, w_dw = normal(2, 4, 6, 6), normal(8, 1, 3, 3)  # depthwise, two output channels per input channel
    for record in CONV2D.records("cpu"):  # every compiled algorithm, forward and backward (direct_simd: the row kernel)
        if not record.reference:
            takes_x = record.unsupported(conv2d_shape(x, w, 1, 1, 1, 1)) is None
            forward, backward = _conv(record.name, x, w, padding=1) if takes_x else \
                _conv(record.name, x_dw, w_dw, padding=1, groups=4)
            out += [(f"conv2d {record.name} forward", forward), (f"conv2d {record.name} backward", backward)]
    # depthwise at stride 2: its row kernels
    out += [(f"conv2d depthwise strided {name}", call) for name, call in
            zip(("forward", "backward"), _conv("depthwise", x_dw, w_dw, padding=1, groups=4, stride=2))]
    # direct_simd's batch kernels (forward and weight gradient) run on small output planes with a batch of at
    # least one block of vectors of images (32 float32 with AVX-512).
    out += [(f"conv2d direct_simd batch {name}", call) for name, call in
            zip(("forward", "backward"), _conv("direct_simd", normal(32, 2, 4, 4), normal(6, 2, 3, 3)))]
    # grouped layers: Winograd's unfused transforms and, with few channels per group, its grouped products
    x_g, w_g = normal(2, 4, 6, 6), normal(4, 1, 3, 3)
    grouped = conv2d_shape(x_g, w_g, 1, 1, 1, 4)
    out += [(f"conv2d {record.name} grouped forward", _conv(record.name, x_g, w_g, padding=1, groups=4)[0])
            for record in CONV2D.records("cpu") if not record.reference and record.unsupported(grouped) is None]

    maps = normal(2, 3, 6, 6)
    y, indices = max_pool2d(maps, 2, return_indices=True)
    grad_y = np.ones_like(y)
    out += [
        ("max_pool2d forward", lambda: max_pool2d(maps, 3, 2, padding=1, return_indices=True, algo="direct")),
        ("max_pool2d forward values", lambda: max_pool2d(maps, 3, 2, padding=1, algo="direct")),
        ("max_pool2d backward", lambda: max_pool2d_backward(grad_y, maps, 2, algo="direct")),
        ("max_pool2d backward indices", lambda: max_pool2d_backward(grad_y, maps, 2, indices=indices, algo="direct")),
        ("max_pool2d 2x2 forward", lambda: max_pool2d(maps, 2, return_indices=True, algo="window_2x2")),
        ("max_pool2d 2x2 backward", lambda: max_pool2d_backward(grad_y, maps, 2, algo="window_2x2")),
        ("avg_pool2d forward", lambda: avg_pool2d(maps, 3, 2, padding=1, count_include_pad=False)),
        ("avg_pool2d backward", lambda: avg_pool2d_backward(grad_y, maps, 2)),
    ]
    out += [(f"gemm {name}", lambda name=name: gemm(normal(3, 4), normal(4, 5), algo=name))
            for name in GEMM.names("cpu") if not GEMM["cpu", name].reference]
    out += _layers(d)
    out += _onnx_fused(maps)
    return [(f"{label} {d}", call) for label, call in out]


def kernels() -> dict[str, CPUDispatcher]:
    """Every Numba CPU kernel of fastconv.kernels that Python calls ('module.name' -> dispatcher).

    Helpers called only from other kernels are left out: they compile into their callers, and get
    no signatures of their own when a caller is loaded from Numba's cache."""
    found = {}
    for name in kernel_modules():
        module = importlib.import_module(f"fastconv.kernels.{name}")
        found.update({f"{name}.{attr}": value for attr, value in vars(module).items()
                      if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module.__name__})
    called = {id(f.py_func.__globals__.get(n)) for f in found.values() for n in f.py_func.__code__.co_names}
    return {name: f for name, f in found.items() if id(f) not in called}


def _dtypes_of(kernel: CPUDispatcher) -> set[str]:
    """The float dtypes the kernel is compiled for: per signature, that of its first float array argument (the
    data's; a kernel may also take float64 accumulators)."""
    out = set()
    for signature in kernel.signatures:
        floats = [str(t.dtype) for t in signature if isinstance(t, types.Array) and isinstance(t.dtype, types.Float)]
        out |= set(floats[:1])
    return out


def _missing(names: list[str], found: dict[str, CPUDispatcher]) -> dict[str, list[str]]:
    """Kernel -> the dtypes of `names` it is not compiled for (kernels compiled only for arguments
    without float arrays take none, and lack none)."""
    missing = {}
    for name, kernel in found.items():
        have = _dtypes_of(kernel)
        if set(names) - have and (have or not kernel.signatures):
            missing[name] = sorted(set(names) - have)
    return missing


def run(dtypes: tuple[str, ...] = ("float32", "float64"), progress: bool = True) -> dict:
    """Make every warm-up call for each of `dtypes`, with a tqdm bar on stderr if `progress`.

    Returns {"dtypes", "calls", "seconds", "kernels": names of the kernels now compiled for every one
    of `dtypes`, "missing": {kernel: dtypes it lacks}, "cache_dir": where Numba caches them}."""
    if isinstance(dtypes, str) or not dtypes:
        raise ValueError(f"dtypes must be a non-empty sequence of 'float32'/'float64', got {dtypes!r}")
    names = [str(float_dtype(d)) for d in dtypes]
    start = time.perf_counter()
    calls = [task for d in names for task in tasks(d)]
    with tqdm(calls, desc="fastconv warmup", unit="call", file=sys.stderr, disable=not progress) as bar:
        for label, call in bar:
            bar.set_postfix_str(label)
            call()
    seconds = time.perf_counter() - start
    found = kernels()
    missing = _missing(names, found)
    # where Numba's cache locator put them: next to the source, NUMBA_CACHE_DIR or a user-wide folder
    cache_dir = str(found["conv_direct.forward_padded"]._cache.cache_path)
    return {"dtypes": names, "calls": len(calls), "seconds": seconds,
            "kernels": sorted(name for name in found if name not in missing), "missing": missing,
            "cache_dir": cache_dir}


def command(dtype: str = "both", progress: bool = True) -> int:
    """``fastconv warmup``: run() for `dtype` ('float32', 'float64' or 'both') and print one summary
    line; exit status 1, naming them on stderr, when kernels stay uncompiled."""
    if dtype not in ("float32", "float64", "both"):
        raise ValueError(f"dtype must be 'float32', 'float64' or 'both', got {dtype!r}")
    result = run(("float32", "float64") if dtype == "both" else (dtype,), progress)
    print(f"fastconv warmup: {len(result['kernels'])} kernels ready for {' and '.join(result['dtypes'])} "
          f"in {result['seconds']:.1f} s (cached in {result['cache_dir']})")
    for name, lacks in result["missing"].items():
        print(f"fastconv warmup: {name} was not compiled for {' and '.join(lacks)}", file=sys.stderr)
    return 1 if result["missing"] else 0
