"""Options, the shared measuring harness and the machine information of the benchmark suite.

    python -m pytest benchmarks -p no:cacheprovider --fc-size quick --benchmark-json out.json

``--fc-size``: tiny (one small case per suite: keeps the harness from rotting), quick (a few
minutes), full (everything, the default); ``--fc-dtype``: float32 (default) or float64;
``--fc-device``: cpu (default: every module but test_cuda_bench.py) or cuda (test_cuda_bench.py alone).
"""
from __future__ import annotations

import ctypes
import datetime
import functools
import importlib
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable

import numba
import numpy as np
import pytest

import fastconv as fc

from . import peers
from .cases import PEERS, SIZES, Case, naive_slice

TARGET_SECONDS = 1.5  # timed rounds per benchmark: about this long, within MIN_ROUNDS..MAX_ROUNDS
MIN_ROUNDS, MAX_ROUNDS = 3, 20
# Idle time before each benchmark: after a call, an OpenBLAS worker (NumPy's or SciPy's, which
# fastconv's "blas" paths use) busy-waits about 0.11 s on this machine, taking one of its two
# cores from whatever runs next; the OpenMP pools of Numba and PyTorch spin about 0.01 s.
SETTLE_SECONDS = 0.15  # (not for --fc-size tiny, which checks the harness, not the figures)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastconv benchmarks")
    group.addoption("--fc-size", choices=SIZES, default="full", help="case set: tiny, quick or full (default)")
    group.addoption("--fc-dtype", choices=("float32", "float64"), default="float32", help="dtype of every case")
    group.addoption("--fc-device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: the CPU suite (default); cuda: the GPU suite, test_cuda_bench.py")


def pytest_ignore_collect(collection_path, config: pytest.Config) -> bool | None:
    """Collect the GPU module only with --fc-device cuda, and only it then."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return (collection_path.name == "test_cuda_bench.py") != (config.getoption("fc_device") == "cuda")
    return None


@pytest.fixture(scope="session")
def fc_dtype(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("fc_dtype")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def timed_call_with_peak(fn: Callable[[], object]) -> tuple[float, int | None]:
    """(seconds, peak bytes) of one call: resident memory reached above the level before the call
    (VmHWM reset through /proc/self/clear_refs after malloc_trim); None without /proc."""
    if _libc() is not None:
        _libc().malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    peak = None if before is None else max(0, _status_kib("VmHWM") - before) * 1024
    return seconds, peak


def _threads(suite: str, impl: str) -> int:
    if impl == "naive" or (impl == "numpy" and suite.endswith("pool2d")):
        return 1
    if impl == "numpy":
        return peers.blas_threads()
    if impl == "pytorch":
        return peers.torch().get_num_threads()
    return numba.get_num_threads()


@pytest.fixture
def fc_bench(benchmark, fc_dtype: str, pytestconfig: pytest.Config):
    """``run(make, suite=, case=, pass_=, impl=, is_peak=False, extra=None)`` benchmarks ``make(case)()``:
    `make` builds, outside the timing, a no-argument callable whose one call is the whole measured
    operation. The naive loops get a reduced case where the whole one would be too slow
    (``cases.naive_slice``); the record then carries the scale back to the whole case.

    Calls, after ``SETTLE_SECONDS`` idle: one timed first call (``first_call_s``), one call
    measuring the peak memory whose time sets the rounds (``TARGET_SECONDS`` in all, within
    ``MIN_ROUNDS``..``MAX_ROUNDS``), then ``benchmark.pedantic`` with one warm-up round.
    ``extra_info`` as ``benchmarks/__init__.py`` states, updated with ``extra`` (a suite's own fields).
    """
    settle = 0.0 if pytestconfig.getoption("fc_size") == "tiny" else SETTLE_SECONDS

    def run(make: Callable[[Case], Callable[[], object]], *, suite: str, case: Case, pass_: str, impl: str,
            is_peak: bool = False, extra: dict | None = None) -> None:
        run_case, scale, scaled_from = naive_slice(suite, case, pass_) if impl == "naive" else (case, 1.0, None)
        fn = make(run_case)
        benchmark.group = f"{suite}-{case.name}-{pass_}"
        time.sleep(settle)  # let the previous benchmark's thread pools go idle
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        seconds, peak = timed_call_with_peak(fn)
        rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(TARGET_SECONDS / max(seconds, 1e-9))))
        benchmark.extra_info.update({
            "suite": suite, "case": case.name, "label": case.label, "pass": pass_, "impl": impl,
            "peer": impl in PEERS, "flops": case.flops(pass_), "scale": scale, "scaled_from": scaled_from,
            "first_call_s": first, "compile_s": None, "peak_memory_bytes": peak,
            "threads": _threads(suite, impl), "dtype": fc_dtype, "is_peak": is_peak, **(extra or {}),
        })
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        if impl not in PEERS:  # compile (or Numba cache load) and first-call overheads; noise can make it < 0
            median = benchmark.stats.stats.median if benchmark.stats is not None else seconds
            benchmark.extra_info["compile_s"] = max(0.0, first - median)
    return run


def _cpu_model_and_flags() -> tuple[str | None, dict[str, bool]]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, {flag: flag in flags for flag in ("avx2", "avx512f", "fma")}


def _version(module: str) -> str | None:
    """The module's __version__, None where it cannot be imported."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """machine_info["fastconv"]: the CPU, thread counts and layer, and the versions that matter."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    fc.conv2d(x, np.zeros((1, 1, 3, 3), np.float32), algo="direct")  # a parallel call fixes the layer
    model, flags = _cpu_model_and_flags()
    machine_info["fastconv"] = {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "cpu_flags": flags,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.threading_layer(),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("numpy", "numba", "llvmlite", "scipy", "torch")},
        "fastconv": fc.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "size": config.getoption("fc_size"),
        "dtype": config.getoption("fc_dtype"),
    }
    if config.getoption("fc_device") == "cuda":
        machine_info["fastconv"].update(_gpu_info())


def _gpu_info() -> dict:
    """The GPU, its driver and CUDA versions, and PyTorch's GPU settings (TF32 off: see peers.torch_cuda)."""
    from fastconv import device
    cuda = device.require_cuda()
    if device.simulated():
        info = {"gpu": "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): timings are not GPU timings"}
    else:
        gpu = cuda.get_current_device()
        name = gpu.name.decode() if isinstance(gpu.name, bytes) else gpu.name
        info = {"gpu": f"{name} (compute capability {'.'.join(map(str, gpu.compute_capability))})",
                "cuda_driver": ".".join(map(str, cuda.cudadrv.driver.driver.get_version())),
                "cuda_runtime": ".".join(map(str, cuda.runtime.get_version()))}
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["nvidia_driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    info["numba_cuda"] = _version("numba_cuda")
    try:
        import torch
    except ImportError:
        return info
    if not torch.cuda.is_available():
        return {**info, "torch_gpu": "none: torch has no CUDA here, so no PyTorch peers were run"}
    return {**info, "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "torch_gpu": f"float32 TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} (matmul), "
                         f"TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (cuDNN), "
                         f"cudnn.benchmark {torch.backends.cudnn.benchmark}"}
