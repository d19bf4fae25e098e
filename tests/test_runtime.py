"""fastconv's place in the process: the compile notice, one OpenMP level after Numba starts its threads, freed
memory kept on request."""
import os
import subprocess
import sys

import pytest

LEVELS = """
import ctypes, numpy as np, fastconv as fc
fc.nn.ReLU()(np.ones((2, 3), np.float32))            # a parallel kernel: Numba launches its threads
import numba
if numba.threading_layer() != "omp":
    print("not-omp")
else:
    from numba.np.ufunc import omppool
    print(ctypes.CDLL(omppool.__file__).omp_get_max_active_levels())
"""


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_MAX_ACTIVE_LEVELS", "OMP_NESTED")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**environ, **env})


def test_numba_leaves_one_openmp_level_for_the_libraries_sharing_its_runtime():
    """Numba's OpenMP layer turns nesting on when it starts (PyTorch's Adam then ran 2x slower in the same
    process); fastconv sets the levels back to what the environment asks: one by default."""
    done = _run(LEVELS)
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "not-omp":
        pytest.skip("Numba does not use its OpenMP threading layer here")
    assert done.stdout.strip() == "1"
    assert _run(LEVELS, OMP_MAX_ACTIVE_LEVELS="3").stdout.strip() == "3"
    nested = _run(LEVELS, OMP_NESTED="true")
    assert nested.returncode == 0 and int(nested.stdout) > 3, nested.stdout + nested.stderr  # Numba's maximum


def test_the_first_compile_says_so_once(tmp_path):
    """With an empty Numba cache the first compile of a fastconv kernel prints one line on stderr; with the
    cache filled, or FASTCONV_COMPILE_NOTICE=0, nothing."""
    code = "import numpy as np, fastconv as fc; x = np.ones((2, 3), np.float32); fc.nn.ReLU()(x); fc.nn.ReLU()(x * 2)"
    cold = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count("fastconv: compiling kernels for this machine") == 1, cold.stderr
    warm = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert warm.returncode == 0 and "compiling" not in warm.stderr, warm.stderr
    quiet = _run(code, NUMBA_CACHE_DIR=str(tmp_path / "other"), FASTCONV_COMPILE_NOTICE="0")
    assert quiet.returncode == 0 and "compiling" not in quiet.stderr, quiet.stderr


def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_allocations():
    """In a fresh process (glibc): with glibc's fixed default thresholds (keep_freed_memory(False)) a 64 MiB
    array allocated, touched and freed again and again faults in its pages every time; kept, not once after
    the first."""
    code = ("import resource, numpy as np\n"
            "from fastconv import runtime\n"
            "def faults():\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    for _ in range(5):\n"
            "        a = np.empty(16 * 2**20, np.float32); a.fill(1); del a\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
            "released = runtime.keep_freed_memory(False)\n"
            "default = faults()\n"
            "kept = runtime.keep_freed_memory()\n"
            "faults()\n"
            "print(released, default, kept, faults())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    released, default, kept, after = done.stdout.split()
    if kept == "True":
        assert released == "True" and int(default) > 4 * 2**20 * 4 // 2**21, done.stdout  # 5 x 64 MiB, 2 MiB pages at most
        assert int(after) < 100, done.stdout
    from fastconv import runtime
    with pytest.raises(TypeError, match="enabled"):
        runtime.keep_freed_memory("yes")
