"""Where arrays live: the CPU (NumPy) or an NVIDIA GPU through numba.cuda.

Nothing here imports numba.cuda until a GPU is asked for, so importing fastconv never needs CUDA.
A device array is anything with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays,
PyTorch CUDA tensors) or a device array of Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``);
ops take them without copies and return Numba device arrays, which CuPy (``cupy.asarray``) and
PyTorch (``torch.as_tensor(y, device="cuda")``) wrap without copies in turn.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache
from types import ModuleType

import numpy as np

from ._checks import FLOAT_DTYPES, is_device_array, native

DEVICES = ("cpu", "cuda")


class CudaUnavailableError(RuntimeError):
    """A GPU was asked for where fastconv cannot use one; the message says why."""


def check_device(device: object) -> str:
    """`device` as 'cpu' or 'cuda' ('cuda:0' is 'cuda': fastconv uses the current device)."""
    name = device.split(":")[0] if isinstance(device, str) else device
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return name


@cache
def _cuda_or_reason() -> ModuleType | str:
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if importlib.util.find_spec("numba_cuda") is None and not simulated:
        return "the numba-cuda package is not installed (pip install 'fastconv[cuda]')"
    from numba import cuda
    if simulated:
        return cuda
    try:
        cuda.cudadrv.driver.driver.get_device_count()
    except Exception as e:  # the driver's own words: library not found, version too old, ...
        words = " ".join(str(e).replace(":", " ").split()) or type(e).__name__
        return f"no usable CUDA driver: {words}"
    if not cuda.is_available():
        return "the CUDA driver found no GPU"
    return cuda


def cuda_available() -> bool:
    """Whether fastconv can run on a GPU here (or on Numba's CUDA simulator when it is enabled)."""
    return not isinstance(_cuda_or_reason(), str)


def require_cuda() -> ModuleType:
    """numba.cuda, or CudaUnavailableError saying why the GPU cannot be used."""
    cuda = _cuda_or_reason()
    if isinstance(cuda, str):
        raise CudaUnavailableError(f"CUDA is not available: {cuda}")
    return cuda


def simulated() -> bool:
    """Whether the GPU is Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, but slow."""
    return cuda_available() and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def device_of(a: object) -> str:
    """'cuda' for a GPU array (``is_device_array``), else 'cpu': where an op taking `a` runs."""
    return "cuda" if is_device_array(a) else "cpu"


def as_device(name: str, a: object, kinds: str = "f") -> object:
    """`a` as a Numba device array sharing its memory: C-contiguous, native byte order, and of a
    float dtype (``kinds`` 'f'; 'i' for integer arrays). TypeError/ValueError name the argument."""
    if not is_device_array(a):
        raise TypeError(f"{name} must be a CUDA device array like x, got {type(a).__name__}"
                        + (" (move it with fastconv.device.to_device)" if isinstance(a, np.ndarray) else ""))
    cuda = require_cuda()
    d = a if getattr(a, "__cuda_ndarray__", False) else cuda.as_cuda_array(a)
    dtype = np.dtype(d.dtype)
    if kinds == "f" and (not dtype.isnative or native(dtype) not in FLOAT_DTYPES):
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    if kinds == "i" and (dtype.kind not in "iu" or not dtype.isnative):
        raise TypeError(f"{name} must be an integer array, got {dtype}")
    if d.size and not d.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device (copy it first, e.g. cupy.ascontiguousarray "
                         "or tensor.contiguous()), got strides " + str(d.strides))
    return d


def to_device(a: np.ndarray) -> object:
    """A copy of the NumPy array `a` on the GPU (C-contiguous, native byte order)."""
    cuda = require_cuda()
    arr = np.asarray(a)
    return cuda.to_device(np.ascontiguousarray(arr, dtype=native(arr.dtype)))


def to_host(a: object) -> np.ndarray:
    """A NumPy copy of a device array (a NumPy array is returned as it is)."""
    if isinstance(a, np.ndarray):
        return a
    if not is_device_array(a):
        raise TypeError(f"a must be a NumPy or CUDA device array, got {type(a).__name__}")
    return (a if getattr(a, "__cuda_ndarray__", False) else require_cuda().as_cuda_array(a)).copy_to_host()


def to(a: object, device: str) -> object:
    """`a` on `device` ('cpu' or 'cuda'), copied only when it is elsewhere."""
    if check_device(device) == "cuda":
        return a if is_device_array(a) else to_device(a)
    return to_host(a)


def empty(shape: tuple[int, ...], dtype: np.dtype) -> object:
    """An uninitialized device array, refused before allocating when the GPU has too little free memory."""
    cuda = require_cuda()
    nbytes = int(np.dtype(dtype).itemsize) * int(np.prod(shape, dtype=np.float64))
    if not simulated():
        free, total = cuda.current_context().get_memory_info()
        if nbytes > free:
            raise ValueError(f"a device array of shape {tuple(shape)} would need {nbytes / 2**30:.2f} GiB, "
                             f"more than the GPU's {free / 2**30:.2f} GiB free (of {total / 2**30:.1f} GiB)")
    return cuda.device_array(shape, np.dtype(dtype))


def zeros(shape: tuple[int, ...], dtype: np.dtype, device: str) -> object:
    """A zero-filled array on `device` ('cpu': NumPy, 'cuda': a device array)."""
    if device == "cpu":
        return np.zeros(shape, dtype)
    a = empty(shape, dtype)
    if a.size:
        from .kernels import cuda_elementwise
        cuda_elementwise.fill(a.reshape(a.size), 0)
    return a


def synchronize() -> None:
    """Wait for every kernel launched so far (kernels run asynchronously; timings need this)."""
    if "numba.cuda" in sys.modules and cuda_available():
        require_cuda().synchronize()
