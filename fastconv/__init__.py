"""fastconv: convolution, pooling and GEMM on NCHW NumPy arrays with compiled kernels.

The functional API mirrors ``torch.nn.functional``::

    import fastconv as fc
    y = fc.conv2d(x, weight, bias, stride=1, padding=0, dilation=1, groups=1, algo="auto")
    gx, gw, gb = fc.conv2d_backward(grad_y, x, weight, stride=1, padding=0)
    fc.algorithms("conv2d")   # ['naive', 'direct', 'direct_simd', 'im2col', 'im2col_packed', 'winograd', 'depthwise']

Importing fastconv compiles nothing: each Numba kernel compiles on its first call
and is cached on disk for later processes.
"""
from __future__ import annotations

from . import runtime  # noqa: F401  (first: its Numba event listener must see every compile)
from . import autotune, device, models, nn, optim  # noqa: F401
from .autotune import set_autotune
from . import device as _device
from .algorithm import REGISTRIES
from .config import conv2d_algorithm, set_conv2d_algorithm, set_workspace_limit, workspace_limit
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .gemm import gemm
from .nn import is_grad_enabled, manual_seed, no_grad
from .pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, avg_pool2d, avg_pool2d_backward, max_pool2d,
                   max_pool2d_backward)

from .runtime import num_threads as get_num_threads, set_num_threads
from .serialize import load, save

__version__ = "0.1.0"
LAZY_MODULES = ("data", "train", "onnx", "tune", "distributed")  # fc.data, fc.train, ...: imported on first use


def __getattr__(name: str) -> object:
    if name in LAZY_MODULES:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")


def algorithms(op: str, device: str = "cpu") -> list[str]:
    """Names accepted by ``algo=`` for `op` ('conv2d', 'max_pool2d', 'avg_pool2d' or 'gemm') on
    `device` ('cpu', or 'cuda' for device arrays; listing them needs no GPU), read from the op's
    registry (``fastconv.algorithm``)."""
    if op not in REGISTRIES:
        raise ValueError(f"op must be one of {sorted(REGISTRIES)}, got {op!r}")
    return REGISTRIES[op].names(_device.check_device(device))


__all__ = [
    "algorithms", "avg_pool2d", "device", "avg_pool2d_backward", "conv2d", "conv2d_backward", "gemm",
    "autotune", "manual_seed", "max_pool2d", "max_pool2d_backward", "models", "nn", "optim", "set_autotune", "set_workspace_limit",
    "workspace_limit", "get_num_threads", "set_num_threads", "data", "train", "no_grad", "is_grad_enabled", "save",
    "load", "conv2d_algorithm", "set_conv2d_algorithm", "onnx", "conv_transpose2d", "conv_transpose2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
]
