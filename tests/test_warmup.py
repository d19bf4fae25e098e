"""``fastconv warmup``: every CPU kernel compiled for float32 and float64, and the command line.

Both run in a fresh process: in the test session other tests have compiled kernels already, which
would hide one that warmup misses.
"""
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

from numba import types
from numba.core.registry import CPUDispatcher

import fastconv.kernels

FLOATS = ("float32", "float64")


def cpu_kernels() -> dict[str, CPUDispatcher]:
    """'module.name' -> every Numba CPU dispatcher defined in a module of fastconv.kernels, the
    cuda_* ones excepted (intrinsics are not dispatchers; the Cython im2col holds none)."""
    found = {}
    for info in pkgutil.iter_modules(fastconv.kernels.__path__):
        if info.name.startswith("cuda_"):
            continue
        module = importlib.import_module(f"fastconv.kernels.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module.__name__:
                found[f"{info.name}.{name}"] = value
    return found


def compiled_dtypes() -> dict[str, list[list[str]]]:
    """Per kernel, per signature it is compiled for in this process: the dtype of its first float array (the
    data's: a kernel may also take float64 accumulators), in a list, or an empty list when it takes none."""
    return {name: [[str(t.dtype) for t in signature if isinstance(t, types.Array) and isinstance(t.dtype, types.Float)][:1]
                   for signature in kernel.signatures]
            for name, kernel in cpu_kernels().items()}


def helpers(kernels: dict[str, CPUDispatcher]) -> set[str]:
    """Kernels that other kernels call: they compile into their callers and get no signatures of their
    own when a caller loads from Numba's cache, so their callers' coverage stands for theirs."""
    called = {id(kernel.py_func.__globals__.get(name)) for kernel in kernels.values()
              for name in kernel.py_func.__code__.co_names}
    return {name for name, kernel in kernels.items() if id(kernel) in called}


def _python(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTCONV_AUTOTUNE_CACHE": str(tmp_path / "autotune.json")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


def test_warmup_compiles_every_cpu_kernel_for_float32_and_float64(tmp_path):
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "import test_warmup\n"
            "from fastconv import warmup\n"
            "result = warmup.run(progress=False)\n"
            "print(json.dumps({'missing': result['missing'], 'compiled': test_warmup.compiled_dtypes()}))\n")
    done = _python(["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    kernels = cpu_kernels()
    assert set(out["compiled"]) == set(kernels)
    called_from_python = sorted(set(kernels) - helpers(kernels))
    assert len(called_from_python) >= 20, called_from_python
    missing = {}
    for name in called_from_python:
        per_signature = out["compiled"][name]
        if per_signature and not any(per_signature):
            continue  # compiled, for arguments without float arrays
        have = {dtypes[0] for dtypes in per_signature if len(dtypes) == 1}
        if set(FLOATS) - have:
            missing[name] = sorted(set(FLOATS) - have)
    assert not missing, f"not compiled by warmup.run() (kernel: dtypes missing): {missing}"
    assert out["missing"] == {}
    assert not (tmp_path / "autotune.json").exists()


def test_warmup_command_line(tmp_path):
    done = _python(["-m", "fastconv", "warmup", "--dtype", "float32", "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr
    kernels = cpu_kernels()
    ready = len(set(kernels) - helpers(kernels))
    assert re.fullmatch(rf"fastconv warmup: {ready} kernels ready for float32 in \d+\.\d s \(cached in .+\)\n",
                        done.stdout), done.stdout
    assert "call/s" not in done.stderr and "s/call" not in done.stderr  # no progress bar
    assert not (tmp_path / "autotune.json").exists()
